"""``longtail.config``: the data settings of a run (natural imbalance, validation and test
fractions, store size, unreadable images, frequency groups) are validated with one-line
messages naming the option, survive run.json's JSON round trip unchanged, and a run recorded
before they existed compares equal to today's defaults."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import pytest

from longtail.config import (
    Stage2Config,
    TrainConfig,
    check_prediction_options,
    config_differences,
    from_record,
    parse_imbalance,
    study_config,
)
from longtail.errors import LongtailError

NEW_FIELDS = ("store_size", "skip_bad_images", "val_fraction", "test_fraction", "groups")


def test_a_record_lacking_settings_differs_from_every_request_and_is_not_read():
    record = {k: v for k, v in dataclasses.asdict(TrainConfig()).items() if k not in NEW_FIELDS}
    defaults = dataclasses.asdict(TrainConfig())
    assert config_differences(record, TrainConfig()) == {name: (None, defaults[name]) for name in NEW_FIELDS}
    with pytest.raises(LongtailError, match="lack groups, skip_bad_images, store_size, test_fraction, val_fraction"):
        from_record(TrainConfig, record)
    assert from_record(TrainConfig, dataclasses.asdict(TrainConfig())) == TrainConfig()


@pytest.mark.parametrize(
    "settings",
    [
        {"imbalance": "natural", "val_per_class": 0, "val_fraction": 0.2, "test_fraction": 0.25, "groups": "shots"},
        {"imbalance": 10.0, "store_size": 48, "skip_bad_images": True, "test_fraction": 0.1},
    ],
)
def test_data_settings_survive_the_json_round_trip(settings):
    config = TrainConfig(data="folder", **settings)
    config.validate()
    recorded = json.loads(json.dumps(dataclasses.asdict(config)))
    assert config_differences(recorded, config) == {}
    assert config_differences(recorded, dataclasses.replace(config, test_fraction=0.3)) == {
        "test_fraction": (settings["test_fraction"], 0.3)
    }


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"imbalance": "even"}, "--imbalance must be a finite number >= 1 or natural, got 'even'"),
        ({"imbalance": "natural", "max_per_class": 10}, "--max-per-class sets the head count"),
        ({"imbalance": "natural", "profile": "step"}, "--profile step shapes a numeric --imbalance"),
        ({"val_fraction": 0.2}, "--val-per-class 50 and --val-fraction 0.2 both set the validation split"),
        ({"val_per_class": 0, "val_fraction": 1.0}, "--val-fraction must be a finite number in \\(0, 1\\)"),
        ({"test_fraction": 0.0}, "--test-fraction must be a finite number in \\(0, 1\\)"),
        ({"store_size": 8}, "--store-size must be an integer between 16 and 1024, got 8"),
        ({"groups": "quartiles"}, "unknown --groups 'quartiles': choose one of thirds, shots"),
    ],
)
def test_bad_data_settings_name_the_option(settings, expected):
    with pytest.raises(LongtailError, match=expected):
        TrainConfig(**settings).validate()


def test_imbalance_on_the_command_line_is_a_number_or_natural():
    assert parse_imbalance("natural") == "natural" and parse_imbalance("50") == 50.0
    with pytest.raises(LongtailError, match="--imbalance must be a number >= 1 or natural, got 'lots'"):
        parse_imbalance("lots")


def test_a_natural_study_keeps_every_image():
    config = study_config("smoke", data="folder", weights="none", imbalance="natural", given={"test_fraction": 0.2})
    assert config.max_per_class is None and config.imbalance == "natural" and config.test_fraction == 0.2


def test_prediction_options():
    check_prediction_options(None, None)
    check_prediction_options("out/predictions.JSON", 3)
    with pytest.raises(LongtailError, match="--top-k must be an integer at least 1, got 0"):
        check_prediction_options(None, 0)
    with pytest.raises(LongtailError, match="--out preds.txt: .*\\*.csv or \\*.json"):
        check_prediction_options("preds.txt", None)


def test_import_longtail_needs_no_torch_and_predict_is_there():
    code = (
        "import sys, longtail; assert 'torch' not in sys.modules; "
        "from longtail.prediction import predict; assert longtail.predict is predict"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_study_config_composes_the_preset_with_what_is_given():
    from longtail.config import PRESETS, study_config

    common = dict(data="d.npz", weights="imagenet", imbalance=100.0)  # the cpu preset freezes pretrained blocks
    preset = PRESETS["cpu"]
    plain = study_config("cpu", given={}, **common)
    assert (plain.image_size, plain.epochs, plain.lr_schedule, plain.size_schedule, plain.random_resized_crop) == (
        preset.image_size,
        preset.epochs,
        preset.lr_schedule,
        None,
        preset.random_resized_crop,
    )
    # The cpu preset's random-resized crops (chosen on validation, RESULTS.md "Round 3") can be turned off.
    assert preset.random_resized_crop > 0
    assert study_config("cpu", given={"random_resized_crop": 0.0}, **common).random_resized_crop == 0.0
    # A schedule given alone sets the epochs and the training size.
    scheduled = study_config("cpu", given={"size_schedule": "48:2,80:3"}, **common)
    assert (scheduled.epochs, scheduled.image_size) == (5, 80)
    # A fixed length and size, without a schedule.
    fixed = study_config("cpu", given={"epochs": 3, "image_size": 64}, **common)
    assert (fixed.epochs, fixed.image_size, fixed.size_schedule) == (3, 64, None)
    # Overrides may set a field to None (all images of the head class).
    assert study_config("smoke", given={"max_per_class": None}, **common).max_per_class is None
    with pytest.raises(LongtailError, match="--preset"):
        study_config("huge", given={}, **common)


def test_every_head_of_a_study_takes_the_feature_size_it_is_given(tmp_path):
    from longtail.study.plan import plan_study, stage2_groups

    for size in ("auto", "stage1", 144):
        plan = plan_study(TrainConfig(), (0, 1), True, tmp_path, size)
        heads = [config for steps in plan for group in stage2_groups(steps) for config in group.heads.values()]
        assert len(heads) > 2 * 10 and {head.feature_size for head in heads} == {size}


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"freeze_blocks": -1}, "--freeze-blocks must be an integer between 0 and 8, got -1"),
        ({"freeze_blocks": 9}, "--freeze-blocks must be an integer between 0 and 8, got 9"),
        ({"freeze_blocks": 3, "bn": "reestimate"}, "--bn reestimate re-estimates the BatchNorm statistics of the 3"),
    ],
)
def test_freeze_blocks_outside_0_to_8_or_with_reestimated_batchnorm_is_refused(settings, expected):
    with pytest.raises(LongtailError, match=re.escape(expected)):
        TrainConfig(**settings).validate()
    TrainConfig(freeze_blocks=8).validate()


@pytest.mark.parametrize("weights", ["none", "imagenet", "b0.pth"])
def test_frozen_blocks_need_pretrained_weights(weights):
    # Frozen random blocks would never train: --freeze-blocks K > 0 with --weights none is refused.
    config = TrainConfig(weights=weights, freeze_blocks=2)
    if weights == "none":
        with pytest.raises(LongtailError, match=re.escape("--freeze-blocks 2 keeps B0's first 2 blocks")) as refused:
            config.validate()
        assert "--weights none" in str(refused.value) and "--freeze-blocks 0" in str(refused.value)
    else:
        config.validate()
    TrainConfig(weights=weights, freeze_blocks=0).validate()


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"weight_decay": -0.1}, "--weight-decay must be a finite number at least 0, got -0.1"),
        ({"weight_decay": 1.0, "decay_reading": "adamw"}, "--weight-decay 1 and --decay-reading adamw both set"),
        ({"weight_decay": 1.0, "decay_reading": "l2"}, "--weight-decay 1 and --decay-reading l2 both set"),
        ({"ema_decay": 1.0}, "--ema-decay must be a finite number in (0, 1), got 1.0"),
        ({"ema_decay": 0.0}, "--ema-decay must be a finite number in (0, 1), got 0.0"),
        ({"ema_decay": 0.99, "decay_reading": "ema"}, "--ema-decay 0.99 and --decay-reading ema both average"),
        ({"mixup": -1.0}, "--mixup must be a finite number at least 0, got -1.0"),
        ({"cutmix": float("nan")}, "--cutmix must be a finite number at least 0, got nan"),
        ({"mixup": 0.2, "cutmix": 1.0}, "--mixup and --cutmix both mix the training images: give one of them"),
        ({"random_resized_crop": -0.1}, "--random-resized-crop must be a finite number in [0, 1], got -0.1"),
        ({"random_resized_crop": 1.5}, "--random-resized-crop must be a finite number in [0, 1], got 1.5"),
        (
            {"random_resized_crop": 0.35, "augment": False},
            "--random-resized-crop 0.35 augments the training images and --no-augment turns augmentation off",
        ),
    ],
)
def test_stage1_deviations_out_of_range_or_given_twice_are_refused(settings, expected):
    with pytest.raises(LongtailError, match=re.escape(expected)):
        TrainConfig(**settings).validate()
    for fine in (
        {"weight_decay": 0.5},
        {"ema_decay": 0.99},
        {"mixup": 0.2},
        {"cutmix": 1.0},
        {"random_resized_crop": 1.0},
        {"random_resized_crop": 0.0, "augment": False},  # 0: off
    ):
        TrainConfig(**fine).validate()
    assert TrainConfig(ema_decay=0.99).averaging_decay == 0.99
    assert TrainConfig(decay_reading="ema").averaging_decay == 0.9999 and TrainConfig().averaging_decay is None
    assert TrainConfig(cutmix=1.0).mixing == ("cutmix", 1.0) and TrainConfig().mixing is None


# ---------------------------------------------------------------- stage 2: every option given is used


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            {"loss": "balanced-softmax", "tau": 2.0, "gamma": 5.0},
            "--tau 2 is not used by --loss balanced-softmax: --tau is for --loss modified-ce and logit-adjusted and "
            "--method tau-norm and post-hoc-la.*; --gamma 5 is not used by --loss balanced-softmax: --gamma is for "
            "--loss focal and cb-focal",
        ),
        ({"method": "tau-norm", "loss": "focal"}, "--loss focal is not used by --method tau-norm"),
        ({"method": "post-hoc-la", "loss": "ce"}, "--loss ce is not used by --method post-hoc-la"),
        ({"method": "lws", "loss": "ce"}, "--loss ce is not used by --method lws.*cross-entropy"),
        ({"method": "post-hoc-la", "epochs": 50}, "--epochs 50 is not used by --method post-hoc-la, which trains"),
        ({"method": "tau-norm", "seed": 3}, "--seed 3 is not used by --method tau-norm"),
        ({"method": "tau-norm", "sampler": "instance"}, "--sampler instance is not used by --method tau-norm"),
        ({"method": "lws", "tau": 1.0}, "--tau 1 is not used by --method lws"),
        ({"loss": "focal", "beta": 0.99}, "--beta 0.99 is not used by --loss focal: --beta is for --loss class-bal"),
        ({"gamma": 2.0}, "--gamma 2 is not used by --loss ce"),
        ({"loss": "class-balanced", "tau": 1.0}, "--tau 1 is not used by --loss class-balanced"),
        (
            {"loss": "balanced-softmax", "tune": True},
            "--tune is not used by --loss balanced-softmax: balanced-soft"
            "max has no knob \\(it is logit-adjusted CE at tau = 1\\)",
        ),  # fmt: skip
        ({"loss": "modified-ce", "tune": True}, "--tune is not used by --loss modified-ce: its tau is tuned"),
        ({"loss": "ldam", "tune": True}, "--tune is not used by --loss ldam"),
        ({"method": "post-hoc-la", "tune": True}, "--tune is not used by --method post-hoc-la"),
        ({"loss": "focal", "gamma": 2.0, "tune": True}, "--tune leaves nothing to tune: --gamma fix"),
        ({"loss": "cb-focal", "gamma": 2.0, "beta": 0.99, "tune": True}, "--beta and --gamma fix every knob"),
        ({"method": "lws", "max_norm": 1.0}, "--max-norm 1 is not used by --method lws, which trains no classifier"),
        ({"method": "tau-norm", "max_norm": 1.0}, "--max-norm 1 is not used by --method tau-norm"),
        ({"loss": "ldam", "max_norm": 0.5}, "--max-norm 0.5 is not used by --loss ldam, whose cosine head normalises"),
        ({"max_norm": 0.0}, "--max-norm must be a finite number greater than 0, got 0.0"),
    ],
)
def test_a_stage2_option_that_nothing_uses_is_refused_naming_it_and_what_uses_it(settings, expected):
    with pytest.raises(LongtailError, match=expected):
        Stage2Config(**settings).validate()


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"loss": "focal", "gamma": 2.0},
        {"loss": "focal", "tune": True},
        {"loss": "cb-focal", "gamma": 0.5, "tune": True},
        {"loss": "cb-focal", "beta": 0.999},
        {"loss": "modified-ce", "tau": 2.0, "epochs": 5, "views": 2, "seed": 1},
        {"loss": "modified-ce", "max_norm": 1.0},
        {"loss": "crt", "sampler": "instance"},
        {"method": "lws", "epochs": 5, "lr": 0.01, "sampler": "instance"},
        {"method": "tau-norm", "tau": 0.5},
        {"method": "post-hoc-la"},
    ],
)
def test_stage2_options_that_are_used_are_accepted(settings):
    Stage2Config(**settings).validate()


def test_stage2_resolved_fills_the_defaults_of_what_is_used_and_clears_the_rest():
    defaults = Stage2Config.DEFAULTS
    plain = Stage2Config().resolved()
    assert (plain.loss, plain.sampler, plain.epochs, plain.batch_size, plain.lr, plain.views, plain.seed) == (
        "ce", "instance", defaults["epochs"], defaults["batch_size"], defaults["lr"], 0, 0
    )  # fmt: skip
    assert (plain.tau, plain.gamma, plain.beta, plain.tune) == (None, None, None, False)
    assert (defaults["epochs"], defaults["batch_size"], defaults["lr"], defaults["gamma"]) == (30, 128, 1e-3, 1.0)
    focal = Stage2Config(loss="focal").resolved()
    assert focal.gamma == 1.0 and focal.tuned_knobs == ()
    tuned = Stage2Config(loss="cb-focal", tune=True).resolved()
    assert (tuned.gamma, tuned.beta, tuned.tune, tuned.tuned_knobs) == (None, None, True, ("beta", "gamma"))
    assert Stage2Config(loss="cb-focal", gamma=2.0, tune=True).resolved().tuned_knobs == ("beta",)
    assert Stage2Config(loss="modified-ce").resolved().tuned_knobs == ("tau",)
    post_hoc = Stage2Config(method="post-hoc-la").resolved()
    assert (post_hoc.loss, post_hoc.sampler, post_hoc.epochs, post_hoc.seed) == (None, None, None, None)
    assert post_hoc.tuned_knobs == ("tau",)
    assert Stage2Config(method="lws").resolved().sampler == "class-balanced"
    for config in (plain, focal, tuned, post_hoc):
        assert config.resolved() == config  # what run.json records resolves to itself
