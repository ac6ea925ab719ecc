"""The bodies of the commands: each turns the options given into a validated configuration,
calls the library (imported only then, so that the parser needs no torch) and prints what it did.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from longtail.choices import NATURAL_IMBALANCE
from longtail.config import (
    DATA_FIELDS,
    MAX_SEED,
    STUDY_FIELDS,
    Stage2Config,
    TrainConfig,
    check_int,
    check_prediction_options,
    gpu_job,
    size_schedule_span,
    study_config,
)


def _given(args, names) -> dict:
    """The options among ``names`` that were given (an option not given is None)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _fields(cls) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))


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
        for name, value in size_schedule_span(settings["size_schedule"]).items():
            settings.setdefault(name, value)
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
    from longtail.runtime import device_of

    # A preset meant for a GPU is refused here already, before the study imports matplotlib (which writes
    # its settings under HOME): nothing written.
    device_of(settings.get("device", TrainConfig.device), gpu_job(args.preset))
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
        **_given(args, ("feature_size", "test_priors")),
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
    from longtail.reevaluation import reevaluate

    metrics = reevaluate(args.run, cache_dir=args.cache_dir, **_given(args, ("test_priors",)))
    _print_summary(metrics, args.run)


def _command_predict(args) -> None:
    check_prediction_options(args.out, args.top_k)
    from longtail.prediction import predict, write_predictions

    predictions = predict(
        args.run,
        args.paths,
        head=args.head,
        top_k=args.top_k,
        target_prior=args.target_prior,
        cache_dir=args.cache_dir,
    )
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


# What to do after Ctrl-C, by command: only `train` has --resume; `reproduce` resumes by being rerun.
INTERRUPTED = {
    "train": "rerun it with --resume to continue from the last checkpoint",
    "reproduce": "rerun the same command to continue: finished runs are kept, and the interrupted run resumes "
    "from its last checkpoint",
    "decouple": "rerun the command (a head is written only once fitted)",
}
INTERRUPTED_DEFAULT = "rerun the command"

COMMANDS = {
    "data": _command_data,
    "train": _command_train,
    "decouple": _command_decouple,
    "reproduce": _command_reproduce,
    "evaluate": _command_evaluate,
    "predict": _command_predict,
}
