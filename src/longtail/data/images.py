"""Image files as every image enters longtail (image folders and ``longtail predict`` alike):
listing the files under a folder and decoding each to a uint8 RGB array of the store size.

Every file under a class folder (recursively; hidden names ``.*`` left out) goes through
``decode_image``: JPEG, PNG, WebP, BMP or anything else Pillow reads, of any size and mode. EXIF
orientation is applied; grayscale, palette and CMYK images become RGB; alpha is dropped, keeping
the colour channels (as torchvision's image loader does). The image is then scaled so its shorter
side is the store size S (bilinear, antialiased) and centre-cropped to S x S. Cropping rather than
padding: no image gets borders the others lack and objects keep their scale, at the cost of the
margins of elongated images. An image that already is S x S is kept pixel for pixel. The default
S (``--store-size``, ``default_store_size``) is the images' own size when they all are one square
size (32 for a CIFAR-style folder: nothing resampled), otherwise the median shorter side clamped
to 32..64 px.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from longtail.errors import LongtailError

# Default store size of image folders whose images differ in size: their median shorter side,
# clamped to this range. 32 px is CIFAR's size and the default training size; 64 px the cpu
# preset's. Larger sizes cost 3 S^2 bytes per image in memory and in the cache: pass
# --store-size for larger training sizes.
DEFAULT_STORE_SIZES = (32, 64)
SHOWN_BAD_FILES = 10  # unreadable files named in an error message; the rest are counted


def _thread_pool() -> ThreadPoolExecutor:
    """A thread pool as large as the machine (at least two threads: decoding releases the GIL)."""
    return ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2))


def parallel_map(function: Callable, items: Sequence, label: str) -> list:
    """``[function(item) for item in items]`` on a thread pool as large as the machine, with a progress bar."""
    with _thread_pool() as pool:
        return list(progress_bar(pool.map(function, items), len(items), label))


def progress_bar(items: Iterable | None, total: int, label: str) -> tqdm:
    """``items`` with a progress bar on stderr, shown only when the work takes over a second (``items``
    None: a bar moved by its ``update``)."""
    return tqdm(
        items, total=total, desc=label, unit="img", leave=False, delay=1.0, mininterval=1.0 if os.isatty(2) else 30.0
    )


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def image_files(folder: Path) -> list[Path]:
    """The candidate images under ``folder``: every file, recursively, sorted by path, hidden ones
    (a name starting with ``.`` anywhere below ``folder``) left out. Whether a file is an image is
    found by decoding it, so no image is silently ignored for its extension."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and not _hidden(p, Path(folder)))


def decode_image(path: Path, height: int, width: int) -> np.ndarray:
    """The uint8 (height, width, 3) RGB image of an image file, as every image enters longtail
    (image folders and ``longtail predict`` alike): EXIF orientation applied, converted to RGB
    (alpha dropped), scaled so it covers height x width (for a square store size S: its shorter
    side becomes S; bilinear, antialiased) and centre-cropped. An image of exactly that size is
    kept pixel for pixel. Raises ``LongtailError`` naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as image:
            # A JPEG decodes at the smallest DCT scale (1/1 .. 1/8) still covering the target: the same
            # pixels every time, several times faster for photos much larger than the store size.
            image.draft("RGB", (max(height, width),) * 2)
            image = ImageOps.exif_transpose(image)
            if image.mode in ("P", "PA"):  # through RGBA: palette transparency converts without a warning
                image = image.convert("RGBA")
            image = image.convert("RGB")  # decodes the file: every error of a damaged one is raised here
    except Exception as error:  # Pillow raises many types for damaged or foreign files
        raise LongtailError(f"{path}: not a readable image ({type(error).__name__}: {error})") from error
    w, h = image.size
    if (w, h) != (width, height):
        scale = max(width / w, height / h)
        box_w, box_h = min(w, width / scale), min(h, height / scale)  # min: float rounding never leaves the image
        left, top = (w - box_w) / 2, (h - box_h) / 2
        image = image.resize((width, height), Image.Resampling.BILINEAR, box=(left, top, left + box_w, top + box_h))
    return np.asarray(image, dtype=np.uint8)


def decoded_chunks(
    files: Sequence[str | Path], height: int, width: int, label: str, chunk_size: int
) -> Iterator[tuple[int, np.ndarray, list[tuple[int, str]]]]:
    """``(start, images, failures)`` for ``chunk_size`` files at a time, in order: the ``decode_image``
    of each (a thread pool, one progress bar for all) as a uint8 array (n, height, width, 3), and
    ``(position in files, reason)`` of each file that could not be decoded (its row stays zero).
    Memory holds one chunk, whatever the number of files."""
    with _thread_pool() as pool, progress_bar(None, len(files), label) as bar:
        for start in range(0, len(files), chunk_size):
            images = np.zeros((min(chunk_size, len(files) - start), height, width, 3), np.uint8)

            def decode(row: int, images=images, start=start) -> tuple[int, str] | None:
                try:
                    images[row] = decode_image(Path(files[start + row]), height, width)
                except LongtailError as error:
                    return start + row, str(error)
                return None

            failures = []
            for failure in pool.map(decode, range(len(images))):
                bar.update()
                if failure:
                    failures.append(failure)
            yield start, images, failures


def decode_images(
    files: Sequence[Path], height: int, width: int, label: str
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """``(images, failures)``: the ``decode_image`` of each file (threads, a progress bar) as one
    uint8 array (N, height, width, 3), and ``(position, reason)`` of each file that could not be
    decoded (its row stays zero)."""
    if not files:
        return np.zeros((0, height, width, 3), np.uint8), []
    ((_, images, failures),) = decoded_chunks(files, height, width, label, chunk_size=len(files))
    return images, failures


def header_image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header, without decoding it; None when it is no image."""
    try:
        with Image.open(path) as image:
            return image.size
    except Exception:  # reported by the decoding that follows
        return None


def default_store_size(sizes: Sequence[tuple[int, int]]) -> int:
    """The store size of images of these (width, height): their own when they all are one square
    size (nothing resampled), otherwise the median shorter side clamped to ``DEFAULT_STORE_SIZES``."""
    if len(set(sizes)) == 1 and sizes[0][0] == sizes[0][1]:
        return sizes[0][0]
    low, high = DEFAULT_STORE_SIZES
    shorter = [min(size) for size in sizes] or [low]
    return int(min(high, max(low, round(float(np.median(shorter))))))


def listed(paths: Sequence[str]) -> str:
    """The first ``SHOWN_BAD_FILES`` paths, comma-separated, and how many more there are."""
    more = len(paths) - SHOWN_BAD_FILES
    return ", ".join(paths[:SHOWN_BAD_FILES]) + (f" (+{more} more)" if more > 0 else "")


def unreadable_error(bad: Sequence[str], origin) -> LongtailError:
    return LongtailError(
        f"{origin}: not a readable image ({len(bad)} file{'s' if len(bad) > 1 else ''}): {listed(bad)}; fix or "
        "remove them, or pass --skip-bad-images to leave them out"
    )
