"""Command line: argument parsing only; every command calls the library.

Every bad value ends in one line on stderr (``longtail: error: ...``) and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from longtail.choices import (
    BN_MODES,
    DECAY_READINGS,
    DEFAULT_DECAY_READING,
    GROUPINGS,
    LR_SCHEDULES,
    NATURAL_IMBALANCE,
    SAMPLERS,
    STAGE2_LOSSES,
    STAGE2_METHODS,
    STRATEGIES,
    TTA_MODES,
)
from longtail.config import (
    MAX_SEED,
    Stage2Config,
    TrainConfig,
    check_int,
    check_prediction_options,
    parse_imbalance,
    parse_size_schedule,
    parse_test_size,
    study_config,
)
from longtail.errors import LongtailError


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line and name the command's --help."""

    def error(self, message: str):
        raise LongtailError(f"{message} (see `{self.prog} --help`)")


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
)


def _add_data_options(parser: argparse.ArgumentParser, *, seed: bool = True) -> None:
    """The options of the data and its split, shared by data, train and reproduce (``seed``: with --seed)."""
    parser.add_argument(
        "--data",
        help="an .npz, an image folder ROOT/train/<class>/* (ROOT/test/<class>/* optional), a .tar.gz of one, or a "
        "torchvision CIFAR-10/100 root (default: $LONGTAIL_DATA)",
    )
    parser.add_argument(
        "--imbalance",
        type=parse_imbalance,
        help="imbalance factor n_max/n_min of the long-tailed subset (default 100), or natural: keep every image "
        "of each class as the data has it",
    )
    parser.add_argument("--profile", help="long-tail profile: exp or step (default exp)")
    parser.add_argument("--max-per-class", type=int, help="head-class count n_max (default: the smallest class's size)")
    parser.add_argument(
        "--val-per-class",
        type=int,
        help="validation images held out per class (default 50; 0 keeps the standard counts)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        help="instead of --val-per-class: hold out this share of each class (at least one image), for small classes",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        help="for data without a test split: hold out this share of each class (at least one image) as the test "
        "split, the same for every run on the data",
    )
    parser.add_argument(
        "--store-size",
        type=int,
        help="image folders: decode every image to SxS px (shorter side scaled to S, then centre-cropped); default: "
        "the images' own size if they all are one square size, else their median shorter side within 32..64",
    )
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        default=None,
        help="image folders: leave out files that are not readable images (counted in run.json) instead of failing",
    )
    parser.add_argument(
        "--groups",
        help=f"many/medium/few groups of the metrics: {' or '.join(GROUPINGS)} (thirds: the top and bottom 30%% of "
        "classes by training count, default; shots: > 100, 20-100, < 20 training images)",
    )
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="seed of the subset, sampling and initialisation")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="where decoded arrays and index files live (default: $LONGTAIL_CACHE or ~/.cache/longtail)",
    )


