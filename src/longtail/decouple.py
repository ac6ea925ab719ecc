"""Stage 2 of decoupled training (Kang et al., ICLR 2020, "Decoupling Representation and
Classifier for Long-Tailed Recognition"): keep the stage-1 backbone frozen and fix the classifier.
This module runs it: a stage-2 run directory per head, fitted on one finished stage-1 run.

The backbone (BatchNorm statistics included) never changes in stage 2, so its features are
computed once per stage-1 run and cached (``longtail.features``: the train set without
augmentation plus ``views`` augmented copies, the validation and the test set; the test and
validation features come from stage 1) and every stage-2 head trains on them in seconds
(``longtail.stage2``: the heads, the knobs tuned on validation, the methods, the feature sizes and
the prior a head is calibrated to). ``decouple_many`` fits several heads on one stage-1 run at
once, and linear heads that see the same batches train side by side in one ``HeadGrid``
(``longtail reproduce`` fits the study's five losses this way). Each run directory gets the head
(head.pt), its record (run.json: the config it used, what it chose on validation, its
provenance and, with ``--target-prior``, its adjustment to that prior) and its test metrics;
``evaluate_decoupled`` evaluates a finished head again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

import torch
from torch import nn

from longtail.artifacts import (
    check_head_model,
    load_finished_stage1,
    load_head,
    load_trained_classifier,
    load_trained_model,
    read_finished_stage1,
    run_test_size,
    stage1_dataset,
    stage1_of,
)
from longtail.config import Stage2Config, TrainConfig, validation_choices
from longtail.data import Dataset
from longtail.errors import LongtailError
from longtail.evaluation import save_evaluation
from longtail.features import Features, load_or_extract_features
from longtail.priors import DEFAULT_TEST_PRIORS, Prior, check_classes
from longtail.runs import (
    RUN_FILE,
    RunLock,
    atomic_torch_save,
    atomic_write_json,
    check_run_dir,
    prepare_run_dir,
    read_json,
)
from longtail.runtime import Runtime
from longtail.stage2.calibration import adjusted_logits, head_calibration, target_adjustment
from longtail.stage2.fit import fit_at_sizes, fit_stage2_heads
from longtail.strategies import class_balanced_beta, uses_cosine_head

__all__ = ["Stage2Config", "decouple", "decouple_many", "evaluate_decoupled"]  # Stage2Config: longtail.config


def _stage1_features(
    stage1_dir: Path,
    stage1: tuple,
    views: int,
    cache_dir: Path | None,
    image_size: int,
    test: bool = True,
) -> Features:
    """The stage-1 run's features at ``image_size`` (with the mirrored test images under ``--tta
    flip``; ``test=False``: the train and validation features alone); its network is built only
    when some are not cached yet. Call it holding the stage-1 run's lock: it may rewrite the run's
    feature cache."""
    stage1_config, dataset, stage1_run = stage1
    runtime = Runtime.create()
    return load_or_extract_features(
        stage1_dir,
        stage1_run.get("model_sha256"),
        lambda: load_trained_model(stage1_dir, runtime, cache_dir)[0],
        dataset,
        stage1_config.seed,
        views,
        runtime,
        image_size,
        flip=stage1_config.tta == "flip",
        test=test,
    )


def _check_request(stage1_dir: Path, runs: Mapping[Path, Stage2Config], overwrite: bool) -> None:
    """Every config valid, and no run directory that may not be written (changing nothing)."""
    for config in runs.values():
        config.validate()
    for out in runs:
        if Path(out).resolve() == stage1_dir:
            raise LongtailError(f"--out {out} is the stage-1 run itself; give the stage-2 head a directory of its own")
        check_run_dir(Path(out), resume=False, overwrite=overwrite, kind="decouple")


def _check_against_stage1(
    stage1_dir: Path,
    stage1_config: TrainConfig,
    dataset: Dataset,
    runs: Mapping,
    test_priors: Sequence[Prior],
    target_prior: Prior | None,
) -> None:
    """What the heads need of the stage-1 run: a linear classifier for the methods that reuse it,
    a validation split for every knob tuned on validation and for a target prior's tau, and
    priors of its number of classes."""
    classes = dataset.arrays.num_classes
    check_classes(test_priors, classes, "--test-priors")
    if target_prior is not None:
        check_classes([target_prior], classes, "--target-prior")
        if len(dataset.split.val) == 0:
            raise LongtailError(
                f"--target-prior {target_prior.name} chooses its tau on the validation split, and {stage1_dir} has "
                "none (stage 1 trained with --val-per-class 0): train stage 1 with a validation split"
            )
    for config in runs.values():
        if uses_cosine_head(stage1_config) and config.method != "retrain":
            raise LongtailError(
                f"{config.method} needs a linear stage-1 classifier; {stage1_dir} has LDAM's cosine "
                "head: use --method retrain"
            )
    if len(dataset.split.val) == 0:
        for out, config in runs.items():
            if config.chosen_on_validation:
                what, options = validation_choices(config.chosen_on_validation)
                raise LongtailError(
                    f"{out}: choosing {what} needs a validation split, and {stage1_dir} has none (stage 1 trained "
                    f"with --val-per-class 0): pass {options}, or train stage 1 with a validation split"
                )


def _record(
    out: Path, config: Stage2Config, chosen: dict, stage1_dir: Path, stage1: tuple, size: int, context: dict
) -> dict:
    """The run.json of a fitted stage-2 head: the config it used (resolved), what it chose, its provenance."""
    stage1_config, _, stage1_run = stage1
    used = config.resolved()
    return {
        "kind": "decouple",
        "status": "finished",
        "stage1": str(stage1_dir),
        "stage1_model_sha256": stage1_run.get("model_sha256"),
        "config": dataclasses.asdict(used),
        "sampler": used.resolved_sampler,
        "beta": chosen.get("beta"),
        "feature_image_size": size,
        "test_image_size": size,
        "chosen": chosen,
        "feature_seconds": context["feature_seconds"],
        "head_seconds": context["head_seconds"],
        "fitted_with": [str(other) for other in context["outs"] if other != out],
    }


def _served(
    target_prior: Prior | None, head: nn.Module, config: Stage2Config, chosen: dict, val: torch.Tensor, stage1: tuple
) -> dict:
    """What run.json records of a head served under ``target_prior`` (``{}`` without one)."""
    if target_prior is None:
        return {}
    stage1_config, dataset, _ = stage1
    own = head_calibration(config.resolved(), chosen, dataset.split.train_counts, stage1_config)
    return {"target_prior": target_adjustment(target_prior, head, own, val, dataset)}


def _new_directories(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _remove_unwritten(created: Mapping[Path, list[Path]], written: set[Path]) -> None:
    """After a failure: the run directories this call created and wrote nothing into (a lock
    file aside) go again, with the folders made for them."""
    for out, directories in created.items():
        if out in written or not directories:
            continue
        (out / ".lock").unlink(missing_ok=True)
        for directory in directories:
            try:
                directory.rmdir()  # only when empty: never anything another process put there
            except OSError:
                break


def _fit_runs(
    stage1_dir: Path,
    stage1: tuple,
    runs: Mapping[Path, Stage2Config],
    stage1_head: nn.Module,
    default_beta: float,
    cache_dir: Path | None,
) -> tuple[list[tuple], dict[int, Features], dict]:
    """The heads of ``runs`` fitted (``fit_at_sizes``, ``fit_stage2_heads``) with ``(head, chosen,
    size)`` each, the test features at every size chosen, and the context each run records (its
    equal share of the feature and fitting time, the runs fitted with it). Call it holding the
    stage-1 run's lock."""
    stage1_config, dataset, stage1_run = stage1
    views = max(config.resolved().views or 0 for config in runs.values())
    seconds = {"features": 0.0, "heads": 0.0}  # summed over the sizes tried

    def timed(part: str, function: Callable) -> Callable:
        def run(*args):
            started = time.perf_counter()
            try:
                return function(*args)
            finally:
                seconds[part] += time.perf_counter() - started

        return run

    fitted = fit_at_sizes(
        list(runs.values()),
        run_test_size(stage1_run, stage1_config),
        timed("features", lambda size: _stage1_features(stage1_dir, stage1, views, cache_dir, size, test=False)),
        timed(
            "heads",
            lambda configs, features: fit_stage2_heads(configs, stage1_head, features, dataset, default_beta),
        ),
        dataset.val_labels,
    )
    test_features = timed("features", lambda size: _stage1_features(stage1_dir, stage1, views, cache_dir, size))
    tests = {size: test_features(size) for *_, size in fitted}
    context = {
        "feature_seconds": seconds["features"] / len(runs),
        "head_seconds": seconds["heads"] / len(runs),
        "outs": list(runs),
    }
    return fitted, tests, context


