"""The settings of a stage-1 run (``TrainConfig``) and their validation."""

from __future__ import annotations

import math
from dataclasses import dataclass

from longtail.choices import (
    BN_MODES,
    DECAY_READINGS,
    DEFAULT_DECAY_READING,
    DEVICES,
    GROUPINGS,
    LR_SCHEDULES,
    NATURAL_IMBALANCE,
    PROFILES,
    STRATEGIES,
    TTA_MODES,
)
from longtail.config.checks import (
    MAX_IMAGE_SIZE,
    MAX_SEED,
    MIN_IMAGE_SIZE,
    TEST_SIZE_MODES,
    check_choice,
    check_float,
    check_int,
    parse_size_schedule,
    size_schedule_span,
)
from longtail.config.records import config_differences
from longtail.errors import LongtailError

# --freeze-blocks: EfficientNet-B0's features[0:K] can be kept fixed, K up to 8 (the stem and the seven
# MBConv stages; features[8], the last 1x1 convolution, and the classifier always train).
MAX_FREEZE_BLOCKS = 8
# Stored size of decoded image folders (``--store-size``): down to 16 px (smaller than the model's
# input, which upsamples), up to the largest input size.
MIN_STORE_SIZE, MAX_STORE_SIZE = 16, MAX_IMAGE_SIZE
# The options of a list source that need --train-list, by TrainConfig field.
LIST_OPTIONS = {"val_list": "--val-list", "test_list": "--test-list", "class_names_file": "--class-names"}
# The TrainConfig fields that say where and how a session runs, not what it trains: a run resumes,
# and a study reuses it, whatever they were (run.json records each session's: ``sessions``).
SESSION_FIELDS = ("device", "compile")
# The TrainConfig fields the data options set; an option not given leaves the config's default.
DATA_FIELDS = (
    "imbalance",
    "profile",
    "max_per_class",
    "val_per_class",
    "val_fraction",
    "test_fraction",
    "store_size",
    "skip_bad_images",
    "groups",
    "train_list",
    "val_list",
    "test_list",
    "class_names_file",
)


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
    # Named deviations of stage 1, each tuned on validation (RESULTS.md, "Round 3"): decoupled weight
    # decay of the trained convolution and linear weights (AdamW), an exponential moving average of the
    # weights (evaluated and saved instead of the last step's), and mixing images (longtail.mixing).
    weight_decay: float = 0.0
    ema_decay: float | None = None
    mixup: float = 0.0  # alpha of mixup's Beta(alpha, alpha); 0: off
    # Random-resized crops of the (upsampled) images instead of the pad-4 crop: the smallest share of
    # the image's area a crop covers (longtail.data.transforms.random_crop_boxes); 0: off.
    random_resized_crop: float = 0.0
    cutmix: float = 0.0  # alpha of CutMix's Beta(alpha, alpha); 0: off
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
        self._validate_deviations()
        if self.freeze_blocks and self.weights == "none":
            raise LongtailError(
                f"--freeze-blocks {self.freeze_blocks} keeps B0's first {self.freeze_blocks} blocks at their "
                "pretrained weights, and --weights none has none (the blocks would stay random): pass pretrained "
                "--weights (imagenet or a file), or --freeze-blocks 0 (also where a `longtail reproduce` preset "
                "freezes blocks)"
            )
        if self.freeze_blocks and self.bn == "reestimate":
            raise LongtailError(
                f"--bn reestimate re-estimates the BatchNorm statistics of the {self.freeze_blocks} blocks "
                "--freeze-blocks keeps fixed: use --bn frozen (or train), or leave --freeze-blocks out"
            )
        if self.size_schedule is not None:
            span = size_schedule_span(self.size_schedule)
            if span != {"epochs": self.epochs, "image_size": self.image_size}:
                raise LongtailError(
                    f"--size-schedule {self.size_schedule} has {span['epochs']} epochs ending at {span['image_size']} "
                    f"px, but --epochs is {self.epochs} and --image-size {self.image_size}: leave those two out or "
                    "make them agree"
                )
        if self.test_size not in TEST_SIZE_MODES:
            check_int("test_size", self.test_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)

    def _validate_deviations(self) -> None:
        """Weight decay, the weight average, mixing and random-resized crops, each given once."""
        check_float("weight_decay", self.weight_decay, 0.0)
        if self.weight_decay and self.decay_reading in ("l2", "adamw"):
            raise LongtailError(
                f"--weight-decay {self.weight_decay:g} and --decay-reading {self.decay_reading} both set a weight "
                "decay: give one of them"
            )
        if self.ema_decay is not None:
            check_float("ema_decay", self.ema_decay, 0.0, 1.0, low_open=True, high_open=True)
            if self.decay_reading == "ema":
                raise LongtailError(
                    f"--ema-decay {self.ema_decay:g} and --decay-reading ema both average the weights: give one of "
                    "them"
                )
        check_float("mixup", self.mixup, 0.0)
        check_float("cutmix", self.cutmix, 0.0)
        if self.mixup and self.cutmix:
            raise LongtailError("--mixup and --cutmix both mix the training images: give one of them")
        check_float("random_resized_crop", self.random_resized_crop, 0.0, 1.0)
        if self.random_resized_crop and not self.augment:
            raise LongtailError(
                f"--random-resized-crop {self.random_resized_crop:g} augments the training images and "
                "--no-augment turns augmentation off: give one of them (--random-resized-crop 0 is off)"
            )

    @property
    def averaging_decay(self) -> float | None:
        """The decay of the weights' exponential moving average: --ema-decay, or --decay-value under
        --decay-reading ema; None: the last step's weights are the run's."""
        return self.decay_value if self.decay_reading == "ema" else self.ema_decay

    @property
    def mixing(self) -> tuple[str, float] | None:
        """``(name, alpha)`` of the mixing of the training images (``longtail.mixing``), or None."""
        if self.mixup:
            return "mixup", self.mixup
        if self.cutmix:
            return "cutmix", self.cutmix
        return None

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


def training_differences(stored: dict, config: TrainConfig) -> dict[str, tuple]:
    """``config_differences`` of a recorded stage-1 config and a requested one, but for the
    ``SESSION_FIELDS`` (the device and ``--compile``), which change nothing that is trained."""
    differences = config_differences(stored, config)
    for name in SESSION_FIELDS:
        differences.pop(name, None)
    return differences
