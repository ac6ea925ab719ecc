"""Stage 2 of decoupled training (Kang et al., ICLR 2020, "Decoupling Representation and
Classifier for Long-Tailed Recognition"): keep the stage-1 backbone frozen and fix the classifier.

The backbone (BatchNorm statistics included) never changes in stage 2, so its features are
computed once per stage-1 run and cached (``longtail.features``: the train set without
augmentation plus ``views`` augmented copies, the validation and the test set; the test and
validation features come from stage 1) and every stage-2 head trains on them in seconds.
``train_head`` takes a feature-fetching function, so the same loop also trains through the
backbone (the equivalence is tested). ``decouple_many`` fits several heads on one stage-1 run
at once, and linear heads that see the same batches train side by side in one ``HeadGrid``
(``longtail reproduce`` fits the study's five losses this way).

Methods (``--method``):
- ``retrain`` (cRT-style): a re-initialised linear head trained with ``--loss`` and ``--sampler``;
  ``--loss crt`` is cross-entropy with class-balanced sampling (Kang et al.'s cRT).
- ``tau-norm``: the stage-1 classifier with weights ``w_c / |w_c| ** tau`` and no bias (Kang et al.).
- ``lws``: learnable weight scaling, ``z_c = f_c (w_c x + b_c)``, only ``f`` trained, with
  class-balanced sampling and CE (Kang et al.).
- ``post-hoc-la``: post-hoc logit adjustment of the stage-1 classifier, ``z - tau log pi``
  (Menon et al., ICLR 2021).
Temperatures (``tau``) not given are tuned on the validation split, never on the test set.
Every resulting head is stored as one plain ``nn.Linear`` (or ``CosineLinear`` for LDAM).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from longtail import data as data_module
from longtail.artifacts import (
    load_finished_stage1,
    load_head,
    load_trained_classifier,
    load_trained_model,
    run_test_size,
    stage1_of,
)
from longtail.config import Stage2Config, TrainConfig
from longtail.data import Dataset
from longtail.errors import LongtailError
from longtail.evaluation import save_evaluation
from longtail.features import Features, apply_head, load_or_extract_features
from longtail.losses import MODIFIED_CE, build_loss, loss_spec
from longtail.models import make_head
from longtail.runs import (
    RUN_FILE,
    RunLock,
    atomic_torch_save,
    atomic_write_json,
    check_run_dir,
    prepare_run_dir,
)
from longtail.runtime import Runtime
from longtail.samplers import epoch_generator, epoch_order
from longtail.strategies import class_balanced_beta, uses_cosine_head

__all__ = ["Stage2Config", "decouple", "decouple_many", "evaluate_decoupled"]  # Stage2Config: longtail.config

CRT = "crt"  # cross-entropy + class-balanced sampling
# Logit-adjusted loss: one head per value. Widened twice because a recorded run picked the top of
# the grid (RESULTS.md): 2.5 with a short stage 1, then 4.0 on one seed of a three-seed study.
TAU_GRID_TRAINED = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0)
TAU_GRID_POST_HOC = tuple(round(0.1 * i, 1) for i in range(61))  # 0.0 .. 6.0, free to evaluate


# ---------------------------------------------------------------- head training


def train_head(
    head: nn.Module,
    fetch: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    loss_fn: Callable,
    *,
    sampler: str,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    views: int = 0,
    parameters: Sequence[nn.Parameter] | None = None,
) -> nn.Module:
    """Train ``head`` on features ``fetch(positions, view_per_sample)`` with Adam.

    Each sample's view is drawn uniformly from 0..views per epoch (always 0 with no views).
    ``parameters`` restricts what is trained (LWS trains only its scales).
    """
    optimizer = torch.optim.Adam(list(parameters if parameters is not None else head.parameters()), lr=lr)
    head.train()
    for epoch in range(epochs):
        order = epoch_order(sampler, labels.tolist(), seed, epoch)
        view_generator = epoch_generator(seed, epoch, stream=3)
        for positions in data_module.batches(order, batch_size):
            chosen = torch.randint(0, views + 1, (len(positions),), generator=view_generator)
            loss = loss_fn(head(fetch(positions, chosen)), labels[positions])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return head.eval()


class ScaledLinear(nn.Module):
    """A frozen linear classifier with a learnable per-class scale: ``z_c = f_c (w_c x + b_c)`` (LWS)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight.clone())
        self.register_buffer("bias", bias.clone())
        self.scales = nn.Parameter(torch.ones(len(bias)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.weight.t() + self.bias) * self.scales


class HeadGrid(nn.Module):
    """``count`` copies of a linear head stacked into one layer and trained side by side, one
    loss each: the forward gives their logits as one (B, count, C) tensor. Each copy is the head
    that would be trained alone (same start, same batches; the losses add, so each copy's
    gradient is its own loss's, and Adam works element by element), up to float rounding, at
    one matrix product and one optimizer step per batch instead of ``count``."""

    def __init__(self, head: nn.Linear, count: int):
        super().__init__()
        self.count = count
        self.weight = nn.Parameter(head.weight.detach().repeat(count, 1))
        self.bias = nn.Parameter(head.bias.detach().repeat(count))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias).unflatten(1, (self.count, -1))

    def heads(self) -> list[nn.Linear]:
        return [
            _linear_copy(weight.detach(), bias.detach())
            for weight, bias in zip(self.weight.chunk(self.count), self.bias.chunk(self.count), strict=True)
        ]


