"""Command line: argument parsing only; every command calls the library.

Every bad value ends in one line on stderr (``longtail: error: ...``) and exit code 2. An option
not given is not passed on: the configuration dataclasses (``longtail.config``) hold every
default, and the help texts show them from there.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from longtail.choices import (
    BN_MODES,
    DECAY_READINGS,
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
from longtail.config import (
    DEFAULT_PRESET,
    DEFAULT_SEEDS,
    DEFAULT_TOP_K,
    MAX_FREEZE_BLOCKS,
    MAX_SEED,
    PRESETS,
    Stage2Config,
    TrainConfig,
    check_int,
    check_prediction_options,
    parse_feature_size,
    parse_imbalance,
    parse_size_schedule,
    parse_test_size,
    study_config,
)
from longtail.errors import LongtailError
from longtail.priors import DEFAULT_TEST_PRIORS_TEXT, parse_target_prior, parse_test_priors

DESCRIPTION = (
    "Long-tailed image classification with EfficientNet-B0 (CIFAR-10-LT, or your own images): see how a data "
    "set splits into a long tail, train a network on it end to end, fit new classifiers on its frozen features, "
    "run the whole study with a report, and classify new images with a finished run."
)


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line and name the command's --help."""

    def error(self, message: str):
        raise LongtailError(f"{message} (see `{self.prog} --help`)")


def _shown(value) -> str:
    """A default as the help texts show it: 0.0001, 100, 0.9999, auto."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _default(cls, name: str) -> str:
    """``"default VALUE"`` of the field ``name`` of the dataclass ``cls`` (its ``DEFAULTS`` entry,
    for a field that is None until resolved): where the help texts take every default they state,
    so that they cannot drift from the configuration."""
    return f"default {_shown(getattr(cls, 'DEFAULTS', {}).get(name, getattr(cls, name)))}"


def _given(args, names) -> dict:
    """The options among ``names`` that were given (an option not given is None)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _fields(cls) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))


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
# The study-wide TrainConfig fields `longtail reproduce` overrides (the preset's, or the config's).
STUDY_FIELDS = (
    "epochs",
    "image_size",
    "size_schedule",
    "test_size",
    "lr_schedule",
    "tta",
    "decay_reading",
    "freeze_blocks",
)


def _add_data_options(parser: argparse.ArgumentParser, *, seed: bool = True) -> None:
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
        help=f"imbalance factor n_max/n_min of the long-tailed subset ({_default(TrainConfig, 'imbalance')}; "
        f"{NATURAL_IMBALANCE} for a list source), or {NATURAL_IMBALANCE}: keep every image of each class as the "
        "data has it",
    )
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        metavar="PROFILE",
        help=f"long-tail profile of the class counts: %(choices)s ({_default(TrainConfig, 'profile')})",
    )
    parser.add_argument("--max-per-class", type=int, help="head-class count n_max (default: the smallest class's size)")
    parser.add_argument(
        "--val-per-class",
        type=int,
        help=f"validation images held out per class ({_default(TrainConfig, 'val_per_class')}, 0 with --val-list; 0 "
        "keeps the standard counts)",
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
        f"training count; shots: > 100, 20-100, < 20 training images; {_default(TrainConfig, 'groups')})",
    )
    if seed:
        parser.add_argument(
            "--seed",
            type=int,
            help=f"seed of the subset, sampling and initialisation ({_default(TrainConfig, 'seed')})",
        )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="where decoded arrays and index files live (default: $LONGTAIL_CACHE or ~/.cache/longtail)",
    )


def _data_settings(args) -> dict:
    """The TrainConfig fields of the data options given. A --val-fraction or a --val-list replaces
    the default number of validation images per class (``TrainConfig.val_per_class``); a list
    source (--train-list) is long-tailed already, so its default imbalance is natural."""
    settings = _given(args, DATA_FIELDS)
    if "val_fraction" in settings or "val_list" in settings:
        settings.setdefault("val_per_class", 0)
    if "train_list" in settings:
        settings.setdefault("imbalance", NATURAL_IMBALANCE)
    return settings


