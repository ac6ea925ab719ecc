"""Losses for long-tailed classification: one pure function each, chosen by name.

Every loss takes ``logits`` (B, C), integer ``targets`` (B,) and returns the mean over the
batch. Losses that need the training class counts ``n_c`` receive them explicitly. The
registry at the bottom (``LOSSES``, ``build_loss``) builds them by the names of
``longtail.choices.LOSS_NAMES``, the torch-free list the command line offers (the tests check
the two agree); the command line (``--loss``, ``--strategy``), the recorded ``run.json`` files and
the Python API all use these names.

Heads trained side by side (``longtail.stage2.HeadGrid``): logit-adjusted CE, focal,
class-balanced CE and class-balanced focal also take (B, K, C) logits of K heads with one value
of their knob per head (a sequence of K), and return ``sum_k L_k``, each ``L_k`` head k's batch
mean: head k's gradient is its own loss's.

Conventions
- ``pi_c = n_c / sum(n)`` is the training class prior.
- Weighted losses average ``w_y * loss_i`` over the batch (Cui et al.'s definition), so a
  batch's loss does not depend on which classes happen to be in it through a normaliser.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from longtail.errors import LongtailError
from longtail.knobs import FIXED

LossFn = Callable[[Tensor, Tensor], Tensor]
LDAM_SCALE = 30.0  # s of LDAM's cosine logits (Cao et al.): the scale its softmax is trained and read at


# ---------------------------------------------------------------- class weights


def _counts_tensor(class_counts: Sequence[int] | Tensor, like: Tensor | None = None) -> Tensor:
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.ndim != 1 or (counts <= 0).any():
        raise LongtailError(f"class counts must be a 1-D list of positive numbers, got {counts.tolist()}")
    if like is not None:
        counts = counts.to(device=like.device)
    return counts


def class_balanced_weights(class_counts: Sequence[int] | Tensor, beta: float = FIXED["beta"]) -> Tensor:
    """Class-Balanced weights (Cui et al., CVPR 2019, "Class-Balanced Loss Based on Effective
    Number of Samples"): ``w_c = (1 - beta) / (1 - beta ** n_c)``, normalised so ``sum_c w_c = C``.

    ``(1 - beta ** n) / (1 - beta)`` is the "effective number" of samples of a class; beta = 0
    gives equal weights, beta -> 1 gives inverse frequency.
    """
    if not 0.0 <= beta < 1.0:
        raise LongtailError(f"class-balanced beta must be in [0, 1), got {beta}")
    counts = _counts_tensor(class_counts)
    weights = (1.0 - beta) / (1.0 - torch.pow(beta, counts))
    return (weights / weights.sum() * len(counts)).float()


def inverse_frequency_weights(class_counts: Sequence[int] | Tensor) -> Tensor:
    """Inverse-frequency weights ``w_c = (1 / n_c)``, normalised so ``sum_c w_c = C``."""
    counts = _counts_tensor(class_counts)
    weights = 1.0 / counts
    return (weights / weights.sum() * len(counts)).float()


def ldam_margins(class_counts: Sequence[int] | Tensor, max_margin: float = 0.5) -> Tensor:
    """LDAM margins (Cao et al., NeurIPS 2019): ``Delta_c = K / n_c ** (1/4)`` with K chosen so
    the largest margin (the rarest class) equals ``max_margin``."""
    counts = _counts_tensor(class_counts)
    margins = 1.0 / counts.pow(0.25)
    return (margins * (max_margin / margins.max())).float()


def _weighted_mean(per_sample: Tensor, targets: Tensor, weights: Tensor | None) -> Tensor:
    if weights is None:
        return per_sample.mean()
    return (weights.to(per_sample)[targets] * per_sample).mean()


def _per_head(value: float | Sequence[float], logits: Tensor, what: str) -> Tensor:
    """One value per head of (B, K, C) ``logits``: a number for every head, or a sequence of K."""
    if logits.ndim != 3:
        raise LongtailError(f"heads side by side need logits of shape (B, K, C), got {tuple(logits.shape)}")
    count = logits.shape[1]
    values = [float(value)] * count if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != count:
        raise LongtailError(f"{len(values)} values of {what} for {count} heads: give one per head")
    return torch.tensor(values, dtype=logits.dtype, device=logits.device)


def _sum_of_head_means(per_sample: Tensor, targets: Tensor, weights: Tensor | None) -> Tensor:
    """``sum_k mean_i w_{k, y_i} loss_{i, k}`` for per-sample losses (B, K) and per-head class
    weights (K, C) (or one row (C,) for every head, or none)."""
    if weights is not None:
        weights = weights.to(per_sample)
        per_sample = (weights[targets][:, None] if weights.ndim == 1 else weights[:, targets].t()) * per_sample
    return per_sample.mean(0).sum()


# ---------------------------------------------------------------- the losses


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Softmax cross-entropy: ``L = -log softmax(z)_y``."""
    return F.cross_entropy(logits, targets)


def logit_adjusted_cross_entropy(
    logits: Tensor, targets: Tensor, class_counts, tau: float | Sequence[float] = FIXED["tau"]
) -> Tensor:
    """Logit-adjusted cross-entropy (Menon et al., ICLR 2021, "Long-tail learning via logit
    adjustment"): ``L = -log softmax(z + tau * log pi)_y``.

    Training with the prior added makes the plain logits ``z`` estimate the balanced
    posterior. With ``tau = 1`` it equals Balanced Softmax (the constant ``log sum(n)`` cancels).

    A sequence of K temperatures scores K heads at once: ``logits`` is then (B, K, C), head k's
    logits trained with ``tau[k]``, and the result is ``sum_k L_k``, each ``L_k`` its batch mean.
    """
    log_prior = torch.log(_counts_tensor(class_counts, logits)).to(logits.dtype)
    log_prior = log_prior - torch.logsumexp(log_prior, dim=0)
    if isinstance(tau, (int, float)):
        return F.cross_entropy(logits + tau * log_prior, targets)
    taus = torch.as_tensor(tau, dtype=logits.dtype, device=logits.device)
    if logits.ndim != 3 or logits.shape[1] != len(taus):
        raise LongtailError(
            f"{len(taus)} temperatures need logits of shape (B, {len(taus)}, C), got {tuple(logits.shape)}"
        )
    adjusted = logits + taus[:, None] * log_prior  # (B, K, C)
    return len(taus) * F.cross_entropy(adjusted.flatten(0, 1), targets.repeat_interleave(len(taus)))


def balanced_softmax(logits: Tensor, targets: Tensor, class_counts) -> Tensor:
    """Balanced Softmax (Ren et al., NeurIPS 2020, "Balanced Meta-Softmax for Long-Tailed Visual
    Recognition"): ``L = -log [ n_y exp(z_y) / sum_j n_j exp(z_j) ] = CE(z + log n, y)``."""
    log_counts = torch.log(_counts_tensor(class_counts, logits)).to(logits.dtype)
    return F.cross_entropy(logits + log_counts, targets)


def focal(logits: Tensor, targets: Tensor, gamma: float = FIXED["gamma"], weights: Tensor | None = None) -> Tensor:
    """Focal loss, softmax form (Lin et al., ICCV 2017, "Focal Loss for Dense Object
    Detection"): ``L = -(1 - p_y) ** gamma * log p_y`` with ``p = softmax(z)``.

    ``gamma = 0`` is cross-entropy. ``weights`` (per class) turns it into ``w_y * L``.

    On (B, K, C) logits of K heads: ``gamma`` one value or one per head, ``weights`` (C,) or one
    row per head (K, C); the result is ``sum_k L_k``.
    """
    if logits.ndim == 3:
        gammas = _per_head(gamma, logits, "gamma")
        index = targets[:, None, None].expand(-1, logits.shape[1], 1)
        log_p_true = F.log_softmax(logits, dim=2).gather(2, index).squeeze(2)  # (B, K)
        per_sample = -torch.pow(1.0 - log_p_true.exp(), gammas) * log_p_true
        return _sum_of_head_means(per_sample, targets, weights)
    log_p_true = F.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
    per_sample = -torch.pow(1.0 - log_p_true.exp(), gamma) * log_p_true
    return _weighted_mean(per_sample, targets, weights)


def _class_balanced_grid(class_counts, beta, logits: Tensor) -> Tensor:
    """The class-balanced weights of each head of (B, K, C) logits, (K, C): one beta or one per head."""
    betas = _per_head(beta, logits, "beta").tolist()
    return torch.stack([class_balanced_weights(class_counts, b) for b in betas])


def class_balanced_cross_entropy(
    logits: Tensor, targets: Tensor, class_counts, beta: float | Sequence[float] = FIXED["beta"]
) -> Tensor:
    """Class-Balanced cross-entropy (Cui et al., CVPR 2019):
    ``L = w_y * CE(z, y)`` with ``w_c = (1 - beta) / (1 - beta ** n_c)`` normalised to sum to C.

    On (B, K, C) logits of K heads, ``beta`` one value or one per head; the result is ``sum_k L_k``.
    """
    if logits.ndim == 3:
        count = logits.shape[1]
        weights = _class_balanced_grid(class_counts, beta, logits)
        per_sample = F.cross_entropy(logits.flatten(0, 1), targets.repeat_interleave(count), reduction="none")
        return _sum_of_head_means(per_sample.view(-1, count), targets, weights)
    weights = class_balanced_weights(class_counts, beta)
    return _weighted_mean(F.cross_entropy(logits, targets, reduction="none"), targets, weights)


def class_balanced_focal(
    logits: Tensor,
    targets: Tensor,
    class_counts,
    beta: float | Sequence[float] = FIXED["beta"],
    gamma: float | Sequence[float] = FIXED["gamma"],
) -> Tensor:
    """Class-Balanced focal loss (Cui et al., CVPR 2019, with Lin et al.'s focal term, softmax
    form): ``L = -w_y (1 - p_y) ** gamma log p_y`` with the class-balanced ``w``.

    On (B, K, C) logits of K heads, ``beta`` and ``gamma`` one value or one per head (head k
    trained with ``beta[k]`` and ``gamma[k]``); the result is ``sum_k L_k``.
    """
    if logits.ndim == 3:
        return focal(logits, targets, gamma=gamma, weights=_class_balanced_grid(class_counts, beta, logits))
    return focal(logits, targets, gamma=gamma, weights=class_balanced_weights(class_counts, beta))


def inverse_frequency_cross_entropy(logits: Tensor, targets: Tensor, class_counts) -> Tensor:
    """Inverse-frequency weighted cross-entropy: ``L = w_y * CE(z, y)`` with ``w_c ∝ 1 / n_c``
    normalised to sum to C (the classic re-weighting baseline, e.g. Huang et al., CVPR 2016)."""
    weights = inverse_frequency_weights(class_counts)
    return _weighted_mean(F.cross_entropy(logits, targets, reduction="none"), targets, weights)


def ldam(
    logits: Tensor,
    targets: Tensor,
    class_counts,
    scale: float = LDAM_SCALE,
    max_margin: float = 0.5,
    weights: Tensor | None = None,
) -> Tensor:
    """LDAM, label-distribution-aware margin loss (Cao et al., NeurIPS 2019, "Learning
    Imbalanced Datasets with Label-Distribution-Aware Margin Loss"):
    ``L = -log [ exp(s (z_y - Delta_y)) / (exp(s (z_y - Delta_y)) + sum_{j != y} exp(s z_j)) ]``
    with ``Delta_c ∝ n_c ** (-1/4)``, the largest being ``max_margin``.

    ``z`` are cosine logits in [-1, 1] (a ``CosineLinear`` head), as in the paper's code;
    ``s`` = 30. ``weights`` (per class) gives the deferred re-weighting (DRW) form, reduced as
    the paper's code reduces it (``F.cross_entropy(..., weight=w)``): the batch's weighted mean
    ``sum_i w_{y_i} L_i / sum_i w_{y_i}``, not divided by the batch size.
    """
    margins = ldam_margins(class_counts, max_margin).to(logits)
    shifted = logits - F.one_hot(targets, logits.shape[1]).to(logits) * margins[None, :]
    return F.cross_entropy(scale * shifted, targets, weight=None if weights is None else weights.to(logits))


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class LossSpec:
    """How to build a loss by name, and what it needs around it."""

    build: Callable[..., LossFn]
    summary: str


# "Modified Cross-Entropy" is never defined by the study. Chosen before any test number was
# seen (see README, "Which loss is Modified CE"): a loss named as a modification of CE, that
# is not one of the other four, is logit-adjusted CE with its temperature tau tuned on the
# validation split (tau = 1 would just be Balanced Softmax, already in the study's list).
MODIFIED_CE = "logit-adjusted"

# Keyed by ``longtail.choices.LOSS_NAMES``, in its order.
LOSSES: dict[str, LossSpec] = {
    "ce": LossSpec(lambda counts, **_: cross_entropy, "cross-entropy"),
    "balanced-softmax": LossSpec(
        lambda counts, **_: lambda z, y: balanced_softmax(z, y, counts),
        "Balanced Softmax (Ren et al. 2020)",
    ),
    "focal": LossSpec(
        lambda counts, gamma=FIXED["gamma"], **_: lambda z, y: focal(z, y, gamma=gamma),
        "focal loss (Lin et al. 2017)",
    ),
    "class-balanced": LossSpec(
        lambda counts, beta=FIXED["beta"], **_: lambda z, y: class_balanced_cross_entropy(z, y, counts, beta),
        "class-balanced CE (Cui et al. 2019)",
    ),
    "cb-focal": LossSpec(
        lambda counts, beta=FIXED["beta"], gamma=FIXED["gamma"], **_: (
            lambda z, y: class_balanced_focal(z, y, counts, beta, gamma)
        ),
        "class-balanced focal (Cui et al. 2019)",
    ),
    "logit-adjusted": LossSpec(
        lambda counts, tau=FIXED["tau"], **_: lambda z, y: logit_adjusted_cross_entropy(z, y, counts, tau),
        "logit-adjusted CE (Menon et al. 2021)",
    ),
    "inverse-frequency-ce": LossSpec(
        lambda counts, **_: lambda z, y: inverse_frequency_cross_entropy(z, y, counts),
        "inverse-frequency weighted CE",
    ),
    "ldam": LossSpec(
        lambda counts, ldam_scale=LDAM_SCALE, ldam_max_margin=0.5, weights=None, **_: (
            lambda z, y: ldam(z, y, counts, ldam_scale, ldam_max_margin, weights)
        ),
        "LDAM (Cao et al. 2019)",
    ),
}


def loss_spec(name: str) -> LossSpec:
    """The registry entry for ``name``; ``modified-ce`` resolves to ``MODIFIED_CE``."""
    resolved = MODIFIED_CE if name == "modified-ce" else name
    if resolved not in LOSSES:
        known = ", ".join(sorted([*LOSSES, "modified-ce"]))
        raise LongtailError(f"unknown loss '{name}': choose one of {known}")
    return LOSSES[resolved]


def build_loss(name: str, class_counts: Sequence[int], **hyperparameters) -> LossFn:
    """Build the loss called ``name`` for training counts ``class_counts``.

    Hyperparameters by keyword: ``gamma`` (focal), ``beta`` (class-balanced), ``tau``
    (logit-adjusted), ``ldam_scale``, ``ldam_max_margin``, ``weights`` (LDAM-DRW); a knob not
    given takes its fixed value (``longtail.knobs.FIXED``). ``tau``,
    ``gamma`` and ``beta`` may be sequences, one value per head of (B, K, C) logits (see the
    module's docstring).
    """
    return loss_spec(name).build(list(class_counts), **hyperparameters)
