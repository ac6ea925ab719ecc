"""Data: CIFAR-style arrays from any source, long-tailed subsets, validation and test splits,
batch augmentation.

The whole dataset lives in memory as one uint8 array (N, H, W, 3); augmentation and resizing
work on whole batches of tensors (as in airbench), never image by image in Python.

Sources (``--data``, or the ``LONGTAIL_DATA`` environment variable):
- an ``.npz`` with uint8 ``x_train``/``x_test`` (N, H, W, 3) and integer ``y_train``/``y_test``
  (for example ``../shared/data/cifar10.npz``, the original CIFAR-10 in official order), with
  any number of classes (named by a stored ``class_names``, else CIFAR-10's for 10 classes and
  ``class_<i>`` otherwise);
- a torchvision CIFAR-10 or CIFAR-100 root (``cifar-10-batches-py`` or ``cifar-100-python``
  inside, CIFAR-100 with its 100 fine labels; md5-checked by torchvision, downloaded when missing
  and online);
- an image folder ``ROOT/train/<class>/*``, with an optional ``ROOT/test/<class>/*``, or a
  ``.tar.gz`` of one.

Image folders as they come: every file under a class folder (recursively; hidden names ``.*``
left out) goes through ``decode_image``: JPEG, PNG, WebP, BMP or anything else Pillow reads, of
any size and mode. EXIF orientation is applied; grayscale, palette and CMYK images become RGB;
alpha is dropped, keeping the colour channels (as torchvision's image loader does). The image is
then scaled so its shorter side is the store size S (bilinear, antialiased) and centre-cropped to
S x S. Cropping rather than padding: no image gets borders the others lack and objects keep their
scale, at the cost of the margins of elongated images. An image that already is S x S is kept
pixel for pixel. The default S (``--store-size``, ``default_store_size``) is the images' own size
when they all are one square size (32 for a CIFAR-style folder: nothing resampled), otherwise the
median shorter side clamped to 32..64 px. Files that cannot be decoded are listed in one error,
or left out with ``--skip-bad-images`` (and recorded in ``Arrays.skipped``). Folders and tarballs
are decoded once, with a progress bar, into arrays cached under the cache directory, keyed by
the source's fingerprint and the store size, so later loads take well under 2 s.

A source without test images (an image folder without ``test/``, an ``.npz`` with an empty
``y_test``) needs ``--test-fraction F``: a stratified test split held out of its training images
(``select_long_tail``), saved in the same index file as the training and validation indices.

Fingerprints: a file's sha256; a directory's sha256 over (relative path, size, mtime) of its
files (reading every image would defeat the cache).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from tqdm import tqdm

from longtail.choices import NATURAL_IMBALANCE
from longtail.errors import LongtailError
from longtail.runs import atomic_write_bytes

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
INDEX_FORMAT_VERSION = 1  # later keys (natural imbalance, val_fraction, the test split) are optional: v1 still reads
PROFILES = ("exp", "step")
ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
TORCHVISION_ROOTS = {"cifar-10-batches-py": "CIFAR10", "cifar-100-python": "CIFAR100"}  # folder -> dataset class
# Default store size of image folders whose images differ in size: their median shorter side,
# clamped to this range. 32 px is CIFAR's size and the default training size; 64 px the cpu
# preset's. Larger sizes cost 3 S^2 bytes per image in memory and in the cache: pass
# --store-size for larger training sizes.
DEFAULT_STORE_SIZES = (32, 64)
# The held-out test split is drawn with this fixed seed, not --seed: like a test folder, it is a
# property of the data, the same for every run (and every seed of a study) on that source.
TEST_SPLIT_ENTROPY = 0x1F2E3D4C
SHOWN_BAD_FILES = 10  # unreadable files named in an error message; the rest are counted


def default_cache_dir() -> Path:
    """``LONGTAIL_CACHE`` if set, else ``~/.cache/longtail``."""
    return Path(os.environ.get("LONGTAIL_CACHE", Path.home() / ".cache" / "longtail"))


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _sha256_arrays(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


# ---------------------------------------------------------------- loading sources


@dataclass(frozen=True)
class Arrays:
    """A whole dataset in memory: uint8 images (N, H, W, 3) and int64 labels. ``x_test`` is empty
    for a source without test images (its test split is held out of the training images,
    ``Split.test``); ``skipped`` names the unreadable image files left out (``--skip-bad-images``)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    fingerprint: str  # sha256 identifying the source
    source: str
    skipped: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int]:
        """(height, width) of the stored images: the store size of a decoded image folder."""
        return int(self.x_train.shape[1]), int(self.x_train.shape[2])


