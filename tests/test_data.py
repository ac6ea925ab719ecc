"""longtail.data: long-tail counts, subsets on real CIFAR-10 labels, index files, sources, augmentation."""

from __future__ import annotations

import hashlib
import json
import math
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from longtail import data
from longtail.data import (
    Arrays,
    load_arrays,
    long_tail_counts,
    long_tail_split,
    random_crop_flip,
    select_long_tail,
    to_model_input,
)
from longtail.errors import LongtailError

CIFAR10_LT_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def exact_exp_counts(n_max: int, num_classes: int, imbalance: int) -> list[int]:
    """floor(n_max * IF ** (-i / (C - 1))) in exact integer arithmetic.

    n <= n_max * IF ** (-i / (C - 1))  <=>  n ** (C - 1) * IF ** i <= n_max ** (C - 1)  (all integers),
    so the count is the largest n with that property: no floating point anywhere.
    """
    k = num_classes - 1
    counts = []
    for i in range(num_classes):
        n = int(n_max * imbalance ** (-i / k))  # a start near the answer; corrected exactly below
        while n > 0 and n**k * imbalance**i > n_max**k:
            n -= 1
        while (n + 1) ** k * imbalance**i <= n_max**k:
            n += 1
        counts.append(n)
    return counts


# ---------------------------------------------------------------- long_tail_counts


def test_cifar10_lt_100_counts_are_the_published_ones():
    counts = long_tail_counts(5000, 10, 100)
    assert counts == CIFAR10_LT_100
    assert sum(counts) == 12406


@pytest.mark.parametrize(("imbalance", "total"), [(10, 20431), (50, 13996), (100, 12406), (200, 11203)])
def test_exp_counts_match_exact_integer_arithmetic(imbalance, total):
    counts = long_tail_counts(5000, 10, imbalance)
    assert counts == exact_exp_counts(5000, 10, imbalance)
    assert sum(counts) == total
    assert counts[0] == 5000 and counts[-1] == 5000 // imbalance


def test_exact_reference_agrees_with_plain_math_away_from_integers():
    # The integer reference itself, checked against math.floor where no product is an exact integer.
    for i in range(1, 9):
        assert exact_exp_counts(5000, 10, 100)[i] == math.floor(5000 * 100 ** (-i / 9))


def test_step_profile():
    assert long_tail_counts(5000, 10, 100, "step") == [5000] * 5 + [50] * 5
    assert long_tail_counts(5000, 10, 10, "step") == [5000] * 5 + [500] * 5
    assert long_tail_counts(300, 4, 7, "step") == [300, 300, 42, 42]


def test_imbalance_one_is_balanced():
    assert long_tail_counts(5000, 10, 1) == [5000] * 10


@pytest.mark.parametrize("imbalance", [0.5, 0.0, -3.0, float("nan")])
def test_imbalance_below_one_raises(imbalance):
    with pytest.raises(LongtailError, match="imbalance"):
        long_tail_counts(5000, 10, imbalance)


def test_unknown_profile_raises():
    with pytest.raises(LongtailError, match="linear"):
        long_tail_counts(5000, 10, 100, "linear")


# ---------------------------------------------------------------- select_long_tail on the real labels


@pytest.fixture(scope="module")
def cifar10_labels(cifar10_npz) -> np.ndarray:
    with np.load(cifar10_npz) as archive:
        return archive["y_train"]


def test_real_labels_without_validation_give_the_standard_counts(cifar10_labels):
    split = select_long_tail(cifar10_labels, 10, 100, "exp", seed=0, val_per_class=0)
    assert split.train_counts == CIFAR10_LT_100
    assert split.profile_counts == CIFAR10_LT_100
    assert np.bincount(cifar10_labels[split.train], minlength=10).tolist() == CIFAR10_LT_100
    assert len(split.val) == 0
    assert len(np.unique(split.train)) == len(split.train) == 12406