def _add_weights_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights",
        help="the starting weights: imagenet (torchvision's, downloaded once), none (random initialisation) or an "
        f"EfficientNet-B0 state-dict file ({_default(TrainConfig, 'weights')})",
    )


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    _add_weights_option(parser)
    parser.add_argument(
        "--image-size",
        type=int,
        help=f"training input size; 32-px images are upsampled ({_default(TrainConfig, 'image_size')}, or the "
        "schedule's last size)",
    )
    parser.add_argument(
        "--epochs", type=int, help=f"training epochs ({_default(TrainConfig, 'epochs')}, or the schedule's total)"
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
        "1.0x-1.75x the training size), train (the training size) or a number of pixels "
        f"({_default(TrainConfig, 'test_size')})",
    )
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        metavar="MODE",
        help="test-time augmentation, reported beside the plain metrics: %(choices)s; flip averages each image's "
        f"logits with its mirror's ({_default(TrainConfig, 'tta')})",
    )
    parser.add_argument("--batch-size", type=int, help=f"images per step ({_default(TrainConfig, 'batch_size')})")
    parser.add_argument(
        "--lr", type=float, help=f"Adam's learning rate, the peak under a schedule ({_default(TrainConfig, 'lr')})"
    )
    parser.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        metavar="SCHEDULE",
        help="%(choices)s: constant is the study's; cosine (a deviation) warms up over the first epoch, then decays "
        f"to 0 ({_default(TrainConfig, 'lr_schedule')})",
    )
    parser.add_argument(
        "--decay-reading",
        choices=tuple(DECAY_READINGS),
        metavar="READING",
        help="reading of the study's 'weight decay 0.9999': "
        + "; ".join(f"{k}: {v}" for k, v in DECAY_READINGS.items())
        + f" ({_default(TrainConfig, 'decay_reading')})",
    )
    parser.add_argument(
        "--decay-value",
        type=float,
        help="the value of that reading: the Class-Balanced beta of the class-balanced losses (cb-beta, also "
        "stage 2's default beta and LDAM-DRW's), the weight decay (l2, adamw) or the EMA decay (ema) "
        f"({_default(TrainConfig, 'decay_value')})",
    )
    parser.add_argument(
        "--bn",
        choices=BN_MODES,
        metavar="MODE",
        help="BatchNorm handling: %(choices)s; frozen keeps the running statistics (eval mode), reestimate "
        "re-estimates them on training images first, train is ordinary BatchNorm, auto is frozen for folded "
        f"checkpoints and train otherwise ({_default(TrainConfig, 'bn')})",
    )
    parser.add_argument(
        "--strategy",
        choices=tuple(STRATEGIES),
        metavar="STRATEGY",
        help="what is trained end to end: "
        + "; ".join(f"{name}: {description}" for name, description in STRATEGIES.items())
        + f" ({_default(TrainConfig, 'strategy')})",
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
        f"eval mode (0-{MAX_FREEZE_BLOCKS}; {_default(TrainConfig, 'freeze_blocks')}: full fine-tuning)",
    )
    parser.add_argument(
        "--deterministic", action="store_true", default=None, help="bit-for-bit repeatable (slower; default off)"
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        metavar="DEVICE",
        help=f"%(choices)s; auto is cuda where there is one, else cpu ({_default(TrainConfig, 'device')})",
    )
    parser.add_argument("--compile", action="store_true", default=None, help="torch.compile the model (default off)")


def _add_test_priors_option(parser: argparse.ArgumentParser) -> None:
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


def _add_target_prior_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--target-prior",
        type=parse_target_prior,
        metavar="NAME",
        help=f"serve {what} under this class prior (a --test-priors name or weights file): its logits shifted by "
        "tau (log prior - log the prior it is calibrated to), tau chosen on the validation split re-weighted to "
        "that prior, 0 unless it helps there (default: none, the logits as trained)",
    )


