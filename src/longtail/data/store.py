"""The memory-mapped image store: decoded images on disk, read batch by batch, so a data set larger
than memory trains (ImageNet-LT is 5.7 GB at 128 px, iNaturalist 2018 21 GB).

A store is two files side by side in the cache directory:
- ``images-<key>.u8``: the decoded uint8 images one after another, each S x S x 3 bytes (rows,
  columns, RGB), nothing else: ``np.memmap(path, np.uint8, "r", shape=(N, S, S, 3))`` reads it;
- ``images-<key>.json``: what those bytes are: the format version, the source's fingerprint, the
  shape, and what the source adds (labels, parts, class labels, the files left out), with a checksum
  over all of it.

Writing (``write_store``): ``data.images.decoded_chunks`` decodes ``CHUNK_BYTES`` worth of images at
a time on a pool of threads (one progress bar), and the readable ones are appended in order; the file
takes its name only once complete and accepted, and the header is written after it, so an interrupted
or refused decode leaves nothing behind. Memory holds one chunk, whatever the number of images.

Opening (``open_store``) checks the header (checksum, version, fingerprint) and that the file holds
exactly the bytes its shape says, then maps it: no image is read, so a store of any size opens at
once. The image bytes are not hashed on opening (that would read the whole store); a store is written
once and only read afterwards.

Reading (``StoredImages``): training, evaluation and stage 2 read the rows of each batch with
``os.preadv`` into a buffer of their own, not through the mapping, so the process's resident memory
holds a batch, not every page of the store it has read; the kernel's page cache keeps the pages while
memory allows, so an epoch over a store that fits in memory reads from memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from longtail.data.images import decoded_chunks
from longtail.errors import LongtailError
from longtail.runs import atomic_write_bytes

STORE_FORMAT_VERSION = 1
CHUNK_BYTES = 64 << 20  # decoded images held in memory at a time while a store is written


def store_files(cache_dir: Path, key: str) -> tuple[Path, Path]:
    """``(images file, header file)`` of the store ``key`` in ``cache_dir``."""
    return Path(cache_dir) / f"images-{key}.u8", Path(cache_dir) / f"images-{key}.json"


def write_store(
    images_file: Path,
    files: Sequence[str],
    size: int,
    label: str,
    accept: Callable[[list[tuple[int, str]]], None],
) -> int:
    """Decode ``files`` at ``size`` x ``size`` (``data.images.decode_image``) into ``images_file``: the
    readable images one after another, in the order of ``files``. ``accept(failures)`` (each failure
    ``(position in files, reason)``) is called before the file takes its name: raising there leaves
    nothing written. Returns the number of images written."""
    images_file = Path(images_file)
    images_file.parent.mkdir(parents=True, exist_ok=True)
    partial = images_file.with_name(f".{images_file.name}.{os.getpid()}.partial")
    chunk_size = max(1, CHUNK_BYTES // (size * size * 3))
    failures, written = [], 0
    try:
        with open(partial, "wb") as handle:
            for start, images, chunk_failures in decoded_chunks(files, size, size, label, chunk_size):
                if chunk_failures:
                    kept = np.ones(len(images), bool)
                    kept[[position - start for position, _ in chunk_failures]] = False
                    images = images[kept]
                handle.write(memoryview(images).cast("B"))
                written += len(images)
                failures += chunk_failures
            handle.flush()
            os.fsync(handle.fileno())
        accept(failures)
        os.replace(partial, images_file)
    finally:
        partial.unlink(missing_ok=True)
    return written


def _header_checksum(record: dict) -> str:
    body = {key: value for key, value in record.items() if key != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_header(header_file: Path, fingerprint: str, shape: Sequence[int], extra: dict) -> dict:
    """Write the header of a store whose images file is complete: its fingerprint and shape, plus
    ``extra`` (what its source needs to read it back), checksummed. Returns the record."""
    record = {"version": STORE_FORMAT_VERSION, "fingerprint": fingerprint, "shape": [int(n) for n in shape], **extra}
    record["checksum"] = _header_checksum(record)
    atomic_write_bytes(Path(header_file), json.dumps(record).encode())
    return record


def read_header(images_file: Path, header_file: Path, fingerprint: str) -> dict | None:
    """The header of a complete store of ``fingerprint``, checked against its images file; None when
    there is no store yet (no header: never written, or interrupted before it was)."""
    header_file = Path(header_file)
    if not header_file.exists():
        return None
    rebuild = "delete it and rerun to rebuild it"
    try:
        record = json.loads(header_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LongtailError(f"{header_file}: image store header is corrupted ({error}); {rebuild}") from error
    if not isinstance(record, dict) or record.get("checksum") != _header_checksum(record):
        raise LongtailError(f"{header_file}: image store header is corrupted (checksum mismatch); {rebuild}")
    if record.get("version") != STORE_FORMAT_VERSION or record.get("fingerprint") != fingerprint:
        raise LongtailError(f"{header_file}: image store of another version or source; {rebuild}")
    expected = int(np.prod(record["shape"]))
    actual = Path(images_file).stat().st_size if Path(images_file).exists() else None
    if actual != expected:
        raise LongtailError(
            f"{images_file}: the image store holds {actual} bytes, its header {header_file.name} says {expected}; "
            f"delete both and rerun to rebuild them"
        )
    return record


def open_store(images_file: Path, shape: Sequence[int], parts: Sequence[int]) -> list[np.ndarray]:
    """The store's images split into consecutive ``parts`` (numbers of images), each a read-only
    ``np.memmap`` (an empty array for an empty part): nothing is read until indexed."""
    height, width, channels = shape[1:]
    row_bytes = height * width * channels
    arrays, start = [], 0
    for count in parts:
        if count:
            arrays.append(
                np.memmap(images_file, np.uint8, "r", offset=start * row_bytes, shape=(count, height, width, channels))
            )
        else:
            arrays.append(np.zeros((0, height, width, channels), np.uint8))
        start += count
    return arrays


def _read_into(handle, view: memoryview, offset: int, path) -> None:
    """Fill ``view`` with the file's bytes from ``offset`` (``preadv`` may return fewer than asked)."""
    done = 0
    while done < len(view):
        count = os.preadv(handle.fileno(), [view[done:]], offset + done)
        if count == 0:
            raise LongtailError(f"{path}: the image store is shorter than its header says; delete it and rerun")
        done += count


