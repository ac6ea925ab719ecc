"""Batch transforms: augmentation and model input on whole uint8 batches of tensors (as in
airbench), never image by image in Python.
"""

from __future__ import annotations

import functools
import math
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


def _normalised(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W), a channels_last view.

    ``(x / 255 - mean) / std`` is one multiply and one add per element on the (B, H, W, 3) layout,
    and the channel permutation of that layout already is channels_last: the float conversion is
    the only copy.
    """
    scale, shift = _normalisation(tuple(mean), tuple(std), images.device)
    return images.float().mul_(scale).add_(shift).permute(0, 3, 1, 2)


def to_model_input(images: torch.Tensor, image_size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, S, S), bilinearly resized, channels_last."""
    x = _normalised(images, mean, std)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.contiguous(memory_format=torch.channels_last)


# The aspect ratios (width / height) of random-resized crops: torchvision's RandomResizedCrop's.
CROP_RATIOS = (3 / 4, 4 / 3)


def random_crop_boxes(batch: int, min_scale: float, generator: torch.Generator) -> torch.Tensor:
    """(B, 5) crop boxes of random-resized crops, in the image's normalised coordinates ([-1, 1]
    across each side): ``(width, height, centre_x, centre_y, mirror)``, width and height the crop's
    share of each side, mirror -1 (left-right flipped) or 1. The share of the image's area is uniform
    in [min_scale, 1] and the aspect ratio log-uniform in ``CROP_RATIOS`` (Szegedy et al. 2015,
    torchvision's RandomResizedCrop), each side clamped to the image (where torchvision tries again);
    the position is uniform within the image; half the crops are mirrored."""
    draws = torch.rand(batch, 5, generator=generator, device=generator.device)
    area = min_scale + (1 - min_scale) * draws[:, 0]
    low, high = math.log(CROP_RATIOS[0]), math.log(CROP_RATIOS[1])
    ratio = (low + (high - low) * draws[:, 1]).exp()
    width, height = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
    centre_x, centre_y = (1 - width) * (2 * draws[:, 2] - 1), (1 - height) * (2 * draws[:, 3] - 1)
    mirror = torch.where(draws[:, 4] < 0.5, -1.0, 1.0)
    return torch.stack([width, height, centre_x, centre_y, mirror], dim=1)


def resized_crops(
    images: torch.Tensor, boxes: torch.Tensor, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> the normalised float (B, 3, S, S) model input of each image's crop
    ``boxes[i]`` (``random_crop_boxes``), cut and bilinearly resized in one resampling
    (``grid_sample``, borders clamped): the whole image unmirrored is ``to_model_input``'s output."""
    width, height, centre_x, centre_y, mirror = boxes.to(images.device).unbind(1)
    theta = torch.zeros(len(boxes), 2, 3, device=images.device)
    theta[:, 0, 0], theta[:, 0, 2] = width * mirror, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    grid = F.affine_grid(theta, [len(boxes), 3, image_size, image_size], align_corners=False)
    x = F.grid_sample(_normalised(images, mean, std), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return x.contiguous(memory_format=torch.channels_last)


def batches(order: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive index batches of ``order`` (the last one may be smaller)."""
    yield from torch.split(order, batch_size)
