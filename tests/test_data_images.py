"""longtail.data.images: image folders as they come (any size and mode), decoding, the store size, unreadable files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longtail import data
from longtail.data import (
    load_arrays,
    long_tail_split,
    sources,
)
from longtail.errors import LongtailError

# ---------------------------------------------------------------- image folders as they come


def _save(array: np.ndarray, path: Path, mode: str | None = None, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path, **options)
    return path


def _columns(height: int, width: int) -> np.ndarray:
    """An RGB image whose red channel is its column index and green its row index."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.arange(width)[None, :]
    image[..., 1] = np.arange(height)[:, None]
    return image


def test_decode_keeps_an_image_of_the_store_size_pixel_for_pixel(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.array_equal(data.decode_image(_save(image, tmp_path / "a.png"), 32, 32), image)


@pytest.mark.parametrize(("height", "width"), [(32, 96), (96, 32)])
def test_decode_centre_crops_an_elongated_image(tmp_path, height, width):
    # The shorter side already is the store size: no scaling, the middle 32 x 32 is kept.
    image = _columns(height, width)
    decoded = data.decode_image(_save(image, tmp_path / "long.png"), 32, 32)
    top, left = (height - 32) // 2, (width - 32) // 2
    assert np.array_equal(decoded, image[top : top + 32, left : left + 32])


def test_decode_scales_the_shorter_side_to_the_store_size(tmp_path):
    # 128 x 64 (width x height), store 32: scaled by 1/2 to 64 x 32, then the middle 32 columns.
    image = np.zeros((64, 128, 3), np.uint8)
    image[:, 64:] = 200  # the right half bright: after scaling and cropping, the right half of the result
    decoded = data.decode_image(_save(image, tmp_path / "wide.png"), 32, 32)
    assert decoded.shape == (32, 32, 3)
    assert decoded[:, :15].max() == 0 and decoded[:, 17:].min() == 200
    small = np.full((16, 16, 3), 77, np.uint8)  # upscaled the same way
    assert np.array_equal(data.decode_image(_save(small, tmp_path / "small.png"), 32, 32), np.full((32, 32, 3), 77))


def test_decode_converts_every_mode_to_rgb(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    assert np.array_equal(
        data.decode_image(_save(gray, tmp_path / "gray.png"), 32, 32), np.repeat(gray[..., None], 3, 2)
    )
    rgba = np.dstack([rgb, rng.integers(0, 256, (32, 32), dtype=np.uint8)])
    assert np.array_equal(data.decode_image(_save(rgba, tmp_path / "rgba.png"), 32, 32), rgb)  # alpha dropped
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = bytes(range(256))
    palette.save(tmp_path / "palette.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "palette images with transparency" warning
        decoded = data.decode_image(tmp_path / "palette.png", 32, 32)
    assert np.array_equal(decoded, np.asarray(palette.convert("RGBA").convert("RGB")))
    for suffix in ("bmp", "webp"):
        lossless = {"lossless": True} if suffix == "webp" else {}
        assert np.array_equal(data.decode_image(_save(rgb, tmp_path / f"a.{suffix}", **lossless), 32, 32), rgb)


def test_decode_applies_the_exif_orientation(tmp_path):
    image = _columns(32, 64)  # 64 wide, 32 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = _save(image, tmp_path / "phone.png", exif=exif)
    assert np.array_equal(data.decode_image(path, 64, 32), np.rot90(image, k=-1))  # displayed: 32 wide, 64 high


def test_decode_of_a_large_jpeg_matches_a_full_decode(tmp_path):
    # JPEG draft mode decodes a 512 px photo at 1/8 scale for a 64 px store: nearly the same pixels.
    smooth = np.kron(
        np.random.default_rng(3).integers(0, 256, (8, 8, 3), dtype=np.uint8), np.ones((64, 64, 1), np.uint8)
    )
    path = _save(smooth, tmp_path / "big.jpg", quality=95)
    decoded = data.decode_image(path, 64, 64).astype(int)
    with Image.open(path) as full:
        reference = np.asarray(full.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)).astype(int)
    assert decoded.shape == (64, 64, 3) and np.abs(decoded - reference).mean() < 8  # of 255, at sharp block edges


def test_decode_of_a_non_image_names_the_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(LongtailError, match="not a readable image") as caught:
        data.decode_image(path, 32, 32)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ([(32, 32)] * 5, 32),  # a CIFAR-style folder: stored as it is
        ([(100, 100)] * 3, 100),  # one square size: its own, whatever it is
        ([(32, 32), (160, 120), (64, 48)], 48),  # median shorter side
        ([(20, 10), (12, 16)], 32),  # clamped up to 32
        ([(300, 200), (640, 480), (32, 32)], 64),  # clamped down to 64
        ([(40, 30)] * 4, 32),  # one size but not square: the median rule
    ],
)
def test_default_store_size(sizes, expected):
    assert data.default_store_size(sizes) == expected


