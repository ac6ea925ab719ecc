"""The checks of single values every configuration and command shares: integers, numbers and
choices within bounds, and the command line's sizes (image sizes, size schedules, ``--test-size``,
``--feature-size``), ``--imbalance`` and ``longtail predict``'s options.

Every check raises ``LongtailError`` with one line that names the option and says what it accepts.
"""

from __future__ import annotations

import math
from pathlib import Path

from longtail.choices import NATURAL_IMBALANCE
from longtail.errors import LongtailError

MIN_IMAGE_SIZE = 32  # the CIFAR images' own size; EfficientNet-B0's stride is 32
MAX_IMAGE_SIZE = 1024
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
TEST_SIZE_MODES = ("auto", "train")
# Input size of a stage-2 head's features (``--feature-size``): "auto" (chosen on the validation split
# among the stage-1 test size and one 16-px step either side), "stage1" (the stage-1 test size) or N px.
FEATURE_SIZE_MODES = ("auto", "stage1")


def option_name(name: str) -> str:
    """The command-line option of a config field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def check_int(name: str, value, low: int, high: int | None = None) -> None:
    """``value`` must be an integer in ``[low, high]``; the message names the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise LongtailError(f"{option_name(name)} must be an integer {bounds}, got {value!r}")


def check_float(
    name: str, value, low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> None:
    """``value`` must be a finite number in the interval (open ends where asked)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    if high is not None:
        ok = ok and (value < high if high_open else value <= high)
    if not ok:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        interval = (
            f"in {left}{low:g}, {high:g}{right}"
            if high is not None
            else (f"greater than {low:g}" if low_open else f"at least {low:g}")
        )
        raise LongtailError(f"{option_name(name)} must be a finite number {interval}, got {value!r}")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise LongtailError(f"unknown {option_name(name)} '{value}': choose one of {', '.join(map(str, choices))}")


def parse_size_schedule(spec: str) -> list[tuple[int, int]]:
    """``"48:4,64:3"`` -> ``[(48, 4), (64, 3)]``: image size and number of epochs, in order."""
    stages = []
    for part in spec.split(","):
        size, colon, epochs = part.strip().partition(":")
        try:
            stage = (int(size), int(epochs))
        except ValueError:
            stage = None
        if not colon or stage is None or stage[1] < 1 or not MIN_IMAGE_SIZE <= stage[0] <= MAX_IMAGE_SIZE:
            raise LongtailError(
                f"--size-schedule: '{part}' is not SIZE:EPOCHS with a size in {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} "
                "and at least one epoch (example: --size-schedule 48:4,64:3)"
            )
        stages.append(stage)
    return stages


def size_schedule_span(spec: str) -> dict[str, int]:
    """The ``TrainConfig`` fields a size schedule determines, its total epochs and its last (the
    training) image size: ``"48:4,64:3"`` -> ``{"epochs": 7, "image_size": 64}``."""
    stages = parse_size_schedule(spec)
    return {"epochs": sum(epochs for _, epochs in stages), "image_size": stages[-1][0]}


def parse_imbalance(text: str) -> float | str:
    """The command line's ``--imbalance``: a number or natural."""
    if text == NATURAL_IMBALANCE:
        return text
    try:
        return float(text)
    except ValueError:
        raise LongtailError(f"--imbalance must be a number >= 1 or natural, got '{text}'") from None


def _size_or_mode(text: str, modes: tuple[str, ...], option: str) -> int | str:
    """A command-line size option: one of its ``modes`` or a number of pixels."""
    if text in modes:
        return text
    try:
        return int(text)
    except ValueError:
        raise LongtailError(f"{option} must be {', '.join(modes)} or a number of pixels, got '{text}'") from None


def parse_feature_size(text: str) -> int | str:
    """The command line's ``--feature-size``: auto, stage1 or a number of pixels."""
    return _size_or_mode(text, FEATURE_SIZE_MODES, "--feature-size")


def parse_test_size(text: str) -> int | str:
    """The command line's ``--test-size``: auto, train or a number of pixels."""
    return _size_or_mode(text, TEST_SIZE_MODES, "--test-size")


# `longtail predict`: the output file's formats and the classes listed per image.
PREDICTION_FORMATS = (".csv", ".json")  # the output file's extension chooses its format
DEFAULT_TOP_K = 5  # classes listed per image (fewer when the run has fewer classes)


def check_prediction_options(out: Path | None, top_k: int | None) -> None:
    """``longtail predict``'s --out (a .csv or .json file, or None for CSV on stdout) and --top-k
    (at least 1; that it does not exceed the run's classes is checked against the run)."""
    if top_k is not None:
        check_int("top_k", top_k, 1)
    if out is not None and Path(out).suffix.lower() not in PREDICTION_FORMATS:
        raise LongtailError(
            f"--out {out}: predictions are written as CSV or JSON, chosen by the extension; name the file "
            "*.csv or *.json, or leave --out out for CSV on stdout"
        )
