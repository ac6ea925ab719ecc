"""longtail.data.store: the memory-mapped image store, written once by decoding threads, opened
without reading it, read batch by batch.

Checked: the images file holds the readable images one after another in order (also across decoding
chunks, with unreadable files left out), a refused decode leaves nothing, the header's checks, that
``StoredImages`` gives what indexing the array in memory gives (slices, index tensors in any order,
repeats), and that an opened store is not in memory: its pages are not resident after opening
(``mincore``), opening it does not grow the process's resident memory, and reading all of it through
``StoredImages`` does not either (touching it through the mapping does, which shows the measurement
sees it).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from longtail.data import images as images_module
from longtail.data import store
from longtail.errors import LongtailError

SIZE = 8  # px: the images of these tests are tiny


def _pictures(folder: Path, count: int, broken: tuple[int, ...] = ()) -> tuple[list[str], np.ndarray]:
    """``count`` PNG files of distinct SIZE x SIZE images (``broken`` positions: not images) and
    the images as decoded."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)
    files = []
    for i in range(count):
        path = folder / f"{i:03d}.png"
        if i in broken:
            path.write_text("not an image")
        else:
            Image.fromarray(pixels[i]).save(path)
        files.append(str(path))
    return files, pixels


def _accept_all(failures):
    pass


def test_the_store_holds_the_readable_images_in_order_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "CHUNK_BYTES", 3 * SIZE * SIZE * 3)  # three images per chunk
    files, pixels = _pictures(tmp_path / "pictures", 10, broken=(1, 4, 5))
    seen = []
    images_file = tmp_path / "cache" / "images-test.u8"
    count = store.write_store(images_file, files, SIZE, "decoding", seen.append)
    assert count == 7 and [position for position, _ in seen[0]] == [1, 4, 5]
    assert all("not a readable image" in reason for _, reason in seen[0])
    kept = [i for i in range(10) if i not in (1, 4, 5)]
    stored = np.fromfile(images_file, np.uint8).reshape(-1, SIZE, SIZE, 3)
    assert np.array_equal(stored, pixels[kept])
    assert sorted(p.name for p in images_file.parent.iterdir()) == [images_file.name]  # no partial file left


def test_a_refused_decode_leaves_nothing(tmp_path):
    files, _ = _pictures(tmp_path / "pictures", 4, broken=(2,))
    images_file = tmp_path / "cache" / "images-test.u8"

    def refuse(failures):
        raise LongtailError("refused")

    with pytest.raises(LongtailError, match="refused"):
        store.write_store(images_file, files, SIZE, "decoding", refuse)
    assert list(images_file.parent.iterdir()) == []


def _written_store(tmp_path: Path, count: int = 6) -> tuple[Path, Path, dict, np.ndarray]:
    files, pixels = _pictures(tmp_path / "pictures", count)
    images_file, header_file = store.store_files(tmp_path / "cache", "0123abcd-8px")
    store.write_store(images_file, files, SIZE, "decoding", _accept_all)
    header = store.write_header(header_file, "f" * 64, (count, SIZE, SIZE, 3), {"labels": list(range(count))})
    return images_file, header_file, header, pixels


