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
from typing import ClassVar

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
# Input size of a stage-2 head's features (``--feature-size``): "auto" (chosen on the validation split
# among the stage-1 test size and one 16-px step either side), "stage1" (the stage-1 test size) or N px.
FEATURE_SIZE_MODES = ("auto", "stage1")
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


def validation_choices(names: tuple[str, ...]) -> tuple[str, str]:
    """``(what, options)`` of the settings a head leaves to the validation split
    (``Stage2Config.chosen_on_validation``), for a message: "tau and the feature size", and the
    options that would fix them, "--tau and --feature-size stage1"."""
    what = " and ".join("the feature size" if name == "feature_size" else name for name in names)
    options = " and ".join("--feature-size stage1" if name == "feature_size" else f"--{name}" for name in names)
    return what, options


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


# ---------------------------------------------------------------- stage 2

# The methods that train something (a new head, or LWS's scales) and the options only they use.
TRAINING_METHODS = ("retrain", "lws")
TRAINING_OPTIONS = ("sampler", "epochs", "batch_size", "lr", "views", "seed")
# The knobs of each retrain loss (modified-ce is logit-adjusted CE). Balanced Softmax has none: it is
# logit-adjusted CE at tau = 1. ce, crt, inverse-frequency-ce and LDAM (s and the margin fixed at
# Cao et al.'s values) have none either.
LOSS_KNOBS = {
    "focal": ("gamma",),
    "class-balanced": ("beta",),
    "cb-focal": ("beta", "gamma"),
    "logit-adjusted": ("tau",),
    "modified-ce": ("tau",),
}
TAU_METHODS = ("tau-norm", "post-hoc-la")  # the methods with a temperature of their own
TUNABLE = ("gamma", "beta")  # the knobs --tune tunes (a temperature not given is always tuned)
_KNOB_USERS = {
    "tau": "--loss modified-ce and logit-adjusted and --method tau-norm and post-hoc-la (not given: tuned on "
    "validation)",
    "gamma": "--loss focal and cb-focal (their focusing parameter)",
    "beta": "--loss class-balanced and cb-focal (their Class-Balanced beta)",
}


