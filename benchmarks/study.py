"""Wall time of the whole study with longtail versus a naive reproduction that trains every strategy from scratch.

The study: baseline, Reweight, and five decoupled losses (modified-ce, balanced-softmax, focal,
class-balanced, cb-focal), each evaluated on the balanced test set.

- longtail: what ``longtail reproduce`` runs: two stage-1 runs (``longtail.train.train``:
  baseline and Reweight); the five stage-2 heads (``longtail.decouple.decouple_many``) reuse the
  baseline run, whose backbone features are cached, and train side by side.
- naive: seven stage-1 runs (baseline, Reweight, and a baseline-like re-training before each
  decoupled loss); each stage-2 head is trained with ``longtail.stage2.train_head`` through
  the frozen backbone (a fetch that runs it on every batch, every epoch), then evaluated through
  it. Heads, losses, samplers and hyperparameters are the same as longtail's.

``stage2_speedup`` compares stage 2 of the five losses alone, both sides fitting the same heads
(the same settings, feature sizes and choice rules, so their test accuracies agree:
``stage2_test_accuracy``). longtail: the train and validation features extracted once per size a
head tries (``--feature-size auto``: the stage-1 test size and 16 px either side; the stage-1
test-size features were stored by the baseline's stage 1, which computes them on its way to the
logits), then the heads on cached features, side by side in one grid, modified-ce with one head
per tau of its grid; naive: the backbone run on every batch of every epoch, each head and each
tau of modified-ce's grid trained alone, at every size. Both sides' stage 1 evaluates the run and
chooses its test size on validation (an earlier version skipped that on the naive side, whose
heads then trained on features of the training size instead: the two sides' accuracies differed).
longtail's stage 2 takes seconds, so it runs
``--stage2-repeats`` times (each from the cache as stage 1 left it: the stage-1 test size's file
alone, so every repeat extracts the other sizes again; an earlier version left them from the
first repeat, and the median then timed heads on cached features) and the median counts, in
``stage2_speedup`` and in the study's total; the naive stage 2 (minutes) runs once.
Both sides write what ``longtail reproduce`` writes per run: ``metrics.json``, no per-run
figures (the study draws its figures once, per strategy). ``stage2_speedup_excluding_writing``
leaves out what both sides do alike for each head (test metrics and ``metrics.json``, timed
around ``save_evaluation``).
Stage-2 epochs default to longtail's (30). Everything is written to temporary directories that
are removed afterwards. The last line of stdout is one JSON object.

    python benchmarks/study.py --data ../shared/data/cifar10.npz \\
        --weights ../shared/weights/efficientnet_b0_imagenet_tfhub.pth
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from longtail import decouple as decouple_module
from longtail.artifacts import load_trained_model, run_test_size
from longtail.config import Stage2Config, TrainConfig
from longtail.data import load_source
from longtail.decouple import decouple_many
from longtail.evaluation import save_evaluation
from longtail.features import FEATURE_FILES, Features, extract_features, feature_file
from longtail.models import head_of
from longtail.runs import atomic_torch_save, read_json, torch_load
from longtail.runtime import Runtime
from longtail.stage2 import choose_setting, fit_at_sizes, fit_stage2_heads, reference_setting, tuning_grid
from longtail.strategies import class_balanced_beta
from longtail.study import STUDY_LOSSES
from longtail.train import train
from shared_files import CIFAR10_NPZ, WEIGHTS

DEFAULT_DATA = os.environ.get("LONGTAIL_DATA", str(CIFAR10_NPZ))
DEFAULT_WEIGHTS = str(WEIGHTS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="as for `longtail train --data`")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS, help="as for `longtail train --weights`")
    parser.add_argument("--cache-dir", type=Path, help="longtail cache (default: $LONGTAIL_CACHE)")
    parser.add_argument("--imbalance", type=float, default=100.0)
    parser.add_argument("--max-per-class", type=int, default=200, help="head-class count (small preset: 200)")
    parser.add_argument("--val-per-class", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1, help="stage-1 epochs")
    parser.add_argument(
        "--stage2-epochs",
        type=int,
        default=Stage2Config.DEFAULTS["epochs"],
        help="stage-2 head epochs (default: longtail's, 30)",
    )
    parser.add_argument(
        "--stage2-repeats",
        type=int,
        default=3,
        help="longtail's stage 2 (seconds) is run this many times and the median taken (default 3)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    return parser.parse_args(argv)


class Stopwatch:
    """A function that also sums the seconds spent in it."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started


class ThroughBackbone:
    """The train features of the naive side: ``[views, positions]`` runs the frozen backbone on
    those training images, every time (no cache)."""

    def __init__(self, model: torch.nn.Module, images: torch.Tensor, args: tuple):
        self.model, self.images, self.args = model, images, args

    def __getitem__(self, index) -> torch.Tensor:
        _, positions = index  # the naive side has no augmented views: view 0 throughout
        return extract_features(self.model, self.images[positions], *self.args).clone()  # clone: leave inference mode


