"""Samplers: the order in which one epoch visits the training images.

- ``instance``: every image once, in a random order (plain instance-balanced sampling).
- ``class-balanced``: the study's Reweight. Labels are counted with ``collections.Counter``,
  each sample gets the inverse of its class's count as weight, and
  ``torch.utils.data.WeightedRandomSampler(weights, num_samples=len(labels), replacement=True)``
  draws the epoch, so every class is drawn with equal probability (also Kang et al.'s
  class-balanced sampling for cRT).

The epoch's order is drawn from a generator seeded by ``(seed, epoch)``: every process of a
distributed run draws the same global order and takes its own disjoint share
(``order[rank::world_size]``), and a resumed run draws exactly the orders it would have drawn.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torch.utils.data import WeightedRandomSampler

from longtail.choices import SAMPLERS
from longtail.errors import LongtailError


def epoch_generator(seed: int, epoch: int, stream: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator (on ``device``) determined by (seed, epoch, stream) alone."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + epoch) * 101 + stream)


def inverse_frequency_sample_weights(labels: Sequence[int]) -> torch.Tensor:
    """Each sample's weight: 1 / (number of samples of its class), counted with ``Counter``."""
    counts = Counter(int(label) for label in labels)
    return torch.tensor([1.0 / counts[int(label)] for label in labels], dtype=torch.double)


def _instance_order(labels: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(len(labels), generator=generator)


def _class_balanced_order(labels: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    weighted = WeightedRandomSampler(
        inverse_frequency_sample_weights(labels), num_samples=len(labels), replacement=True, generator=generator
    )
    return torch.tensor(list(weighted), dtype=torch.long)


# The samplers by name: the names are ``longtail.choices.SAMPLERS`` (tests/test_cli_options.py checks).
ORDERS = {"instance": _instance_order, "class-balanced": _class_balanced_order}


def epoch_order(
    sampler: str, labels: Sequence[int], seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """Positions into ``labels`` that this process visits in ``epoch``."""
    if sampler not in ORDERS:
        raise LongtailError(f"unknown sampler '{sampler}': choose one of {', '.join(SAMPLERS)}")
    return ORDERS[sampler](labels, epoch_generator(seed, epoch))[rank::world_size]
