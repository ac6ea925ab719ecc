"""The settings of a stage-1 run (``TrainConfig``) and of a stage-2 head (``Stage2Config``), and
their validation.

Torch-free, like ``longtail.choices``: the command line checks every value before it imports
torch or touches a run directory, so a bad value answers at once with one line that names the
option. The dataclasses are what ``run.json`` records (``dataclasses.asdict``) and what a study
or a resume compares (``config_differences``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from longtail.choices import (
    BN_MODES,
    DECAY_READINGS,
    DEFAULT_DECAY_READING,
    DEVICES,
    GROUPINGS,
    LR_SCHEDULES,
    NATURAL_IMBALANCE,
    PROFILES,
    SAMPLERS,
    STAGE2_LOSSES,
    STAGE2_METHODS,
    STRATEGIES,
    TTA_MODES,
)
from longtail.errors import LongtailError

MIN_IMAGE_SIZE = 32  # the CIFAR images' own size; EfficientNet-B0's stride is 32
MAX_IMAGE_SIZE = 1024
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
# --freeze-blocks: EfficientNet-B0's features[0:K] can be kept fixed, K up to 8 (the stem and the seven
# MBConv stages; features[8], the last 1x1 convolution, and the classifier always train).
MAX_FREEZE_BLOCKS = 8
# Stored size of decoded image folders (``--store-size``): down to 16 px (smaller than the model's
# input, which upsamples), up to the largest input size.
MIN_STORE_SIZE, MAX_STORE_SIZE = 16, MAX_IMAGE_SIZE
TEST_SIZE_MODES = ("auto", "train")
# The options of a list source that need --train-list, by TrainConfig field.
LIST_OPTIONS = {"val_list": "--val-list", "test_list": "--test-list", "class_names_file": "--class-names"}


# ---------------------------------------------------------------- checks shared by both configs


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_int(name: str, value, low: int, high: int | None = None) -> None:
    """``value`` must be an integer in ``[low, high]``; the message names the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise LongtailError(f"{_option(name)} must be an integer {bounds}, got {value!r}")


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
        raise LongtailError(f"{_option(name)} must be a finite number {interval}, got {value!r}")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise LongtailError(f"unknown {_option(name)} '{value}': choose one of {', '.join(map(str, choices))}")


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


# ---------------------------------------------------------------- stage 1


