"""longtail.data: long-tail counts, subsets on real CIFAR-10 labels, index files, sources, augmentation."""

from __future__ import annotations

import hashlib
import json
import math
import tarfile
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
    expected = "--val-per-class 5 leaves no training images \\(the smallest class has 5\\)"
    with pytest.raises(LongtailError, match=expected):
        select_long_tail(labels, 3, 2, "exp", seed=0, val_per_class=5, max_per_class=2)
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
    assert caches == sorted(f"arrays-{loaded.fingerprint[:16]}.npz" for loaded in (from_folder, from_tarball)), (
        "one cache file per source, and the tarball's scratch folder removed"
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