def _mixed_folder(root: Path, per_class=(5, 3), test: bool = False) -> Path:
    """ROOT/train/<a,b>/ (and test/) with images of mixed sizes and modes, and a hidden file."""
    rng = np.random.default_rng(4)
    for split, counts in [("train", per_class)] + ([("test", (2, 2))] if test else []):
        for name, count in zip("ab", counts, strict=True):
            for i in range(count):
                side = 32 + 16 * i
                image = rng.integers(0, 256, (side, side + 8 * (i % 2), 3), dtype=np.uint8)
                mode_image = image if i % 3 else image[..., 0]
                _save(mode_image, root / split / name / f"{i}.{('png', 'jpg', 'bmp')[i % 3]}")
    (root / "train" / "a" / ".DS_Store").write_bytes(b"\0")
    return root


def test_folder_without_test_needs_a_test_fraction_and_says_so_before_decoding(tmp_path, cache_dir, monkeypatch):
    root = _mixed_folder(tmp_path / "own")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the layout was wrong")

    monkeypatch.setattr(sources, "decode_images", no_decoding)
    with pytest.raises(LongtailError, match="no test/ folder.*--test-fraction") as caught:
        load_arrays(root, cache_dir)
    assert str(root) in str(caught.value)
    assert list(cache_dir.iterdir()) == []


def test_folder_of_mixed_images_decodes_at_one_store_size(tmp_path, cache_dir):
    root = _mixed_folder(tmp_path / "own")
    arrays = load_arrays(root, cache_dir, test_fraction=0.25)
    # shorter sides 32, 48, 64, 80, 96 in a, 32, 48, 64 in b: median 56
    assert arrays.x_train.shape == (8, 56, 56, 3) and arrays.image_shape == (56, 56)
    assert arrays.y_train.tolist() == [0] * 5 + [1] * 3  # the hidden file left out
    assert arrays.x_test.shape == (0, 56, 56, 3) and arrays.skipped == ()
    explicit = load_arrays(root, cache_dir, store_size=40, test_fraction=0.25)
    assert explicit.x_train.shape == (8, 40, 40, 3)
    fingerprint = arrays.fingerprint[:16]
    assert sorted(p.name for p in cache_dir.glob("arrays-*")) == [
        f"arrays-{fingerprint}-40px.npz",
        f"arrays-{fingerprint}-auto.npz",
    ]
    with pytest.raises(LongtailError, match="has its own test split"):
        load_arrays(_mixed_folder(tmp_path / "with-test", test=True), cache_dir, test_fraction=0.25)


def test_unreadable_images_are_listed_in_one_error_or_skipped_and_recorded(tmp_path, cache_dir, monkeypatch):
    root = _mixed_folder(tmp_path / "own", test=True)
    bad = [root / "train" / "a" / "zz.jpg", root / "test" / "b" / "broken.png"]
    for path in bad:
        path.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(LongtailError, match="not a readable image \\(2 files\\)") as caught:
        load_arrays(root, cache_dir)
    assert all(str(path) in str(caught.value) for path in bad) and "--skip-bad-images" in str(caught.value)
    assert not list(cache_dir.glob("arrays-*")), "a failed decode must not leave a cache file"

    arrays = load_arrays(root, cache_dir, skip_bad_images=True)
    assert arrays.skipped == tuple(map(str, bad))
    assert len(arrays.y_train) == 8 and len(arrays.y_test) == 4

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(sources, "decode_images", no_decoding)
    with pytest.raises(LongtailError, match="not a readable image \\(2 files\\)"):  # the cache remembers them
        load_arrays(root, cache_dir)
    assert load_arrays(root, cache_dir, skip_bad_images=True).skipped == arrays.skipped


def test_store_size_is_refused_for_decoded_arrays(tiny_npz, cache_dir):
    with pytest.raises(LongtailError, match="--store-size applies to image folders"):
        load_arrays(tiny_npz, cache_dir, store_size=64)


def test_npz_without_test_images_takes_a_test_fraction(tmp_path, tiny_arrays, cache_dir):
    path = tmp_path / "no-test.npz"
    np.savez(path, **{**tiny_arrays, "x_test": tiny_arrays["x_test"][:0], "y_test": tiny_arrays["y_test"][:0]})
    arrays = load_arrays(path, cache_dir, test_fraction=0.5)
    split = long_tail_split(arrays, "natural", val_per_class=1, cache_dir=cache_dir, test_fraction=0.5)
    assert np.bincount(arrays.y_train[split.test], minlength=10).tolist() == [3] * 10


def test_dataset_test_images_come_from_the_held_out_split(tmp_path, cache_dir):
    from longtail.config import TrainConfig
    from longtail.data import load_dataset

    root = _mixed_folder(tmp_path / "own", per_class=(6, 4))
    config = TrainConfig(data=str(root), imbalance="natural", val_per_class=1, test_fraction=0.25)
    dataset = load_dataset(config, pretrained=True, cache_dir=cache_dir)
    assert np.array_equal(dataset.test_images, dataset.arrays.x_train[dataset.split.test])
    assert dataset.test_labels.tolist() == [0, 0, 1]
