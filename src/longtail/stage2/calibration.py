"""The class prior a classifier's softmax is calibrated to, and serving it under another prior.

A head can be served under a known deployment prior (``target_prior``, ``--target-prior``): its
logits shifted by ``tau (log pi_target - log pi_own)``, tau chosen on the validation split
re-weighted to the target (``longtail.priors.choose_adjustment``), recorded in run.json
(``target_prior``) and applied wherever the head is used (``adjusted_logits``: its evaluation,
``longtail predict``). ``pi_own``, the prior the head is calibrated to, is read from how it was
trained (``head_calibration``), or, for a stage-1 run's own classifier, from its strategy
(``stage1_calibration``; post-hoc logit adjustment builds on it, and ``longtail predict`` serves a
stage-1 classifier like any head).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from longtail.config import Stage2Config, TrainConfig
from longtail.data import Dataset
from longtail.features import softmax_logits
from longtail.losses import class_balanced_weights, inverse_frequency_weights
from longtail.priors import (
    Calibration,
    Prior,
    choose_adjustment,
    cross_entropy_calibration,
    logit_adjusted,
    uniform_calibration,
)
from longtail.strategies import class_balanced_beta, strategy_of


def stage1_calibration(config: TrainConfig, counts: list[int]) -> Calibration:
    """The class prior a stage-1 run's classifier is calibrated to (``longtail.priors``): the
    baseline's cross-entropy on instance-sampled data, the training prior; Reweight's class-balanced
    sampler, uniform; LDAM-DRW, the training prior times the class-balanced weights its last epochs
    minimise with (LDAM's margins read as no prior shift), close to uniform at CIFAR-10-LT's counts;
    logit-adjusted CE end to end (tau = 1), the training prior divided by itself: uniform."""
    strategy = strategy_of(config)
    beta = class_balanced_beta(config)
    weights = class_balanced_weights(counts, beta).numpy() if strategy.deferred_reweighting else None
    calibrated = cross_entropy_calibration(
        counts,
        balanced_draw=strategy.sampler == "class-balanced",
        class_weights=weights,
        weighting=f"the deferred class-balanced re-weighting, beta = {beta:g}",
    )
    if strategy.loss == "logit-adjusted":
        return logit_adjusted(calibrated, counts, 1.0, "in the loss")
    return calibrated


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
    - ``post-hoc-la``: the stage-1 classifier's prior (``stage1_calibration``) divided by
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
