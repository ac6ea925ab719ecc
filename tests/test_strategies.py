"""longtail.strategies: one meaning per strategy name of longtail.choices, and when LDAM-DRW re-weights."""

from __future__ import annotations

import pytest

from longtail.choices import LOSS_NAMES, SAMPLERS, STRATEGIES
from longtail.config import TrainConfig
from longtail.strategies import STRATEGY, reweighting_starts, strategy_of, uses_cosine_head


def test_every_strategy_name_has_one_meaning_built_from_known_names():
    assert tuple(STRATEGY) == tuple(STRATEGIES)
    for strategy in STRATEGY.values():
        assert strategy.loss in LOSS_NAMES
        assert strategy.sampler in SAMPLERS


def test_the_study_strategies_and_ldam_drw():
    assert strategy_of(TrainConfig(strategy="baseline")).sampler == "instance"
    assert strategy_of(TrainConfig(strategy="reweight")).sampler == "class-balanced"
    ldam = TrainConfig(strategy="ldam-drw", epochs=10, drw_start=0.8)
    assert uses_cosine_head(ldam) and not uses_cosine_head(TrainConfig())
    assert reweighting_starts(ldam) == 8
    assert reweighting_starts(TrainConfig(strategy="reweight", epochs=10)) is None


def test_logit_adjusted_end_to_end_trains_with_the_training_prior_added_and_is_calibrated_to_uniform():
    """Menon et al.'s loss at tau = 1 (Balanced Softmax) in stage 1: CE of z + log pi_train, and
    logits that estimate the balanced posterior (its own prior: uniform)."""
    import torch
    import torch.nn.functional as F

    from longtail.stage2.calibration import stage1_calibration
    from longtail.strategies import epoch_loss

    counts = [50, 20, 5]
    config = TrainConfig(strategy="logit-adjusted", epochs=3)
    assert strategy_of(config).sampler == "instance" and not uses_cosine_head(config)
    logits, targets = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 2, 1, 0])
    prior = torch.tensor(counts, dtype=torch.float) / sum(counts)
    expected = F.cross_entropy(logits + prior.log(), targets)
    for epoch in range(3):
        assert torch.allclose(epoch_loss(config, counts, epoch)(logits, targets), expected)
    assert not torch.allclose(epoch_loss(TrainConfig(), counts, 0)(logits, targets), expected)
    assert stage1_calibration(config, counts).prior == pytest.approx([1 / 3] * 3)
    assert stage1_calibration(TrainConfig(), counts).prior == pytest.approx([50 / 75, 20 / 75, 5 / 75])
