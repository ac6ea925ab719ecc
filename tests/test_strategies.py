"""longtail.strategies: one meaning per strategy name of longtail.choices, and when LDAM-DRW re-weights."""

from __future__ import annotations

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
