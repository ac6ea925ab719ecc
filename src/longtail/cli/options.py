"""The options several commands share (the data and its split, the starting weights, stage-1
training, test priors, a target prior), and the defaults the help texts state.

An option not given is None, so that the configuration dataclasses (``longtail.config``) hold
every default; the help texts state them from there (``stated_default``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from longtail.choices import (
    BN_MODES,
    DECAY_READINGS,
    DEVICES,
    GROUPINGS,
    LR_SCHEDULES,
    NATURAL_IMBALANCE,
    PROFILES,
    STRATEGIES,
    TTA_MODES,
)
from longtail.config import MAX_FREEZE_BLOCKS, TrainConfig, parse_imbalance, parse_test_size
from longtail.priors import DEFAULT_TEST_PRIORS_TEXT, parse_target_prior, parse_test_priors


def shown_value(value) -> str:
    """A default as the help texts show it: 0.0001, 100, 0.9999, auto."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def stated_default(cls, name: str) -> str:
    """``"default VALUE"`` of the field ``name`` of the dataclass ``cls`` (its ``DEFAULTS`` entry,
    for a field that is None until resolved): where the help texts take every default they state,
    so that they cannot drift from the configuration."""
    return f"default {shown_value(getattr(cls, 'DEFAULTS', {}).get(name, getattr(cls, name)))}"


def add_data_options(parser: argparse.ArgumentParser, *, seed: bool = True) -> None:
    """The options of the data and its split, shared by data, train and reproduce (``seed``: with --seed)."""
    parser.add_argument(
        "--data",
        help="an .npz, an image folder ROOT/train/<class>/* (ROOT/test/<class>/* optional), a .tar.gz of one, a "
        "torchvision CIFAR-10/100 root, or with --train-list the folder ROOT its paths start from "
        "(default: $LONGTAIL_DATA)",
    )
    parser.add_argument(
        "--train-list",
        metavar="FILE",
        help="a list source: the training images, one 'relative/path label' line each (# comments and blank lines "
        "ignored, labels any non-negative integers), read under --data ROOT and decoded once into a memory-mapped "
        "store (default: none, --data is the whole source)",
    )
    parser.add_argument(
        "--val-list",
        metavar="FILE",
        help="with --train-list: the validation split, instead of one held out of the training images "
        "(default: none, --val-per-class or --val-fraction holds one out)",
    )
    parser.add_argument(
        "--test-list",
        metavar="FILE",
        help="with --train-list: the test split (default: none, --test-fraction holds one out)",
    )
    parser.add_argument(
        "--class-names",
        dest="class_names_file",
        metavar="FILE",
        help="with --train-list: 'LABEL NAME' lines naming the lists' labels (default: each class is named by its "
        "label)",
    )
    parser.add_argument(
        "--imbalance",
        type=parse_imbalance,
        help=f"imbalance factor n_max/n_min of the long-tailed subset ({stated_default(TrainConfig, 'imbalance')}; "
        f"{NATURAL_IMBALANCE} for a list source), or {NATURAL_IMBALANCE}: keep every image of each class as the "
        "data has it",
    )
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        metavar="PROFILE",
        help=f"long-tail profile of the class counts: %(choices)s ({stated_default(TrainConfig, 'profile')})",
    )
    parser.add_argument("--max-per-class", type=int, help="head-class count n_max (default: the smallest class's size)")
    parser.add_argument(
        "--val-per-class",
        type=int,
        help=f"validation images held out per class ({stated_default(TrainConfig, 'val_per_class')}, 0 with "
        "--val-list; 0 keeps the standard counts)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        help="instead of --val-per-class: hold out this share of each class (at least one image), for small classes "
        "(default: none, --val-per-class applies)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        help="for data without a test split: hold out this share of each class (at least one image) as the test "
        "split, the same for every run on the data (default: none, the data's own test split)",
    )
    parser.add_argument(
        "--store-size",
        type=int,
        help="image folders and list sources: decode every image to SxS px (shorter side scaled to S, then "
        "centre-cropped); default: the images' own size if they all are one square size, else their median shorter "
        "side within 32..64",
    )
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        default=None,
        help="image folders and list sources: leave out files that are not readable images, or listed files that do "
        "not exist (counted in run.json), instead of failing",
    )
    parser.add_argument(
        "--groups",
        choices=GROUPINGS,
        metavar="GROUPING",
        help="many/medium/few groups of the metrics: %(choices)s (thirds: the top and bottom 30%% of classes by "
        f"training count; shots: > 100, 20-100, < 20 training images; {stated_default(TrainConfig, 'groups')})",
    )
    if seed:
        parser.add_argument(
            "--seed",
            type=int,
            help=f"seed of the subset, sampling and initialisation ({stated_default(TrainConfig, 'seed')})",
        )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="where decoded arrays and index files live (default: $LONGTAIL_CACHE or ~/.cache/longtail)",
    )