@dataclass
class Stage2Config:
    """One stage-2 head. An option left None is one not given: ``resolved()`` fills in the default of
    what uses it (``DEFAULTS``) and leaves None what the method or loss does not use, and
    ``validate()`` refuses an option given that nothing uses.

    Head-training defaults: Adam lr 1e-3, batch 128, 30 epochs (the stage-1 batch size and epoch
    count; the lr is ten times stage 1's 1e-4, for a freshly initialised linear layer on fixed
    features; it is not tuned, and is the same for every loss and every tuned variant); the
    study's fixed focal gamma 1. A temperature ``tau`` not given
    is tuned on the validation split; ``tune`` tunes the loss's gamma and beta there too (those not
    given), each over a grid of its own (``longtail.decouple``)."""

    method: str = "retrain"
    loss: str | None = None  # --method retrain only: ce when not given
    sampler: str | None = None  # None: class-balanced for crt and lws, instance otherwise
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    views: int | None = None  # augmented copies of the train features (0: the plain images only)
    tau: float | None = None  # None: tuned on validation where the method or loss has a tau
    gamma: float | None = None  # None: 1.0 (the study's), or tuned with ``tune``
    beta: float | None = None  # None: the stage-1 run's --decay-value under the cb-beta reading, else 0.9999
    tune: bool = False  # tune the loss's gamma and beta that are not given on validation
    seed: int | None = None
    feature_size: int | str | None = None  # None: auto (FEATURE_SIZE_MODES)

    DEFAULTS: ClassVar[dict] = {"loss": "ce", "epochs": 30, "batch_size": 128, "lr": 1e-3, "views": 0, "gamma": 1.0,
                                "seed": 0, "feature_size": "auto"}  # fmt: skip

    def validate(self) -> None:
        """Check every value, then that every option given is used by the method and loss."""
        check_choice("method", self.method, STAGE2_METHODS)
        if self.loss is not None:
            check_choice("loss", self.loss, STAGE2_LOSSES)
        if self.sampler is not None:
            check_choice("sampler", self.sampler, SAMPLERS)
        for name, low, high in (("epochs", 1, None), ("batch_size", 1, None), ("views", 0, 64), ("seed", 0, MAX_SEED)):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), low, high)
        if self.lr is not None:
            check_float("lr", self.lr, 0.0, low_open=True)
        if self.tau is not None:
            check_float("tau", self.tau, 0.0, 100.0)
        if self.gamma is not None:
            check_float("gamma", self.gamma, 0.0, 100.0)
        if self.beta is not None:
            check_float("beta", self.beta, 0.0, 1.0, high_open=True)
        if self.feature_size is not None and self.feature_size not in FEATURE_SIZE_MODES:
            check_int("feature_size", self.feature_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        if not isinstance(self.tune, bool):
            raise LongtailError(f"--tune is a switch (True or False), got {self.tune!r}")
        unused = self._unused()
        if unused:
            raise LongtailError("; ".join(unused))

    def _what(self) -> str:
        return f"--loss {self.resolved_loss}" if self.method == "retrain" else f"--method {self.method}"

    def _unused(self) -> list[str]:
        """One sentence per option given that the method or loss does not use."""
        unused = []
        if self.method != "retrain" and self.loss is not None:
            unused.append(
                f"--loss {self.loss} is not used by --method {self.method}, which trains no new classifier"
                + (" (it fits per-class scales with cross-entropy)" if self.method == "lws" else "")
                + ": --loss is for --method retrain"
            )
        if self.method not in TRAINING_METHODS:
            for name in TRAINING_OPTIONS:
                if getattr(self, name) is not None:
                    unused.append(
                        f"{_option(name)} {getattr(self, name)} is not used by --method {self.method}, which trains "
                        f"nothing: {_option(name)} is for --method retrain and lws"
                    )
        knobs = self.knobs
        for name in ("tau", "gamma", "beta"):
            if getattr(self, name) is not None and name not in knobs:
                value = getattr(self, name)
                unused.append(f"--{name} {value:g} is not used by {self._what()}: --{name} is for {_KNOB_USERS[name]}")
        if self.tune:
            tunable = [knob for knob in knobs if knob in TUNABLE]
            if not tunable:
                why = {
                    "balanced-softmax": "balanced-softmax has no knob (it is logit-adjusted CE at tau = 1)",
                    "modified-ce": "its tau is tuned on validation whenever --tau is not given",
                    "logit-adjusted": "its tau is tuned on validation whenever --tau is not given",
                }.get(self.resolved_loss if self.method == "retrain" else None, "it has no gamma or beta")
                unused.append(
                    f"--tune is not used by {self._what()}: {why}; --tune tunes the gamma of --loss focal and "
                    "cb-focal and the beta of --loss class-balanced and cb-focal"
                )
            elif all(getattr(self, knob) is not None for knob in tunable):
                given = " and ".join(f"--{knob}" for knob in tunable)
                unused.append(f"--tune leaves nothing to tune: {given} fix every knob of {self._what()}; leave one out")
        return unused

    @property
    def trains(self) -> bool:
        """Whether the method trains anything (and so uses the sampler, epochs, lr, views and seed)."""
        return self.method in TRAINING_METHODS

    @property
    def resolved_loss(self) -> str | None:
        """The loss of a retrain head (ce when not given); None for the other methods."""
        if self.method != "retrain":
            return None
        return self.loss if self.loss is not None else self.DEFAULTS["loss"]

    @property
    def knobs(self) -> tuple[str, ...]:
        """The hyperparameters (tau, gamma, beta) the method and loss have."""
        if self.method == "retrain":
            return LOSS_KNOBS.get(self.resolved_loss, ())
        return ("tau",) if self.method in TAU_METHODS else ()

    @property
    def tuned_knobs(self) -> tuple[str, ...]:
        """The knobs chosen on the validation split: a tau not given, and with ``tune`` the gamma
        and beta not given."""
        return tuple(
            knob
            for knob in self.knobs
            if getattr(self, knob) is None and (knob == "tau" or (self.tune and knob in TUNABLE))
        )

    @property
    def resolved_sampler(self) -> str | None:
        if not self.trains:
            return None
        if self.sampler is not None:
            return self.sampler
        return "class-balanced" if self.loss == "crt" or self.method == "lws" else "instance"

    def resolved(self) -> Stage2Config:
        """What the head uses: the defaults of options not given filled in, None for every option
        the method and loss do not use (and for a knob tuned on validation, or a beta left to the
        stage-1 run). ``run.json`` records this; a study compares recorded heads in this form."""
        knobs, trains = self.knobs, self.trains

        def training(name):
            value = getattr(self, name)
            return (value if value is not None else self.DEFAULTS[name]) if trains else None

        gamma = None
        if "gamma" in knobs and "gamma" not in self.tuned_knobs:
            gamma = self.gamma if self.gamma is not None else self.DEFAULTS["gamma"]
        return Stage2Config(
            method=self.method,
            loss=self.resolved_loss,
            sampler=self.resolved_sampler,
            epochs=training("epochs"),
            batch_size=training("batch_size"),
            lr=training("lr"),
            views=training("views"),
            tau=self.tau if "tau" in knobs else None,
            gamma=gamma,
            beta=self.beta if "beta" in knobs else None,
            tune=bool(self.tune) and any(knob in TUNABLE for knob in self.tuned_knobs),
            seed=training("seed"),
            feature_size=self.feature_size if self.feature_size is not None else self.DEFAULTS["feature_size"],
        )

    @property
    def chosen_on_validation(self) -> tuple[str, ...]:
        """The options the validation split decides: the tuned knobs, and the feature size under
        ``--feature-size auto`` (the default)."""
        auto = (self.feature_size if self.feature_size is not None else self.DEFAULTS["feature_size"]) == "auto"
        return self.tuned_knobs + (("feature_size",) if auto else ())


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
    # stage-2 heads, evaluation) is meant to fit about an hour on the slower of our 2-core machines
    # with the best validation accuracy we measured: 128 px for 8 epochs with EfficientNet-B0's
    # first four blocks frozen at their ImageNet weights (--freeze-blocks 4: a named deviation from
    # the study's full fine-tuning, which buys the larger input for the same time), a cosine
    # learning rate (peak 1e-4; a named deviation: at a constant 1e-4 the final weights' accuracy
    # swings by 3-5 points from one epoch to the next), tested at the size validation picks.
    # Chosen by validation accuracy among the candidates of RESULTS.md ("Round 2"). Measured: 43 min
    # for one seed on the faster Intel Xeon; estimated about 68 min on the AMD EPYC, over the hour.
    "cpu": Preset(
        128,
        8,
        "128 px, 8 epochs, B0's first 4 blocks frozen, cosine lr (named deviations), test size chosen on "
        "validation: about an hour on 2 CPU cores",
        lr_schedule="cosine",
        freeze_blocks=4,
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