def decouple_many(
    stage1_dir: Path,
    runs: Mapping[Path, Stage2Config],
    *,
    overwrite: bool = False,
    cache_dir: Path | None = None,
    figures: bool = True,
    test_priors: Sequence[Prior] = DEFAULT_TEST_PRIORS,
    target_prior: Prior | None = None,
) -> dict[Path, dict]:
    """Fit stage-2 heads on one finished stage-1 run, ``runs`` mapping each run directory to its
    config; each directory gets run.json, head.pt, metrics.json and (with ``figures``) the
    figures. The features are loaded once and the heads fitted by ``fit_stage2_heads`` (heads
    that share their batches train side by side); every run records its equal share of the
    feature and fitting time. Returns each run's test metrics (``test_priors``, ``target_prior``: see ``decouple``).

    Everything that can fail on bad input fails before a run directory is touched; a directory
    this call creates is removed again if fitting fails, and a run to ``overwrite`` is replaced
    only once its new head is fitted."""
    stage1_dir, runs = Path(stage1_dir).resolve(), {Path(out): config for out, config in runs.items()}
    _check_request(stage1_dir, runs, overwrite)
    stage1 = load_finished_stage1(stage1_dir, cache_dir)
    stage1_config, dataset, _ = stage1
    _check_against_stage1(stage1_dir, stage1_config, dataset, runs, test_priors, target_prior)
    stage1_head = load_trained_classifier(stage1_dir, stage1_config, dataset.arrays.num_classes)
    default_beta = class_balanced_beta(stage1_config)
    created = {out: _new_directories(out) for out in runs}
    written: set[Path] = set()
    try:
        with ExitStack() as locks:
            locks.enter_context(RunLock(stage1_dir))  # its feature cache may be extended
            for out in runs:
                locks.enter_context(RunLock(out))
                check_run_dir(out, resume=False, overwrite=overwrite, kind="decouple")  # now under its lock
            fitted, tests, context = _fit_runs(stage1_dir, stage1, runs, stage1_head, default_beta, cache_dir)
            metrics = {}
            for (out, config), (head, chosen, size) in zip(runs.items(), fitted, strict=True):
                record = _record(out, config, chosen, stage1_dir, stage1, size, context)
                record.update(_served(target_prior, head, config, chosen, tests[size].val, stage1))
                prepare_run_dir(out, resume=False, overwrite=overwrite, kind="decouple")
                written.add(out)
                cosine = not isinstance(head, nn.Linear)
                atomic_torch_save(out / "head.pt", {"state_dict": head.state_dict(), "cosine": cosine})
                atomic_write_json(out / RUN_FILE, record)
                metrics[out] = _evaluate_head(out, head, tests[size], stage1, record, figures, test_priors)
            return metrics
    except BaseException:
        _remove_unwritten(created, written)
        raise


