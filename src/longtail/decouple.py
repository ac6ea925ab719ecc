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
Temperatures (``tau``) not given are tuned on the validation split, never on the test set, and
so, with ``tune`` (``--tune``), are the focal gamma and the Class-Balanced beta of a loss that has
them and was not given them: one head per setting of a grid as large as Modified CE's tau grid
(``tuning_grid``), all trained side by side, the best on validation kept (ties: the setting closest
to the fixed one). Balanced Softmax has no knob: it is logit-adjusted CE at tau = 1.
Every resulting head is stored as one plain ``nn.Linear`` (or ``CosineLinear`` for LDAM).

A head can be served under a known deployment prior (``target_prior``, ``--target-prior``): its
logits shifted by ``tau (log pi_target - log pi_own)``, tau chosen on the validation split
re-weighted to the target (``longtail.priors.choose_adjustment``), recorded in run.json
(``target_prior``) and applied wherever the head is used (``adjusted_logits``: its evaluation,
``longtail predict``). ``pi_own``, the prior the head is calibrated to, is read from how it was
trained (``head_calibration``).
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
from longtail.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, Stage2Config, TrainConfig, validation_choices
from longtail.data import Dataset
from longtail.errors import LongtailError
from longtail.evaluation import save_evaluation
from longtail.features import Features, load_or_extract_features, softmax_logits
from longtail.losses import MODIFIED_CE, build_loss, class_balanced_weights, inverse_frequency_weights, loss_spec
from longtail.models import make_head
from longtail.priors import (
    DEFAULT_TEST_PRIORS,
    Calibration,
    Prior,
    check_classes,
    choose_adjustment,
    cross_entropy_calibration,
    logit_adjusted,
    uniform_calibration,
)
from longtail.resolution import GRID_STEP
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
from longtail.samplers import epoch_generator, epoch_order
from longtail.strategies import calibration as stage1_calibration
from longtail.strategies import class_balanced_beta, uses_cosine_head

__all__ = ["Stage2Config", "decouple", "decouple_many", "evaluate_decoupled"]  # Stage2Config: longtail.config

CRT = "crt"  # cross-entropy + class-balanced sampling
# Logit-adjusted loss: one head per value. Widened twice because a recorded run picked the top of
# the grid (RESULTS.md): 2.5 with a short stage 1, then 4.0 on one seed of a three-seed study.
TAU_GRID_TRAINED = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0)
TAU_GRID_POST_HOC = tuple(round(0.1 * i, 1) for i in range(61))  # 0.0 .. 6.0, free to evaluate
# The grids of ``tune`` (``longtail decouple --tune``, the study's tuned variants), as many values
# as TAU_GRID_TRAINED so that every loss gets the same tuning budget as Modified CE's tau:
# focal's gamma from 0 (plain CE) to 5, the Class-Balanced beta from 0.9 (weights within 0.5% of
# equal at CIFAR-10-LT's counts) to 0.99999 (within 3% of inverse frequency), log-spaced in 1 - beta;
# CB-focal's two knobs together on a 4 x 4 grid (16 heads) around the study's (0.9999, 1).
GAMMA_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0)
BETA_GRID = (0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9998, 0.9999, 0.99995, 0.99998, 0.99999)
CB_FOCAL_GRID = tuple((beta, gamma) for beta in (0.99, 0.999, 0.9999, 0.99999) for gamma in (0.0, 0.5, 1.0, 2.0))


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


def tuning_grid(config: Stage2Config) -> list[dict[str, float]]:
    """The settings a head is chosen among on validation, one dict of its tuned knobs each
    (``Stage2Config.tuned_knobs``; ``[]`` when nothing is tuned)."""
    knobs = config.tuned_knobs
    if not knobs:
        return []
    if knobs == ("tau",):
        return [{"tau": tau} for tau in (TAU_GRID_TRAINED if config.method == "retrain" else TAU_GRID_POST_HOC)]
    if knobs == ("beta", "gamma"):
        return [{"beta": beta, "gamma": gamma} for beta, gamma in CB_FOCAL_GRID]
    (knob,) = knobs
    return [{knob: value} for value in {"gamma": GAMMA_GRID, "beta": BETA_GRID}[knob]]