def add_weights_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights",
        help="the starting weights: imagenet (torchvision's, downloaded once), none (random initialisation) or an "
        f"EfficientNet-B0 state-dict file ({stated_default(TrainConfig, 'weights')})",
    )


def add_deviation_options(parser: argparse.ArgumentParser, stated: str | None = None) -> None:
    """Stage 1's named deviations that regularise: weight decay, a weight average, mixing images,
    random-resized crops.
    ``stated``: the default the help states (the configuration's unless given, e.g. a preset's)."""

    def default(name: str, meaning: str) -> str:
        return stated or f"{stated_default(TrainConfig, name)}: {meaning}"

    parser.add_argument(
        "--weight-decay",
        type=float,
        help="decoupled weight decay (AdamW) of the trained convolution and linear weights: each step shrinks them "
        f"by lr x this; a deviation from the study ({default('weight_decay', 'none')})",
    )
    parser.add_argument(
        "--ema-decay",
        type=float,
        help="evaluate and save an exponential moving average of the weights with this decay, in (0, 1), instead "
        f"of the last step's; a deviation from the study ({stated or 'default: none'})",
    )
    parser.add_argument(
        "--mixup",
        type=float,
        metavar="ALPHA",
        help="mixup of the training images, lam ~ Beta(ALPHA, ALPHA); a deviation from the study "
        f"({default('mixup', 'off')})",
    )
    parser.add_argument(
        "--cutmix",
        type=float,
        metavar="ALPHA",
        help="CutMix of the training images, lam ~ Beta(ALPHA, ALPHA); a deviation from the study "
        f"({default('cutmix', 'off')})",
    )
    parser.add_argument(
        "--random-resized-crop",
        type=float,
        metavar="MIN_SCALE",
        help="random-resized crops of the training images instead of the pad-4 crop (0: none): each covers a share in "
        "[MIN_SCALE, 1] of the image's area, aspect ratio 3/4 to 4/3, mirrored for half, resized to the input "
        f"size; a deviation from the study ({default('random_resized_crop', 'off, the pad-4 crop')})",
    )