def decouple(
    stage1_dir: Path,
    config: Stage2Config,
    out: Path,
    *,
    overwrite: bool = False,
    cache_dir: Path | None = None,
    figures: bool = True,
    test_priors: Sequence[Prior] = DEFAULT_TEST_PRIORS,
    target_prior: Prior | None = None,
) -> dict:
    """Fit a stage-2 head on a finished stage-1 run; ``out`` gets run.json, head.pt, metrics.json
    and (with ``figures``) the figures. Returns its test metrics, also under each of
    ``test_priors``; with ``target_prior``, of its logits adjusted to that prior
    (``target_adjustment``, recorded in run.json)."""
    return decouple_many(
        stage1_dir,
        {Path(out): config},
        overwrite=overwrite,
        cache_dir=cache_dir,
        figures=figures,
        test_priors=test_priors,
        target_prior=target_prior,
    )[Path(out)]


def evaluate_decoupled(
    run_dir: Path,
    cache_dir: Path | None = None,
    test_priors: Sequence[Prior] = DEFAULT_TEST_PRIORS,
) -> dict:
    """Test metrics of a stage-2 run (from the cached test features of its stage-1 run), with its
    recorded adjustment to a target prior, if any, and under ``test_priors``; the caller draws its
    figures. A head whose stage-1 run was trained again since it was fitted (``check_head_model``),
    or whose stage-1 data changed (``stage1_dataset``), is refused."""
    stage1_dir = stage1_of(run_dir)
    stage1_config, stage1_run = read_finished_stage1(stage1_dir)
    record = read_json(Path(run_dir) / RUN_FILE)
    check_head_model(run_dir, record, stage1_dir, stage1_run)
    dataset = stage1_dataset(stage1_dir, stage1_config, stage1_run, cache_dir)
    check_classes(test_priors, dataset.arrays.num_classes, "--test-priors")
    head = load_head(run_dir, dataset.arrays.num_classes)
    size = record["test_image_size"]
    stage1 = (stage1_config, dataset, stage1_run)
    with RunLock(stage1_dir):
        features = _stage1_features(stage1_dir, stage1, 0, cache_dir, size)
    return _evaluate_head(run_dir, head, features, stage1, record, figures=False, test_priors=test_priors)


def _evaluate_head(
    run_dir: Path,
    head: nn.Module,
    features: Features,
    stage1: tuple,
    record: Mapping,
    figures: bool,
    test_priors: Sequence[Prior],
) -> dict:
    """Test metrics of ``head`` on the cached test features at its size (and with flip TTA when
    the features hold the mirrored test images), its logits adjusted to the target prior its
    run.json (``record``) names, if any, written into ``run_dir`` with the stage-1 run's
    frequency grouping and under ``test_priors`` (with ``figures``, the run's figures too)."""
    stage1_config, dataset, _ = stage1
    size, grouping = record["test_image_size"], stage1_config.groups
    adjustment = record.get("target_prior")
    logits = adjusted_logits(head, features.test, adjustment)
    flip_logits = None
    if features.test_flip is not None:
        flip_logits = adjusted_logits(head, features.test, adjustment, features.test_flip)
    extra = {"test_image_size": size}
    if adjustment is not None:
        extra["target_prior"] = {"name": adjustment["name"], "tau": adjustment["tau"]}
    metrics = save_evaluation(
        run_dir,
        dataset.test_labels,
        logits,
        dataset,
        grouping=grouping,
        test_priors=test_priors,
        flip_logits=flip_logits,
        extra=extra,
    )
    if figures:
        from longtail.report import write_run_figures  # matplotlib only when figures are drawn

        write_run_figures(metrics, run_dir)
    return metrics