@dataclass(frozen=True, eq=False)
class StoredImages:
    """Some rows of a memory-mapped store, indexed like the uint8 tensor (N, H, W, 3) they stand for:
    ``images[positions]`` (an index tensor or array) and ``images[start:stop]`` read those images from
    the file (``os.preadv``, consecutive rows in one call) and return them as a tensor on ``device``.
    Memory holds the batch read, never the store. ``of(array, rows)`` makes one."""

    path: str
    offset: int  # of the array's first image in the file
    image_shape: tuple[int, ...]  # (H, W, 3)
    rows: np.ndarray  # rows of the array, in the order these images have
    device: torch.device = torch.device("cpu")

    @classmethod
    def of(cls, array: np.memmap, rows: np.ndarray | None = None) -> StoredImages:
        """The images ``array[rows]`` (all of ``array`` for None) of a memory-mapped store."""
        rows = np.arange(len(array)) if rows is None else np.asarray(rows, np.int64)
        return cls(array.filename, array.offset, tuple(array.shape[1:]), rows)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.image_shape)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> StoredImages:
        """The same images, read onto ``device``."""
        return dataclasses.replace(self, device=torch.device(device))

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            rows = self.rows[key]
        else:
            rows = self.rows[key.cpu().numpy() if isinstance(key, torch.Tensor) else np.asarray(key)]
        return torch.from_numpy(self._read(rows)).to(self.device)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """The images of the array's rows ``rows``, in that order (repeats allowed)."""
        unique, inverse = np.unique(rows, return_inverse=True)
        images = np.empty((len(unique), *self.image_shape), np.uint8)
        row_bytes = int(np.prod(self.image_shape))
        bounds = [0, *(np.flatnonzero(np.diff(unique) != 1) + 1).tolist(), len(unique)]
        with open(self.path, "rb", buffering=0) as handle:
            for a, b in zip(bounds[:-1], bounds[1:], strict=True):
                if b > a:
                    offset = self.offset + int(unique[a]) * row_bytes
                    _read_into(handle, memoryview(images[a:b]).cast("B"), offset, self.path)
        if np.array_equal(unique, rows):  # sorted without repeats: the buffer is the batch
            return images
        return images[inverse.reshape(-1)]


def image_rows(array: np.ndarray, rows: np.ndarray | None = None) -> torch.Tensor | StoredImages:
    """The images ``array[rows]`` (all of ``array`` for None) as training and inference read them: a
    uint8 tensor for images in memory, the ``StoredImages`` that read them batch by batch for a
    memory-mapped store (never the whole array in memory)."""
    if isinstance(array, np.memmap):
        return StoredImages.of(array, rows)
    return torch.from_numpy(array if rows is None else array[rows])