def _command(commands, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose one-line summary is both its line in `longtail --help` and the start of its own --help."""
    return commands.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="longtail", description=DESCRIPTION)
    commands = parser.add_subparsers(
        title="commands",
        dest="command",
        required=True,
        parser_class=_Parser,
        metavar="COMMAND",
        help="`longtail COMMAND --help` lists its options and their defaults",
    )

    data = _command(
        commands, "data", "print the per-class counts of the training, validation and test splits, and the imbalance"
    )
    _add_data_options(data)

    train = _command(commands, "train", "stage 1: train EfficientNet-B0 end to end, then evaluate it")
    _add_data_options(train)
    _add_train_options(train)
    _add_test_priors_option(train)
    train.add_argument("--out", type=Path, required=True, help="run directory (required)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace what --out holds")

    decouple = _command(commands, "decouple", "stage 2: a new classifier on a frozen stage-1 backbone")
    decouple.add_argument("run", type=Path, metavar="RUN", help="a finished `longtail train` run (stage 1)")
    decouple.add_argument("--out", type=Path, required=True, help="run directory of this stage-2 head (required)")
    decouple.add_argument(
        "--method",
        choices=STAGE2_METHODS,
        metavar="METHOD",
        help="retrain (a new linear head trained with --loss and --sampler), tau-norm (the stage-1 classifier's "
        "weights divided by their norm to the power tau), lws (learnable weight scaling), post-hoc-la (post-hoc "
        f"logit adjustment of the stage-1 classifier) ({_default(Stage2Config, 'method')})",
    )
    decouple.add_argument(
        "--loss",
        choices=STAGE2_LOSSES,
        metavar="LOSS",
        help="loss of --method retrain: %(choices)s; modified-ce is the study's Modified CE (logit-adjusted CE, tau "
        f"tuned), crt is CE with class-balanced sampling ({_default(Stage2Config, 'loss')})",
    )
    decouple.add_argument(
        "--sampler",
        choices=SAMPLERS,
        metavar="SAMPLER",
        help="%(choices)s (default: class-balanced for crt and lws, instance otherwise)",
    )
    decouple.add_argument("--epochs", type=int, help=f"epochs of the head ({_default(Stage2Config, 'epochs')})")
    decouple.add_argument("--batch-size", type=int, help=f"features per step ({_default(Stage2Config, 'batch_size')})")
    decouple.add_argument("--lr", type=float, help=f"Adam's learning rate ({_default(Stage2Config, 'lr')})")
    decouple.add_argument(
        "--views",
        type=int,
        help=f"augmented copies of the cached train features ({_default(Stage2Config, 'views')}: the plain images "
        "only)",
    )
    decouple.add_argument("--tau", type=float, help="temperature (default: tuned on the validation split)")
    decouple.add_argument(
        "--gamma",
        type=float,
        help=f"focal gamma of focal and cb-focal ({_default(Stage2Config, 'gamma')}, or tuned with --tune)",
    )
    decouple.add_argument(
        "--beta",
        type=float,
        help="class-balanced beta (default: the stage-1 run's --decay-value under the cb-beta reading, else 0.9999; "
        "or tuned with --tune)",
    )
    decouple.add_argument(
        "--feature-size",
        type=parse_feature_size,
        help="input size of the head's features: auto (the stage-1 test size and one 16-px step either side, the "
        "best on the head's own validation accuracy), stage1 (the stage-1 test size) or a number of pixels "
        f"({_default(Stage2Config, 'feature_size')})",
    )
    decouple.add_argument(
        "--tune",
        action="store_true",
        default=None,
        help="choose the loss's gamma (focal, cb-focal) and beta (class-balanced, cb-focal) that are not given on "
        "the validation split, each over a grid as large as modified-ce's tau grid (default off: the study's fixed "
        "gamma 1 and beta)",
    )
    decouple.add_argument(
        "--seed", type=int, help=f"seed of the head's initialisation and sampling ({_default(Stage2Config, 'seed')})"
    )
    _add_target_prior_option(decouple, "the head")
    _add_test_priors_option(decouple)
    decouple.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    decouple.add_argument(
        "--cache-dir",
        type=Path,
        help="where the stage-1 run's data and features are cached (default: $LONGTAIL_CACHE or ~/.cache/longtail)",
    )

    reproduce = _command(commands, "reproduce", "the whole study in one command, with a report")
    reproduce.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default=DEFAULT_PRESET,
        metavar="PRESET",
        help="; ".join(f"{name}: {preset.reason}" for name, preset in PRESETS.items()) + f" (default {DEFAULT_PRESET})",
    )
    _add_data_options(reproduce, seed=False)
    reproduce.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(DEFAULT_SEEDS),
        help="the seeds of the study's runs, each a run of every strategy (default "
        + " ".join(map(str, DEFAULT_SEEDS))
        + ")",
    )
    reproduce.add_argument("--extras", action="store_true", help="add the strategies beyond the study")
    _add_weights_option(reproduce)
    reproduce.add_argument(
        "--decay-reading",
        choices=tuple(DECAY_READINGS),
        metavar="READING",
        help="the reading of 'weight decay 0.9999': %(choices)s, as for train "
        f"({_default(TrainConfig, 'decay_reading')})",
    )
    reproduce.add_argument("--epochs", type=int, help="stage-1 epochs (default: the preset's)")
    reproduce.add_argument("--image-size", type=int, help="stage-1 training size (default: the preset's)")
    reproduce.add_argument(
        "--size-schedule", help="progressive resizing, SIZE:EPOCHS,... as for train (default: the preset's)"
    )
    reproduce.add_argument(
        "--test-size", type=parse_test_size, help="auto, train or a number of pixels (default: the preset's)"
    )
    reproduce.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        metavar="SCHEDULE",
        help="%(choices)s (default: the preset's)",
    )
    reproduce.add_argument(
        "--tta",
        choices=TTA_MODES,
        metavar="MODE",
        help=f"%(choices)s: flip adds rows of its own, beside the study's ({_default(TrainConfig, 'tta')})",
    )
    reproduce.add_argument(
        "--freeze-blocks",
        type=int,
        help=f"B0's features[0:K] kept fixed, 0-{MAX_FREEZE_BLOCKS} (default: the preset's)",
    )
    _add_test_priors_option(reproduce)
    reproduce.add_argument(
        "--out", type=Path, required=True, help="the study's directory: its runs, results.md and report.html (required)"
    )
    reproduce.add_argument(
        "--overwrite", action="store_true", help="retrain every run under --out (whatever settings they had)"
    )

    evaluate = _command(commands, "evaluate", "recompute a finished run's metrics: RUN/metrics.json and RUN/figures/")
    evaluate.add_argument(
        "run", type=Path, metavar="RUN", help="a finished `longtail train` or `longtail decouple` run"
    )
    evaluate.add_argument(
        "--cache-dir",
        type=Path,
        help="where the run's data is cached (default: $LONGTAIL_CACHE or ~/.cache/longtail)",
    )
    _add_test_priors_option(evaluate)

    predict = _command(
        commands, "predict", "classify image files or folders with a finished run (or a stage-2 head fitted on it)"
    )
    predict.add_argument("run", type=Path, metavar="RUN", help="a finished `longtail train` run (stage 1)")
    predict.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="image files, or folders of them")
    predict.add_argument(
        "--head", type=Path, help="a `longtail decouple` run fitted on RUN: classify with its head (default: RUN's own)"
    )
    predict.add_argument(
        "--out",
        type=Path,
        help="write the predictions to this .csv or .json file (default: CSV on stdout)",
    )
    predict.add_argument(
        "--top-k", type=int, help=f"classes listed per image (default {DEFAULT_TOP_K}, or all if fewer)"
    )
    _add_target_prior_option(predict, "the classifier (the run's, or --head's)")
    return parser


def _command_data(args) -> None:
    config = TrainConfig(**_given(args, ("data", "seed")), **_data_settings(args))
    config.validate()
    from longtail.data import listed, load_dataset
    from longtail.summary import split_summary

    dataset = load_dataset(config, pretrained=False, cache_dir=args.cache_dir)
    arrays, split = dataset.arrays, dataset.split
    summary = split_summary(dataset, config.groups)
    height, width = arrays.image_shape
    print(f"source: {arrays.source} (sha256 {arrays.fingerprint[:16]}...), images stored at {height}x{width} px")
    if arrays.store_file is not None:
        print(f"images memory-mapped from {arrays.store_file} (read batch by batch, never loaded whole)")
    if arrays.skipped:
        print(f"left out {len(arrays.skipped)} unreadable image file(s) (--skip-bad-images): {listed(arrays.skipped)}")
    shape = (
        "natural imbalance (every image kept)"
        if config.imbalance == NATURAL_IMBALANCE
        else f"profile {config.profile}, imbalance {config.imbalance:g}"
    )
    print(f"{shape}, seed {config.seed}, index file {split.index_file}")
    name_width = max(5, *(len(row["name"]) for row in summary["classes"]))
    print(f"{'':>3} {'class':<{name_width}} {'profile':>8} {'train':>8} {'val':>6} {'test':>6}  {config.groups} group")
    for row in summary["classes"]:
        print(
            f"{row['class']:>3} {row['name']:<{name_width}} {row['profile']:>8} {row['train']:>8} "
            f"{row['val']:>6} {row['test']:>6}  {row['group']}"
        )
    total = summary["total"]
    print(
        f"{'':>3} {'total':<{name_width}} {total['profile']:>8} {total['train']:>8} "
        f"{total['val']:>6} {total['test']:>6}"
    )
    print(
        f"imbalance factor of the training counts: {summary['imbalance_factor']:.1f} "
        f"({summary['most']} / {summary['fewest']})"
    )
    if split.test is None:
        print(f"test: {total['test']} images, the source's own test split")
    else:
        print(
            f"test: {total['test']} images held out of the training images "
            f"(--test-fraction {config.test_fraction:g}, stratified, the same for every run on this data)"
        )


def _train_config(args) -> TrainConfig:
    """The stage-1 config of the train options given, validated. A --size-schedule sets --epochs
    and --image-size when they are not given."""
    settings = {**_given(args, _fields(TrainConfig)), **_data_settings(args)}
    if "size_schedule" in settings:
        stages = parse_size_schedule(settings["size_schedule"])
        settings.setdefault("image_size", stages[-1][0])
        settings.setdefault("epochs", sum(epochs for _, epochs in stages))
    config = TrainConfig(**settings)
    config.validate()
    return config


def _command_train(args) -> None:
    from longtail.train import train

    out = train(
        _train_config(args),
        args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        cache_dir=args.cache_dir,
        **_given(args, ("test_priors",)),
    )
    print(f"finished: {out} (metrics in {out / 'metrics.json'})")


def _stage2_config(args) -> Stage2Config:
    """The stage-2 config of the decouple options given, validated."""
    config = Stage2Config(**_given(args, _fields(Stage2Config)))
    config.validate()
    return config


def _command_decouple(args) -> None:
    config = _stage2_config(args)
    from longtail.decouple import decouple

    metrics = decouple(
        args.run,
        config,
        args.out,
        overwrite=args.overwrite,
        cache_dir=args.cache_dir,
        **_given(args, ("test_priors", "target_prior")),
    )
    _print_summary(metrics, args.out)


def _command_reproduce(args) -> None:
    data_settings = _data_settings(args)
    imbalance = data_settings.pop("imbalance", TrainConfig.imbalance)
    weights = args.weights if args.weights is not None else TrainConfig.weights
    settings = _given(args, STUDY_FIELDS)
    study_config(args.preset, data=args.data, weights=weights, imbalance=imbalance, given={**settings, **data_settings})
    for seed in args.seeds:
        check_int("seeds", seed, 0, MAX_SEED)
    from longtail.study import reproduce

    results = reproduce(
        args.out,
        preset=args.preset,
        seeds=tuple(args.seeds),
        imbalance=imbalance,
        extras=args.extras,
        data=args.data,
        weights=weights,
        overwrite=args.overwrite,
        cache_dir=args.cache_dir,
        overrides={**settings, **data_settings},
        **_given(args, ("test_priors",)),
    )
    for name, entry in results["strategies"].items():
        std = entry["std"]["accuracy"]  # the sample std; one seed has none
        spread = f"± {100 * std:.2f}" if std is not None else "(1 seed)"
        print(f"{name:<34} top-1 {100 * entry['mean']['accuracy']:6.2f} {spread}")
    print(f"report: {args.out / 'report.html'}, table: {args.out / 'results.md'}")


def _print_summary(metrics: dict, run_dir: Path) -> None:
    groups = "/".join("—" if value is None else f"{value:.3f}" for value in metrics["groups"].values())
    print(
        f"accuracy {metrics['accuracy']:.4f}, balanced accuracy {metrics['balanced_accuracy']:.4f}, "
        f"{'/'.join(metrics['groups'])} {groups} -> {run_dir / 'metrics.json'}"
    )


def _command_evaluate(args) -> None:
    from longtail.runs import RUN_FILE, RunLock, read_json

    run_file = args.run / RUN_FILE
    if not run_file.exists():
        raise LongtailError(f"{args.run} is not a longtail run directory (no {RUN_FILE})")
    record = read_json(run_file)
    if isinstance(record, dict) and record.get("kind") == "decouple":
        from longtail.decouple import evaluate_decoupled as evaluate
    else:
        from longtail.evaluation import evaluate_run as evaluate
    from longtail.report import write_run_figures

    with RunLock(args.run):
        metrics = evaluate(args.run, cache_dir=args.cache_dir, **_given(args, ("test_priors",)))
        write_run_figures(metrics, args.run)
    _print_summary(metrics, args.run)


def _command_predict(args) -> None:
    check_prediction_options(args.out, args.top_k)
    from longtail.prediction import predict, write_predictions

    predictions = predict(args.run, args.paths, head=args.head, top_k=args.top_k, target_prior=args.target_prior)
    for _, why in predictions.failed:
        print(f"longtail: skipped {why}", file=sys.stderr)
    if predictions.target_prior is not None:
        adjustment = predictions.target_prior
        print(
            f"longtail: logits adjusted to the prior {adjustment['name']} (tau {adjustment['tau']:g}, chosen on the "
            "validation split)",
            file=sys.stderr,
        )
    write_predictions(predictions, args.out)
    if args.out is not None:
        print(f"classified {len(predictions.paths)} images -> {args.out}")


COMMANDS = {
    "data": _command_data,
    "train": _command_train,
    "decouple": _command_decouple,
    "reproduce": _command_reproduce,
    "evaluate": _command_evaluate,
    "predict": _command_predict,
}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        COMMANDS[args.command](args)
    except LongtailError as error:
        message = " ".join(part.strip() for part in str(error).splitlines() if part.strip())  # always one line
        print(f"longtail: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("longtail: interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
    return 0
