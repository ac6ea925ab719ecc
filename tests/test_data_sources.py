"""longtail.data.sources: .npz files, image folders and tarballs, the decode cache and its checks."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longtail import data
from longtail.data import (
    Arrays,
    load_arrays,
    sources,
)
from longtail.errors import LongtailError

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

    monkeypatch.setattr(sources, "_load_image_folder", no_decoding)
    monkeypatch.setattr(sources, "_load_tarball", no_decoding)
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
