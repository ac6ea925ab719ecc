"""What a stage-1 strategy means: the loss it trains with, the order its epochs draw the images in,
whether its classifier is a cosine one (LDAM's) and when deferred re-weighting starts (LDAM-DRW);
the class prior its classifier is calibrated to is read in ``longtail.stage2.calibration``
(``stage1_calibration``), beside the stage-2 heads' readings.
The names live in the torch-free ``longtail.choices`` (``STRATEGIES``); this module gives them their
meaning, one entry per name (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

from longtail.choices import COSINE_HEAD_LOSSES
from longtail.config import TrainConfig
from longtail.knobs import FIXED
from longtail.losses import build_loss, class_balanced_weights


@dataclass(frozen=True)
class Strategy:
    """A stage-1 strategy: its loss (``longtail.losses``), its sampler (``longtail.samplers``) and
    whether it re-weights the loss class-balanced from ``TrainConfig.drw_start`` of the epochs on
    (deferred re-weighting, Cao et al. 2019)."""

    loss: str
    sampler: str
    deferred_reweighting: bool = False


STRATEGY = {
    "baseline": Strategy("ce", "instance"),
    "reweight": Strategy("ce", "class-balanced"),  # the study's Reweight: WeightedRandomSampler
    "ldam-drw": Strategy("ldam", "instance", deferred_reweighting=True),  # Cao et al. 2019
    "logit-adjusted": Strategy("logit-adjusted", "instance"),  # Menon et al. 2021 at tau = 1: Balanced Softmax
}


def strategy_of(config: TrainConfig) -> Strategy:
    return STRATEGY[config.strategy]


def uses_cosine_head(config: TrainConfig) -> bool:
    """Whether the strategy's loss needs a cosine classifier (LDAM's)."""
    return strategy_of(config).loss in COSINE_HEAD_LOSSES


def class_balanced_beta(config: TrainConfig) -> float:
    """The Class-Balanced beta of a run's class-balanced losses: its --decay-value under the
    ``cb-beta`` reading of "weight decay 0.9999", the standard 0.9999 (``knobs.FIXED``) under the others."""
    return config.decay_value if config.decay_reading == "cb-beta" else FIXED["beta"]


def reweighting_starts(config: TrainConfig) -> int | None:
    """The first epoch (0-based) whose loss is re-weighted class-balanced, or None for a strategy
    that never re-weights."""
    return int(config.drw_start * config.epochs) if strategy_of(config).deferred_reweighting else None


def epoch_loss(config: TrainConfig, counts: list[int], epoch: int):
    """The loss of ``epoch`` (0-based) of a run whose training split has these class ``counts``."""
    strategy = strategy_of(config)
    start = reweighting_starts(config)
    if start is not None and epoch >= start:
        return build_loss(strategy.loss, counts, weights=class_balanced_weights(counts, class_balanced_beta(config)))
    return build_loss(strategy.loss, counts)

