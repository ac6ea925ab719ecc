"""Stage 1's optimizer, learning-rate schedule and weight average: Adam at the study's learning rate,
the named deviations of the decay readings and of ``--weight-decay`` (AdamW), the cosine schedule,
and an exponential moving average of the weights (``--ema-decay``, ``--decay-reading ema``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from longtail.checkpoint import TrainingState
from longtail.config import TrainConfig
from longtail.models import trainable_parameters


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """Adam (the study's), with the decay of ``--decay-reading l2``/``adamw`` on every parameter, or
    AdamW with ``--weight-decay`` on the convolution and linear weights alone: each step first
    shrinks them by ``lr * weight_decay`` (Loshchilov & Hutter, ICLR 2019, "Decoupled Weight Decay
    Regularization"); biases and BatchNorm's affine parameters are not decayed, as usual (e.g. timm's
    ``param_groups_weight_decay``). Parameters on a GPU get torch's fused implementation (one kernel
    for the whole step, the same update); on a CPU the default one."""
    params = list(params)
    fused = {"fused": True} if params and all(p.is_cuda for p in params) else {}
    if config.decay_reading == "l2":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.decay_value, **fused)
    if config.decay_reading == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.decay_value, **fused)
    if config.weight_decay:
        groups = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=config.lr, **fused)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=0.0, **fused)


def lr_factor(config: TrainConfig, steps_in_epoch: int) -> Callable[[int], float]:
    """The learning rate at optimizer step ``step`` (0-based, of ``T`` in the run) as a fraction of
    --lr. ``constant``: 1 (the study). ``cosine`` (a named deviation): a linear warm-up over the
    first ``W = min(steps_in_epoch, (T - 1) // 2)`` steps (one epoch, or the first half of a run of
    one epoch), then half a cosine from 1 at step ``W`` down to exactly 0 at the last step, ``T - 1``:
    ``0.5 * (1 + cos(pi * (step - W) / (T - 1 - W)))``. A run of a single step takes it at the peak."""
    if config.lr_schedule == "constant":
        return lambda step: 1.0
    total = steps_in_epoch * config.epochs
    warmup = min(steps_in_epoch, (total - 1) // 2)

    def cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - 1 - warmup))  # stays at 0 past the last step
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return cosine


def training_state(model: nn.Module, config: TrainConfig, steps_in_epoch: int) -> TrainingState:
    """A fresh optimizer, learning-rate schedule and (``--ema-decay``, ``--decay-reading ema``) weight
    average: ``ema <- decay * ema + (1 - decay) * weights`` after every step, starting from the first
    step's weights."""
    optimizer = make_optimizer(config, trainable_parameters(model))
    factor = lr_factor(config, steps_in_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor) if config.lr_schedule != "constant" else None
    ema = None
    if config.averaging_decay is not None:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.averaging_decay), use_buffers=True
        )
    return TrainingState(model, optimizer, ema, scheduler=scheduler)