def _distance(setting: Mapping[str, float], fixed: Mapping[str, float]) -> float:
    """How far a setting lies from the fixed one (tau 1, gamma 1, the fixed beta): |tau - 1| + |gamma - 1|
    + |log10(1 - beta) - log10(1 - beta_fixed)|, so a step of 1 in gamma weighs as a factor 10 in 1 - beta."""
    distance = 0.0
    for knob, value in setting.items():
        if knob == "beta":
            distance += abs(np.log10(1.0 - value) - np.log10(1.0 - fixed["beta"]))
        else:
            distance += abs(value - fixed[knob])
    return float(distance)


def choose_setting(
    candidates: Sequence[tuple[dict, nn.Module]], features: Features, val_labels: np.ndarray, fixed: Mapping
) -> tuple[int, list[float]]:
    """The index of the candidate (setting, head) with the best validation accuracy, and every
    candidate's accuracy. Ties: the setting closest to the fixed one (``_distance``: tau 1, which
    is Balanced Softmax; the study's gamma 1 and beta), then the earlier in the grid."""
    scores = [_val_accuracy(head, features, val_labels) for _, head in candidates]
    best = max(range(len(candidates)), key=lambda i: (scores[i], -_distance(candidates[i][0], fixed)))
    return best, scores


def _tuned_record(settings: Sequence[dict], scores: Sequence[float], best: int) -> dict:
    """What ``chosen`` records of a head tuned on validation: the chosen values, which knobs were
    tuned and the validation accuracy of every setting (by tau, as always, for a temperature)."""
    knobs = list(settings[0])
    record = {**settings[best], "tuned": knobs}
    if knobs == ["tau"]:
        record["val_accuracy_by_tau"] = {s["tau"]: score for s, score in zip(settings, scores, strict=True)}
    else:
        record["val_accuracy_by_setting"] = [
            {**s, "val_accuracy": score} for s, score in zip(settings, scores, strict=True)
        ]
    return record


def _retrain_loss_name(config: Stage2Config) -> str:
    return {CRT: "ce", "modified-ce": MODIFIED_CE}.get(config.resolved_loss, config.resolved_loss)


def _trains_in_a_grid(config: Stage2Config) -> bool:
    """Retrain heads that are plain linear layers (all but LDAM's cosine head) train in a ``HeadGrid``."""
    return config.method == "retrain" and not loss_spec(_retrain_loss_name(config)).cosine_head


def _training_options(config: Stage2Config) -> dict:
    """The options of ``train_head`` (of a resolved config)."""
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


def _fixed(config: Stage2Config, default_beta: float) -> dict[str, float]:
    """The knobs of a resolved config's loss that are not tuned, with their values (a beta left
    to the stage-1 run: ``default_beta``)."""
    values = {"tau": config.tau, "gamma": config.gamma, "beta": default_beta if config.beta is None else config.beta}
    return {knob: values[knob] for knob in config.knobs if knob not in config.tuned_knobs}


def reference_setting(default_beta: float) -> dict[str, float]:
    """The fixed setting a tuned knob's ties are broken towards (``choose_setting``)."""
    return {"tau": 1.0, "gamma": Stage2Config.DEFAULTS["gamma"], "beta": default_beta}


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
        HeadGrid(_fresh_head(len(counts), False, configs[0].seed), bounds[-1]),
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
        fitted.append((heads[a + best], {"loss": loss_name, **settings[best], **_tuned_record(points, scores, best)}))
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
            _fresh_head(len(counts), True, config.seed),
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
    points = tuning_grid(config)
    candidates = [(point, make(point["tau"])) for point in points]
    best, scores = choose_setting(candidates, features, dataset.val_labels, reference_setting(default_beta))
    return candidates[best][1], _tuned_record(points, scores, best)


