"""Each loss in ``longtail.losses`` against values worked out by hand on small examples.

The expected values are computed with ``math.exp``/``math.log`` on plain Python floats, never
with torch's own cross-entropy, so a wrong formula in the library fails here.
"""

from __future__ import annotations

import math

import pytest
import torch

from longtail import losses
from longtail.choices import COSINE_HEAD_LOSSES
from longtail.errors import LongtailError

# A 2-sample, 3-class example used throughout.
LOGITS = [[2.0, 1.0, 0.1], [0.5, 2.5, -1.0]]
TARGETS = [0, 2]
COUNTS = [100, 20, 5]

# CIFAR-10-LT, imbalance factor 100.
CIFAR10_LT_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def _z() -> torch.Tensor:
    return torch.tensor(LOGITS, dtype=torch.float64)


def _y() -> torch.Tensor:
    return torch.tensor(TARGETS)


def _softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def _ce(row: list[float], target: int) -> float:
    """-log softmax(row)[target], by hand."""
    return -math.log(_softmax(row)[target])


def _normalised(weights: list[float]) -> list[float]:
    total = sum(weights)
    return [w / total * len(weights) for w in weights]


def _cb_weights(counts: list[int], beta: float) -> list[float]:
    return _normalised([(1.0 - beta) / (1.0 - beta**n) for n in counts])


def _close(actual: torch.Tensor, expected: float, rel: float = 1e-9) -> None:
    assert actual.ndim == 0
    assert actual.item() == pytest.approx(expected, rel=rel)


# ---------------------------------------------------------------- cross-entropy family


def test_cross_entropy_matches_hand_computed_minus_log_softmax():
    # sample 0: z = (2, 1, 0.1), y = 0 -> -log(e^2 / (e^2 + e^1 + e^0.1))
    loss0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.0) + math.exp(0.1)))
    # sample 1: z = (0.5, 2.5, -1), y = 2 -> -log(e^-1 / (e^0.5 + e^2.5 + e^-1))
    loss1 = -math.log(math.exp(-1.0) / (math.exp(0.5) + math.exp(2.5) + math.exp(-1.0)))
    _close(losses.cross_entropy(_z(), _y()), (loss0 + loss1) / 2)


def test_balanced_softmax_matches_hand_computed():
    expected = []
    for row, y in zip(LOGITS, TARGETS, strict=True):
        numerator = COUNTS[y] * math.exp(row[y])
        denominator = sum(n * math.exp(v) for n, v in zip(COUNTS, row, strict=True))
        expected.append(-math.log(numerator / denominator))
    _close(losses.balanced_softmax(_z(), _y(), COUNTS), sum(expected) / 2)


def test_balanced_softmax_differs_from_plain_cross_entropy():
    assert not torch.isclose(losses.balanced_softmax(_z(), _y(), COUNTS), losses.cross_entropy(_z(), _y()))


def test_logit_adjusted_tau_1_equals_balanced_softmax_on_random_logits():
    generator = torch.Generator().manual_seed(0)
    counts = [500, 120, 40, 9, 3]
    logits = torch.randn(16, 5, generator=generator)
    targets = torch.randint(0, 5, (16,), generator=generator)
    adjusted = losses.logit_adjusted_cross_entropy(logits, targets, counts, tau=1.0)
    balanced = losses.balanced_softmax(logits, targets, counts)
    torch.testing.assert_close(adjusted, balanced, atol=1e-6, rtol=0)


def test_logit_adjusted_tau_2_matches_hand_computed():
    tau = 2.0
    total = sum(COUNTS)
    log_prior = [math.log(n / total) for n in COUNTS]
    expected = [
        _ce([z + tau * lp for z, lp in zip(row, log_prior, strict=True)], y)
        for row, y in zip(LOGITS, TARGETS, strict=True)
    ]
    _close(losses.logit_adjusted_cross_entropy(_z(), _y(), COUNTS, tau=tau), sum(expected) / 2)


def test_logit_adjusted_over_a_tau_grid_sums_each_heads_own_loss():
    generator = torch.Generator().manual_seed(1)
    counts, taus = [500, 120, 40, 9, 3], (0.5, 1.0, 2.5)
    logits = torch.randn(8, len(taus), 5, generator=generator)  # (B, K, C): one head per tau
    targets = torch.randint(0, 5, (8,), generator=generator)
    each = [losses.logit_adjusted_cross_entropy(logits[:, k], targets, counts, tau=tau) for k, tau in enumerate(taus)]
    grid = losses.logit_adjusted_cross_entropy(logits, targets, counts, tau=taus)
    torch.testing.assert_close(grid, sum(each), atol=1e-6, rtol=0)
    with pytest.raises(LongtailError, match=r"shape \(B, 3, C\)"):
        losses.logit_adjusted_cross_entropy(logits[:, :2], targets, counts, tau=taus)