def _validate_arrays(x_train, y_train, x_test, y_test, class_names, origin: str) -> None:
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise LongtailError(f"{origin}: x_{name} must be uint8 (N, H, W, 3), got {x.dtype} {x.shape}")
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise LongtailError(f"{origin}: y_{name} must be integer labels, one per image ({len(x)}), got {y.shape}")
        if len(y) and (y.min() < 0 or y.max() >= len(class_names)):
            raise LongtailError(f"{origin}: y_{name} has labels outside 0..{len(class_names) - 1}")
    missing = sorted(set(range(len(class_names))) - set(np.unique(y_train).tolist()))
    if missing:
        raise LongtailError(f"{origin}: classes {missing} have no training images")


def check_test_split(has_test: bool, test_fraction: float | None, origin, missing: str) -> None:
    """A source gives its own test split, or ``--test-fraction`` holds one out of its training
    images: exactly one of the two (``missing`` says what the source lacks, for the message)."""
    if has_test and test_fraction is not None:
        raise LongtailError(
            f"{origin} has its own test split; --test-fraction holds one out of the training images of a source "
            "without one: leave it out"
        )
    if not has_test and test_fraction is None:
        raise LongtailError(
            f"{origin} has no test split ({missing}): pass --test-fraction F (e.g. --test-fraction 0.2) to hold out "
            "a stratified share of each class's training images as the test split, or add test images"
        )


def _refuse_store_size(store_size: int | None, path: Path) -> None:
    if store_size is not None:
        raise LongtailError(
            f"--store-size applies to image folders and .tar.gz archives; {path} holds decoded arrays already: "
            "leave it out"
        )


def _load_npz(path: Path) -> Arrays:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = set(ARRAY_KEYS) - set(archive.files)
            if missing:
                raise LongtailError(
                    f"{path}: missing arrays {sorted(missing)}; an .npz needs x_train, y_train, x_test, y_test"
                )
            arrays = {key: archive[key] for key in ARRAY_KEYS}
            names = tuple(str(n) for n in archive["class_names"]) if "class_names" in archive.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise LongtailError(f"{path}: not a readable .npz ({error}); check the file or re-copy it") from error
    if arrays["y_train"].size == 0:
        raise LongtailError(f"{path}: y_train is empty; an .npz needs training images")
    num_classes = int(max(y.max() for y in (arrays["y_train"], arrays["y_test"]) if y.size)) + 1
    names = names or (CIFAR10_CLASSES if num_classes == 10 else tuple(f"class_{i}" for i in range(num_classes)))
    _validate_arrays(*arrays.values(), names, str(path))
    return Arrays(
        **{k: v if k.startswith("x") else v.astype(np.int64) for k, v in arrays.items()},
        class_names=names,
        fingerprint=sha256_file(path),
        source=str(path),
    )


@functools.lru_cache(maxsize=2)
def _load_npz_once(path: str, size: int, mtime_ns: int) -> Arrays:
    """``_load_npz`` once per process and file version (size and mtime): a study loads the same
    file for each of its two dozen runs, and decompressing and hashing it takes seconds. The
    arrays are shared, so nothing may modify them in place."""
    return _load_npz(Path(path))


