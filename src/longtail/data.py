"""Data: CIFAR-style arrays from any source, long-tailed subsets, validation split, batch augmentation.

The whole dataset lives in memory as one uint8 array (N, H, W, 3); augmentation and resizing
work on whole batches of tensors (as in airbench), never image by image in Python.

Sources (``--data``, or the ``LONGTAIL_DATA`` environment variable):
- an ``.npz`` with uint8 ``x_train``/``x_test`` (N, 32, 32, 3) and integer ``y_train``/``y_test``
  (for example ``../shared/data/cifar10.npz``, the original CIFAR-10 in official order);
- a torchvision CIFAR-10 root (``cifar-10-batches-py`` inside; downloaded with md5 check when
  online);
- an image-folder root ``ROOT/{train,test}/<class>/*``, or a ``.tar.gz`` of one.
Image folders and tarballs are decoded once into arrays cached under the cache directory,
keyed by the source's fingerprint, so later loads take well under 2 s.

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
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from longtail.errors import LongtailError
from longtail.runs import atomic_write_bytes

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
INDEX_FORMAT_VERSION = 1
PROFILES = ("exp", "step")


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
    """A whole dataset in memory: uint8 images (N, H, W, 3) and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    fingerprint: str  # sha256 identifying the source
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


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


def _load_npz(path: Path) -> Arrays:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(archive.files)
            if missing:
                raise LongtailError(
                    f"{path}: missing arrays {sorted(missing)}; an .npz needs x_train, y_train, x_test, y_test"
                )
            arrays = {key: archive[key] for key in ("x_train", "y_train", "x_test", "y_test")}
            names = tuple(str(n) for n in archive["class_names"]) if "class_names" in archive.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise LongtailError(f"{path}: not a readable .npz ({error}); check the file or re-copy it") from error
    if arrays["y_train"].size == 0 or arrays["y_test"].size == 0:
        raise LongtailError(f"{path}: y_train and y_test must not be empty; an .npz needs training and test images")
    num_classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
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


def _load_torchvision_root(root: Path) -> tuple[np.ndarray, ...]:
    from torchvision.datasets import CIFAR10

    try:
        train = CIFAR10(str(root), train=True, download=True)
        test = CIFAR10(str(root), train=False, download=True)
    except (OSError, RuntimeError) as error:  # urllib's URLError is an OSError
        raise LongtailError(
            f"{root}: no verified CIFAR-10 there and it could not be downloaded ({error}); "
            "pass --data with a cifar10.npz or an image folder"
        ) from error
    return (
        train.data,
        np.asarray(train.targets, np.int64),
        test.data,
        np.asarray(test.targets, np.int64),
        tuple(train.classes),
    )