@dataclass
class TrainConfig:
    """Everything that determines a stage-1 run. Defaults are the study's fixed hyperparameters."""

    data: str | None = None
    weights: str = "imagenet"
    strategy: str = "baseline"
    imbalance: float | str = 100.0  # n_max / n_min of the profile, or "natural" (every image kept)
    profile: str = "exp"
    max_per_class: int | None = None
    val_per_class: int = 50
    image_size: int = 32  # the training size (the last epochs' under a size schedule)
    epochs: int = 30  # study
    batch_size: int = 128  # study
    lr: float = 1e-4  # study, Adam (the peak under a schedule)
    decay_reading: str = DEFAULT_DECAY_READING
    decay_value: float = 0.9999  # study
    bn: str = "auto"
    seed: int = 0
    deterministic: bool = False
    augment: bool = True
    drw_start: float = 0.8  # LDAM-DRW re-weights from this fraction of the epochs on (160/200 in Cao et al.)
    device: str = "auto"
    compile: bool = False
    # Progressive resizing: "SIZE:EPOCHS,..." in order, ending at image_size; None: image_size throughout.
    size_schedule: str | None = None
    lr_schedule: str = "constant"  # study; "cosine" is a named deviation
    # Input size of the test metrics: "auto" (chosen on the validation split among sizes from the
    # training size up), "train" (the training size) or a number of pixels.
    test_size: int | str = "auto"
    tta: str = "none"  # "flip": also report metrics with flip test-time augmentation
    # Image folders and tarballs: the stored image size (None: chosen from the images, see
    # longtail.data) and whether unreadable images are left out (else they are an error).
    store_size: int | None = None
    skip_bad_images: bool = False
    val_fraction: float | None = None  # validation share of each class, instead of val_per_class
    test_fraction: float | None = None  # test share of each class held out of a source without a test split
    groups: str = "thirds"  # frequency groups of the metrics: thirds or shots (longtail.metrics)
    # B0's features[0:K] keep their ImageNet weights (no gradient, no optimizer state, eval mode): a
    # named deviation from the study's full fine-tuning that buys a larger input for the same time.
    freeze_blocks: int = 0
    # A list source (longtail.data.lists): 'path label' list files read under the image root `data`;
    # the validation and test lists replace the held-out splits, the class-names file names the labels.
    train_list: str | None = None
    val_list: str | None = None
    test_list: str | None = None
    class_names_file: str | None = None

    def validate(self) -> None:
        """Check every value; the error names the option and says what it accepts."""
        check_choice("strategy", self.strategy, STRATEGIES)
        check_choice("decay_reading", self.decay_reading, DECAY_READINGS)
        check_choice("bn", self.bn, BN_MODES)
        check_choice("profile", self.profile, PROFILES)
        check_choice("device", self.device, DEVICES)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("tta", self.tta, TTA_MODES)
        check_choice("groups", self.groups, GROUPINGS)
        self._validate_data()
        check_int("image_size", self.image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("seed", self.seed, 0, MAX_SEED)
        check_float("lr", self.lr, 0.0, low_open=True)
        if self.decay_reading in ("cb-beta", "ema"):  # a beta or an EMA decay: a fraction
            check_float("decay_value", self.decay_value, 0.0, 1.0, high_open=self.decay_reading == "cb-beta")
        else:  # a weight-decay coefficient
            check_float("decay_value", self.decay_value, 0.0)
        check_float("drw_start", self.drw_start, 0.0, 1.0)
        check_int("freeze_blocks", self.freeze_blocks, 0, MAX_FREEZE_BLOCKS)
        if self.freeze_blocks and self.bn == "reestimate":
            raise LongtailError(
                f"--bn reestimate re-estimates the BatchNorm statistics of the {self.freeze_blocks} blocks "
                "--freeze-blocks keeps fixed: use --bn frozen (or train), or leave --freeze-blocks out"
            )
        if self.size_schedule is not None:
            stages = parse_size_schedule(self.size_schedule)
            total = sum(epochs for _, epochs in stages)
            if total != self.epochs or stages[-1][0] != self.image_size:
                raise LongtailError(
                    f"--size-schedule {self.size_schedule} has {total} epochs ending at {stages[-1][0]} px, but "
                    f"--epochs is {self.epochs} and --image-size {self.image_size}: leave those two out or make them "
                    "agree"
                )
        if self.test_size not in TEST_SIZE_MODES:
            check_int("test_size", self.test_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)

    def _validate_data(self) -> None:
        """The settings of the data: imbalance, validation and test splits, decoding."""
        natural = self.imbalance == NATURAL_IMBALANCE
        numeric = isinstance(self.imbalance, (int, float)) and not isinstance(self.imbalance, bool)
        if not natural and not (numeric and math.isfinite(self.imbalance) and self.imbalance >= 1):
            raise LongtailError(f"--imbalance must be a finite number >= 1 or natural, got {self.imbalance!r}")
        if self.max_per_class is not None:
            check_int("max_per_class", self.max_per_class, 1)
            if natural:
                raise LongtailError(
                    "--max-per-class sets the head count of an imbalance profile, and --imbalance natural keeps "
                    "every image: leave one of them out"
                )
        if natural and self.profile != "exp":
            raise LongtailError(
                f"--profile {self.profile} shapes a numeric --imbalance, and --imbalance natural keeps every image: "
                "leave one of them out"
            )
        check_int("val_per_class", self.val_per_class, 0)
        if self.val_fraction is not None:
            check_float("val_fraction", self.val_fraction, 0.0, 1.0, low_open=True, high_open=True)
            if self.val_per_class != 0:
                raise LongtailError(
                    f"--val-per-class {self.val_per_class} and --val-fraction {self.val_fraction:g} both set the "
                    "validation split: give one of them"
                )
        if self.test_fraction is not None:
            check_float("test_fraction", self.test_fraction, 0.0, 1.0, low_open=True, high_open=True)
        if self.store_size is not None:
            check_int("store_size", self.store_size, MIN_STORE_SIZE, MAX_STORE_SIZE)
        self._validate_lists()

    def _validate_lists(self) -> None:
        """The list files of a list source, and the held-out splits they replace."""
        if self.train_list is None:
            given = [option for field, option in LIST_OPTIONS.items() if getattr(self, field) is not None]
            if given:
                raise LongtailError(
                    f"{given[0]} goes with a list source: pass --train-list FILE (and --data ROOT, the folder its "
                    "paths start from), or leave it out"
                )
            return
        if self.val_list is not None and (self.val_per_class != 0 or self.val_fraction is not None):
            held_out = (
                f"--val-fraction {self.val_fraction:g}"
                if self.val_fraction is not None
                else f"--val-per-class {self.val_per_class}"
            )
            raise LongtailError(
                f"--val-list {self.val_list} is the validation split and {held_out} would hold out another one: "
                "give one of them"
            )
        if self.test_list is not None and self.test_fraction is not None:
            raise LongtailError(
                f"--test-list {self.test_list} is the test split and --test-fraction {self.test_fraction:g} would "
                "hold out another one: give one of them"
            )

    def epoch_size(self, epoch: int) -> int:
        """The training image size of ``epoch`` (0-based)."""
        if self.size_schedule is None:
            return self.image_size
        for size, epochs in parse_size_schedule(self.size_schedule):
            if epoch < epochs:
                return size
            epoch -= epochs
        return self.image_size

    @property
    def epoch_sizes(self) -> list[int]:
        return [self.epoch_size(epoch) for epoch in range(self.epochs)]


def parse_imbalance(text: str) -> float | str:
    """The command line's ``--imbalance``: a number or natural."""
    if text == NATURAL_IMBALANCE:
        return text
    try:
        return float(text)
    except ValueError:
        raise LongtailError(f"--imbalance must be a number >= 1 or natural, got '{text}'") from None


def parse_test_size(text: str) -> int | str:
    """The command line's ``--test-size``: auto, train or a number of pixels."""
    if text in TEST_SIZE_MODES:
        return text
    try:
        return int(text)
    except ValueError:
        raise LongtailError(f"--test-size must be auto, train or a number of pixels, got '{text}'") from None


# ---------------------------------------------------------------- stage 2


@dataclass
class Stage2Config:
    """One stage-2 head. Head-training defaults: Adam lr 1e-3, batch 128, 30 epochs (the
    stage-1 batch size and epoch count; a fresh linear layer on fixed features needs the
    larger learning rate, measured in ../shared/NOTES.md)."""

    method: str = "retrain"
    loss: str = "ce"
    sampler: str | None = None  # None: class-balanced for crt and lws, instance otherwise
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    views: int = 0  # augmented copies of the train features (0: the plain images only)
    tau: float | None = None  # None: tuned on validation where the method has a tau
    gamma: float = 1.0
    beta: float | None = None  # None: the stage-1 run's --decay-value under the cb-beta reading, else 0.9999
    seed: int = 0

    def validate(self) -> None:
        check_choice("method", self.method, STAGE2_METHODS)
        check_choice("loss", self.loss, STAGE2_LOSSES)
        if self.sampler is not None:
            check_choice("sampler", self.sampler, SAMPLERS)
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        check_float("lr", self.lr, 0.0, low_open=True)
        check_int("views", self.views, 0, 64)
        if self.tau is not None:
            check_float("tau", self.tau, 0.0, 100.0)
        check_float("gamma", self.gamma, 0.0, 100.0)
        if self.beta is not None:
            check_float("beta", self.beta, 0.0, 1.0, high_open=True)
        check_int("seed", self.seed, 0, MAX_SEED)

    @property
    def resolved_sampler(self) -> str:
        if self.sampler is not None:
            return self.sampler
        return "class-balanced" if self.loss == "crt" or self.method == "lws" else "instance"


# ---------------------------------------------------------------- longtail predict

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


# ---------------------------------------------------------------- comparing recorded settings


def from_record(cls, record: dict):
    """The config dataclass ``cls`` of a recorded run (``run.json``'s ``config``), which must name
    every field: a record that lacks one was not written by this version."""
    missing = sorted({f.name for f in dataclasses.fields(cls)} - set(record))
    if missing:
        raise LongtailError(f"the recorded settings lack {', '.join(missing)}")
    return cls(**record)


def config_differences(stored: dict, current) -> dict[str, tuple]:
    """``{field: (recorded, requested)}`` for every setting of ``current`` (a config dataclass)
    that the record ``stored`` (its ``asdict``) does not match; a field it lacks differs from any
    request (recorded as None)."""
    missing = object()
    return {
        name: (None if stored.get(name, missing) is missing else stored[name], value)
        for name, value in dataclasses.asdict(current).items()
        if stored.get(name, missing) != value
    }


def describe_differences(differences: dict[str, tuple]) -> str:
    return ", ".join(f"{name}: recorded {old!r}, requested {new!r}" for name, (old, new) in differences.items())


# ---------------------------------------------------------------- presets of `longtail reproduce`


@dataclass(frozen=True)
class Preset:
    """Stage-1 settings of a preset; everything else is the study's (Adam, lr 1e-4, batch 128)."""

    image_size: int
    epochs: int
    reason: str
    lr_schedule: str = "constant"
    freeze_blocks: int = 0


PRESETS = {
    # The study's recipe: pretrained B0 at 224 px, 30 epochs, constant lr; the test size is the
    # training size unless validation says otherwise. About 25 min per epoch on 2 CPU cores, so it
    # is meant for a GPU.
    "seed": Preset(224, 30, "the study's recipe: 224 px, 30 epochs (GPU)"),
    # The configuration whose whole study (baseline + Reweight stage-1 runs, features, all
    # stage-2 heads, evaluation) fits 60 minutes on the slower of our 2-core machines with the
    # best validation accuracy we measured: 64 px for 8 epochs, tested at the size validation
    # picks, with one named deviation from the study's recipe: a cosine learning rate (peak 1e-4),
    # because at a constant 1e-4 the final weights' accuracy swings by 3-5 points from one epoch
    # to the next. Chosen by measurement: RESULTS.md ("Where the CPU-minutes go").
    "cpu": Preset(
        64,
        8,
        "64 px, 8 epochs, cosine lr (a named deviation), test size chosen on validation: fits 60 min on 2 CPU cores",
        lr_schedule="cosine",
    ),
    # A first look in about five minutes: the whole long-tailed training set for one epoch at
    # 32 px, the test size chosen on validation. Chosen by measurement (RESULTS.md, "The smoke
    # preset"): 200 images in the head class taught nothing (10% top-1), 2,500 stayed under 30%.
    "smoke": Preset(32, 1, "the full long-tailed set, 1 epoch at 32 px: the study's pattern in ~5 minutes"),
}

# What `longtail reproduce` runs when --preset and --seeds are not given (``longtail.study.reproduce``'s
# defaults; tests/test_cli_options.py checks the two agree).
DEFAULT_PRESET = "cpu"
DEFAULT_SEEDS = (0,)


def study_config(preset: str, *, data, weights: str, imbalance: float | str, given: dict) -> TrainConfig:
    """The stage-1 settings shared by every run of a study: the preset's, with ``given`` (any
    ``TrainConfig`` field) overriding them. A --size-schedule given alone sets the epochs and the
    image size."""
    check_choice("preset", preset, PRESETS)
    chosen = PRESETS[preset]
    settings = {
        "image_size": chosen.image_size,
        "epochs": chosen.epochs,
        "lr_schedule": chosen.lr_schedule,
        "freeze_blocks": chosen.freeze_blocks,
    }
    if given.get("size_schedule") is not None and not {"epochs", "image_size"} & given.keys():
        stages = parse_size_schedule(given["size_schedule"])
        settings.update(epochs=sum(e for _, e in stages), image_size=stages[-1][0])
    unknown = sorted(set(given) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise LongtailError(f"unknown study settings {unknown}")
    config = TrainConfig(data=data, weights=weights, imbalance=imbalance, **{**settings, **given})
    config.validate()
    return config
