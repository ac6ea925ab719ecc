"""The knobs of a stage-2 head chosen on the validation split, never on the test set.

Temperatures (``tau``) not given are tuned on the validation split and so, with ``tune``
(``--tune``), are the focal gamma and the Class-Balanced beta of a loss that has them and was not
given them: one head per setting of a grid (``tuning_grid``, of the grids in ``longtail.knobs``:
13 values of gamma or of beta, as Modified CE's tau has, and 16 (beta, gamma) pairs for CB-focal),
all trained side by side (``stage2.fit``), the best on validation kept (``choose_setting``; ties:
the setting closest to the fixed one). Balanced Softmax has no knob: it is logit-adjusted CE at
tau = 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from longtail.config import Stage2Config
from longtail.features import Features
from longtail.knobs import BETA_GRID, CB_FOCAL_GRID, FIXED, GAMMA_GRID, TAU_GRID_POST_HOC, TAU_GRID_TRAINED
from longtail.metrics import top1_accuracy
from longtail.selection import best_on_validation


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


def reference_setting(default_beta: float) -> dict[str, float]:
    """The fixed setting a tuned knob's ties are broken towards (``choose_setting``): ``knobs.FIXED``,
    with the beta the head's stage-1 run gives it."""
    return {**FIXED, "beta": default_beta}


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


def head_val_accuracy(head: nn.Module, features: Features, val_labels: np.ndarray) -> float:
    """The head's accuracy on the validation features (``metrics.top1_accuracy``)."""
    with torch.no_grad():
        return top1_accuracy(head(features.val), val_labels)


def choose_setting(
    candidates: Sequence[tuple[dict, nn.Module]], features: Features, val_labels: np.ndarray, fixed: Mapping
) -> tuple[int, list[float]]:
    """The index of the candidate (setting, head) with the best validation accuracy, and every
    candidate's accuracy. Ties: the setting closest to the fixed one (``_distance``: tau 1, which
    is Balanced Softmax; the study's gamma 1 and beta), then the earlier in the grid."""
    scores = [head_val_accuracy(head, features, val_labels) for _, head in candidates]
    best = best_on_validation(dict(enumerate(scores)), tie_key=lambda i: _distance(candidates[i][0], fixed))
    return best, scores


def tuned_record(settings: Sequence[dict], scores: Sequence[float], best: int) -> dict:
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