def add_train_options(parser: argparse.ArgumentParser) -> None:
    add_weights_option(parser)
    parser.add_argument(
        "--image-size",
        type=int,
        help=f"training input size; 32-px images are upsampled ({stated_default(TrainConfig, 'image_size')}, or the "
        "schedule's last size)",
    )
    parser.add_argument(
        "--epochs", type=int, help=f"training epochs ({stated_default(TrainConfig, 'epochs')}, or the schedule's total)"
    )
    parser.add_argument(
        "--size-schedule",
        help="progressive resizing: SIZE:EPOCHS,... in order, e.g. 48:4,64:3 (sets --epochs and --image-size; "
        "default: none, --image-size throughout)",
    )
    parser.add_argument(
        "--test-size",
        type=parse_test_size,
        help="input size of the test metrics and stage-2 features: auto (chosen on the validation split, "
        "the training size and up to three 16-px steps above it, at most 1.5x), train (the training size) or a "
        "number of pixels "
        f"({stated_default(TrainConfig, 'test_size')})",
    )
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        metavar="MODE",
        help="test-time augmentation, reported beside the plain metrics: %(choices)s; flip averages each image's "
        f"logits with its mirror's ({stated_default(TrainConfig, 'tta')})",
    )
    parser.add_argument("--batch-size", type=int, help=f"images per step ({stated_default(TrainConfig, 'batch_size')})")
    parser.add_argument(
        "--lr",
        type=float,
        help=f"Adam's learning rate, the peak under a schedule ({stated_default(TrainConfig, 'lr')})",
    )
    parser.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        metavar="SCHEDULE",
        help="%(choices)s: constant is the study's; cosine (a deviation) warms up over the first epoch, then decays "
        f"to 0 ({stated_default(TrainConfig, 'lr_schedule')})",
    )
    parser.add_argument(
        "--decay-reading",
        choices=tuple(DECAY_READINGS),
        metavar="READING",
        help="reading of the study's 'weight decay 0.9999': "
        + "; ".join(f"{k}: {v}" for k, v in DECAY_READINGS.items())
        + f" ({stated_default(TrainConfig, 'decay_reading')})",
    )
    parser.add_argument(
        "--decay-value",
        type=float,
        help="the value of that reading: the Class-Balanced beta of the class-balanced losses (cb-beta, also "
        "stage 2's default beta and LDAM-DRW's), the weight decay (l2, adamw) or the EMA decay (ema) "
        f"({stated_default(TrainConfig, 'decay_value')})",
    )
    parser.add_argument(
        "--bn",
        choices=BN_MODES,
        metavar="MODE",
        help="BatchNorm handling: %(choices)s; frozen keeps the running statistics (eval mode), reestimate "
        "re-estimates them on training images first, train is ordinary BatchNorm, auto is frozen for folded "
        f"checkpoints and train otherwise ({stated_default(TrainConfig, 'bn')})",
    )
    parser.add_argument(
        "--strategy",
        choices=tuple(STRATEGIES),
        metavar="STRATEGY",
        help="what is trained end to end: "
        + "; ".join(f"{name}: {description}" for name, description in STRATEGIES.items())
        + f" ({stated_default(TrainConfig, 'strategy')})",
    )
    parser.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        default=None,
        help="no crop/flip augmentation (default: augment)",
    )
    parser.add_argument(
        "--freeze-blocks",
        type=int,
        help="keep EfficientNet-B0's features[0:K] fixed at their loaded weights: no gradient, no optimizer state, "
        f"eval mode (0-{MAX_FREEZE_BLOCKS}; {stated_default(TrainConfig, 'freeze_blocks')}: full fine-tuning)",
    )
    add_deviation_options(parser)
    parser.add_argument(
        "--deterministic", action="store_true", default=None, help="bit-for-bit repeatable (slower; default off)"
    )
    add_device_options(parser)


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """Where the training runs and whether its model is compiled (``train`` and ``reproduce``): how a
    run executes, not what it trains (``config.SESSION_FIELDS``)."""
    parser.add_argument(
        "--device",
        choices=DEVICES,
        metavar="DEVICE",
        help=f"%(choices)s; auto is cuda where there is one, else cpu ({stated_default(TrainConfig, 'device')})",
    )
    parser.add_argument(
        "--compile", action="store_true", default=None, help="torch.compile the training step's model (default off)"
    )


def add_test_priors_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--test-priors",
        type=parse_test_priors,
        metavar="NAME,...",
        help="also give the metrics under these class priors of the world the classifier is deployed to "
        "(metrics.json's under_prior; exact re-weighting of the test confusion matrix): uniform, train (the "
        "training split's frequencies), forward-N or backward-N (a long tail of imbalance N >= 1 in the training "
        "order, or reversed), or the path of a file of per-class weights "
        f"(default {DEFAULT_TEST_PRIORS_TEXT})",
    )


def add_target_prior_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--target-prior",
        type=parse_target_prior,
        metavar="NAME",
        help=f"serve {what} under this class prior (a --test-priors name or weights file): its logits shifted by "
        "tau (log prior - log the prior it is calibrated to), tau chosen on the validation split re-weighted to "
        "that prior, 0 unless it helps there (default: none, the logits as trained)",
    )