def test_real_labels_with_validation_only_change_the_head(cifar10_labels):
    split = select_long_tail(cifar10_labels, 10, 100, "exp", seed=0, val_per_class=50)
    assert split.train_counts == [4950, *CIFAR10_LT_100[1:]]
    assert np.bincount(cifar10_labels[split.train], minlength=10).tolist() == split.train_counts
    assert np.bincount(cifar10_labels[split.val], minlength=10).tolist() == [50] * 10
    assert not set(split.train.tolist()) & set(split.val.tolist())


def test_selection_is_deterministic_per_seed_and_differs_across_seeds(cifar10_labels):
    first = select_long_tail(cifar10_labels, 10, 100, "exp", seed=3, val_per_class=50)
    again = select_long_tail(cifar10_labels, 10, 100, "exp", seed=3, val_per_class=50)
    other = select_long_tail(cifar10_labels, 10, 100, "exp", seed=4, val_per_class=50)
    assert np.array_equal(first.train, again.train) and np.array_equal(first.val, again.val)
    assert not np.array_equal(first.train, other.train)
    assert not np.array_equal(first.val, other.val)
    assert first.train_counts == other.train_counts


def test_negative_validation_size_raises(cifar10_labels):
    with pytest.raises(LongtailError, match="--val-per-class"):
        select_long_tail(cifar10_labels, 10, 100, "exp", seed=0, val_per_class=-1)


def test_validation_that_takes_a_whole_class_raises():
    labels = np.repeat(np.arange(3), [8, 5, 9])
    expected = "--val-per-class 5 leaves no training images for class 1 'b' \\(5 images\\)"
    with pytest.raises(LongtailError, match=expected):
        select_long_tail(labels, 3, 2, "exp", seed=0, val_per_class=5, max_per_class=2, class_names=("a", "b", "c"))
    # Profile [5, 3, 2] (n_max = 5, IF 2), capped at size - 4 = [4, 1, 5].
    assert select_long_tail(labels, 3, 2, "exp", seed=0, val_per_class=4).train_counts == [4, 1, 2]


def test_max_per_class_sets_the_head_count():
    labels = np.repeat(np.arange(3), [50, 40, 60])
    split = select_long_tail(labels, 3, 4, "exp", seed=0, val_per_class=5, max_per_class=20)
    assert split.profile_counts == [20, 10, 5] and split.train_counts == [20, 10, 5]
    with pytest.raises(LongtailError, match="--max-per-class"):
        select_long_tail(labels, 3, 4, "exp", seed=0, val_per_class=5, max_per_class=41)


# ---------------------------------------------------------------- index files


def _synthetic_arrays(per_class: int = 30, num_classes: int = 10) -> Arrays:
    rng = np.random.default_rng(1)
    y_train = rng.permutation(np.repeat(np.arange(num_classes), per_class)).astype(np.int64)
    return Arrays(
        x_train=np.zeros((len(y_train), 2, 2, 3), np.uint8),
        y_train=y_train,
        x_test=np.zeros((num_classes, 2, 2, 3), np.uint8),
        y_test=np.arange(num_classes, dtype=np.int64),
        class_names=tuple(f"c{i}" for i in range(num_classes)),
        fingerprint="0123456789abcdef" * 4,
        source="synthetic",
    )


def test_index_file_is_versioned_and_checksummed(cache_dir):
    arrays = _synthetic_arrays()
    split = long_tail_split(arrays, 10, "exp", seed=2, val_per_class=3, cache_dir=cache_dir)
    path = split.index_file
    assert path is not None and path.is_file() and path.is_relative_to(cache_dir)
    record = json.loads(path.read_text())
    assert record["version"] == data.INDEX_FORMAT_VERSION
    assert record["source_sha256"] == arrays.fingerprint
    assert record["profile"] == "exp"
    assert record["imbalance"] == 10
    assert record["seed"] == 2
    assert record["val_per_class"] == 3
    assert record["train"] == split.train.tolist() and record["val"] == split.val.tolist()
    body = {k: v for k, v in record.items() if k != "checksum"}
    assert record["checksum"] == hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    direct = select_long_tail(arrays.y_train, 10, 10, "exp", 2, 3)
    assert np.array_equal(split.train, direct.train) and np.array_equal(split.val, direct.val)