def test_the_header_is_checked(tmp_path):
    images_file, header_file, header, _ = _written_store(tmp_path)
    assert store.read_header(images_file, header_file, "f" * 64) == header
    assert store.read_header(images_file, header_file.with_name("absent.json"), "f" * 64) is None
    with pytest.raises(LongtailError, match="another version or source"):
        store.read_header(images_file, header_file, "e" * 64)
    with open(images_file, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(LongtailError, match="holds .* bytes"):
        store.read_header(images_file, header_file, "f" * 64)
    header_file.write_text(header_file.read_text().replace('"labels": [0', '"labels": [9'))
    with pytest.raises(LongtailError, match="checksum mismatch"):
        store.read_header(images_file, header_file, "f" * 64)


def test_stored_images_read_what_indexing_in_memory_gives(tmp_path):
    images_file, _, header, pixels = _written_store(tmp_path)
    first, second = store.open_store(images_file, header["shape"], [4, 2])
    assert isinstance(first, np.memmap) and isinstance(second, np.memmap)
    assert np.array_equal(second, pixels[4:])
    rows = np.array([3, 0, 2])
    stored = store.image_rows(first, rows)
    assert isinstance(stored, store.StoredImages) and len(stored) == 3 and stored.shape == (3, SIZE, SIZE, 3)
    in_memory = store.image_rows(np.asarray(first).copy(), rows)
    assert isinstance(in_memory, torch.Tensor)
    for key in (
        slice(None),
        slice(1, 3),
        torch.tensor([2, 0, 0, 1]),
        np.array([1, 1]),
        torch.tensor([], dtype=torch.long),
    ):
        assert torch.equal(stored[key], in_memory[key]), key
    assert stored.to("cpu")[torch.tensor([0])].device.type == "cpu"
    assert torch.equal(store.image_rows(second)[:], torch.from_numpy(pixels[4:]))
    assert store.open_store(images_file, header["shape"], [6, 0])[1].shape == (0, SIZE, SIZE, 3)


# ---------------------------------------------------------------- opened, not loaded


STORE_MB = 48


def _large_store(tmp_path: Path) -> tuple[Path, dict]:
    """A store of STORE_MB MB of 32-px images written directly (no decoding), evicted from the page cache."""
    count = STORE_MB * 2**20 // (32 * 32 * 3)
    images_file, header_file = store.store_files(tmp_path, "large-32px")
    with open(images_file, "wb") as handle:
        for start in range(0, count, 1024):
            rows = np.arange(start, min(count, start + 1024))
            block = np.broadcast_to((rows % 251).astype(np.uint8)[:, None, None, None], (len(rows), 32, 32, 3))
            handle.write(np.ascontiguousarray(block).tobytes())
        handle.flush()
        os.fsync(handle.fileno())
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    header = store.write_header(header_file, "a" * 64, (count, 32, 32, 3), {})
    return images_file, header


def _resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * mmap.PAGESIZE


def _resident_pages(array: np.memmap) -> float:
    """The share of the pages of ``array``'s mapping that are in memory (``mincore``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    start = array.ctypes.data - array.ctypes.data % mmap.PAGESIZE
    length = array.ctypes.data + array.nbytes - start
    pages = -(-length // mmap.PAGESIZE)
    vector = (ctypes.c_ubyte * pages)()
    if libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(length), vector) != 0:
        pytest.skip(f"mincore failed: {os.strerror(ctypes.get_errno())}")
    return sum(byte & 1 for byte in vector) / pages


LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and mincore: Linux")


@LINUX_ONLY
def test_an_opened_store_is_mapped_not_loaded(tmp_path):
    images_file, header = _large_store(tmp_path)
    before = _resident_bytes()
    (array,) = store.open_store(images_file, header["shape"], [header["shape"][0]])
    assert isinstance(array, np.memmap) and array.nbytes > (STORE_MB - 1) * 2**20
    assert _resident_bytes() - before < 4 * 2**20
    share = _resident_pages(array)
    if share == 1.0:
        pytest.skip("the file system keeps the file in memory whatever is asked (tmpfs?)")
    assert share < 0.1, f"{share:.0%} of the store's pages are in memory right after opening it"


@LINUX_ONLY
def test_reading_a_whole_store_batch_by_batch_keeps_it_out_of_resident_memory(tmp_path):
    images_file, header = _large_store(tmp_path)
    (array,) = store.open_store(images_file, header["shape"], [header["shape"][0]])
    images = store.image_rows(array)
    before = _resident_bytes()
    total = 0
    for start in range(0, len(images), 256):
        batch = images[start : start + 256]
        assert int(batch[0, 0, 0, 0]) == start % 251
        total += len(batch)
    shuffled = images[torch.randperm(len(images))[:512]]
    assert total == len(images) and len(shuffled) == 512
    grown = _resident_bytes() - before
    assert grown < 12 * 2**20, f"resident memory grew by {grown / 2**20:.0f} MB reading a {STORE_MB} MB store"
    np.asarray(array).sum(dtype=np.int64)  # through the mapping: every page becomes resident
    assert _resident_bytes() - before > (STORE_MB // 2) * 2**20


def test_decoded_chunks_cover_the_files_in_order(tmp_path):
    files, pixels = _pictures(tmp_path / "pictures", 7, broken=(3,))
    chunks = list(images_module.decoded_chunks(files, SIZE, SIZE, "decoding", chunk_size=3))
    assert [start for start, _, _ in chunks] == [0, 3, 6]
    assert [failure[0] for _, _, failures in chunks for failure in failures] == [3]
    decoded = np.concatenate([images for _, images, _ in chunks])
    assert np.array_equal(decoded[[0, 1, 2, 4, 5, 6]], pixels[[0, 1, 2, 4, 5, 6]]) and not decoded[3].any()