def restore_stage1_cache(run_dir: Path, stage1_file: Path, stage1_features) -> None:
    """Put a stage-1 run's feature cache back as its stage 1 left it: its test-size file alone, with
    the features it held then (the files of the other sizes a stage-2 head tried are removed, so
    every repeat of stage 2 extracts them again)."""
    for path in run_dir.glob(FEATURE_FILES):
        if path != stage1_file:
            path.unlink()
    atomic_torch_save(stage1_file, stage1_features)


def stage2_configs(epochs: int, seed: int) -> dict[str, Stage2Config]:
    """The heads both sides fit: the five study rows at their fixed settings, without the tuned
    variants ``longtail reproduce`` adds (Modified CE's tau is tuned on validation, as always): a
    head per value of its tau grid and one for each other loss, at each feature size tried."""
    return {loss: Stage2Config(loss=loss, epochs=epochs, seed=seed) for loss in STUDY_LOSSES}


def naive_stage2(
    stage1_dir: Path, config: Stage2Config, out: Path, runtime: Runtime, cache_dir: Path | None, writing: Stopwatch
) -> dict:
    """The head longtail fits for ``config``, fitted naively: the frozen backbone run on every
    batch of every epoch, each setting of a tuned knob trained alone, at every feature size the
    head tries; the setting and the size chosen by longtail's own rules (``choose_setting``,
    ``fit_at_sizes``), so both sides fit the same heads."""
    model, stage1_config, dataset, run = load_trained_model(stage1_dir, runtime, cache_dir)
    stage1_head, beta = head_of(model), class_balanced_beta(stage1_config)
    train_images = torch.from_numpy(dataset.arrays.x_train[dataset.split.train])

    def features_at(size: int) -> Features:
        args = (size, dataset.mean, dataset.std, runtime)
        val = extract_features(model, torch.from_numpy(dataset.val_images), *args)
        return Features(ThroughBackbone(model, train_images, args), val, None)

    def fit_alone(configs, features):
        (head_config,) = configs
        points = tuning_grid(head_config.resolved())
        if not points:
            return fit_stage2_heads([head_config], stage1_head, features, dataset, beta)
        fitted = [
            fit_stage2_heads(
                [dataclasses.replace(head_config, **point, tune=False)], stage1_head, features, dataset, beta
            )[0]
            for point in points
        ]
        best, _ = choose_setting(
            [(point, head) for point, (head, _) in zip(points, fitted, strict=True)],
            features,
            dataset.val_labels,
            reference_setting(beta),
        )
        return [fitted[best]]

    ((head, _, size),) = fit_at_sizes(
        [config], run_test_size(run, stage1_config), features_at, fit_alone, dataset.val_labels
    )
    with torch.no_grad():
        logits = head(
            extract_features(model, torch.from_numpy(dataset.test_images), size, dataset.mean, dataset.std, runtime)
        )
    out.mkdir(parents=True)
    return writing(out, dataset.test_labels, logits, dataset, grouping=stage1_config.groups)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = TrainConfig(
        data=args.data,
        weights=args.weights,
        imbalance=args.imbalance,
        max_per_class=args.max_per_class,
        val_per_class=args.val_per_class,
        image_size=args.image_size,
        batch_size=args.batch_size,
        epochs=args.epochs,
        seed=args.seed,
        device=args.device,
    )
    base.validate()
    reweight = dataclasses.replace(base, strategy="reweight")
    stage2 = stage2_configs(args.stage2_epochs, args.seed)
    for config in stage2.values():
        config.validate()
    runtime = Runtime.create(args.device)
    # Untimed: read the data once (page cache, split index) and import what the first run would.
    load_source(base, args.cache_dir)
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401

    accuracy: dict[str, dict[str, float]] = {"longtail": {}, "naive": {}}
    # Test metrics and metrics.json: the same work for longtail and naive heads.
    writing = Stopwatch(save_evaluation)
    with (
        tempfile.TemporaryDirectory(prefix="longtail-study-bench-") as scratch,
        mock.patch.object(decouple_module, "save_evaluation", writing),
    ):
        root = Path(scratch)

        started = time.perf_counter()
        baseline = root / "longtail" / "baseline"
        train(base, baseline, cache_dir=args.cache_dir, figures=False)
        train(reweight, root / "longtail" / "reweight", cache_dir=args.cache_dir, figures=False)
        longtail_stage1 = time.perf_counter() - started
        cache_file = baseline / feature_file(read_json(baseline / "run.json")["test_image_size"])
        after_stage1 = torch_load(cache_file)  # the test and validation features
        repeats = []
        for repeat in range(args.stage2_repeats):
            # Untimed: the cache as stage 1 left it, so every repeat extracts what the first did.
            restore_stage1_cache(baseline, cache_file, after_stage1)
            cached_before = {path.name for path in baseline.glob(FEATURE_FILES)}
            outs = {loss: root / "longtail" / f"stage2-{repeat}" / f"decoupled-{loss}" for loss in STUDY_LOSSES}
            stage2_started, writing.seconds = time.perf_counter(), 0.0
            metrics = decouple_many(
                baseline, {outs[loss]: stage2[loss] for loss in STUDY_LOSSES}, cache_dir=args.cache_dir, figures=False
            )
            seconds = time.perf_counter() - stage2_started
            records = [read_json(out / "run.json") for out in outs.values()]
            repeats.append(
                {
                    "seconds": seconds,
                    # the cache files this repeat extracted (every repeat the same ones)
                    "feature_files": sorted({path.name for path in baseline.glob(FEATURE_FILES)} - cached_before),
                    "writing": writing.seconds,
                    "features": sum(record["feature_seconds"] for record in records),
                    "heads": sum(record["head_seconds"] for record in records),
                }
            )
            accuracy["longtail"] = {loss: metrics[outs[loss]]["accuracy"] for loss in STUDY_LOSSES}
        median = sorted(repeats, key=lambda r: r["seconds"])[len(repeats) // 2]
        longtail_stage2, longtail_writing = median["seconds"], median["writing"]
        feature_seconds, head_seconds = median["features"], median["heads"]
        longtail_total = longtail_stage1 + longtail_stage2
        print(f"longtail: {longtail_total:.1f} s (stage 2: {longtail_stage2:.1f} s, the median repeat)", flush=True)

        started = time.perf_counter()
        train(base, root / "naive" / "baseline", cache_dir=args.cache_dir, figures=False)
        train(reweight, root / "naive" / "reweight", cache_dir=args.cache_dir, figures=False)
        naive_stage2_seconds, writing.seconds = 0.0, 0.0
        for loss, config in stage2.items():
            stage1_dir = root / "naive" / f"stage1-for-{loss}"
            train(base, stage1_dir, cache_dir=args.cache_dir, figures=False)  # evaluated: its test size chosen
            stage2_started = time.perf_counter()
            out = root / "naive" / f"decoupled-{loss}"
            metrics = naive_stage2(stage1_dir, config, out, runtime, args.cache_dir, writing)
            naive_stage2_seconds += time.perf_counter() - stage2_started
            accuracy["naive"][loss] = metrics["accuracy"]
        naive_total, naive_writing = time.perf_counter() - started, writing.seconds
        print(f"naive:    {naive_total:.1f} s (stage 2: {naive_stage2_seconds:.1f} s)", flush=True)

    result = {
        "study_speedup": round(naive_total / longtail_total, 3),
        "stage2_speedup": round(naive_stage2_seconds / longtail_stage2, 3),
        # Without the writing both sides share (and that bounds stage2_speedup at small sizes).
        "stage2_speedup_excluding_writing": round(
            (naive_stage2_seconds - naive_writing) / (longtail_stage2 - longtail_writing), 3
        ),
        "longtail_study_seconds": round(longtail_total, 2),
        "naive_study_seconds": round(naive_total, 2),
        "longtail_stage2_seconds": round(longtail_stage2, 2),
        "longtail_stage2_seconds_each_repeat": [round(r["seconds"], 2) for r in repeats],
        "longtail_stage2_feature_files_each_repeat": [r["feature_files"] for r in repeats],
        "longtail_feature_extraction_seconds": round(feature_seconds, 2),
        "longtail_head_training_seconds": round(head_seconds, 2),
        "longtail_stage2_writing_seconds": round(longtail_writing, 2),
        "naive_stage2_seconds": round(naive_stage2_seconds, 2),
        "naive_stage2_writing_seconds": round(naive_writing, 2),
        "stage1_runs": {"longtail": 2, "naive": 2 + len(STUDY_LOSSES)},
        # Same seeds and settings, so the two should agree up to run-to-run nondeterminism.
        "stage2_test_accuracy": accuracy,
        "config": {
            "imbalance": args.imbalance,
            "max_per_class": args.max_per_class,
            "val_per_class": args.val_per_class,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "stage2_epochs": args.stage2_epochs,
            "seed": args.seed,
            "weights": args.weights,
        },
        "device": str(runtime.device) + (f" ({torch.cuda.get_device_name()})" if runtime.device.type == "cuda" else ""),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    print(
        f"study: longtail {longtail_total:.1f} s vs naive {naive_total:.1f} s -> {result['study_speedup']:.2f}x; "
        f"stage 2 (5 losses): {longtail_stage2:.1f} s (features {feature_seconds:.1f} s, "
        f"heads {head_seconds:.1f} s) vs "
        f"{naive_stage2_seconds:.1f} s through the backbone -> {result['stage2_speedup']:.2f}x"
    )
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
