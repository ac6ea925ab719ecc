"""The command line explains itself and repeats nothing.

- Every option of every subcommand has a help text, and every option that takes a value and is
  not required states its default; the defaults it states are the configuration dataclasses'.
- An option not given is not passed on: the dataclass default is the one source of every default.
- Options with a fixed set of values use argparse ``choices``; a bad one is one line that names
  the option and lists the choices.
- One definition of every name set: the parser's choices, ``longtail.choices`` and the
  registries that give the names their meaning (losses, samplers, profiles, groupings, BN modes,
  schedules, presets, ...) agree.
- ``longtail data``'s table comes from ``longtail.summary.split_summary`` and prints as before.

The parser tests need no torch; the registry and ``longtail data`` tests import the library.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from longtail import cli
from longtail.choices import (
    BN_MODES,
    DECAY_READINGS,
    DEVICES,
    GROUPINGS,
    LOSS_NAMES,
    LR_SCHEDULES,
    PROFILES,
    SAMPLERS,
    STAGE2_LOSSES,
    STAGE2_METHODS,
    STRATEGIES,
    TTA_MODES,
)
from longtail.cli.commands import _stage2_config, _train_config
from longtail.cli.options import shown_value
from longtail.cli.parser import DESCRIPTION
from longtail.config import (
    DATA_FIELDS,
    DEFAULT_PRESET,
    DEFAULT_SEEDS,
    DEFAULT_TOP_K,
    PRESETS,
    STUDY_FIELDS,
    Stage2Config,
    TrainConfig,
)

# The fewest arguments each command parses with (positionals first).
REQUIRED = {
    "data": [],
    "train": ["--out", "run"],
    "decouple": ["run", "--out", "head"],
    "reproduce": ["--out", "study"],
    "evaluate": ["run"],
    "predict": ["run", "image.png"],
}
# The dataclass whose fields a command's options set (the help states their defaults).
CONFIG_OF = {"data": TrainConfig, "train": TrainConfig, "decouple": Stage2Config}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def _option_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text of ``action`` as --help shows it (``%(choices)s`` and ``%%`` expanded), on one line."""
    formatter = parser._get_formatter()
    return " ".join(formatter._expand_help(action).split())


def _all_options():
    parser = cli.build_parser()
    return [
        pytest.param(
            command, sub, action, id=f"{command} {action.option_strings[0] if action.option_strings else action.dest}"
        )
        for command, sub in _subparsers(parser).items()
        for action in _options(sub)
    ]


def _parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


