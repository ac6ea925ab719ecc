"""Long-tailed subsets: the per-class counts of a profile, the training, validation and test
indices of a split (``Split``), and the versioned, checksummed index file that fixes them.

A source without test images gets a stratified test split held out of its training images
(``select_long_tail``), saved in the same index file as the training and validation indices.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longtail.choices import NATURAL_IMBALANCE, PROFILES
from longtail.data.sources import Arrays, check_test_split, default_cache_dir
from longtail.errors import LongtailError
from longtail.runs import atomic_write_bytes

INDEX_FORMAT_VERSION = 1  # later keys (natural imbalance, val_fraction, the test split) are optional: v1 still reads
# The held-out test split is drawn with this fixed seed, not --seed: like a test folder, it is a
# property of the data, the same for every run (and every seed of a study) on that source.
TEST_SPLIT_ENTROPY = 0x1F2E3D4C


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


def _members(labels: np.ndarray, num_classes: int, excluded: np.ndarray | None) -> list[np.ndarray]:
    """The rows of each class, in increasing order, without the ``excluded`` rows: one stable sort,
    not a pass over the labels per class (iNaturalist has 8,142 classes and 437,513 images)."""
    rows = np.arange(len(labels))
    if excluded is not None:
        rows = np.setdiff1d(rows, excluded)
    rows = rows[np.argsort(labels[rows], kind="stable")]
    bounds = np.searchsorted(labels[rows], np.arange(1, num_classes))
    return np.split(rows, bounds)


def _too_small(classes: list[str], option: str) -> LongtailError:
    return LongtailError(
        f"{option} leaves no training images for class {', '.join(classes)}: add images to "
        f"{'that class' if len(classes) == 1 else 'those classes'} or lower {option.split()[0]}"
    )


def _profile_counts(
    per_class: Sequence[np.ndarray], imbalance: float | str, profile: str, max_per_class: int | None
) -> list[int]:
    """Each class's count in the long-tail profile, from the images left to draw from
    (``per_class``): all of them under ``--imbalance natural``, else ``long_tail_counts`` with the
    head count ``max_per_class`` (default: the smallest class's size)."""
    if imbalance == NATURAL_IMBALANCE:
        if max_per_class is not None:
            raise LongtailError(
                "--max-per-class sets the head count of an imbalance profile; --imbalance natural keeps every image"
            )
        return [len(m) for m in per_class]
    n_max = min(len(members) for members in per_class)
    if max_per_class is not None:
        if not 1 <= max_per_class <= n_max:
            raise LongtailError(
                f"--max-per-class must be between 1 and {n_max} (the smallest class's size), got {max_per_class}"
            )
        n_max = max_per_class
    return long_tail_counts(n_max, len(per_class), imbalance, profile)


def _check_validation_options(val_per_class: int, val_fraction: float | None, own_val: np.ndarray | None) -> None:
    """A validation size of at least 0, and none held out of a source with its own validation split."""
    if val_per_class < 0:
        raise LongtailError(f"--val-per-class must be >= 0, got {val_per_class}")
    if own_val is not None and (val_per_class or val_fraction is not None):
        raise LongtailError(
            "the source has its own validation split (--val-list): hold none out, pass --val-per-class 0 and no "
            "--val-fraction"
        )


def _hold_out_test(
    per_class: list[np.ndarray], test_fraction: float, names: list[str]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each class's test images (the first share of its fixed-seed order, ``_test_order``) and the
    images left to draw the training and validation splits from; a class left with none is an error."""
    test = [np.sort(_test_order(c, m)[: _share(test_fraction, len(m))]) for c, m in enumerate(per_class)]
    small = [f"{names[c]} ({_images(len(m))})" for c, m in enumerate(per_class) if len(test[c]) >= len(m)]
    if small:
        raise _too_small(small, f"--test-fraction {test_fraction:g}")
    return test, [np.setdiff1d(m, t) for m, t in zip(per_class, test, strict=True)]


def _validation_sizes(
    per_class: list[np.ndarray], val_per_class: int, val_fraction: float | None, names: list[str], after_test: bool
) -> list[int]:
    """Each class's validation size: ``val_per_class``, or its share ``val_fraction`` of the class;
    a class the validation split would leave without training images is an error."""
    n_val = [val_per_class if val_fraction is None else _share(val_fraction, len(m)) for m in per_class]
    small = [f"{names[c]} ({_images(len(m))})" for c, m in enumerate(per_class) if n_val[c] and n_val[c] >= len(m)]
    if small:
        option = f"--val-per-class {val_per_class}" if val_fraction is None else f"--val-fraction {val_fraction:g}"
        raise _too_small(small, option + (" after the test split" if after_test else ""))
    return n_val


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
    own_val: np.ndarray | None = None,
) -> Split:
    """Draw the long-tailed training subset, a validation split and (with ``test_fraction``) a
    test split, per class.

    ``own_val``: the rows of ``labels`` that are the source's own validation split (a
    ``--val-list``): the validation split as it is, nothing else held out for validation (so
    ``val_per_class`` must be 0), and never drawn for training or testing.

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
    _check_validation_options(val_per_class, val_fraction, own_val)
    names = (
        [f"{c} '{name}'" for c, name in enumerate(class_names)] if class_names else list(map(str, range(num_classes)))
    )
    per_class = _members(np.asarray(labels), num_classes, own_val)
    test = None
    if test_fraction is not None:
        test, per_class = _hold_out_test(per_class, test_fraction, names)
    n_val = _validation_sizes(per_class, val_per_class, val_fraction, names, after_test=test is not None)
    profile_counts = _profile_counts(per_class, imbalance, profile, max_per_class)
    train, val = [], []
    for c, members in enumerate(per_class):
        order = np.random.default_rng([seed, c]).permutation(members)
        train.append(np.sort(order[: min(profile_counts[c], len(order) - n_val[c])]))
        val.append(np.sort(order[len(order) - n_val[c] :]))
    return Split(
        train=np.concatenate(train),
        val=np.concatenate(val) if own_val is None else np.sort(np.asarray(own_val, np.int64)),
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


def _read_index(path: Path) -> Split:
    """The split an index file holds, checked against its checksum and format version."""
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LongtailError(f"{path}: index file is corrupted ({error}); delete it and rerun to rebuild it") from error
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


def _index_record(
    split: Split, fingerprint: str, imbalance, profile, seed, val_per_class, max_per_class, val_fraction, test_fraction
) -> dict:
    """What the index file of ``split`` holds (``long_tail_split``), its checksum included; the keys of
    later versions only where they are set, so a split of the first version's settings is written as it was."""
    record = {
        "version": INDEX_FORMAT_VERSION,
        "source_sha256": fingerprint,
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
    return record


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
        return _read_index(path)
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
        own_val=arrays.val_rows,
    )
    record = _index_record(split, arrays.fingerprint, *settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(record).encode())
    return Split(split.train, split.val, split.train_counts, split.profile_counts, path, split.test)