def test_index_file_is_reused_not_rewritten(cache_dir, monkeypatch):
    arrays = _synthetic_arrays()
    first = long_tail_split(arrays, 10, "exp", seed=2, val_per_class=3, cache_dir=cache_dir)
    mtime, content = first.index_file.stat().st_mtime_ns, first.index_file.read_bytes()

    def no_second_draw(*args, **kwargs):
        raise AssertionError("the split was drawn again instead of read from the index file")

    monkeypatch.setattr(data, "select_long_tail", no_second_draw)
    second = long_tail_split(arrays, 10, "exp", seed=2, val_per_class=3, cache_dir=cache_dir)
    assert np.array_equal(first.train, second.train) and np.array_equal(first.val, second.val)
    assert second.train_counts == first.train_counts and second.index_file == first.index_file
    assert first.index_file.stat().st_mtime_ns == mtime and first.index_file.read_bytes() == content


def test_tampered_index_file_raises_and_is_left_alone(cache_dir):
    arrays = _synthetic_arrays()
    path = long_tail_split(arrays, 10, "exp", seed=2, val_per_class=3, cache_dir=cache_dir).index_file
    record = json.loads(path.read_text())
    record["train"][0] = next(i for i in range(len(arrays.y_train)) if i not in record["train"])
    path.write_text(json.dumps(record))
    tampered = path.read_bytes()
    with pytest.raises(LongtailError, match="checksum") as caught:
        long_tail_split(arrays, 10, "exp", seed=2, val_per_class=3, cache_dir=cache_dir)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == tampered


def test_index_file_that_is_not_json_raises(cache_dir):
    arrays = _synthetic_arrays()
    path = long_tail_split(arrays, 10, "exp", seed=0, val_per_class=3, cache_dir=cache_dir).index_file
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(LongtailError, match="corrupted") as caught:
        long_tail_split(arrays, 10, "exp", seed=0, val_per_class=3, cache_dir=cache_dir)
    assert str(path) in str(caught.value)


# ---------------------------------------------------------------- sources


def _write_image_folder(root: Path, arrays: dict) -> Path:
    """ROOT/{train,test}/c<k>/<nnn>.png, in the order of the arrays (class-sorted)."""
    for split in ("train", "test"):
        for i, (image, label) in enumerate(zip(arrays[f"x_{split}"], arrays[f"y_{split}"], strict=True)):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root


def _assert_same_arrays(loaded: Arrays, arrays: dict) -> None:
    for key in ("x_train", "y_train", "x_test", "y_test"):
        value = getattr(loaded, key)
        assert value.dtype == arrays[key].dtype, key
        assert np.array_equal(value, arrays[key]), key


def test_npz_source(tiny_npz, tiny_arrays, cache_dir):
    loaded = load_arrays(tiny_npz, cache_dir)
    _assert_same_arrays(loaded, tiny_arrays)
    assert loaded.class_names == data.CIFAR10_CLASSES
    assert loaded.fingerprint == hashlib.sha256(tiny_npz.read_bytes()).hexdigest()
    assert list(cache_dir.iterdir()) == []  # an .npz needs no cache


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_npz_raises(tiny_npz, cache_dir, damage):
    raw = bytearray(tiny_npz.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 3] ^= 0xFF
    tiny_npz.write_bytes(bytes(raw))
    with pytest.raises(LongtailError) as caught:
        load_arrays(tiny_npz, cache_dir)
    assert str(tiny_npz) in str(caught.value)


