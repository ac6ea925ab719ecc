"""Mixing two images of a batch into one training example: mixup and CutMix, named deviations
from the study's stage 1 (``--mixup ALPHA``, ``--cutmix ALPHA``).

- mixup (Zhang et al., ICLR 2018, "mixup: Beyond Empirical Risk Minimization"): ``x = lam x_i +
  (1 - lam) x_j`` with ``lam ~ Beta(alpha, alpha)``.
- CutMix (Yun et al., ICCV 2019, "CutMix: Regularization Strategy to Train Strong Classifiers with
  Localizable Features"): a box of area ``(1 - lam)`` of the image, ``lam ~ Beta(alpha, alpha)``,
  centred uniformly and clipped at the border, is pasted from ``x_j``; ``lam`` is then recomputed
  from the clipped box, so it is the exact share of ``x_i``'s pixels.

Each batch is mixed with a shuffled copy of itself (``j = perm(i)``), and the loss of the mixed
batch is ``lam L(z, y_i) + (1 - lam) L(z, y_j)`` for any of the stage-1 losses (each a batch mean,
so the combination is the loss of a mixed label). The draws come from a generator determined by
(seed, epoch, rank), so a resumed run mixes exactly as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

MIXING_STREAM = 7  # the mixing draws' own stream, apart from the crops' and the sampler's


@dataclass(frozen=True)
class Mixed:
    """A mixed batch: the inputs, the partner of every example and the share of its own image."""

    inputs: torch.Tensor
    partner: torch.Tensor  # index j of each example's partner in the batch
    lam: float

    def loss(self, loss_fn: Callable, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``lam L(z, y) + (1 - lam) L(z, y[partner])``."""
        return self.lam * loss_fn(logits, targets) + (1.0 - self.lam) * loss_fn(logits, targets[self.partner])


def mixing_generator(seed: int, epoch: int, rank: int) -> np.random.Generator:
    """The mixing draws of one epoch on one rank, determined by (seed, epoch, rank) alone."""
    return np.random.default_rng((seed, epoch, rank, MIXING_STREAM))


def _partners(generator: np.random.Generator, inputs: torch.Tensor) -> torch.Tensor:
    """Each example's partner, a permutation of the batch, on its device without the host waiting for
    the device (a copy from pageable memory is staged at once; no synchronisation per step)."""
    return torch.from_numpy(generator.permutation(len(inputs))).to(inputs.device, non_blocking=True)


def mixup(inputs: torch.Tensor, alpha: float, generator: np.random.Generator) -> Mixed:
    """``lam x + (1 - lam) x[perm]``, ``lam ~ Beta(alpha, alpha)``."""
    lam = float(generator.beta(alpha, alpha))
    partner = _partners(generator, inputs)
    return Mixed(lam * inputs + (1.0 - lam) * inputs[partner], partner, lam)


def cutmix(inputs: torch.Tensor, alpha: float, generator: np.random.Generator) -> Mixed:
    """``x`` with a box of ``x[perm]`` pasted in; ``lam`` the share of the image outside the box."""
    lam = float(generator.beta(alpha, alpha))
    partner = _partners(generator, inputs)
    height, width = inputs.shape[-2:]
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    centre_y, centre_x = int(generator.integers(height)), int(generator.integers(width))
    top, bottom = np.clip([centre_y - cut_h // 2, centre_y + cut_h // 2], 0, height)
    left, right = np.clip([centre_x - cut_w // 2, centre_x + cut_w // 2], 0, width)
    mixed = inputs.clone()
    mixed[..., top:bottom, left:right] = inputs[partner][..., top:bottom, left:right]
    lam = 1.0 - float((bottom - top) * (right - left)) / (height * width)
    return Mixed(mixed, partner, lam)


MIXINGS = {"mixup": mixup, "cutmix": cutmix}