@pytest.mark.parametrize(
    ("name", "per_head"),
    [
        ("focal", {"gamma": [0.0, 0.5, 1.0, 3.0]}),
        ("class-balanced", {"beta": [0.9, 0.99, 0.999, 0.9999]}),
        ("cb-focal", {"beta": [0.99, 0.99, 0.9999, 0.99999], "gamma": [0.0, 2.0, 1.0, 0.5]}),
        ("cb-focal", {"beta": [0.9, 0.999, 0.9999, 0.99999], "gamma": 2.0}),  # one gamma for every head
    ],
)
def test_a_grid_of_heads_sums_each_heads_own_loss_and_gradient(name, per_head):
    # The losses the tuned grids train with: head k's loss (and so its gradient) is exactly the
    # loss of that head alone with its own knob values.
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(16, 4, len(CIFAR10_LT_100), generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, len(CIFAR10_LT_100), (16,), generator=generator)
    grid = losses.build_loss(name, CIFAR10_LT_100, **per_head)(logits, targets)
    (grid_gradient,) = torch.autograd.grad(grid, logits)
    each, gradients = [], []
    for k in range(4):
        values = {knob: v[k] if isinstance(v, list) else v for knob, v in per_head.items()}
        head = logits[:, k].detach().requires_grad_(True)
        loss = losses.build_loss(name, CIFAR10_LT_100, **values)(head, targets)
        each.append(loss.detach())
        gradients.append(torch.autograd.grad(loss, head)[0])
    torch.testing.assert_close(grid.detach(), sum(each), atol=1e-12, rtol=0)
    torch.testing.assert_close(grid_gradient, torch.stack(gradients, dim=1), atol=1e-12, rtol=0)
    with pytest.raises(LongtailError, match="one per head"):
        losses.build_loss(
            name, CIFAR10_LT_100, **{k: v[:3] if isinstance(v, list) else v for k, v in per_head.items()}
        )(logits, targets)


# ---------------------------------------------------------------- focal


def test_focal_gamma_0_equals_cross_entropy():
    torch.testing.assert_close(losses.focal(_z(), _y(), gamma=0.0), losses.cross_entropy(_z(), _y()))


def test_focal_gamma_2_matches_hand_computed():
    expected = []
    for row, y in zip(LOGITS, TARGETS, strict=True):
        p = _softmax(row)[y]
        expected.append((1.0 - p) ** 2 * -math.log(p))
    _close(losses.focal(_z(), _y(), gamma=2.0), sum(expected) / 2)


# ---------------------------------------------------------------- class-balanced weights


def test_class_balanced_weights_cifar10_lt_if100():
    beta = 0.9999
    expected = []
    for n in CIFAR10_LT_100:
        expected.append((1.0 - beta) / (1.0 - beta**n))
    total = sum(expected)
    expected = [w / total * 10 for w in expected]

    weights = losses.class_balanced_weights(CIFAR10_LT_100, beta)
    assert weights.shape == (10,)
    for actual, want in zip(weights.tolist(), expected, strict=True):
        assert actual == pytest.approx(want, rel=1e-5)
    assert weights.sum().item() == pytest.approx(10.0, rel=1e-5)
    # counts are decreasing, so the weights must be strictly increasing along the list:
    # the weight is decreasing in n.
    assert (weights.diff() > 0).all()


def test_class_balanced_weights_beta_0_is_all_ones():
    weights = losses.class_balanced_weights(CIFAR10_LT_100, beta=0.0)
    assert weights.tolist() == pytest.approx([1.0] * 10)


@pytest.mark.parametrize("beta", [1.0, 1.5, -0.1])
def test_class_balanced_weights_reject_beta_outside_unit_interval(beta):
    with pytest.raises(LongtailError, match="beta"):
        losses.class_balanced_weights(CIFAR10_LT_100, beta=beta)


def test_class_balanced_weights_reject_zero_count():
    with pytest.raises(LongtailError, match="positive"):
        losses.class_balanced_weights([10, 0, 3])


def test_class_balanced_cross_entropy_matches_hand_computed():
    beta = 0.99
    w = _cb_weights(COUNTS, beta)
    expected = [w[y] * _ce(row, y) for row, y in zip(LOGITS, TARGETS, strict=True)]
    _close(losses.class_balanced_cross_entropy(_z(), _y(), COUNTS, beta), sum(expected) / 2, rel=1e-6)


def test_class_balanced_focal_matches_hand_computed():
    beta, gamma = 0.99, 2.0
    w = _cb_weights(COUNTS, beta)
    expected = []
    for row, y in zip(LOGITS, TARGETS, strict=True):
        p = _softmax(row)[y]
        expected.append(w[y] * (1.0 - p) ** gamma * -math.log(p))
    _close(losses.class_balanced_focal(_z(), _y(), COUNTS, beta, gamma), sum(expected) / 2, rel=1e-6)


# ---------------------------------------------------------------- inverse frequency


def test_inverse_frequency_weights_match_hand_computed():
    # 1/100 + 1/20 + 1/5 = 0.26; w_c = (1/n_c) / 0.26 * 3
    expected = [0.01 / 0.26 * 3, 0.05 / 0.26 * 3, 0.2 / 0.26 * 3]
    weights = losses.inverse_frequency_weights(COUNTS)
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert weights.sum().item() == pytest.approx(3.0, rel=1e-6)