def _data_settings(args) -> dict:
    """The TrainConfig fields of the data options given. A --val-fraction replaces the default 50
    validation images per class."""
    settings = {name: getattr(args, name) for name in DATA_FIELDS if getattr(args, name) is not None}
    if "val_fraction" in settings:
        settings.setdefault("val_per_class", 0)
    return settings


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default="imagenet", help="imagenet, none, or a state-dict file")
    parser.add_argument(
        "--image-size", type=int, help="training input size; 32-px images are upsampled (default 32, or the schedule's)"
    )
    parser.add_argument("--epochs", type=int, help="default 30, or the schedule's total")
    parser.add_argument(
        "--size-schedule",
        help="progressive resizing: SIZE:EPOCHS,... in order, e.g. 48:4,64:3 (sets --epochs and --image-size)",
    )
    parser.add_argument(
        "--test-size",
        type=parse_test_size,
        default="auto",
        help="input size of the test metrics and stage-2 features: auto (chosen on the validation split, "
        "1.0x-1.75x the training size), train (the training size) or a number of pixels (default auto)",
    )
    parser.add_argument(
        "--tta",
        default="none",
        help=f"test-time augmentation, reported beside the plain metrics: {', '.join(TTA_MODES)} (default none)",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument(
        "--lr-schedule",
        default="constant",
        help=f"{', '.join(LR_SCHEDULES)}: constant is the study's; cosine (a deviation) warms up over the first "
        "epoch, then decays to 0",
    )
    parser.add_argument(
        "--decay-reading",
        default=DEFAULT_DECAY_READING,
        help="reading of the study's 'weight decay 0.9999': "
        + "; ".join(f"{k}: {v}" for k, v in DECAY_READINGS.items()),
    )
    parser.add_argument(
        "--decay-value",
        type=float,
        default=0.9999,
        help="the value of that reading: the Class-Balanced beta of the class-balanced losses (cb-beta, also "
        "stage 2's default beta and LDAM-DRW's), the weight decay (l2, adamw) or the EMA decay (ema)",
    )
    parser.add_argument("--bn", default="auto", help=f"BatchNorm handling: {', '.join(BN_MODES)}")
    parser.add_argument("--strategy", default="baseline", help=f"one of {', '.join(STRATEGIES)}")
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="no crop/flip augmentation")
    parser.add_argument("--deterministic", action="store_true", help="bit-for-bit repeatable (slower)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="longtail", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    data = commands.add_parser(
        "data", help="print the per-class counts of the training, validation and test splits, and the imbalance"
    )
    _add_data_options(data)

    train = commands.add_parser("train", help="stage 1: train EfficientNet-B0 end to end")
    _add_data_options(train)
    _add_train_options(train)
    train.add_argument("--out", type=Path, required=True, help="run directory")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace what --out holds")

    decouple = commands.add_parser("decouple", help="stage 2: a new classifier on a frozen stage-1 backbone")
    decouple.add_argument("run", type=Path, help="a finished `longtail train` run (stage 1)")
    decouple.add_argument("--out", type=Path, required=True, help="run directory of this stage-2 head")
    # Stage 2's options default to None, "not given" (Stage2Config.DEFAULTS has the defaults): an
    # option the method or loss does not use is refused, not silently ignored.
    decouple.add_argument("--method", default="retrain", help=", ".join(STAGE2_METHODS))
    decouple.add_argument("--loss", help=f"loss of --method retrain: {', '.join(STAGE2_LOSSES)} (default ce)")
    decouple.add_argument(
        "--sampler",
        help=f"{' or '.join(SAMPLERS)} (default: class-balanced for crt and lws, instance otherwise)",
    )
    decouple.add_argument("--epochs", type=int, help="default 30")
    decouple.add_argument("--batch-size", type=int, help="default 128")
    decouple.add_argument("--lr", type=float, help="default 1e-3")
    decouple.add_argument("--views", type=int, help="augmented copies of the cached train features (default 0)")
    decouple.add_argument("--tau", type=float, help="temperature (default: tuned on the validation split)")
    decouple.add_argument("--gamma", type=float, help="focal gamma (default 1, or tuned with --tune)")
    decouple.add_argument(
        "--beta",
        type=float,
        help="class-balanced beta (default: the stage-1 run's --decay-value under the cb-beta reading, else 0.9999; "
        "or tuned with --tune)",
    )
    decouple.add_argument(
        "--tune",
        action="store_true",
        help="choose the loss's gamma (focal, cb-focal) and beta (class-balanced, cb-focal) that are not given on "
        "the validation split, each over a grid as large as modified-ce's tau grid",
    )
    decouple.add_argument("--seed", type=int, help="default 0")
    decouple.add_argument("--overwrite", action="store_true")
    decouple.add_argument("--cache-dir", type=Path)

    reproduce = commands.add_parser("reproduce", help="the whole study in one command, with a report")
    reproduce.add_argument(
        "--preset",
        default="cpu",
        help="seed (the study's recipe, GPU), cpu (fits 60 min on 2 cores) or smoke (a first look in ~5 minutes)",
    )
    _add_data_options(reproduce, seed=False)
    reproduce.add_argument("--seeds", type=int, nargs="+", default=[0])
    reproduce.add_argument("--extras", action="store_true", help="add the strategies beyond the study")
    reproduce.add_argument("--weights", default="imagenet", help="as for train")
    reproduce.add_argument("--decay-reading", help="override the default reading of 'weight decay 0.9999'")
    reproduce.add_argument("--epochs", type=int, help="override the preset's stage-1 epochs")
    reproduce.add_argument("--image-size", type=int, help="override the preset's image size")
    reproduce.add_argument("--size-schedule", help="override the preset's size schedule (SIZE:EPOCHS,...)")
    reproduce.add_argument("--test-size", type=parse_test_size, help="override the preset's test size")
    reproduce.add_argument("--lr-schedule", help="override the preset's learning-rate schedule")
    reproduce.add_argument("--tta", help="none or flip: flip adds rows of its own, beside the study's")
    reproduce.add_argument("--out", type=Path, required=True)
    reproduce.add_argument(
        "--overwrite", action="store_true", help="retrain every run under --out (whatever settings they had)"
    )

    evaluate = commands.add_parser("evaluate", help="write RUN/metrics.json and figures")
    evaluate.add_argument("run", type=Path)
    evaluate.add_argument("--cache-dir", type=Path)

    predict = commands.add_parser(
        "predict", help="classify image files or folders with a finished run (or a stage-2 head fitted on it)"
    )
    predict.add_argument("run", type=Path, help="a finished `longtail train` run (stage 1)")
    predict.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="image files, or folders of them")
    predict.add_argument("--head", type=Path, help="a `longtail decouple` run fitted on RUN: classify with its head")
    predict.add_argument(
        "--out",
        type=Path,
        help="write the predictions to this .csv or .json file (default: CSV on stdout)",
    )
    predict.add_argument("--top-k", type=int, help="classes listed per image (default 5, or all if fewer)")
    predict.add_argument(
        "--cache-dir",
        type=Path,
        help="the run's data cache (only runs recorded before run.json held their class names need their data)",
    )
    return parser


