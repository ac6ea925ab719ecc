"""Stage-2 heads and the loop that trains them.

``train_head`` takes a feature-fetching function, so the same loop trains on the cached features
(``longtail.features``) and through the frozen backbone (the equivalence is tested). Linear
heads that see the same batches train side by side in one ``HeadGrid`` (``longtail reproduce``
fits the study's five losses this way); LWS trains the per-class scales of a ``ScaledLinear``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from longtail import data as data_module
from longtail.models import make_head
from longtail.samplers import epoch_generator, epoch_order


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
    max_norm: float | None = None,
    parameters: Sequence[nn.Parameter] | None = None,
) -> nn.Module:
    """Train ``head`` on features ``fetch(positions, view_per_sample)`` with Adam.

    Each sample's view is drawn uniformly from 0..views per epoch (always 0 with no views).
    ``max_norm`` (MaxNorm, Alshammari et al., "Long-tailed recognition via weight balancing", CVPR
    2022): after every step each class's weight row is projected back into the ball of that L2
    radius, ``w_c <- w_c * min(1, max_norm / |w_c|)`` (``torch.renorm``; the bias is left alone).
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
            if max_norm is not None:
                with torch.no_grad():
                    head.weight.copy_(torch.renorm(head.weight, p=2, dim=0, maxnorm=max_norm))
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
            linear_copy(weight.detach(), bias.detach())
            for weight, bias in zip(self.weight.chunk(self.count), self.bias.chunk(self.count), strict=True)
        ]


def fresh_head(num_classes: int, cosine: bool, seed: int) -> nn.Module:
    """A newly initialised head (``models.make_head``), the same for every call with this seed."""
    torch.manual_seed(seed)
    return make_head(num_classes, cosine)


def linear_copy(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    """A plain ``nn.Linear`` in eval mode holding a copy of ``weight`` and ``bias``: how every
    linear stage-2 head is stored."""
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer.eval()