def _call(argv: list[str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = cli.main(argv)
        except SystemExit as exit_:  # --help
            status = exit_.code
    return status, stdout.getvalue(), stderr.getvalue()


# ---------------------------------------------------------------- every option explains itself


def test_every_command_is_covered():
    assert set(_subparsers(cli.build_parser())) == set(REQUIRED) == set(cli.COMMANDS)


@pytest.mark.parametrize(("command", "parser", "action"), _all_options())
def test_every_option_has_a_help_text_that_states_its_default(command, parser, action):
    text = _option_help(parser, action)
    assert action.help and action.help is not argparse.SUPPRESS and text, f"{command} {action.dest}: no help"
    assert "default None" not in text, f"{command} {action.dest}: say what a default of None means: {text}"
    takes_a_value = action.option_strings and action.nargs != 0
    if takes_a_value and not action.required:
        assert "default" in text, f"`longtail {command} {action.option_strings[0]}` does not state its default"
    if action.option_strings and action.required:
        assert "required" in text
    if action.choices is not None:  # every choice is named in the help
        for choice in action.choices:
            assert str(choice) in text, (command, action.dest, choice)


@pytest.mark.parametrize("command", sorted(CONFIG_OF))
def test_the_defaults_the_help_states_are_the_dataclasses(command):
    config = CONFIG_OF[command]
    fields = {field.name for field in dataclasses.fields(config)}
    checked = 0
    parser = _subparsers(cli.build_parser())[command]
    for action in _options(parser):
        if action.dest not in fields or action.nargs == 0:  # flags: off unless given
            continue
        value = getattr(config, action.dest)
        if value is None:  # explained in words ("default: tuned on the validation split")
            continue
        assert f"default {shown_value(value)}" in _option_help(parser, action), (command, action.dest, value)
        checked += 1
    assert checked, f"no option of {command} sets a field of {config.__name__}"


def test_the_defaults_of_reproduce_and_predict():
    commands = _subparsers(cli.build_parser())
    options = {a.dest: a for a in _options(commands["reproduce"])}
    assert options["preset"].default == DEFAULT_PRESET and options["seeds"].default == list(DEFAULT_SEEDS)
    assert f"(default {DEFAULT_PRESET})" in _option_help(commands["reproduce"], options["preset"])
    assert f"(default {' '.join(map(str, DEFAULT_SEEDS))})" in _option_help(commands["reproduce"], options["seeds"])
    assert f"default {TrainConfig.weights}" in _option_help(commands["reproduce"], options["weights"])
    top_k = next(a for a in _options(commands["predict"]) if a.dest == "top_k")
    assert f"default {DEFAULT_TOP_K}" in _option_help(commands["predict"], top_k)


def test_help_formats_and_opens_with_what_longtail_does():
    status, out, err = _call(["--help"])
    assert status == 0 and err == ""
    text = " ".join(out.split())
    opening = " ".join(out.split("\n\n")[1].split())  # after the usage line
    assert opening == " ".join(DESCRIPTION.split())
    assert opening.startswith("Long-tailed image classification with EfficientNet-B0")
    assert "argument parsing" not in text and "Command line:" not in text
    for command in REQUIRED:
        assert f" {command} " in text
    for command in REQUIRED:
        status, out, err = _call([command, "--help"])
        assert status == 0 and err == "" and "default" in out, command


# ---------------------------------------------------------------- defaults come from the dataclasses


@pytest.mark.parametrize("command", sorted(CONFIG_OF))
def test_an_option_not_given_is_none_so_the_dataclass_decides(command):
    # Nothing the configuration has a default for is repeated as an argparse default.
    args = _parse(command, *REQUIRED[command])
    fields = {field.name for field in dataclasses.fields(CONFIG_OF[command])}
    given = {dest: value for dest, value in vars(args).items() if dest in fields and value is not None}
    assert given == {}


def test_the_configs_of_no_options_are_the_dataclass_defaults():
    assert _train_config(_parse("train", "--out", "run")) == TrainConfig()
    assert _stage2_config(_parse("decouple", "run", "--out", "head")) == Stage2Config()
    args = _parse("reproduce", "--out", "study")
    assert all(getattr(args, name) is None for name in (*STUDY_FIELDS, *DATA_FIELDS, "weights", "feature_size"))
    assert _parse("reproduce", "--out", "study", "--feature-size", "stage1").feature_size == "stage1"


def test_the_options_given_reach_the_configs():
    train = _train_config(
        _parse(
            "train", "--out", "run", "--lr", "0.01", "--batch-size", "7", "--no-augment", "--deterministic",
            "--strategy", "reweight", "--bn", "frozen", "--device", "cpu", "--tta", "flip", "--test-size", "train",
            "--seed", "3", "--val-fraction", "0.2", "--decay-reading", "l2", "--decay-value", "0.01",
        )
    )  # fmt: skip
    expected = dict(lr=0.01, batch_size=7, augment=False, deterministic=True, strategy="reweight", bn="frozen")
    expected.update(device="cpu", tta="flip", test_size="train", seed=3, val_fraction=0.2, val_per_class=0)
    expected.update(decay_reading="l2", decay_value=0.01)
    assert train == TrainConfig(**expected)
    scheduled = _train_config(_parse("train", "--out", "run", "--size-schedule", "48:2,64:3"))
    assert (scheduled.epochs, scheduled.image_size) == (5, 64)
    head = _stage2_config(
        _parse("decouple", "run", "--out", "head", "--loss", "focal", "--gamma", "2", "--epochs", "3", "--seed", "1")
    )
    assert head == Stage2Config(loss="focal", gamma=2.0, epochs=3, seed=1)


# ---------------------------------------------------------------- choices


def _choice_options():
    return [
        pytest.param(command, action, id=f"{command} {action.option_strings[0]}")
        for command, sub in _subparsers(cli.build_parser()).items()
        for action in _options(sub)
        if action.choices is not None
    ]


@pytest.mark.parametrize(("command", "action"), _choice_options())
def test_a_bad_choice_is_one_line_naming_the_option_and_the_choices(command, action):
    option = action.option_strings[0]
    status, out, err = _call([command, *REQUIRED[command], option, "no-such-choice"])
    assert status == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("longtail: error: "), err
    assert option in lines[0] and "'no-such-choice'" in lines[0]
    for choice in action.choices:
        assert f"'{choice}'" in lines[0]


# Every option with a fixed set of values, and the names it must offer.
EXPECTED_CHOICES = {
    "profile": PROFILES,
    "groups": GROUPINGS,
    "tta": TTA_MODES,
    "lr_schedule": LR_SCHEDULES,
    "decay_reading": tuple(DECAY_READINGS),
    "bn": BN_MODES,
    "strategy": tuple(STRATEGIES),
    "device": DEVICES,
    "method": STAGE2_METHODS,
    "loss": STAGE2_LOSSES,
    "sampler": SAMPLERS,
    "preset": tuple(PRESETS),
}


def test_the_parsers_choices_are_the_name_sets():
    seen = set()
    for command, sub in _subparsers(cli.build_parser()).items():
        for action in _options(sub):
            if action.choices is not None:
                assert action.dest in EXPECTED_CHOICES, f"{command} {action.dest}: add its name set to this test"
                assert tuple(action.choices) == EXPECTED_CHOICES[action.dest], (command, action.dest)
                seen.add(action.dest)
    assert seen == set(EXPECTED_CHOICES)


def test_the_parser_and_its_errors_need_no_torch():
    code = (
        "import sys, contextlib, io\n"
        "from longtail.cli import main\n"
        "for argv in (['--help'], ['train', '--help'], ['decouple', '--help'], ['reproduce', '--help'],\n"
        "             ['train', '--out', 'r', '--strategy', 'x'], ['decouple', 'r', '--out', 'h', '--loss', 'x']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "assert 'torch' not in sys.modules, 'the parser imported torch'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


# ---------------------------------------------------------------- one definition of every name set


def test_the_registries_are_the_name_sets():
    from longtail import knobs, losses, metrics, models, optimization, samplers, strategies, study
    from longtail.data import splits

    # Losses: the registry has exactly the names; stage 2 adds modified-ce (an alias) and crt.
    assert tuple(losses.LOSSES) == LOSS_NAMES
    assert set(STAGE2_LOSSES) - set(LOSS_NAMES) == {"modified-ce", "crt"}
    assert losses.loss_spec("modified-ce") is losses.LOSSES[losses.MODIFIED_CE]
    assert set(study.STUDY_LOSSES) <= set(STAGE2_LOSSES)
    # Knobs: of stage-2 losses and methods, each knob with a fixed value.
    assert set(knobs.LOSS_KNOBS) <= set(STAGE2_LOSSES) and set(knobs.TAU_METHODS) <= set(STAGE2_METHODS)
    assert {knob for names in knobs.LOSS_KNOBS.values() for knob in names} == set(knobs.KNOBS) == set(knobs.FIXED)
    # Samplers: one tuple, and an epoch order for each name.
    assert samplers.SAMPLERS is SAMPLERS and tuple(samplers.ORDERS) == SAMPLERS
    labels = [0, 0, 0, 1]
    for name in SAMPLERS:
        assert len(samplers.epoch_order(name, labels, seed=0, epoch=0)) == len(labels)
    # Strategies: a loss and a sampler of the registries.
    assert tuple(strategies.STRATEGY) == tuple(STRATEGIES)
    for strategy in strategies.STRATEGY.values():
        assert strategy.loss in losses.LOSSES and strategy.sampler in samplers.ORDERS
    # Profiles: one tuple, and counts for each name.
    assert splits.PROFILES is PROFILES
    for profile in PROFILES:
        assert len(splits.long_tail_counts(100, 4, 10.0, profile)) == 4
    for grouping in GROUPINGS:
        assert set(metrics.frequency_groups([50, 20, 10, 5], grouping)) == {"many", "medium", "few"}
    info = models.WeightsInfo("none", None, pretrained=False, bn_folded=False)
    assert {models.resolve_bn_mode(mode, info) for mode in BN_MODES} <= set(BN_MODES) - {"auto"}
    # Learning-rate schedules: each name a schedule of its own.
    curves = {
        name: tuple(optimization.lr_factor(TrainConfig(lr_schedule=name, epochs=2), 3)(step) for step in range(6))
        for name in LR_SCHEDULES
    }
    assert len(set(curves.values())) == len(LR_SCHEDULES)
    # Every name the config accepts validates.
    for field, names in (("decay_reading", DECAY_READINGS), ("tta", TTA_MODES), ("device", DEVICES)):
        for name in names:
            TrainConfig(**{field: name}).validate()
    # `longtail reproduce`'s defaults are the study's.
    parameters = inspect.signature(study.reproduce).parameters
    assert parameters["preset"].default == DEFAULT_PRESET and DEFAULT_PRESET in PRESETS
    assert tuple(parameters["seeds"].default) == DEFAULT_SEEDS


# ---------------------------------------------------------------- longtail data


def _four_classes(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8),
        y_train=np.repeat(np.arange(4), 50),
        x_test=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
        y_test=np.repeat(np.arange(4), 5),
    )
    return path


def test_longtail_data_prints_the_split_summary_as_before(tmp_path, cache_dir):
    npz = _four_classes(tmp_path / "four.npz")
    status, out, err = _call(["data", "--data", str(npz), "--imbalance", "5", "--val-per-class", "3"])
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"source: {npz} (sha256 ") and lines[0].endswith("...), images stored at 32x32 px")
    assert lines[1].startswith("profile exp, imbalance 5, seed 0, index file ")
    # What longtail data printed before split_summary existed, character for character.
    assert lines[2:] == [
        "    class    profile    train    val   test  thirds group",
        "  0 class_0       50       47      3      5  many",
        "  1 class_1       29       29      3      5  medium",
        "  2 class_2       17       17      3      5  medium",
        "  3 class_3       10       10      3      5  few",
        "    total        106      103     12     20",
        "imbalance factor of the training counts: 4.7 (47 / 10)",
        "test: 20 images, the source's own test split",
    ]


def test_split_summary_is_the_table_as_data(tmp_path, cache_dir):
    from longtail.data import load_dataset
    from longtail.summary import split_summary

    npz = _four_classes(tmp_path / "four.npz")
    config = TrainConfig(data=str(npz), imbalance=10.0, profile="step", max_per_class=40, val_per_class=2)
    summary = split_summary(load_dataset(config, pretrained=False, cache_dir=cache_dir), "shots")
    assert summary["grouping"] == "shots"
    assert [(row["class"], row["name"]) for row in summary["classes"]] == [(c, f"class_{c}") for c in range(4)]
    assert [[row[key] for key in ("profile", "train", "val", "test")] for row in summary["classes"]] == [
        [40, 40, 2, 5],
        [40, 40, 2, 5],
        [4, 4, 2, 5],
        [4, 4, 2, 5],
    ]
    assert [row["group"] for row in summary["classes"]] == ["medium", "medium", "few", "few"]
    assert summary["total"] == {"profile": 88, "train": 88, "val": 8, "test": 20}
    assert (summary["most"], summary["fewest"], summary["imbalance_factor"]) == (40, 4, 10.0)


def test_the_tune_help_states_the_size_of_each_grid():
    from longtail.knobs import BETA_GRID, CB_FOCAL_GRID, GAMMA_GRID, TAU_GRID_TRAINED

    decouple = _subparsers(cli.build_parser())["decouple"]
    text = _option_help(decouple, next(a for a in _options(decouple) if a.dest == "tune"))
    assert len(CB_FOCAL_GRID) != len(TAU_GRID_TRAINED)  # so no grid is "as large as tau's" for every loss
    assert "as large as" not in text
    for stated in (
        f"gamma over {len(GAMMA_GRID)} values",
        f"beta over {len(BETA_GRID)}",
        f"{len(CB_FOCAL_GRID)} pairs",
        f"tau grid has {len(TAU_GRID_TRAINED)} values",
    ):
        assert stated in text, (stated, text)


@pytest.mark.parametrize(
    ("argv", "says", "never"),
    [
        (["train", "--out", "run"], "rerun it with --resume", None),
        (["reproduce", "--out", "study"], "rerun the same command", "--resume"),  # reproduce has no --resume
        (["decouple", "run", "--out", "head"], "rerun the command", "--resume"),
        (["evaluate", "run"], "rerun the command", "--resume"),
        (["predict", "run", "image.png"], "rerun the command", "--resume"),
    ],
)
def test_ctrl_c_says_how_to_continue_the_command_it_interrupted(monkeypatch, argv, says, never):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, argv[0], interrupted)
    status, stdout, stderr = _call(argv)
    assert status == 130 and stdout == ""
    assert stderr.startswith("longtail: interrupted; ") and says in stderr, stderr
    assert never is None or never not in stderr, stderr
    parser = _subparsers(cli.build_parser())[argv[0]]
    options = {option for action in _options(parser) for option in action.option_strings}
    assert ("--resume" in options) == ("--resume" in stderr)  # only a command that has --resume is told to use it
