"""Accuracy of a finished stage-1 run at other input sizes: the evidence behind ``--test-size auto``.

For every size of the grid ``--test-size auto`` searches (the training size and up to three 16-px
steps above it, at most 1.5x: ``longtail.resolution.size_grid``), or the sizes given with ``--sizes``
(the round-1 evidence was gathered over the earlier 1.0x-1.75x grid):
- validation and test top-1 of the stage-1 classifier, plain and with flip TTA;
- for the sizes in ``--stage2-sizes`` (default: the training size and the size the run chose):
  the study's five decoupled heads (``decouple_many``'s configs, fitted side by side by
  ``fit_stage2_heads``) trained on features of that size, each evaluated at that size, plain and with flip TTA.
Nothing is written into the run directory (features are computed here, not cached). The last
line of stdout is one JSON object.

    python benchmarks/resolution.py runs/study/seed0/baseline --data ../shared/data/cifar10.npz
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch

from longtail.artifacts import load_trained_classifier, load_trained_model, run_test_size
from longtail.config import Stage2Config
from longtail.features import Features, apply_head, extract_features
from longtail.hardware import cpu_name
from longtail.metrics import top1_accuracy
from longtail.models import head_of
from longtail.resolution import size_grid
from longtail.runtime import Runtime
from longtail.stage2 import fit_stage2_heads
from longtail.strategies import class_balanced_beta
from longtail.study import STUDY_LOSSES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished `longtail train` run")
    parser.add_argument("--cache-dir", type=Path, help="longtail cache (default: $LONGTAIL_CACHE)")
    parser.add_argument("--sizes", type=int, nargs="+", help="sizes to test (default: the auto grid)")
    parser.add_argument("--stage2-sizes", type=int, nargs="*", help="sizes to train stage-2 heads on")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runtime = Runtime(torch.device("cpu"))
    model, config, dataset, run = load_trained_model(args.run, runtime, args.cache_dir)
    chosen = run_test_size(run, config)
    sizes = args.sizes or size_grid(config.image_size)
    stage2_sizes = args.stage2_sizes if args.stage2_sizes is not None else sorted({config.image_size, chosen})
    head = head_of(model)
    images = {
        "train": torch.from_numpy(dataset.arrays.x_train[dataset.split.train]),
        "val": torch.from_numpy(dataset.val_images),
        "test": torch.from_numpy(dataset.test_images),
    }
    y_val, y_test = dataset.val_labels, dataset.test_labels
    stage1_head = load_trained_classifier(args.run, config, dataset.arrays.num_classes)
    configs = [Stage2Config(loss=loss, seed=config.seed) for loss in STUDY_LOSSES]
    rows = {}
    for size in sorted(set(sizes) | set(stage2_sizes)):
        common = (size, dataset.mean, dataset.std, runtime)
        val = extract_features(model, images["val"], *common)
        test = extract_features(model, images["test"], *common)
        test_flip = extract_features(model, images["test"], *common, flip=True)
        row = {
            "val": top1_accuracy(apply_head(head, val), y_val),
            "test": top1_accuracy(apply_head(head, test), y_test),
            "test_flip": top1_accuracy(apply_head(head, test, test_flip), y_test),
        }
        if size in stage2_sizes:
            train = extract_features(model, images["train"], *common)[None]
            features = Features(train, val, test, test_flip)
            fitted = fit_stage2_heads(configs, stage1_head, features, dataset, class_balanced_beta(config))
            for loss, (fitted_head, record) in zip(STUDY_LOSSES, fitted, strict=True):
                row[f"decoupled-{loss}"] = {
                    "val": top1_accuracy(apply_head(fitted_head, val), y_val),
                    "test": top1_accuracy(apply_head(fitted_head, test), y_test),
                    "test_flip": top1_accuracy(apply_head(fitted_head, test, test_flip), y_test),
                    "tau": record.get("tau"),
                }
        rows[size] = row
        print(json.dumps({"size": size, **row}), flush=True)
    result = {
        "run": str(args.run),
        "training_size": config.image_size,
        "epoch_sizes": config.epoch_sizes,
        "lr_schedule": config.lr_schedule,
        "chosen_test_size": chosen,
        "sizes": rows,
        "cpu": cpu_name(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