def _fresh_head(num_classes: int, cosine: bool, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return make_head(num_classes, cosine)


def _linear_copy(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer.eval()


def _val_accuracy(head: nn.Module, features: Features, val_labels: np.ndarray) -> float:
    with torch.no_grad():
        return float((head(features.val).argmax(1).numpy() == val_labels).mean())


def _tune(candidates: dict[float, nn.Module], features: Features, val_labels: np.ndarray) -> tuple[float, dict]:
    if len(val_labels) == 0:
        raise LongtailError(
            "tuning tau needs a validation split: train stage 1 with --val-per-class > 0, or pass --tau"
        )
    scores = {tau: _val_accuracy(head, features, val_labels) for tau, head in candidates.items()}
    best = max(scores, key=lambda tau: (scores[tau], -abs(tau - 1.0)))  # ties: the value closest to 1
    return best, scores


def _retrain_loss_name(config: Stage2Config) -> str:
    return {CRT: "ce", "modified-ce": MODIFIED_CE}.get(config.loss, config.loss)


def _trains_in_a_grid(config: Stage2Config) -> bool:
    """Retrain heads that are plain linear layers (all but LDAM's cosine head) train in a ``HeadGrid``."""
    return config.method == "retrain" and not loss_spec(_retrain_loss_name(config)).cosine_head


def _training_options(config: Stage2Config) -> dict:
    return dict(
        sampler=config.resolved_sampler,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        views=config.views,
    )


def _batches_key(config: Stage2Config) -> tuple:
    """Heads whose configs agree on this see the same start and the same batches: one grid trains them."""
    return tuple(_training_options(config).items())


def _fetch(features: Features) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda positions, views: features.train[views, positions]


def _hyperparameters(config: Stage2Config, default_beta: float) -> dict:
    """The loss hyperparameters of a head: its gamma, and its beta or else ``default_beta``."""
    return dict(gamma=config.gamma, beta=default_beta if config.beta is None else config.beta)


def _fit_retrain_grid(
    configs: Sequence[Stage2Config], features: Features, dataset: Dataset, default_beta: float
) -> list[tuple]:
    """The retrain heads of ``configs`` (all with one ``_batches_key``), trained side by side in
    one ``HeadGrid``: one head per config, or one per tau of ``TAU_GRID_TRAINED`` for a
    logit-adjusted loss whose tau is to be tuned on validation."""
    counts = dataset.split.train_counts
    blocks = []  # per config: (loss name, its taus, loss on its (B, len(taus), C) block of the logits)
    for config in configs:
        loss_name = _retrain_loss_name(config)
        hyper = _hyperparameters(config, default_beta)
        if loss_name == "logit-adjusted" and config.tau is None:
            blocks.append((loss_name, TAU_GRID_TRAINED, build_loss(loss_name, counts, tau=TAU_GRID_TRAINED, **hyper)))
            continue
        tau = 1.0 if config.tau is None else config.tau
        single = build_loss(loss_name, counts, tau=tau, **hyper)
        blocks.append((loss_name, (tau,), lambda logits, y, single=single: single(logits[:, 0], y)))
    bounds = np.cumsum([0, *(len(taus) for _, taus, _ in blocks)]).tolist()
    spans = list(zip(bounds[:-1], bounds[1:], strict=True))

    def grid_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sum(loss(logits[:, a:b], y) for (_, _, loss), (a, b) in zip(blocks, spans, strict=True))

    first = configs[0]
    grid = train_head(
        HeadGrid(_fresh_head(len(counts), False, first.seed), bounds[-1]),
        _fetch(features),
        torch.from_numpy(dataset.train_labels),
        grid_loss,
        **_training_options(first),
    )
    heads = grid.heads()
    val_labels = dataset.arrays.y_train[dataset.split.val]
    fitted = []
    for (loss_name, taus, _), (a, b) in zip(blocks, spans, strict=True):
        if b - a == 1:
            fitted.append((heads[a], {"loss": loss_name, "tau": taus[0] if loss_name == "logit-adjusted" else None}))
            continue
        candidates = dict(zip(taus, heads[a:b], strict=True))
        tau, scores = _tune(candidates, features, val_labels)
        fitted.append((candidates[tau], {"loss": loss_name, "tau": tau, "val_accuracy_by_tau": scores}))
    return fitted


def _fit_alone(
    config: Stage2Config, stage1_head: nn.Module, features: Features, dataset: Dataset, default_beta: float
) -> tuple[nn.Module, dict]:
    """A stage-2 head that does not train in a grid: LDAM's cosine head, LWS, tau-norm, post-hoc-la."""
    counts = dataset.split.train_counts
    labels = torch.from_numpy(dataset.train_labels)
    if config.method == "retrain":  # a cosine head
        loss_name = _retrain_loss_name(config)
        head = train_head(
            _fresh_head(len(counts), True, config.seed),
            _fetch(features),
            labels,
            build_loss(loss_name, counts, **_hyperparameters(config, default_beta)),
            **_training_options(config),
        )
        return head, {"loss": loss_name, "tau": None}
    weight, bias = stage1_head.weight.detach(), stage1_head.bias.detach()
    if config.method == "lws":
        scaled = ScaledLinear(weight, bias)
        options = _training_options(config)
        train_head(scaled, _fetch(features), labels, build_loss("ce", counts), parameters=[scaled.scales], **options)
        scales = scaled.scales.detach()
        return _linear_copy(weight * scales[:, None], bias * scales), {"scales": scales.tolist()}
    if config.method == "tau-norm":

        def make(tau):
            return _linear_copy(weight / weight.norm(dim=1, keepdim=True).pow(tau), torch.zeros_like(bias))
    else:  # post-hoc-la
        log_prior = torch.log(torch.tensor(counts, dtype=torch.float32) / sum(counts))

        def make(tau):
            return _linear_copy(weight, bias - tau * log_prior)

    if config.tau is not None:
        return make(config.tau), {"tau": config.tau}
    candidates = {tau: make(tau) for tau in TAU_GRID_POST_HOC}
    tau, scores = _tune(candidates, features, dataset.arrays.y_train[dataset.split.val])
    return candidates[tau], {"tau": tau, "val_accuracy_by_tau": scores}


def fit_stage2_heads(
    configs: Sequence[Stage2Config],
    stage1_head: nn.Module,
    features: Features,
    dataset: Dataset,
    default_beta: float = 0.9999,
) -> list[tuple[nn.Module, dict]]:
    """The stage-2 head of each config and a record of what was chosen (tau, validation scores).
    ``default_beta``: the Class-Balanced beta of configs that leave it to the stage-1 run.

    Retrain heads that share their batches (same sampler, epochs, batch size, lr, seed and
    views) are trained side by side in one ``HeadGrid``, each with its own loss: the same heads
    as trained one by one, up to float rounding, at one optimizer step per batch for them all.
    """
    fitted: list = [None] * len(configs)
    grids: dict[tuple, list[int]] = {}
    for index, config in enumerate(configs):
        if _trains_in_a_grid(config):
            grids.setdefault(_batches_key(config), []).append(index)
        else:
            fitted[index] = _fit_alone(config, stage1_head, features, dataset, default_beta)
    for indices in grids.values():
        for index, result in zip(
            indices, _fit_retrain_grid([configs[i] for i in indices], features, dataset, default_beta), strict=True
        ):
            fitted[index] = result
    return fitted


def fit_stage2(
    config: Stage2Config, stage1_head: nn.Module, features: Features, dataset: Dataset, default_beta: float = 0.9999
) -> tuple[nn.Module, dict]:
    """The stage-2 head for ``config`` and a record of what was chosen (tau, validation scores)."""
    return fit_stage2_heads([config], stage1_head, features, dataset, default_beta)[0]


# ---------------------------------------------------------------- run directories


def _stage1_features(
    stage1_dir: Path, stage1_config: TrainConfig, dataset: Dataset, stage1_run: dict, views: int, cache_dir: Path | None
) -> Features:
    """The stage-1 run's features at its test size (with the mirrored test images under
    ``--tta flip``); its network is built only when some are not cached yet. Call it holding the
    stage-1 run's lock: it may rewrite the run's ``features.pt``."""
    runtime = Runtime.create()
    return load_or_extract_features(
        stage1_dir,
        stage1_run.get("model_sha256"),
        lambda: load_trained_model(stage1_dir, runtime, cache_dir)[0],
        dataset,
        stage1_config.seed,
        views,
        runtime,
        run_test_size(stage1_run, stage1_config),
        flip=stage1_config.tta == "flip",
    )


def decouple_many(
    stage1_dir: Path,
    runs: Mapping[Path, Stage2Config],
    *,
    overwrite: bool = False,
    cache_dir: Path | None = None,
    figures: bool = True,
) -> dict[Path, dict]:
    """Fit stage-2 heads on one finished stage-1 run, ``runs`` mapping each run directory to its
    config; each directory gets run.json, head.pt, metrics.json and (with ``figures``) the
    figures. The features are loaded once and the heads fitted by ``fit_stage2_heads`` (heads
    that share their batches train side by side); every run records its equal share of the
    feature and fitting time. Returns each run's test metrics."""
    for config in runs.values():
        config.validate()
    stage1_dir, outs = Path(stage1_dir).resolve(), [Path(out) for out in runs]
    configs = list(runs.values())
    # Everything that can fail on bad input happens before a run directory is touched.
    for out in outs:
        if out.resolve() == stage1_dir:
            raise LongtailError(f"--out {out} is the stage-1 run itself; give the stage-2 head a directory of its own")
        check_run_dir(out, resume=False, overwrite=overwrite, kind="decouple")
    stage1_config, dataset, stage1_run = load_finished_stage1(stage1_dir, cache_dir)
    for config in configs:
        if uses_cosine_head(stage1_config) and config.method != "retrain":
            raise LongtailError(
                f"{config.method} needs a linear stage-1 classifier; {stage1_dir} has LDAM's cosine "
                "head: use --method retrain"
            )
    stage1_head = load_trained_classifier(stage1_dir, stage1_config, dataset.arrays.num_classes)
    default_beta = class_balanced_beta(stage1_config)
    with ExitStack() as locks:
        locks.enter_context(RunLock(stage1_dir))  # its features.pt may be extended
        for out in outs:
            locks.enter_context(RunLock(out))
            prepare_run_dir(out, resume=False, overwrite=overwrite, kind="decouple")
        started = time.perf_counter()
        views = max(config.views for config in configs)
        features = _stage1_features(stage1_dir, stage1_config, dataset, stage1_run, views, cache_dir)
        feature_seconds = time.perf_counter() - started
        started = time.perf_counter()
        fitted = fit_stage2_heads(configs, stage1_head, features, dataset, default_beta)
        head_seconds = time.perf_counter() - started
        metrics = {}
        for out, config, (head, chosen) in zip(outs, configs, fitted, strict=True):
            cosine = not isinstance(head, nn.Linear)
            atomic_torch_save(out / "head.pt", {"state_dict": head.state_dict(), "cosine": cosine})
            atomic_write_json(
                out / RUN_FILE,
                {
                    "kind": "decouple",
                    "status": "finished",
                    "stage1": str(stage1_dir),
                    "stage1_model_sha256": stage1_run.get("model_sha256"),
                    "config": dataclasses.asdict(config),
                    "sampler": config.resolved_sampler,
                    "beta": _hyperparameters(config, default_beta)["beta"],
                    "feature_image_size": run_test_size(stage1_run, stage1_config),
                    "chosen": chosen,
                    "feature_seconds": feature_seconds / len(outs),
                    "head_seconds": head_seconds / len(outs),
                    "fitted_with": [str(other) for other in outs if other != out],
                },
            )
            metrics[out] = _evaluate_head(out, head, features, dataset, figures, stage1_config.groups)
        return metrics


def decouple(
    stage1_dir: Path,
    config: Stage2Config,
    out: Path,
    *,
    overwrite: bool = False,
    cache_dir: Path | None = None,
    figures: bool = True,
) -> dict:
    """Fit a stage-2 head on a finished stage-1 run; ``out`` gets run.json, head.pt, metrics.json
    and (with ``figures``) the figures. Returns its test metrics."""
    return decouple_many(stage1_dir, {Path(out): config}, overwrite=overwrite, cache_dir=cache_dir, figures=figures)[
        Path(out)
    ]


def evaluate_decoupled(run_dir: Path, cache_dir: Path | None = None, figures: bool = True) -> dict:
    """Test metrics of a stage-2 run (from the cached test features of its stage-1 run)."""
    stage1_dir = stage1_of(run_dir)
    stage1_config, dataset, stage1_run = load_finished_stage1(stage1_dir, cache_dir)
    head = load_head(run_dir, dataset.arrays.num_classes)
    with RunLock(stage1_dir):
        features = _stage1_features(stage1_dir, stage1_config, dataset, stage1_run, 0, cache_dir)
    return _evaluate_head(run_dir, head, features, dataset, figures, stage1_config.groups)


def _evaluate_head(
    run_dir: Path, head: nn.Module, features: Features, dataset: Dataset, figures: bool, grouping: str
) -> dict:
    """Test metrics of ``head`` on the cached test features (and with flip TTA when the features
    hold the mirrored test images), written into ``run_dir`` with the stage-1 run's ``grouping``."""
    logits = apply_head(head, features.test)
    flip_logits = apply_head(head, features.test, features.test_flip) if features.test_flip is not None else None
    return save_evaluation(
        run_dir, dataset.test_labels, logits, dataset, figures, grouping=grouping, flip_logits=flip_logits
    )