def test_inverse_frequency_cross_entropy_matches_hand_computed():
    w = _normalised([1.0 / n for n in COUNTS])
    expected = [w[y] * _ce(row, y) for row, y in zip(LOGITS, TARGETS, strict=True)]
    _close(losses.inverse_frequency_cross_entropy(_z(), _y(), COUNTS), sum(expected) / 2, rel=1e-6)


# ---------------------------------------------------------------- LDAM

COSINES = [[0.8, 0.1, -0.3], [0.2, 0.4, 0.35]]


def _hand_ldam_per_sample(counts: list[int], scale: float, max_margin: float) -> list[float]:
    raw = [n**-0.25 for n in counts]
    margins = [m * max_margin / max(raw) for m in raw]
    per_sample = []
    for row, y in zip(COSINES, TARGETS, strict=True):
        shifted = [z - margins[y] if j == y else z for j, z in enumerate(row)]
        per_sample.append(_ce([scale * v for v in shifted], y))
    return per_sample


def test_ldam_margins_max_and_n_to_minus_quarter():
    margins = losses.ldam_margins(CIFAR10_LT_100, max_margin=0.5)
    assert margins.max().item() == pytest.approx(0.5, rel=1e-6)
    # the rarest class (n = 50) gets the largest margin
    assert margins.argmax().item() == 9
    # Delta_c * n_c^(1/4) is the same constant K for every class
    products = [m * n**0.25 for m, n in zip(margins.tolist(), CIFAR10_LT_100, strict=True)]
    assert products == pytest.approx([0.5 * 50**0.25] * 10, rel=1e-6)


def test_ldam_matches_hand_computed():
    scale = 30.0
    expected = _hand_ldam_per_sample(COUNTS, scale, 0.5)
    cosines = torch.tensor(COSINES, dtype=torch.float64)
    _close(losses.ldam(cosines, _y(), COUNTS, scale=scale, max_margin=0.5), sum(expected) / 2, rel=1e-6)


def test_ldam_with_drw_weights_is_the_weighted_mean_of_cao_et_als_code():
    """sum_i w_{y_i} L_i / sum_i w_{y_i}, as F.cross_entropy(..., weight=w) in the paper's code."""
    weights = losses.class_balanced_weights(COUNTS, 0.99)
    w = weights.tolist()
    per_sample = _hand_ldam_per_sample(COUNTS, 30.0, 0.5)
    expected = sum(w[y] * loss for y, loss in zip(TARGETS, per_sample, strict=True)) / sum(w[y] for y in TARGETS)
    cosines = torch.tensor(COSINES, dtype=torch.float64)
    _close(losses.ldam(cosines, _y(), COUNTS, weights=weights), expected, rel=1e-6)


# ---------------------------------------------------------------- registry


@pytest.mark.parametrize("name", [*losses.LOSSES, "modified-ce"])
def test_build_loss_returns_finite_scalar_with_gradient(name):
    generator = torch.Generator().manual_seed(1)
    counts = [50, 20, 8, 3]
    logits = (torch.rand(6, 4, generator=generator) * 2 - 1).requires_grad_()
    targets = torch.tensor([0, 1, 2, 3, 0, 3])
    loss = losses.build_loss(name, counts)(logits, targets)
    assert loss.ndim == 0
    assert torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_build_loss_passes_hyperparameters():
    z, y = _z(), _y()
    built = losses.build_loss("logit-adjusted", COUNTS, tau=2.0)(z, y)
    torch.testing.assert_close(built, losses.logit_adjusted_cross_entropy(z, y, COUNTS, tau=2.0))
    built = losses.build_loss("focal", COUNTS, gamma=2.0)(z, y)
    torch.testing.assert_close(built, losses.focal(z, y, gamma=2.0))
    cosines, weights = torch.tensor(COSINES, dtype=torch.float64), losses.class_balanced_weights(COUNTS, 0.99)
    built = losses.build_loss("ldam", COUNTS, ldam_scale=10.0, ldam_max_margin=0.3, weights=weights)(cosines, y)
    torch.testing.assert_close(built, losses.ldam(cosines, y, COUNTS, 10.0, 0.3, weights))


def test_modified_ce_resolves_to_modified_ce_constant():
    assert losses.loss_spec("modified-ce") is losses.LOSSES[losses.MODIFIED_CE]
    z, y = _z(), _y()
    torch.testing.assert_close(
        losses.build_loss("modified-ce", COUNTS)(z, y),
        losses.build_loss(losses.MODIFIED_CE, COUNTS)(z, y),
    )


def test_ldam_is_the_only_cosine_head_loss():
    assert [name for name in losses.LOSSES if name in COSINE_HEAD_LOSSES] == list(COSINE_HEAD_LOSSES) == ["ldam"]


def test_unknown_loss_name_lists_known_names():
    with pytest.raises(LongtailError) as excinfo:
        losses.build_loss("no-such-loss", COUNTS)
    message = str(excinfo.value)
    assert "no-such-loss" in message
    for name in [*losses.LOSSES, "modified-ce"]:
        assert name in message
