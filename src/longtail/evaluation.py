"""Evaluating a finished stage-1 run: the test size chosen on the validation split, the test
logits (cached as features for stage 2), and ``metrics.json`` from any head's logits (whoever
evaluates draws the run's figures from the metrics returned: ``longtail.report.write_run_figures``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from longtail.artifacts import load_trained_model
from longtail.config import TrainConfig
from longtail.data.dataset import Dataset
from longtail.features import (
    apply_head,
    extract_features,
    features_and_logits,
    staged_on_device,
    store_evaluation_features,
)
from longtail.metrics import classification_metrics, top1_accuracy
from longtail.models import head_of
from longtail.priors import DEFAULT_TEST_PRIORS, Prior, check_classes, with_test_priors
from longtail.resolution import choose_size, resolve_test_size
from longtail.runs import RUN_FILE, atomic_write_json
from longtail.runtime import Runtime


def save_evaluation(
    run_dir: Path,
    y_true,
    logits: torch.Tensor,
    dataset: Dataset,
    *,
    grouping: str,
    test_priors: Sequence[Prior] = DEFAULT_TEST_PRIORS,
    flip_logits: torch.Tensor | None = None,
    extra: dict | None = None,
) -> dict:
    """Write ``metrics.json`` from its test logits, with the stage-1 run's frequency ``grouping``
    (its ``--groups``) and the metrics under each of ``test_priors`` (``under_prior``,
    ``longtail.priors``); ``flip_logits`` (flip TTA) add their own metrics under ``tta_flip``,
    beside the plain ones; ``extra`` adds keys (such as the test image size). Returns the metrics."""
    names, counts = dataset.arrays.class_names, dataset.split.train_counts
    metrics = classification_metrics(y_true, logits.argmax(1).numpy(), names, counts, grouping)
    metrics.update(extra or {})
    if flip_logits is not None:
        metrics["tta_flip"] = classification_metrics(y_true, flip_logits.argmax(1).numpy(), names, counts, grouping)
    metrics = with_test_priors(metrics, test_priors)
    atomic_write_json(Path(run_dir) / "metrics.json", metrics)
    return metrics


def choose_test_size(
    model: nn.Module, config: TrainConfig, dataset: Dataset, runtime: Runtime, val_features: tuple | None
) -> tuple[int, dict[int, float], torch.Tensor | None]:
    """``(test size, {size: validation accuracy}, validation features at that size)``: the sizes of
    ``--test-size`` scored on the validation split only (``longtail.resolution``)."""
    sizes, choose = resolve_test_size(config.test_size, config.image_size)
    val_images = staged_on_device(dataset.images("val"), runtime)  # one copy for every size
    val_true = dataset.val_labels
    if len(val_true) == 0:
        return sizes[0], {}, None
    known = {} if val_features is None else {val_features[0]: val_features[1]}

    def features_at(size: int) -> torch.Tensor:
        if size not in known:
            known[size] = extract_features(model, val_images, size, dataset.mean, dataset.std, runtime)
        return known[size]

    def accuracy(size: int) -> float:
        return top1_accuracy(apply_head(head_of(model), features_at(size)), val_true)

    size, scores = choose_size(accuracy, sizes) if choose else (sizes[0], {sizes[0]: accuracy(sizes[0])})
    return size, scores, features_at(size)


def evaluate_run(
    run_dir: Path,
    cache_dir: Path | None = None,
    runtime: Runtime | None = None,
    *,
    val_features: tuple[int, torch.Tensor] | None = None,
    test_priors: Sequence[Prior] = DEFAULT_TEST_PRIORS,
) -> dict:
    """Evaluate a finished stage-1 run on its test split (the source's test set, or the one held out
    of its training images) at its test size; writes metrics.json and returns the metrics.

    The test size is the one run.json records, else the one ``--test-size`` gives (chosen on the
    validation split for ``auto``), then recorded. The logits are the classifier applied to the
    pooled backbone features (the model's forward in eval mode); the features go into the run's
    feature cache at that size, with the validation features (``val_features``: ``(size, features)``
    of the final weights, when training just computed them), so stage 2 does not recompute them.
    With ``--tta flip`` the mirrored test images' features are cached too and their metrics added.
    ``test_priors``: the priors of ``under_prior`` (checked against the run's classes first).
    """
    runtime = runtime or Runtime.create()
    model, config, dataset, run = load_trained_model(run_dir, runtime, cache_dir)
    check_classes(test_priors, dataset.arrays.num_classes, "--test-priors")
    if "test_image_size" in run:
        size, val = run["test_image_size"], None
    else:
        size, grid, val = choose_test_size(model, config, dataset, runtime, val_features)
        run.update(test_image_size=size, test_size_grid={str(k): v for k, v in grid.items()})
        atomic_write_json(Path(run_dir) / RUN_FILE, run)
    args = (size, dataset.mean, dataset.std, runtime)
    x_test = staged_on_device(dataset.images("test"), runtime)  # one copy for the plain and the mirrored pass
    test_features, logits = features_and_logits(model, x_test, *args)
    test_flip = extract_features(model, x_test, *args, flip=True) if config.tta == "flip" else None
    store_evaluation_features(
        run_dir, run.get("model_sha256"), dataset, size, runtime, test_features, val, test_flip=test_flip
    )
    flip_logits = apply_head(head_of(model), test_features, test_flip) if test_flip is not None else None
    extra = {"test_image_size": size, "test_size_grid": run["test_size_grid"]}
    return save_evaluation(
        run_dir,
        dataset.test_labels,
        logits,
        dataset,
        grouping=config.groups,
        test_priors=test_priors,
        flip_logits=flip_logits,
        extra=extra,
    )