def fit_stage2_heads(
    configs: Sequence[Stage2Config],
    stage1_head: nn.Module,
    features: Features,
    dataset: Dataset,
    default_beta: float = 0.9999,
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


# ---------------------------------------------------------------- the prior a head is calibrated to


def head_calibration(
    config: Stage2Config, chosen: Mapping, counts: list[int], stage1_config: TrainConfig
) -> Calibration:
    """The class prior the softmax of a stage-2 head (its resolved ``config`` and run.json's
    ``chosen``) is calibrated to, with its reading (``longtail.priors``):

    - ``retrain`` and ``lws``: cross-entropy read on the head's sampler (instance: the training
      prior; class-balanced, as cRT and LWS: uniform), times the loss's class weights
      (class-balanced and cb-focal: the Class-Balanced weights of its beta; inverse-frequency-ce:
      1 / n), divided by ``pi_train ** tau`` for a loss that adds ``tau log pi_train`` to the logits
      (balanced-softmax: tau = 1, so uniform; logit-adjusted and modified-ce: the tau it used, so
      ``pi_train ** (1 - tau)``). Focal's focusing and LDAM's margins are read as no prior shift.
    - ``post-hoc-la``: the stage-1 classifier's prior (``strategies.calibration``) divided by
      ``pi_train ** tau``.
    - ``tau-norm``: uniform, a reading: its tau is chosen for accuracy on the balanced validation
      split, and rescaling the weights' norms is no exact prior shift.
    """
    if config.method == "tau-norm":
        return uniform_calibration(
            len(counts), "uniform: tau-normalisation, its tau chosen on the balanced validation split (a reading)"
        )
    if config.method == "post-hoc-la":
        return logit_adjusted(stage1_calibration(stage1_config, counts), counts, chosen["tau"], "post hoc")
    loss = config.resolved_loss if config.method == "retrain" else "ce"
    weights, weighting = None, ""
    if loss in ("class-balanced", "cb-focal"):
        weights, weighting = (
            class_balanced_weights(counts, chosen["beta"]).numpy(),
            f"class-balanced, beta = {chosen['beta']:g}",
        )
    elif loss == "inverse-frequency-ce":
        weights, weighting = inverse_frequency_weights(counts).numpy(), "inverse frequency"
    calibration = cross_entropy_calibration(
        counts, balanced_draw=config.resolved_sampler == "class-balanced", class_weights=weights, weighting=weighting
    )
    tau = {"balanced-softmax": 1.0, "logit-adjusted": chosen.get("tau"), "modified-ce": chosen.get("tau")}.get(loss)
    return calibration if tau is None else logit_adjusted(calibration, counts, tau, "in the loss")


def target_adjustment(
    target: Prior, head: nn.Module, calibration: Calibration, val_features: torch.Tensor, dataset: Dataset
) -> dict:
    """run.json's ``target_prior``: the shift of ``head``'s logits toward the prior ``target``,
    its tau chosen on the validation split (``val_features``) re-weighted to the target
    (``longtail.priors.choose_adjustment``), and the head's own prior with its reading."""
    counts = dataset.split.train_counts
    val_logits = softmax_logits(head, val_features).numpy()
    goal = target.probabilities(counts)
    adjustment = choose_adjustment(val_logits, dataset.val_labels, goal, np.asarray(calibration.prior))
    return {
        "name": target.name,
        **adjustment,
        "own_prior": list(calibration.prior),
        "own_prior_reading": calibration.reading,
    }


def adjusted_logits(
    head: nn.Module, features: torch.Tensor, adjustment: Mapping | None, flipped: torch.Tensor | None = None
) -> torch.Tensor:
    """The head's softmax logits (``features.softmax_logits``, flip TTA with ``flipped``), plus the
    shift of its ``adjustment`` toward a target prior (``target_adjustment``) where it has one."""
    logits = softmax_logits(head, features, flipped)
    return logits if adjustment is None else logits + torch.tensor(adjustment["shift"], dtype=logits.dtype)


# ---------------------------------------------------------------- run directories


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
            score = _val_accuracy(head, features, val_labels) if len(tried[i]) > 1 else None
            results[i][size] = (head, chosen, score)
    kept = []
    for by_size in results:
        size = max(by_size, key=lambda s: (by_size[s][2] or 0.0, -abs(s - stage1_size), -s))
        head, chosen, _ = by_size[size]
        if len(by_size) > 1:
            chosen = {**chosen, "feature_size_grid": {str(s): by_size[s][2] for s in sorted(by_size)}}
        kept.append((head, chosen, size))
    return kept


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
    stage1_config, dataset, stage1_run = stage1
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
                timed(
                    "features", lambda size: _stage1_features(stage1_dir, stage1, views, cache_dir, size, test=False)
                ),
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
    recorded adjustment to a target prior, if any, and under ``test_priors``; the caller draws its figures."""
    stage1_dir = stage1_of(run_dir)
    stage1_config, dataset, stage1_run = load_finished_stage1(stage1_dir, cache_dir)
    check_classes(test_priors, dataset.arrays.num_classes, "--test-priors")
    head = load_head(run_dir, dataset.arrays.num_classes)
    record = read_json(Path(run_dir) / RUN_FILE)
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