def _image_folder_root(root: Path) -> Path:
    """The folder holding ``train/`` and ``test/`` (the root itself or its single subfolder)."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root
    children = [p for p in root.iterdir() if p.is_dir()]
    if len(children) == 1 and (children[0] / "train").is_dir() and (children[0] / "test").is_dir():
        return children[0]
    raise LongtailError(f"{root}: expected an image folder ROOT/train/<class>/* and ROOT/test/<class>/*")


def _decode_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise LongtailError(f"{path}: not a readable image ({error}); remove it from the folder") from error


def _load_image_folder(root: Path) -> tuple[np.ndarray, ...]:
    root = _image_folder_root(root)
    class_names = tuple(sorted(p.name for p in (root / "train").iterdir() if p.is_dir()))
    test_classes = tuple(sorted(p.name for p in (root / "test").iterdir() if p.is_dir()))
    if not class_names:
        raise LongtailError(f"{root / 'train'}: no class folders")
    if class_names != test_classes:
        raise LongtailError(
            f"{root}: train and test have different classes "
            f"(only in train: {sorted(set(class_names) - set(test_classes))}, "
            f"only in test: {sorted(set(test_classes) - set(class_names))})"
        )
    splits = []
    for split in ("train", "test"):
        files, labels = [], []
        for label, name in enumerate(class_names):
            members = sorted(p for p in (root / split / name).iterdir() if p.is_file())
            if not members:
                raise LongtailError(f"{root / split / name}: empty class folder; every class needs images")
            files += members
            labels += [label] * len(members)
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
            images = list(pool.map(_decode_image, files, chunksize=256))
        shapes = {image.shape for image in images}
        if len(shapes) != 1:
            raise LongtailError(
                f"{root / split}: images have different sizes {sorted(shapes)[:4]}; resize them to one size first"
            )
        splits += [np.stack(images), np.asarray(labels, np.int64)]
    return (*splits, class_names)


def _load_tarball(path: Path, scratch: Path) -> tuple[np.ndarray, ...]:
    try:
        with tarfile.open(path, "r:*") as archive:
            archive.extractall(scratch, filter="data")
    except (tarfile.TarError, OSError, EOFError) as error:
        raise LongtailError(f"{path}: not a readable tar archive ({error})") from error
    try:
        return _load_image_folder(scratch)
    except LongtailError as error:
        raise LongtailError(f"{path}: {error}") from error


def _cached_decode(kind: str, source: Path, fingerprint: str, cache_dir: Path) -> Arrays:
    """Decode an image folder or tarball once; later calls read the cached arrays."""
    cache = cache_dir / f"arrays-{fingerprint[:16]}.npz"
    if cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as archive:
                stored = {key: archive[key] for key in archive.files}
            arrays = [stored[k] for k in ("x_train", "y_train", "x_test", "y_test")]
            checksum, names = str(stored["checksum"]), tuple(str(n) for n in stored["class_names"])
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
            raise LongtailError(
                f"{cache}: cached arrays are corrupted ({error}); delete it and rerun to rebuild it"
            ) from error
        if _sha256_arrays(*arrays) != checksum:
            raise LongtailError(
                f"{cache}: cached arrays are corrupted (checksum mismatch); delete it and rerun to rebuild it"
            )
    else:
        if kind == "tarball":
            with tempfile.TemporaryDirectory(prefix="longtail-extract-") as scratch:
                *arrays, names = _load_tarball(source, Path(scratch))
        else:
            *arrays, names = _load_image_folder(source)
        _validate_arrays(*arrays, names, str(source))
        buffer = io.BytesIO()
        np.savez(
            buffer,
            **dict(zip(("x_train", "y_train", "x_test", "y_test"), arrays, strict=True)),
            class_names=np.asarray(names),
            checksum=np.asarray(_sha256_arrays(*arrays)),
        )
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache, buffer.getvalue())
    return Arrays(*arrays, class_names=names, fingerprint=fingerprint, source=str(source))


def load_arrays(source: str | os.PathLike | None, cache_dir: Path | None = None) -> Arrays:
    """Load a dataset from any supported source (see the module docstring)."""
    if source is None:
        source = os.environ.get("LONGTAIL_DATA")
        if not source:
            raise LongtailError(
                "no data given: pass --data PATH (an .npz, an image folder, a .tar.gz or a "
                "torchvision CIFAR-10 root) or set LONGTAIL_DATA"
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
            ".tar.gz or CIFAR-10 root"
        )
    if not os.access(path, os.R_OK):
        raise LongtailError(f"data path {path} is not readable; check its permissions")
    if cache_dir.exists() and not cache_dir.is_dir():
        raise LongtailError(f"cache directory {cache_dir} is a file, not a directory: pass another --cache-dir")
    if path.is_file() and path.suffix == ".npz":
        stat = path.stat()
        return _load_npz_once(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if path.is_file() and (path.name.endswith((".tar.gz", ".tgz", ".tar"))):
        return _cached_decode("tarball", path, sha256_file(path), cache_dir)
    if path.is_dir() and (path / "cifar-10-batches-py").is_dir():
        *arrays, names = _load_torchvision_root(path)
        return Arrays(
            *arrays,
            class_names=names,
            fingerprint=_directory_fingerprint(path / "cifar-10-batches-py"),
            source=str(path),
        )
    if path.is_dir():
        return _cached_decode("folder", path, _directory_fingerprint(path), cache_dir)
    raise LongtailError(
        f"{path}: unsupported data source; use an .npz, an image folder, a .tar.gz or a torchvision CIFAR-10 root"
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
    """Indices into the training arrays: the long-tailed training subset and the validation split."""

    train: np.ndarray
    val: np.ndarray
    train_counts: list[int]
    profile_counts: list[int]
    index_file: Path | None = None


def select_long_tail(
    labels: np.ndarray,
    num_classes: int,
    imbalance: float,
    profile: str,
    seed: int,
    val_per_class: int,
    max_per_class: int | None = None,
) -> Split:
    """Draw the long-tailed training subset and a balanced validation split.

    Per class, the images are shuffled with a generator seeded by ``(seed, class)``. The
    validation split takes the *last* ``val_per_class`` images of that order; training takes
    the *first* ``n_i`` (the long-tail profile's count), capped so the two never overlap. So a
    class keeps its standard count unless it would need images the validation split took: at
    IF = 100 with 50 per class only the head class changes (5,000 -> 4,950).
    ``max_per_class`` sets the head count ``n_max`` (default: the smallest class's size), for
    smaller long-tailed sets with the same profile.
    """
    if val_per_class < 0:
        raise LongtailError(f"--val-per-class must be >= 0, got {val_per_class}")
    per_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    n_max = min(len(members) for members in per_class)
    if max_per_class is not None:
        if not 1 <= max_per_class <= n_max:
            raise LongtailError(
                f"--max-per-class must be between 1 and {n_max} (the smallest class's size), got {max_per_class}"
            )
        n_max = max_per_class
    smallest = min(len(members) for members in per_class)
    if val_per_class >= smallest:
        raise LongtailError(
            f"--val-per-class {val_per_class} leaves no training images (the smallest class has {smallest}); "
            "pass a smaller --val-per-class"
        )
    profile_counts = long_tail_counts(n_max, num_classes, imbalance, profile)
    train, val = [], []
    for c, members in enumerate(per_class):
        order = np.random.default_rng([seed, c]).permutation(members)
        n_val = val_per_class
        train.append(np.sort(order[: min(profile_counts[c], len(order) - n_val)]))
        val.append(np.sort(order[len(order) - n_val :]))
    return Split(
        train=np.concatenate(train),
        val=np.concatenate(val),
        train_counts=[len(t) for t in train],
        profile_counts=profile_counts,
    )


def _index_checksum(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def long_tail_split(
    arrays: Arrays,
    imbalance: float,
    profile: str = "exp",
    seed: int = 0,
    val_per_class: int = 50,
    max_per_class: int | None = None,
    cache_dir: Path | None = None,
) -> Split:
    """The long-tailed split of ``arrays``, saved once as a versioned index file and reused.

    The file (JSON) records the format version, the source fingerprint, profile, imbalance
    factor, seed, validation size, the indices and a checksum over all of it.
    """
    cache_dir = cache_dir or default_cache_dir()
    head = "" if max_per_class is None else f"-max{max_per_class}"
    name = f"lt-{arrays.fingerprint[:16]}-{profile}-if{imbalance:g}{head}-seed{seed}-val{val_per_class}.json"
    path = cache_dir / "indices" / name
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
        return Split(
            np.asarray(record["train"], np.int64),
            np.asarray(record["val"], np.int64),
            record["train_counts"],
            record["profile_counts"],
            path,
        )
    split = select_long_tail(arrays.y_train, arrays.num_classes, imbalance, profile, seed, val_per_class, max_per_class)
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
    record["checksum"] = _index_checksum(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(record).encode())
    return Split(split.train, split.val, split.train_counts, split.profile_counts, path)


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
