"""Fitting stage-2 heads on a frozen backbone's features, at the feature sizes they try.

Methods (``--method``):
- ``retrain`` (cRT-style): a re-initialised linear head trained with ``--loss`` and ``--sampler``;
  ``--loss crt`` is cross-entropy with class-balanced sampling (Kang et al.'s cRT).
- ``tau-norm``: the stage-1 classifier with weights ``w_c / |w_c| ** tau`` and no bias (Kang et al.).
- ``lws``: learnable weight scaling, ``z_c = f_c (w_c x + b_c)``, only ``f`` trained, with
  class-balanced sampling and CE (Kang et al.).
- ``post-hoc-la``: post-hoc logit adjustment of the stage-1 classifier, ``z - tau log pi``
  (Menon et al., ICLR 2021).
A knob not given is chosen on the validation split (``stage2.tuning``). Retrain heads that see the
same batches train side by side in one ``HeadGrid`` (``stage2.heads``). Every resulting head is
stored as one plain ``nn.Linear`` (or ``CosineLinear`` for LDAM). ``fit_at_sizes`` fits each head
at every feature size it tries (``feature_sizes``) and keeps the size of its best validation
accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from longtail.choices import COSINE_HEAD_LOSSES
from longtail.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, Stage2Config
from longtail.data import Dataset
from longtail.errors import LongtailError
from longtail.features import Features
from longtail.knobs import FIXED
from longtail.losses import MODIFIED_CE, build_loss
from longtail.resolution import GRID_STEP
from longtail.selection import best_on_validation
from longtail.stage2.heads import HeadGrid, ScaledLinear, fresh_head, linear_copy, train_head
from longtail.stage2.tuning import choose_setting, head_val_accuracy, reference_setting, tuned_record, tuning_grid

CRT = "crt"  # cross-entropy + class-balanced sampling


def _retrain_loss_name(config: Stage2Config) -> str:
    return {CRT: "ce", "modified-ce": MODIFIED_CE}.get(config.resolved_loss, config.resolved_loss)


def _trains_in_a_grid(config: Stage2Config) -> bool:
    """Retrain heads that are plain linear layers (all but LDAM's cosine head) train in a ``HeadGrid``."""
    return config.method == "retrain" and _retrain_loss_name(config) not in COSINE_HEAD_LOSSES


def _training_options(config: Stage2Config) -> dict:
    """The options of ``train_head`` (of a resolved config)."""
    return dict(
        sampler=config.resolved_sampler,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        views=config.views,
        max_norm=config.max_norm,
    )


def _batches_key(config: Stage2Config) -> tuple:
    """Heads whose configs agree on this see the same start and the same batches: one grid trains them."""
    return tuple(_training_options(config).items())


def _fetch(features: Features) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda positions, views: features.train[views, positions]


def _fixed(config: Stage2Config, default_beta: float) -> dict[str, float]:
    """The knobs of a resolved config's loss that are not tuned, with their values (a beta left
    to the stage-1 run: ``default_beta``)."""
    values = {"tau": config.tau, "gamma": config.gamma, "beta": default_beta if config.beta is None else config.beta}
    return {knob: values[knob] for knob in config.knobs if knob not in config.tuned_knobs}


def _fit_retrain_grid(
    configs: Sequence[Stage2Config], features: Features, dataset: Dataset, default_beta: float
) -> list[tuple]:
    """The retrain heads of ``configs`` (resolved, all with one ``_batches_key``), trained side by
    side in one ``HeadGrid``: one head per config, or one per setting of ``tuning_grid`` for a
    config whose knobs are tuned on validation (each block's loss vectorised over its settings)."""
    counts = dataset.split.train_counts
    blocks = []  # per config: (loss name, its settings, loss on its (B, len(settings), C) block of the logits)
    for config in configs:
        loss_name, fixed = _retrain_loss_name(config), _fixed(config, default_beta)
        settings = [{**fixed, **point} for point in tuning_grid(config)] or [fixed]
        if len(settings) == 1:
            single = build_loss(loss_name, counts, **fixed)
            blocks.append((loss_name, settings, lambda logits, y, single=single: single(logits[:, 0], y)))
        else:
            per_head = {knob: [setting[knob] for setting in settings] for knob in settings[0]}
            blocks.append((loss_name, settings, build_loss(loss_name, counts, **per_head)))
    bounds = np.cumsum([0, *(len(settings) for _, settings, _ in blocks)]).tolist()
    spans = list(zip(bounds[:-1], bounds[1:], strict=True))

    def grid_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sum(loss(logits[:, a:b], y) for (_, _, loss), (a, b) in zip(blocks, spans, strict=True))

    grid = train_head(
        HeadGrid(fresh_head(len(counts), False, configs[0].seed), bounds[-1]),
        _fetch(features),
        torch.from_numpy(dataset.train_labels),
        grid_loss,
        **_training_options(configs[0]),
    )
    heads = grid.heads()
    val_labels = dataset.val_labels
    fitted = []
    for config, (loss_name, settings, _), (a, b) in zip(configs, blocks, spans, strict=True):
        if b - a == 1:
            fitted.append((heads[a], {"loss": loss_name, **settings[0]}))
            continue
        points = tuning_grid(config)
        best, scores = choose_setting(
            list(zip(points, heads[a:b], strict=True)), features, val_labels, reference_setting(default_beta)
        )
        fitted.append((heads[a + best], {"loss": loss_name, **settings[best], **tuned_record(points, scores, best)}))
    return fitted


def _fit_alone(
    config: Stage2Config, stage1_head: nn.Module, features: Features, dataset: Dataset, default_beta: float
) -> tuple[nn.Module, dict]:
    """A stage-2 head (of a resolved config) that does not train in a grid: LDAM's cosine head,
    LWS, tau-norm, post-hoc-la."""
    counts = dataset.split.train_counts
    labels = torch.from_numpy(dataset.train_labels)
    if config.method == "retrain":  # a cosine head
        loss_name = _retrain_loss_name(config)
        head = train_head(
            fresh_head(len(counts), True, config.seed),
            _fetch(features),
            labels,
            build_loss(loss_name, counts, **_fixed(config, default_beta)),
            **_training_options(config),
        )
        return head, {"loss": loss_name, **_fixed(config, default_beta)}
    weight, bias = stage1_head.weight.detach(), stage1_head.bias.detach()
    if config.method == "lws":
        scaled = ScaledLinear(weight, bias)
        options = _training_options(config)
        train_head(scaled, _fetch(features), labels, build_loss("ce", counts), parameters=[scaled.scales], **options)
        scales = scaled.scales.detach()
        return linear_copy(weight * scales[:, None], bias * scales), {"scales": scales.tolist()}
    if config.method == "tau-norm":

        def make(tau):
            return linear_copy(weight / weight.norm(dim=1, keepdim=True).pow(tau), torch.zeros_like(bias))
    else:  # post-hoc-la
        log_prior = torch.log(torch.tensor(counts, dtype=torch.float32) / sum(counts))

        def make(tau):
            return linear_copy(weight, bias - tau * log_prior)

    if config.tau is not None:
        return make(config.tau), {"tau": config.tau}
    points = tuning_grid(config)
    candidates = [(point, make(point["tau"])) for point in points]
    best, scores = choose_setting(candidates, features, dataset.val_labels, reference_setting(default_beta))
    return candidates[best][1], tuned_record(points, scores, best)


def fit_stage2_heads(
    configs: Sequence[Stage2Config],
    stage1_head: nn.Module,
    features: Features,
    dataset: Dataset,
    default_beta: float = FIXED["beta"],
) -> list[tuple[nn.Module, dict]]:
    """The stage-2 head of each config and a record of what it used and what was chosen on
    validation (tau, gamma, beta and the validation scores of every setting tried).
    ``default_beta``: the Class-Balanced beta of configs that leave it to the stage-1 run.

    Retrain heads that share their batches (same sampler, epochs, batch size, lr, seed and
    views) are trained side by side in one ``HeadGrid``, each with its own loss: the same heads
    as trained one by one, up to float rounding, at one optimizer step per batch for them all.
    """
    configs = [config.resolved() for config in configs]
    if len(dataset.split.val) == 0:  # before any training
        for config in configs:
            if config.tuned_knobs:
                knobs, flags = " and ".join(config.tuned_knobs), " or ".join(f"--{k}" for k in config.tuned_knobs)
                raise LongtailError(
                    f"tuning {knobs} needs a validation split: train stage 1 with --val-per-class > 0, or pass {flags}"
                )
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


def feature_sizes(config: Stage2Config, stage1_size: int) -> list[int]:
    """The input sizes a head's features are tried at. ``--feature-size auto``: the stage-1 test
    size and one 16-px step either side (``longtail.resolution.GRID_STEP``), the best on the
    head's own validation accuracy kept; ``stage1``: the stage-1 test size; N: N px."""
    size = config.resolved().feature_size
    if size == "auto":
        around = (stage1_size - GRID_STEP, stage1_size, stage1_size + GRID_STEP)
        return [s for s in around if MIN_IMAGE_SIZE <= s <= MAX_IMAGE_SIZE]
    return [stage1_size if size == "stage1" else int(size)]


def fit_at_sizes(
    configs: Sequence[Stage2Config],
    stage1_size: int,
    features_at: Callable[[int], Features],
    fit: Callable[[Sequence[Stage2Config], Features], list[tuple]],
    val_labels: np.ndarray,
) -> list[tuple[nn.Module, dict, int]]:
    """Each head fitted (``fit``) on the train and validation features (``features_at``) of every
    size it tries (``feature_sizes``), and kept at the size of its best validation accuracy (ties:
    the size nearest the stage-1 test size, then the smaller): per config ``(head, chosen,
    size)``, ``chosen`` with ``feature_size_grid`` {size: validation accuracy} where it chose. The
    test set plays no part."""
    tried = [feature_sizes(config, stage1_size) for config in configs]
    results: list[dict[int, tuple]] = [{} for _ in configs]
    for size in sorted(set().union(*tried)):
        members = [i for i, sizes in enumerate(tried) if size in sizes]
        features = features_at(size)
        for i, (head, chosen) in zip(members, fit([configs[i] for i in members], features), strict=True):
            score = head_val_accuracy(head, features, val_labels) if len(tried[i]) > 1 else None
            results[i][size] = (head, chosen, score)
    kept = []
    for by_size in results:
        scores = {s: score or 0.0 for s, (_, _, score) in by_size.items()}
        size = best_on_validation(scores, tie_key=lambda s: (abs(s - stage1_size), s))
        head, chosen, _ = by_size[size]
        if len(by_size) > 1:
            chosen = {**chosen, "feature_size_grid": {str(s): by_size[s][2] for s in sorted(by_size)}}
        kept.append((head, chosen, size))
    return kept