def _command_data(args) -> None:
    config = TrainConfig(data=args.data, seed=args.seed, **_data_settings(args))
    config.validate()
    import numpy as np

    from longtail.data import listed
    from longtail.metrics import frequency_groups
    from longtail.train import load_dataset

    dataset = load_dataset(config, pretrained=False, cache_dir=args.cache_dir)
    arrays, split = dataset.arrays, dataset.split
    counts = {
        "val": np.bincount(arrays.y_train[split.val], minlength=arrays.num_classes),
        "test": np.bincount(dataset.test_labels, minlength=arrays.num_classes),
    }
    group_of = {
        c: group for group, members in frequency_groups(split.train_counts, config.groups).items() for c in members
    }
    height, width = arrays.image_shape
    print(f"source: {arrays.source} (sha256 {arrays.fingerprint[:16]}...), images stored at {height}x{width} px")
    if arrays.skipped:
        print(f"left out {len(arrays.skipped)} unreadable image file(s) (--skip-bad-images): {listed(arrays.skipped)}")
    shape = (
        "natural imbalance (every image kept)"
        if config.imbalance == NATURAL_IMBALANCE
        else f"profile {config.profile}, imbalance {config.imbalance:g}"
    )
    print(f"{shape}, seed {config.seed}, index file {split.index_file}")
    name_width = max(5, *(len(n) for n in arrays.class_names))
    print(f"{'':>3} {'class':<{name_width}} {'profile':>8} {'train':>8} {'val':>6} {'test':>6}  {config.groups} group")
    for c, name in enumerate(arrays.class_names):
        print(
            f"{c:>3} {name:<{name_width}} {split.profile_counts[c]:>8} {split.train_counts[c]:>8} "
            f"{counts['val'][c]:>6} {counts['test'][c]:>6}  {group_of[c]}"
        )
    print(
        f"{'':>3} {'total':<{name_width}} {sum(split.profile_counts):>8} {sum(split.train_counts):>8} "
        f"{len(split.val):>6} {len(dataset.test_labels):>6}"
    )
    most, fewest = max(split.train_counts), min(split.train_counts)
    print(f"imbalance factor of the training counts: {most / fewest:.1f} ({most} / {fewest})")
    if split.test is None:
        print(f"test: {len(dataset.test_labels)} images, the source's own test split")
    else:
        print(
            f"test: {len(dataset.test_labels)} images held out of the training images "
            f"(--test-fraction {config.test_fraction:g}, stratified, the same for every run on this data)"
        )