def test_npz_missing_arrays_raises(tmp_path, tiny_arrays, cache_dir):
    path = tmp_path / "partial.npz"
    np.savez(path, x_train=tiny_arrays["x_train"], y_train=tiny_arrays["y_train"])
    with pytest.raises(LongtailError, match="x_test"):
        load_arrays(path, cache_dir)


@pytest.mark.parametrize("empty", ["y_train", "y_test"])
def test_npz_without_images_raises(tmp_path, tiny_arrays, cache_dir, empty):
    arrays = dict(tiny_arrays)
    arrays[empty] = arrays[empty][:0]
    arrays["x" + empty[1:]] = arrays["x" + empty[1:]][:0]
    path = tmp_path / "empty.npz"
    np.savez(path, **arrays)
    with pytest.raises(LongtailError, match="empty") as caught:
        load_arrays(path, cache_dir)
    assert str(path) in str(caught.value)


def test_source_in_unsearchable_folder_raises(tmp_path, cache_dir, monkeypatch):
    # As root every folder is searchable: simulate the PermissionError stat() gives an ordinary user
    # (tests/test_cli_errors.py checks the real thing as user nobody).
    path = tmp_path / "private" / "data.npz"

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "stat", denied)
    with pytest.raises(LongtailError, match="cannot be accessed") as caught:
        load_arrays(path, cache_dir)
    assert str(path) in str(caught.value)


def test_missing_source_raises(tmp_path, cache_dir):
    with pytest.raises(LongtailError, match="does not exist"):
        load_arrays(tmp_path / "nowhere.npz", cache_dir)


def test_image_folder_and_tarball_equal_the_npz(tmp_path, tiny_arrays, cache_dir, monkeypatch):
    folder = _write_image_folder(tmp_path / "tiny", tiny_arrays)
    tarball = tmp_path / "tiny.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(folder, arcname="tiny")  # one top-level folder, as in cifar10_jpeg_q75.tar.gz

    from_folder = load_arrays(folder, cache_dir)
    from_tarball = load_arrays(tarball, cache_dir)
    for loaded in (from_folder, from_tarball):
        _assert_same_arrays(loaded, tiny_arrays)
        assert loaded.class_names == tuple(f"c{i}" for i in range(10))
    assert from_tarball.fingerprint == hashlib.sha256(tarball.read_bytes()).hexdigest()
    caches = sorted(p.name for p in cache_dir.iterdir())
    assert caches == sorted(f"arrays-{loaded.fingerprint[:16]}-auto.npz" for loaded in (from_folder, from_tarball)), (
        "one cache file per source (at the default store size), and the tarball's scratch folder removed"
    )

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded the images again instead of reading the cache")

    monkeypatch.setattr(data, "_load_image_folder", no_decoding)
    monkeypatch.setattr(data, "_load_tarball", no_decoding)
    _assert_same_arrays(load_arrays(folder, cache_dir), tiny_arrays)
    _assert_same_arrays(load_arrays(tarball, cache_dir), tiny_arrays)


def _cached_folder(tmp_path, tiny_arrays, cache_dir) -> tuple[Path, Path]:
    folder = _write_image_folder(tmp_path / "tiny", tiny_arrays)
    load_arrays(folder, cache_dir)
    (cache,) = cache_dir.glob("arrays-*.npz")
    return folder, cache


def test_cache_with_altered_arrays_raises_corrupted(tmp_path, tiny_arrays, cache_dir):
    folder, cache = _cached_folder(tmp_path, tiny_arrays, cache_dir)
    with np.load(cache) as archive:
        stored = {key: archive[key] for key in archive.files}
    stored["x_train"][0, 0, 0, 0] ^= 1  # a valid .npz whose content no longer matches its checksum
    np.savez(cache, **stored)
    altered = cache.read_bytes()
    with pytest.raises(LongtailError, match="corrupted") as caught:
        load_arrays(folder, cache_dir)
    assert str(cache) in str(caught.value)
    assert cache.read_bytes() == altered


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_cache_file_raises_corrupted(tmp_path, tiny_arrays, cache_dir, damage):
    folder, cache = _cached_folder(tmp_path, tiny_arrays, cache_dir)
    raw = bytearray(cache.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 3] ^= 0xFF
    cache.write_bytes(bytes(raw))
    with pytest.raises(LongtailError, match="corrupted") as caught:
        load_arrays(folder, cache_dir)
    assert str(cache) in str(caught.value)