def _directory_fingerprint(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _load_torchvision_root(root: Path, folder: str) -> tuple[np.ndarray, ...]:
    """The arrays and class names of a torchvision CIFAR-10 or CIFAR-100 root (``folder`` inside
    it), md5-checked by torchvision and downloaded when missing (online only)."""
    import torchvision.datasets

    name = TORCHVISION_ROOTS[folder]
    dataset = getattr(torchvision.datasets, name)
    try:
        train = dataset(str(root), train=True, download=True)
        test = dataset(str(root), train=False, download=True)
    except (OSError, RuntimeError) as error:  # urllib's URLError is an OSError
        raise LongtailError(
            f"{root}: no verified {name} in {root / folder} and it could not be downloaded ({error}); "
            "pass --data with an .npz or an image folder"
        ) from error
    return (
        train.data,
        np.asarray(train.targets, np.int64),
        test.data,
        np.asarray(test.targets, np.int64),
        tuple(train.classes),
    )


# ---------------------------------------------------------------- image files


def progress_bar(items: Iterable, total: int, label: str) -> Iterable:
    """``items`` with a progress bar on stderr, shown only when the work takes over a second."""
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


def decode_images(
    files: Sequence[Path], height: int, width: int, label: str
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """``(images, failures)``: the ``decode_image`` of each file (threads, a progress bar) as one
    uint8 array (N, height, width, 3), and ``(position, reason)`` of each file that could not be
    decoded (its row stays zero)."""
    images = np.zeros((len(files), height, width, 3), np.uint8)
    failures = []

    def decode(position: int) -> None:
        try:
            images[position] = decode_image(files[position], height, width)
        except LongtailError as error:
            failures.append((position, str(error)))

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        for _ in progress_bar(pool.map(decode, range(len(files))), len(files), label):
            pass
    return images, sorted(failures)


def _image_size(path: Path) -> tuple[int, int] | None:
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


def _unreadable(bad: Sequence[str], origin) -> LongtailError:
    return LongtailError(
        f"{origin}: not a readable image ({len(bad)} file{'s' if len(bad) > 1 else ''}): {listed(bad)}; fix or "
        "remove them, or pass --skip-bad-images to leave them out"
    )


# ---------------------------------------------------------------- image folders


def _image_folder_root(root: Path) -> Path:
    """The folder holding ``train/`` (the root itself or its single subfolder)."""
    if (root / "train").is_dir():
        return root
    children = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(children) == 1 and (children[0] / "train").is_dir():
        return children[0]
    raise LongtailError(f"{root}: expected an image folder ROOT/train/<class>/* (and optionally ROOT/test/<class>/*)")


def _class_folders(folder: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))


def _list_image_folder(root: Path, source: str, test_fraction: float | None) -> tuple[tuple[str, ...], dict]:
    """``(class names, {split: (files, labels)})`` of an image folder's root; checks the layout
    (and that a test split exists or will be held out) before anything is decoded."""
    splits = ("train", "test") if (root / "test").is_dir() else ("train",)
    check_test_split(len(splits) == 2, test_fraction, source, "no test/ folder beside train/")
    class_names = _class_folders(root / "train")
    if not class_names:
        raise LongtailError(f"{root / 'train'}: no class folders")
    test_classes = _class_folders(root / "test") if "test" in splits else class_names
    if class_names != test_classes:
        raise LongtailError(
            f"{root}: train and test have different classes "
            f"(only in train: {sorted(set(class_names) - set(test_classes))}, "
            f"only in test: {sorted(set(test_classes) - set(class_names))})"
        )
    listing = {}
    for split in splits:
        files, labels = [], []
        for label, name in enumerate(class_names):
            members = image_files(root / split / name)
            if not members:
                raise LongtailError(f"{root / split / name}: empty class folder; every class needs images")
            files += members
            labels += [label] * len(members)
        listing[split] = (files, labels)
    return class_names, listing


def _load_image_folder(
    root: Path,
    fingerprint: str,
    source: str,
    *,
    store_size: int | None,
    skip_bad_images: bool,
    test_fraction: float | None,
    shown: Callable[[Path], str] = str,
) -> Arrays:
    """Decode an image folder at ``store_size`` (None: ``default_store_size`` of its images);
    ``shown`` gives the name a file has in messages and in ``Arrays.skipped``."""
    root = _image_folder_root(root)
    class_names, listing = _list_image_folder(root, source, test_fraction)
    files = [path for split_files, _ in listing.values() for path in split_files]
    if store_size is None:
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
            sizes = list(progress_bar(pool.map(_image_size, files), len(files), "reading image sizes"))
        store_size = default_store_size([size for size in sizes if size is not None])
    images, failures = decode_images(files, store_size, store_size, f"decoding images at {store_size} px")
    bad = [shown(files[position]) for position, _ in failures]
    if bad and not skip_bad_images:
        raise _unreadable(bad, source)
    if bad:
        tqdm.write(
            f"longtail: left out {len(bad)} unreadable image file(s) (--skip-bad-images): {bad[0]}, ...",
            file=sys.stderr,
        )
    readable = np.ones(len(files), bool)
    readable[[position for position, _ in failures]] = False
    arrays, start = {}, 0
    for split in ("train", "test"):
        split_files, labels = listing.get(split, ([], []))
        rows = slice(start, start + len(split_files))
        kept = readable[rows]
        arrays[f"x_{split}"] = images[rows] if kept.all() else images[rows][kept]  # a view unless files were left out
        arrays[f"y_{split}"] = np.asarray(labels, np.int64)[kept]
        start += len(split_files)
    _validate_arrays(*arrays.values(), class_names, source)
    return Arrays(**arrays, class_names=class_names, fingerprint=fingerprint, source=source, skipped=tuple(bad))


def _load_tarball(path: Path, scratch: Path, fingerprint: str, **options) -> Arrays:
    try:
        with tarfile.open(path, "r:*") as archive:
            archive.extractall(scratch, filter="data")
    except (tarfile.TarError, OSError, EOFError) as error:
        raise LongtailError(f"{path}: not a readable tar archive ({error})") from error
    try:
        return _load_image_folder(
            scratch, fingerprint, str(path), shown=lambda p: f"{path}:{p.relative_to(scratch)}", **options
        )
    except LongtailError as error:
        message = str(error)
        raise LongtailError(message if message.startswith(str(path)) else f"{path}: {message}") from error


def _read_cached_arrays(cache: Path, fingerprint: str, source: str) -> Arrays:
    try:
        with np.load(cache, allow_pickle=False) as archive:
            stored = {key: archive[key] for key in archive.files}
        arrays = {key: stored[key] for key in ARRAY_KEYS}
        checksum, names = str(stored["checksum"]), tuple(str(n) for n in stored["class_names"])
        skipped = tuple(str(p) for p in stored["skipped"])
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise LongtailError(
            f"{cache}: cached arrays are corrupted ({error}); delete it and rerun to rebuild it"
        ) from error
    if _sha256_arrays(*arrays.values()) != checksum:
        raise LongtailError(
            f"{cache}: cached arrays are corrupted (checksum mismatch); delete it and rerun to rebuild it"
        )
    return Arrays(**arrays, class_names=names, fingerprint=fingerprint, source=source, skipped=skipped)


def _cached_decode(
    kind: str,
    source: Path,
    fingerprint: str,
    cache_dir: Path,
    *,
    store_size: int | None,
    skip_bad_images: bool,
    test_fraction: float | None,
) -> Arrays:
    """Decode an image folder or tarball once per store size; later calls read the cached arrays
    (which remember the unreadable files left out: without ``skip_bad_images`` they are an error)."""
    cache = cache_dir / f"arrays-{fingerprint[:16]}-{'auto' if store_size is None else f'{store_size}px'}.npz"
    if cache.exists():
        arrays = _read_cached_arrays(cache, fingerprint, str(source))
        if arrays.skipped and not skip_bad_images:
            raise _unreadable(arrays.skipped, source)
        check_test_split(len(arrays.y_test) > 0, test_fraction, source, "no test/ folder beside train/")
        return arrays
    options = dict(store_size=store_size, skip_bad_images=skip_bad_images, test_fraction=test_fraction)
    if kind == "tarball":  # extracted outside the cache, so a bad archive leaves nothing behind
        with tempfile.TemporaryDirectory(prefix="longtail-extract-") as scratch:
            arrays = _load_tarball(source, Path(scratch), fingerprint, **options)
    else:
        arrays = _load_image_folder(source, fingerprint, str(source), **options)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        **{key: getattr(arrays, key) for key in ARRAY_KEYS},
        class_names=np.asarray(arrays.class_names),
        skipped=np.asarray(arrays.skipped, dtype=str),
        checksum=np.asarray(_sha256_arrays(*(getattr(arrays, key) for key in ARRAY_KEYS))),
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(cache, buffer.getvalue())
    return arrays


def load_arrays(
    source: str | os.PathLike | None,
    cache_dir: Path | None = None,
    *,
    store_size: int | None = None,
    skip_bad_images: bool = False,
    test_fraction: float | None = None,
) -> Arrays:
    """Load a dataset from any supported source (see the module docstring). ``store_size`` and
    ``skip_bad_images`` decode image folders and tarballs; ``test_fraction`` says a test split
    will be held out of the training images, so the source must have none of its own (and
    without it, must have one)."""
    if source is None:
        source = os.environ.get("LONGTAIL_DATA")
        if not source:
            raise LongtailError(
                "no data given: pass --data PATH (an .npz, an image folder, a .tar.gz or a "
                "torchvision CIFAR-10/100 root) or set LONGTAIL_DATA"
            )
    path = Path(source).expanduser()
    cache_dir = Path(cache_dir or default_cache_dir())
    try:
        exists = path.exists()
    except OSError as error:  # e.g. PermissionError: a folder on the way cannot be searched
        raise LongtailError(f"data path {path} cannot be accessed ({error.strerror}); check its permissions") from error
    if not exists:
        raise LongtailError(
            f"data path {path} does not exist; pass --data with an existing .npz, image folder, "
            ".tar.gz or CIFAR-10/100 root"
        )
    if not os.access(path, os.R_OK):
        raise LongtailError(f"data path {path} is not readable; check its permissions")
    if cache_dir.exists() and not cache_dir.is_dir():
        raise LongtailError(f"cache directory {cache_dir} is a file, not a directory: pass another --cache-dir")
    decoding = dict(store_size=store_size, skip_bad_images=skip_bad_images, test_fraction=test_fraction)
    if path.is_file() and path.suffix == ".npz":
        _refuse_store_size(store_size, path)
        stat = path.stat()
        arrays = _load_npz_once(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        check_test_split(len(arrays.y_test) > 0, test_fraction, path, "y_test is empty")
        return arrays
    if path.is_file() and (path.name.endswith((".tar.gz", ".tgz", ".tar"))):
        return _cached_decode("tarball", path, sha256_file(path), cache_dir, **decoding)
    for folder in TORCHVISION_ROOTS:
        if path.is_dir() and (path / folder).is_dir():
            _refuse_store_size(store_size, path)
            check_test_split(True, test_fraction, path, "")
            *arrays, names = _load_torchvision_root(path, folder)
            return Arrays(
                *arrays, class_names=names, fingerprint=_directory_fingerprint(path / folder), source=str(path)
            )
    if path.is_dir():
        return _cached_decode("folder", path, _directory_fingerprint(path), cache_dir, **decoding)
    raise LongtailError(
        f"{path}: unsupported data source; use an .npz, an image folder, a .tar.gz or a torchvision CIFAR-10/100 root"
    )


# ---------------------------------------------------------------- long-tailed subsets


def long_tail_counts(n_max: int, num_classes: int, imbalance: float, profile: str = "exp") -> list[int]:
    """Per-class training counts of a long-tailed subset, class 0 the head.

    ``exp``: ``n_i = floor(n_max * IF ** (-i / (C - 1)))`` (Cui et al. 2019; Cao et al. 2019).
    ``step``: the first half of the classes keep ``n_max``, the rest ``floor(n_max / IF)``
    (Buda et al. 2018, Cao et al. 2019's step imbalance with mu = 0.5).
    """
    if not imbalance >= 1:
        raise LongtailError(f"imbalance factor must be >= 1, got {imbalance}")
    if profile not in PROFILES:
        raise LongtailError(f"unknown imbalance profile '{profile}': choose one of {', '.join(PROFILES)}")
    if num_classes == 1:
        return [n_max]
    if profile == "step":
        return [n_max if i < num_classes // 2 else math.floor(n_max / imbalance + 1e-9) for i in range(num_classes)]
    # The 1e-9 keeps exact products (5000 * 100 ** -1 = 50) from flooring to 49 in binary floating point.
    return [math.floor(n_max * imbalance ** (-i / (num_classes - 1)) + 1e-9) for i in range(num_classes)]


@dataclass(frozen=True)
class Split:
    """Indices into the training arrays: the long-tailed training subset, the validation split
    and, for a source without test images, the test split held out of them (else None: the
    source's own test images are the test split)."""

    train: np.ndarray
    val: np.ndarray
    train_counts: list[int]
    profile_counts: list[int]
    index_file: Path | None = None
    test: np.ndarray | None = None


def _share(fraction: float, size: int) -> int:
    """A share of a class's ``size`` images, rounded half up, at least one image."""
    return max(1, math.floor(fraction * size + 0.5))


def _images(count: int) -> str:
    return f"{count} image{'' if count == 1 else 's'}"


def _test_order(label: int, members: np.ndarray) -> np.ndarray:
    """A class's images in the order the test split takes them: shuffled with the fixed test seed."""
    return np.random.default_rng(np.random.SeedSequence(TEST_SPLIT_ENTROPY, spawn_key=(label,))).permutation(members)


def _too_small(classes: list[str], option: str) -> LongtailError:
    return LongtailError(
        f"{option} leaves no training images for class {', '.join(classes)}: add images to "
        f"{'that class' if len(classes) == 1 else 'those classes'} or lower {option.split()[0]}"
    )


def select_long_tail(
    labels: np.ndarray,
    num_classes: int,
    imbalance: float | str,
    profile: str,
    seed: int,
    val_per_class: int,
    max_per_class: int | None = None,
    *,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    class_names: Sequence[str] | None = None,
) -> Split:
    """Draw the long-tailed training subset, a validation split and (with ``test_fraction``) a
    test split, per class.

    Test: with ``test_fraction`` F, each class's images are shuffled by a generator with a fixed
    seed (``TEST_SPLIT_ENTROPY``, the class) and the first ``max(1, round(F * n_c))`` are the
    test split: stratified, and the same for every run on the source whatever its seed,
    imbalance or validation size. Everything below draws from the remaining images only.

    Validation and training: each class's images are shuffled with a generator seeded by
    ``(seed, class)``. The validation split takes the *last* ``val_per_class`` images of that
    order (or ``max(1, round(val_fraction * n_c))`` with ``val_fraction``, for small classes);
    training takes the *first* ``n_i`` (the long-tail profile's count), capped so the two never
    overlap. So a class keeps its standard count unless it would need images the validation
    split took: at IF = 100 with 50 per class only the head class changes (5,000 -> 4,950).
    ``max_per_class`` sets the head count ``n_max`` (default: the smallest class's size), for
    smaller long-tailed sets with the same profile. ``imbalance="natural"`` keeps every image
    that is not validation or test (no subsampling). A split that would leave a class without
    training images is an error naming the class (``class_names``, else its index).
    """
    if val_per_class < 0:
        raise LongtailError(f"--val-per-class must be >= 0, got {val_per_class}")
    names = (
        [f"{c} '{name}'" for c, name in enumerate(class_names)] if class_names else list(map(str, range(num_classes)))
    )
    per_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    test = None
    if test_fraction is not None:
        test = [np.sort(_test_order(c, m)[: _share(test_fraction, len(m))]) for c, m in enumerate(per_class)]
        small = [f"{names[c]} ({_images(len(m))})" for c, m in enumerate(per_class) if len(test[c]) >= len(m)]
        if small:
            raise _too_small(small, f"--test-fraction {test_fraction:g}")
        per_class = [np.setdiff1d(m, t) for m, t in zip(per_class, test, strict=True)]
    n_val = [val_per_class if val_fraction is None else _share(val_fraction, len(m)) for m in per_class]
    small = [f"{names[c]} ({_images(len(m))})" for c, m in enumerate(per_class) if n_val[c] and n_val[c] >= len(m)]
    if small:
        option = f"--val-per-class {val_per_class}" if val_fraction is None else f"--val-fraction {val_fraction:g}"
        raise _too_small(small, option + (" after the test split" if test is not None else ""))
    if imbalance == NATURAL_IMBALANCE:
        if max_per_class is not None:
            raise LongtailError(
                "--max-per-class sets the head count of an imbalance profile; --imbalance natural keeps every image"
            )
        profile_counts = [len(m) for m in per_class]
    else:
        n_max = min(len(members) for members in per_class)
        if max_per_class is not None:
            if not 1 <= max_per_class <= n_max:
                raise LongtailError(
                    f"--max-per-class must be between 1 and {n_max} (the smallest class's size), got {max_per_class}"
                )
            n_max = max_per_class
        profile_counts = long_tail_counts(n_max, num_classes, imbalance, profile)
    train, val = [], []
    for c, members in enumerate(per_class):
        order = np.random.default_rng([seed, c]).permutation(members)
        train.append(np.sort(order[: min(profile_counts[c], len(order) - n_val[c])]))
        val.append(np.sort(order[len(order) - n_val[c] :]))
    return Split(
        train=np.concatenate(train),
        val=np.concatenate(val),
        train_counts=[len(t) for t in train],
        profile_counts=profile_counts,
        test=None if test is None else np.concatenate(test),
    )


def _index_checksum(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _index_name(
    arrays: Arrays, imbalance, profile, seed, val_per_class, max_per_class, val_fraction, test_fraction
) -> str:
    """The index file's name: every setting of the split (the settings of the first format
    version spelled as they always were, so those files are still found)."""
    shape = "natural" if imbalance == NATURAL_IMBALANCE else f"{profile}-if{imbalance:g}"
    head = "" if max_per_class is None else f"-max{max_per_class}"
    val = f"val{val_per_class}" if val_fraction is None else f"valf{val_fraction:g}"
    test = "" if test_fraction is None else f"-test{test_fraction:g}"
    return f"lt-{arrays.fingerprint[:16]}-{shape}{head}-seed{seed}-{val}{test}.json"


def long_tail_split(
    arrays: Arrays,
    imbalance: float | str,
    profile: str = "exp",
    seed: int = 0,
    val_per_class: int = 50,
    max_per_class: int | None = None,
    cache_dir: Path | None = None,
    *,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
) -> Split:
    """The split of ``arrays`` (``select_long_tail``), saved once as a versioned index file and
    reused, so every run and stage-2 head on these settings sees the same split.

    The file (JSON) records the format version, the source fingerprint, profile, imbalance
    factor, seed, validation size (or fraction), test fraction, the indices (train, val and
    test) and a checksum over all of it.
    """
    check_test_split(len(arrays.y_test) > 0, test_fraction, arrays.source, "no test images")
    cache_dir = cache_dir or default_cache_dir()
    settings = (imbalance, profile, seed, val_per_class, max_per_class, val_fraction, test_fraction)
    path = cache_dir / "indices" / _index_name(arrays, *settings)
    if path.exists():
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise LongtailError(
                f"{path}: index file is corrupted ({error}); delete it and rerun to rebuild it"
            ) from error
        if record.get("checksum") != _index_checksum(record) or record.get("version") != INDEX_FORMAT_VERSION:
            raise LongtailError(
                f"{path}: index file is corrupted or from another version (checksum mismatch); "
                "delete it and rerun to rebuild it"
            )
        test = record.get("test")  # absent from files written before test splits were held out
        return Split(
            np.asarray(record["train"], np.int64),
            np.asarray(record["val"], np.int64),
            record["train_counts"],
            record["profile_counts"],
            path,
            None if test is None else np.asarray(test, np.int64),
        )
    split = select_long_tail(
        arrays.y_train,
        arrays.num_classes,
        imbalance,
        profile,
        seed,
        val_per_class,
        max_per_class,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        class_names=arrays.class_names,
    )
    record = {
        "version": INDEX_FORMAT_VERSION,
        "source_sha256": arrays.fingerprint,
        "profile": profile,
        "imbalance": imbalance,
        "seed": seed,
        "val_per_class": val_per_class,
        "max_per_class": max_per_class,
        "train_counts": split.train_counts,
        "profile_counts": split.profile_counts,
        "train": split.train.tolist(),
        "val": split.val.tolist(),
    }
    if val_fraction is not None or test_fraction is not None:
        record.update(
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            test=None if split.test is None else split.test.tolist(),
        )
    record["checksum"] = _index_checksum(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(record).encode())
    return Split(split.train, split.val, split.train_counts, split.profile_counts, path, split.test)


# ---------------------------------------------------------------- batches and augmentation


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


def to_model_input(images: torch.Tensor, image_size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, S, S), bilinearly resized, channels_last.

    ``(x / 255 - mean) / std`` is one multiply and one add per element on the (B, H, W, 3) layout,
    and the channel permutation of that layout already is channels_last: the float conversion is
    the only copy at 32 px.
    """
    scale = torch.tensor([1 / (255 * s) for s in std], device=images.device)
    shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], device=images.device)
    x = images.float().mul_(scale).add_(shift).permute(0, 3, 1, 2)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.contiguous(memory_format=torch.channels_last)


def batches(order: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive index batches of ``order`` (the last one may be smaller)."""
    yield from torch.split(order, batch_size)