def _train_config(args) -> TrainConfig:
    """The stage-1 config of the train options, validated. A --size-schedule sets --epochs and
    --image-size when they are not given."""
    stages = parse_size_schedule(args.size_schedule) if args.size_schedule is not None else None
    defaults = TrainConfig()
    config = TrainConfig(
        data=args.data,
        weights=args.weights,
        strategy=args.strategy,
        **_data_settings(args),
        image_size=args.image_size
        if args.image_size is not None
        else (stages[-1][0] if stages else defaults.image_size),
        epochs=args.epochs if args.epochs is not None else (sum(e for _, e in stages) if stages else defaults.epochs),
        batch_size=args.batch_size,
        lr=args.lr,
        decay_reading=args.decay_reading,
        decay_value=args.decay_value,
        bn=args.bn,
        seed=args.seed,
        deterministic=args.deterministic,
        augment=args.augment,
        device=args.device,
        compile=args.compile,
        size_schedule=args.size_schedule,
        lr_schedule=args.lr_schedule,
        test_size=args.test_size,
        tta=args.tta,
    )
    config.validate()
    return config


def _command_train(args) -> None:
    from longtail.train import train

    out = train(_train_config(args), args.out, resume=args.resume, overwrite=args.overwrite, cache_dir=args.cache_dir)
    print(f"finished: {out} (metrics in {out / 'metrics.json'})")


def _command_decouple(args) -> None:
    config = Stage2Config(
        method=args.method,
        loss=args.loss,
        sampler=args.sampler,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        views=args.views,
        tau=args.tau,
        gamma=args.gamma,
        beta=args.beta,
        tune=args.tune,
        seed=args.seed,
    )
    config.validate()
    from longtail.decouple import decouple

    metrics = decouple(args.run, config, args.out, overwrite=args.overwrite, cache_dir=args.cache_dir)
    _print_summary(metrics, args.out)


def _command_reproduce(args) -> None:
    data_settings = _data_settings(args)
    imbalance = data_settings.pop("imbalance", TrainConfig.imbalance)
    settings = dict(
        epochs=args.epochs,
        image_size=args.image_size,
        size_schedule=args.size_schedule,
        test_size=args.test_size,
        lr_schedule=args.lr_schedule,
        tta=args.tta,
        decay_reading=args.decay_reading,
    )
    given = {**{key: value for key, value in settings.items() if value is not None}, **data_settings}
    study_config(args.preset, data=args.data, weights=args.weights, imbalance=imbalance, given=given)
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
        weights=args.weights,
        overwrite=args.overwrite,
        cache_dir=args.cache_dir,
        overrides=data_settings,
        **settings,
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
        from longtail.train import evaluate_run as evaluate
    with RunLock(args.run):
        metrics = evaluate(args.run, cache_dir=args.cache_dir)
    _print_summary(metrics, args.run)


def _command_predict(args) -> None:
    check_prediction_options(args.out, args.top_k)
    from longtail.prediction import predict, write_predictions

    predictions = predict(args.run, args.paths, head=args.head, top_k=args.top_k, cache_dir=args.cache_dir)
    for _, why in predictions.failed:
        print(f"longtail: skipped {why}", file=sys.stderr)
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