def _layout(tmp_path: Path, files: dict[str, bytes | None]) -> Path:
    """A folder from relative paths; None makes an empty directory, bytes a file, b'png' a real PNG."""
    root = tmp_path / "layout"
    png = tmp_path / "one.png"
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(png)
    for relative, content in files.items():
        path = root / relative
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png.read_bytes() if content == b"png" else content)
    return root


def test_folder_without_test_split_raises(tmp_path, cache_dir):
    root = _layout(tmp_path, {"train/a/0.png": b"png", "train/b/0.png": b"png"})
    with pytest.raises(LongtailError, match="test") as caught:
        load_arrays(root, cache_dir)
    assert str(root) in str(caught.value)


def test_class_only_in_train_raises(tmp_path, cache_dir):
    root = _layout(tmp_path, {"train/a/0.png": b"png", "train/b/0.png": b"png", "test/a/0.png": b"png"})
    with pytest.raises(LongtailError, match="only in train: \\['b'\\]"):
        load_arrays(root, cache_dir)


def test_empty_class_folder_raises(tmp_path, cache_dir):
    root = _layout(tmp_path, {"train/a/0.png": b"png", "train/b": None, "test/a/0.png": b"png", "test/b/0.png": b"png"})
    with pytest.raises(LongtailError, match="empty class folder") as caught:
        load_arrays(root, cache_dir)
    assert str(root / "train" / "b") in str(caught.value)


def test_non_image_file_raises(tmp_path, cache_dir):
    root = _layout(
        tmp_path,
        {"train/a/0.png": b"png", "train/a/1.png": b"just text\n", "test/a/0.png": b"png"},
    )
    with pytest.raises(LongtailError, match="not a readable image") as caught:
        load_arrays(root, cache_dir)
    assert str(root / "train" / "a" / "1.png") in str(caught.value)
    assert not list(cache_dir.glob("arrays-*")), "a failed decode must not leave a cache file"


def test_tarball_with_wrong_layout_raises(tmp_path, cache_dir):
    root = _layout(tmp_path, {"images/a/0.png": b"png"})
    tarball = tmp_path / "bad.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(root, arcname="bad")
    with pytest.raises(LongtailError) as caught:
        load_arrays(tarball, cache_dir)
    assert str(tarball) in str(caught.value)
    assert list(cache_dir.iterdir()) == [], "the extraction scratch folder must be removed"


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

    monkeypatch.setattr(data, "decode_images", no_decoding)
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

    monkeypatch.setattr(data, "decode_images", no_decoding)
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


# ---------------------------------------------------------------- natural imbalance, fractions, test split


def test_natural_imbalance_keeps_every_image_but_validation():
    labels = np.repeat(np.arange(4), [50, 20, 9, 4])
    split = select_long_tail(labels, 4, "natural", "exp", seed=0, val_per_class=2)
    assert split.profile_counts == [50, 20, 9, 4] and split.train_counts == [48, 18, 7, 2]
    fraction = select_long_tail(labels, 4, "natural", "exp", seed=0, val_per_class=0, val_fraction=0.1)
    assert np.bincount(labels[fraction.val], minlength=4).tolist() == [5, 2, 1, 1]  # round half up, at least 1
    assert fraction.train_counts == [45, 18, 8, 3]


