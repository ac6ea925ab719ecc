"""Data sources: CIFAR-style uint8 arrays from an ``.npz``, a torchvision CIFAR-10/100 root, an
image folder or a tarball of one, decoded once into a verified cache.

Sources (``--data``, or the ``LONGTAIL_DATA`` environment variable):
- an ``.npz`` with uint8 ``x_train``/``x_test`` (N, H, W, 3) and integer ``y_train``/``y_test``
  (for example ``../shared/data/cifar10.npz``, the original CIFAR-10 in official order), with
  any number of classes (named by a stored ``class_names``, else CIFAR-10's for 10 classes and
  ``class_<i>`` otherwise);
- a torchvision CIFAR-10 or CIFAR-100 root (``cifar-10-batches-py`` or ``cifar-100-python``
  inside, CIFAR-100 with its 100 fine labels; md5-checked by torchvision, downloaded when missing
  and online);
- an image folder ``ROOT/train/<class>/*``, with an optional ``ROOT/test/<class>/*``, or a
  ``.tar.gz`` of one, decoded by ``longtail.data.images``. Files that cannot be decoded are listed
  in one error, or left out with ``--skip-bad-images`` (and recorded in ``Arrays.skipped``).
  Folders and tarballs are decoded once, with a progress bar, into arrays cached under the cache
  directory, keyed by the source's fingerprint and the store size, so later loads take well
  under 2 s.

A source without test images (an image folder without ``test/``, an ``.npz`` with an empty
``y_test``) needs ``--test-fraction F``: a stratified test split held out of its training images
(``longtail.data.splits``).

Fingerprints: a file's sha256; a directory's sha256 over (relative path, size, mtime) of its
files (reading every image would defeat the cache).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from longtail.choices import CIFAR10_CLASSES
from longtail.data.images import (
    decode_images,
    default_store_size,
    header_image_size,
    image_files,
    parallel_map,
    unreadable_error,
)
from longtail.errors import LongtailError
from longtail.runs import atomic_write_bytes

ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
TORCHVISION_ROOTS = {"cifar-10-batches-py": "CIFAR10", "cifar-100-python": "CIFAR100"}  # folder -> dataset class


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
    """A whole dataset: uint8 images (N, H, W, 3), in memory or memory-mapped (``np.memmap``, a list
    source's store: ``longtail.data.store``), and int64 labels. ``x_test`` is empty for a source
    without test images (its test split is held out of the training images, ``Split.test``);
    ``skipped`` names the unreadable image files left out (``--skip-bad-images``); ``val_rows`` are
    the rows of ``x_train`` that are the source's own validation split (a ``--val-list``; None: the
    validation split is held out of the training images)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    fingerprint: str  # sha256 identifying the source
    source: str
    skipped: tuple[str, ...] = ()
    val_rows: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def store_file(self) -> str | None:
        """The file of the memory-mapped store that holds the images (None: they are in memory)."""
        return str(self.x_train.filename) if isinstance(self.x_train, np.memmap) else None

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
        sizes = parallel_map(header_image_size, files, "reading image sizes")
        store_size = default_store_size([size for size in sizes if size is not None])
    images, failures = decode_images(files, store_size, store_size, f"decoding images at {store_size} px")
    bad = [shown(files[position]) for position, _ in failures]
    if bad and not skip_bad_images:
        raise unreadable_error(bad, source)
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
            raise unreadable_error(arrays.skipped, source)
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


def data_path(source: str | os.PathLike | None) -> Path:
    """The path of ``--data`` (``LONGTAIL_DATA`` when not given), checked to exist and be readable."""
    if source is None:
        source = os.environ.get("LONGTAIL_DATA")
        if not source:
            raise LongtailError(
                "no data given: pass --data PATH (an .npz, an image folder, a .tar.gz, a torchvision CIFAR-10/100 "
                "root, or the image root of --train-list) or set LONGTAIL_DATA"
            )
    path = Path(source).expanduser()
    try:
        exists = path.exists()
    except OSError as error:  # e.g. PermissionError: a folder on the way cannot be searched
        raise LongtailError(f"data path {path} cannot be accessed ({error.strerror}); check its permissions") from error
    if not exists:
        raise LongtailError(
            f"data path {path} does not exist; pass --data with an existing .npz, image folder, "
            ".tar.gz or CIFAR-10/100 root (or the image root of --train-list)"
        )
    if not os.access(path, os.R_OK):
        raise LongtailError(f"data path {path} is not readable; check its permissions")
    return path


def cache_directory(cache_dir: Path | None) -> Path:
    """``cache_dir`` (the default one when None), checked not to be a file."""
    cache_dir = Path(cache_dir or default_cache_dir())
    if cache_dir.exists() and not cache_dir.is_dir():
        raise LongtailError(f"cache directory {cache_dir} is a file, not a directory: pass another --cache-dir")
    return cache_dir


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
    path = data_path(source)
    cache_dir = cache_directory(cache_dir)
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
