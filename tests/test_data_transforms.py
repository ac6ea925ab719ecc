"""longtail.data.transforms: batch augmentation and model input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longtail.data import (
    random_crop_boxes,
    random_crop_flip,
    resized_crops,
    to_model_input,
)

# ---------------------------------------------------------------- augmentation and model input


def _images(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8))


def test_crop_flip_without_padding_is_identity_or_flip():
    images = _images(32)
    out = random_crop_flip(images, torch.Generator().manual_seed(0), padding=0)
    assert out.shape == images.shape and out.dtype == torch.uint8
    flipped = 0
    for original, augmented in zip(images, out, strict=True):
        same, mirror = torch.equal(augmented, original), torch.equal(augmented, original.flip(1))
        assert same or mirror
        flipped += mirror
    assert 0 < flipped < len(images), "about half the images should be flipped"


def test_crop_flip_takes_windows_of_the_zero_padded_image():
    images, padding = _images(12, seed=1), 4
    out = random_crop_flip(images, torch.Generator().manual_seed(5), padding=padding)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.zeros(12, 32 + 2 * padding, 32 + 2 * padding, 3, dtype=torch.uint8)
    padded[:, padding:-padding, padding:-padding] = images

    def window(i, dy, dx, flip):
        crop = padded[i, dy : dy + 32, dx : dx + 32]
        return crop.flip(1) if flip else crop

    found = []
    for i in range(len(images)):
        matches = [
            (dy, dx, flip)
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
            for flip in (False, True)
            if torch.equal(out[i], window(i, dy, dx, flip))
        ]
        assert matches, f"image {i} is not a window of its padded input"
        found.append(matches[0])
    assert len({(dy, dx) for dy, dx, _ in found}) > 1, "offsets should vary across the batch"


def test_crop_flip_is_deterministic_per_generator_seed():
    images = _images(16)
    first = random_crop_flip(images, torch.Generator().manual_seed(9))
    again = random_crop_flip(images, torch.Generator().manual_seed(9))
    other = random_crop_flip(images, torch.Generator().manual_seed(10))
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.parametrize("size", [32, 64])
def test_to_model_input_shape_layout_and_normalisation(size):
    values = (0, 51, 200)
    images = torch.stack([torch.full((32, 32, 3), v, dtype=torch.uint8) for v in values])
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    x = to_model_input(images, size, mean, std)
    assert x.shape == (3, 3, size, size) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    for b, v in enumerate(values):
        for c in range(3):
            expected = (v / 255 - mean[c]) / std[c]
            assert torch.allclose(x[b, c], torch.full((size, size), expected), atol=1e-5), (v, c)


def test_to_model_input_keeps_channel_order():
    image = torch.zeros(1, 32, 32, 3, dtype=torch.uint8)
    image[..., 0] = 255  # pure red
    x = to_model_input(image, 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert torch.all(x[0, 0] == 1) and torch.all(x[0, 1:] == 0)


# ---------------------------------------------------------------- random-resized crops

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _box(width, height, centre_x, centre_y, mirror, batch):
    return torch.tensor([[width, height, centre_x, centre_y, mirror]] * batch)


@pytest.mark.parametrize("size", [32, 128])
def test_the_whole_image_as_a_crop_is_the_evaluation_input_and_mirrored_its_flip(size):
    images = _images(4, seed=2)
    plain = to_model_input(images, size, MEAN, STD)
    whole = resized_crops(images, _box(1.0, 1.0, 0.0, 0.0, 1.0, 4), size, MEAN, STD)
    mirrored = resized_crops(images, _box(1.0, 1.0, 0.0, 0.0, -1.0, 4), size, MEAN, STD)
    assert whole.shape == (4, 3, size, size) and whole.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(whole, plain, atol=1e-5)
    assert torch.allclose(mirrored, plain.flip(-1), atol=1e-5)


def test_a_crop_resized_to_its_own_size_is_its_pixels():
    """The top-left quadrant (16 x 16 of 32 x 32) at 16 px samples the pixel centres: an exact cut."""
    images = _images(3, seed=3)
    quadrant = resized_crops(images, _box(0.5, 0.5, -0.5, -0.5, 1.0, 3), 16, MEAN, STD)
    assert torch.allclose(quadrant, to_model_input(images[:, :16, :16], 16, MEAN, STD), atol=1e-5)
    bottom_right = resized_crops(images, _box(0.5, 0.5, 0.5, 0.5, 1.0, 3), 16, MEAN, STD)
    assert torch.allclose(bottom_right, to_model_input(images[:, 16:, 16:], 16, MEAN, STD), atol=1e-5)


@pytest.mark.parametrize("min_scale", [0.08, 0.35, 1.0])
def test_random_crop_boxes_lie_in_the_image_cover_at_least_the_min_scale_and_mirror_half(min_scale):
    boxes = random_crop_boxes(2000, min_scale, torch.Generator().manual_seed(4))
    width, height, centre_x, centre_y, mirror = boxes.unbind(1)
    assert bool(((width > 0) & (width <= 1) & (height > 0) & (height <= 1)).all())
    assert bool(((centre_x.abs() + width <= 1 + 1e-6) & (centre_y.abs() + height <= 1 + 1e-6)).all())
    inside = (width < 1) & (height < 1)  # unclamped: the area share drawn, in [min_scale, 1]
    area = (width * height)[inside]
    assert bool((area >= min_scale - 1e-6).all()) and bool((area <= 1 + 1e-6).all())
    ratio = (width / height)[inside]
    assert bool(((ratio >= 3 / 4 - 1e-5) & (ratio <= 4 / 3 + 1e-5)).all())
    assert set(mirror.tolist()) == {-1.0, 1.0} and 0.4 < float((mirror < 0).float().mean()) < 0.6
    if min_scale < 1:  # the crops vary in size and place
        assert float(area.std()) > 0.05 and float(centre_x.std()) > 0.05


def test_random_crop_boxes_are_deterministic_per_generator_seed():
    first = random_crop_boxes(64, 0.35, torch.Generator().manual_seed(9))
    assert torch.equal(first, random_crop_boxes(64, 0.35, torch.Generator().manual_seed(9)))
    assert not torch.equal(first, random_crop_boxes(64, 0.35, torch.Generator().manual_seed(10)))


# ---------------------------------------------------------------- augmentation at other stored sizes


@pytest.mark.parametrize("stored", [48, 64])
def test_crop_flip_and_model_input_work_at_any_stored_size(stored):
    images = torch.from_numpy(np.random.default_rng(6).integers(0, 256, (4, stored, stored, 3), dtype=np.uint8))
    out = random_crop_flip(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (0, 0, 4, 4, 4, 4))
    for i in range(4):  # each a window of its zero-padded image, perhaps mirrored
        assert any(
            torch.equal(out[i], window) or torch.equal(out[i], window.flip(1))
            for dy in range(9)
            for dx in range(9)
            for window in [padded[i, dy : dy + stored, dx : dx + stored]]
        )
    for size in (32, 96):
        assert to_model_input(out, size, (0.5,) * 3, (0.25,) * 3).shape == (4, 3, size, size)