def test_a_validation_split_that_empties_a_class_names_it():
    labels = np.repeat(np.arange(3), [10, 1, 6])
    with pytest.raises(
        LongtailError, match="--val-fraction 0.2 leaves no training images for class 1 'cat' \\(1 image\\)"
    ):
        select_long_tail(labels, 3, "natural", "exp", 0, 0, val_fraction=0.2, class_names=("ant", "cat", "dog"))
    with pytest.raises(LongtailError, match="class 1 'cat' \\(1 image\\), 2 'dog' \\(6 images\\)"):
        select_long_tail(labels, 3, "natural", "exp", 0, 6, class_names=("ant", "cat", "dog"))


def test_test_split_is_stratified_disjoint_and_the_same_for_every_run():
    labels = np.random.default_rng(5).permutation(np.repeat(np.arange(3), [60, 25, 7]))
    first = select_long_tail(labels, 3, "natural", "exp", seed=0, val_per_class=2, test_fraction=0.2)
    assert np.bincount(labels[first.test], minlength=3).tolist() == [12, 5, 1]
    parts = [set(first.train.tolist()), set(first.val.tolist()), set(first.test.tolist())]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(range(len(labels)))
    other = select_long_tail(labels, 3, 4, "step", seed=9, val_per_class=0, val_fraction=0.3, test_fraction=0.2)
    assert np.array_equal(first.test, other.test)  # another seed, imbalance and validation: the same test images
    assert not np.array_equal(first.val, select_long_tail(labels, 3, "natural", "exp", 1, 2, test_fraction=0.2).val)
    with pytest.raises(LongtailError, match="--test-fraction 0.95 leaves no training images for class 2 \\(7 images"):
        select_long_tail(labels, 3, "natural", "exp", 0, 0, test_fraction=0.95)


def test_split_without_new_settings_is_what_it_always_was(cifar10_labels):
    # The settings of the first index format give the same indices whatever was added since.
    split = select_long_tail(cifar10_labels, 10, 100, "exp", seed=0, val_per_class=50)
    assert split.test is None
    order = np.random.default_rng([0, 0]).permutation(np.flatnonzero(cifar10_labels == 0))
    assert np.array_equal(split.val[:50], np.sort(order[-50:]))


def test_index_file_records_the_test_split_and_gives_it_back(cache_dir):
    arrays = _synthetic_arrays()
    arrays = Arrays(**{**arrays.__dict__, "x_test": arrays.x_test[:0], "y_test": arrays.y_test[:0]})
    split = long_tail_split(
        arrays, "natural", seed=1, val_per_class=0, cache_dir=cache_dir, val_fraction=0.1, test_fraction=0.2
    )
    assert split.index_file.name == f"lt-{arrays.fingerprint[:16]}-natural-seed1-valf0.1-test0.2.json"
    record = json.loads(split.index_file.read_text())
    assert record["test"] == split.test.tolist() and record["test_fraction"] == 0.2 and record["imbalance"] == "natural"
    again = long_tail_split(
        arrays, "natural", seed=1, val_per_class=0, cache_dir=cache_dir, val_fraction=0.1, test_fraction=0.2
    )
    assert np.array_equal(again.test, split.test) and np.array_equal(again.train, split.train)
    with pytest.raises(LongtailError, match="no test split"):
        long_tail_split(arrays, "natural", seed=1, val_per_class=0, cache_dir=cache_dir)


def test_dataset_test_images_come_from_the_held_out_split(tmp_path, cache_dir):
    from longtail.train import TrainConfig, load_dataset

    root = _mixed_folder(tmp_path / "own", per_class=(6, 4))
    config = TrainConfig(data=str(root), imbalance="natural", val_per_class=1, test_fraction=0.25)
    dataset = load_dataset(config, pretrained=True, cache_dir=cache_dir)
    assert np.array_equal(dataset.test_images, dataset.arrays.x_train[dataset.split.test])
    assert dataset.test_labels.tolist() == [0, 0, 1]


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
