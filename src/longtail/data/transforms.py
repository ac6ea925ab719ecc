"""Batch transforms: augmentation and model input on whole uint8 batches of tensors (as in
airbench), never image by image in Python.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Standard CIFAR augmentation on a whole uint8 batch (B, H, W, 3): zero-pad by ``padding``,
    crop back to H x W at a random offset per image, flip half the images left-right."""
    batch, height, width, _ = images.shape
    padded = F.pad(images, (0, 0, padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (batch, 1), generator=generator, device=images.device)
    dx = torch.randint(0, 2 * padding + 1, (batch, 1), generator=generator, device=images.device)
    rows = (dy + torch.arange(height, device=images.device))[:, :, None]
    cols = dx + torch.arange(width, device=images.device)
    flip = torch.rand(batch, generator=generator, device=images.device) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, :]
    return padded[torch.arange(batch, device=images.device)[:, None, None], rows, cols]


@functools.cache
def _normalisation(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple:
    """``(scale, shift)`` per channel, ``(x / 255 - mean) / std == x * scale + shift``, made once per
    normalisation and device: a tensor made from Python numbers on a GPU is a host-to-device copy
    the host waits for, which once per batch stalls the pipeline. Ordinary tensors (not inference
    tensors), whichever mode first asks for them, as training uses them too."""
    with torch.inference_mode(False):
        scale = torch.tensor([1 / (255 * s) for s in std], device=device)
        shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], device=device)
    return scale, shift


def to_model_input(images: torch.Tensor, image_size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, S, S), bilinearly resized, channels_last.

    ``(x / 255 - mean) / std`` is one multiply and one add per element on the (B, H, W, 3) layout,
    and the channel permutation of that layout already is channels_last: the float conversion is
    the only copy at 32 px.
    """
    scale, shift = _normalisation(tuple(mean), tuple(std), images.device)
    x = images.float().mul_(scale).add_(shift).permute(0, 3, 1, 2)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.contiguous(memory_format=torch.channels_last)


def batches(order: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive index batches of ``order`` (the last one may be smaller)."""
    yield from torch.split(order, batch_size)
