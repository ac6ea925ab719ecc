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

    common = dict(data="d.npz", weights="none", imbalance=100.0)
    preset = PRESETS["cpu"]
    plain = study_config("cpu", given={}, **common)
    assert (plain.image_size, plain.epochs, plain.lr_schedule, plain.size_schedule) == (
        preset.image_size,
        preset.epochs,
        preset.lr_schedule,
        None,
    )
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
