"""List-file sources: the field's large long-tailed benchmarks as their authors publish them
(ImageNet-LT, Places-LT, iNaturalist 2018): text files of ``relative/path label`` lines read against
an image root, decoded once into a memory-mapped store (``longtail.data.store``).

``--data ROOT --train-list FILE [--val-list FILE] [--test-list FILE] [--class-names FILE]``:
- A list has one image per line: its path and its label, separated by whitespace (so a path holds
  no blank). Blank lines and lines whose first character that is not blank is ``#`` are ignored.
  Paths are relative to ROOT; absolute paths are taken as they are. Labels are non-negative integers
  (decimal digits), any of them: the training list's distinct labels, in increasing order, become the
  classes 0..C-1, each named by its label unless ``--class-names`` names it.
- ``--class-names FILE``: lines ``LABEL NAME`` (the name is the rest of the line and may hold
  blanks), one per label of the training list at least (more are ignored, so one file serves every
  list of a benchmark); the names must differ. For ImageNet's ``LOC_synset_mapping.txt``
  (``n01440764 tench, Tinca tinca`` in label order): ``awk '{print NR-1, $0}'``.
- The validation list is the validation split (nothing is held out of the training images for it),
  the test list the test split; without a test list, ``--test-fraction`` holds one out. Their labels
  must be labels of the training list, and no image may be listed in two of the lists.
- Decoding follows the rule of image folders (``longtail.data.images``): EXIF orientation, RGB,
  shorter side scaled to the store size S and centre-cropped; S is ``--store-size`` or, by default,
  chosen from the images' sizes as for a folder. A listed path that does not exist and a file that is
  not a readable image are listed in one error, or left out with ``--skip-bad-images`` (and recorded).

The store: ``images-<fingerprint>-<S>px.u8`` and its header ``.json`` in the cache directory, with
the images of the training list, then the validation list, then the test list, in list order. A list
source's fingerprint is the sha256 of the image root's absolute path and the contents of the list
files: once decoded, a source opens from its store in about a second (the lists hashed, the header
read, the images mapped) without reading the images again. Replacing images under the same paths
is not noticed: delete the store (or use another ``--cache-dir``).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from longtail.data.images import default_store_size, header_image_size, listed, parallel_map, unreadable_error
from longtail.data.sources import Arrays, cache_directory, check_test_split, data_path, sha256_file
from longtail.data.store import open_store, read_header, store_files, write_header, write_store
from longtail.errors import LongtailError

ROLES = ("train", "val", "test")  # the lists of a source, in the order of their images in the store
_LABEL = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class ListFiles:
    """The list files of a list source: ``--train-list``, ``--val-list``, ``--test-list`` and
    ``--class-names`` (None where not given)."""

    train: str | os.PathLike
    val: str | os.PathLike | None = None
    test: str | os.PathLike | None = None
    class_names: str | os.PathLike | None = None

    def given(self) -> dict[str, Path]:
        """``{role: path}`` of the image lists given, in store order."""
        return {role: Path(getattr(self, role)) for role in ROLES if getattr(self, role) is not None}

    @property
    def names_file(self) -> Path | None:
        return None if self.class_names is None else Path(self.class_names)


@dataclass
class _Listing:
    """The images of one list: their paths (as found under the root) and their labels as written."""

    paths: list[str]
    labels: np.ndarray


def _check_file(path: Path, option: str) -> None:
    if not path.is_file():
        raise LongtailError(f"{option} {path} does not exist (or is not a file); pass an existing file")


def _text_lines(path: Path, option: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of the lines of ``path`` that are not blank or a ``#`` comment."""
    _check_file(path, option)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise LongtailError(f"{option} {path}: cannot be read as UTF-8 text ({error})") from error
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.strip().startswith("#")
    ]


def _bad_lines(path: Path, option: str, bad: list[str], form: str) -> LongtailError:
    shown = listed(bad)
    return LongtailError(
        f"{option} {path}: {len(bad)} bad line{'s' if len(bad) > 1 else ''} (each line is '{form}'): {shown}"
    )


def _read_list(path: Path, option: str, root: str) -> _Listing:
    """The images of a list file, their paths joined to ``root`` (absolute ones kept)."""
    lines = _text_lines(path, option)
    if not lines:
        raise LongtailError(
            f"{option} {path}: no images listed (every line is blank or a # comment); a list has one "
            "'relative/path label' line per image"
        )
    paths, labels, bad = [], [], []
    for number, line in lines:
        fields = line.split()
        if len(fields) != 2:
            bad.append(f"line {number}: {len(fields)} field{'s' if len(fields) > 1 else ''} '{line}'")
        elif not _LABEL.fullmatch(fields[1]):
            bad.append(f"line {number}: label '{fields[1]}' is not a non-negative integer")
        else:
            paths.append(os.path.normpath(os.path.join(root, fields[0])))
            labels.append(int(fields[1]))
    if bad:
        raise _bad_lines(path, option, bad, "relative/path label")
    return _Listing(paths, np.asarray(labels, np.int64))


def _class_names(path: Path | None, labels: np.ndarray) -> tuple[str, ...]:
    """The names of the classes whose labels (as written in the lists) are ``labels``: from the
    ``--class-names`` file, else the labels themselves."""
    if path is None:
        return tuple(str(label) for label in labels)
    names, bad = {}, []
    for number, line in _text_lines(path, "--class-names"):
        label, name = (line.split(None, 1) + [""])[:2]
        if not _LABEL.fullmatch(label) or not name:
            bad.append(f"line {number}: '{line}'")
        elif int(label) in names:
            bad.append(f"line {number}: label {label} named twice")
        else:
            names[int(label)] = name.strip()
    if bad:
        raise _bad_lines(path, "--class-names", bad, "LABEL NAME")
    missing = [str(label) for label in labels if int(label) not in names]
    if missing:
        raise LongtailError(f"--class-names {path} names no class for label {listed(missing)} of the training list")
    chosen = [names[int(label)] for label in labels]
    twice = sorted(name for name, count in Counter(chosen).items() if count > 1)
    if twice:
        raise LongtailError(
            f"--class-names {path}: {listed(twice)} name{'s' if len(twice) > 1 else ''} more than one class; "
            "class names must differ (prefix them with the label or the WordNet id)"
        )
    return tuple(chosen)


def _check_lists(listings: dict[str, _Listing], files: dict[str, Path]) -> None:
    """The validation and test lists hold only classes of the training list, and no image is in two lists."""
    known = set(np.unique(listings["train"].labels).tolist())
    for role in ("val", "test"):
        if role in listings:
            absent = sorted(set(np.unique(listings[role].labels).tolist()) - known)
            if absent:
                raise LongtailError(
                    f"--{role}-list {files[role]}: label{'s' if len(absent) > 1 else ''} "
                    f"{listed(list(map(str, absent)))} {'are' if len(absent) > 1 else 'is'} not in the training list "
                    f"{files['train']}; every class needs training images (fix the list or pass the matching lists)"
                )
    roles = list(listings)
    for i, first in enumerate(roles):
        for second in roles[i + 1 :]:
            shared = sorted(set(listings[first].paths) & set(listings[second].paths))
            if shared:
                raise LongtailError(
                    f"{len(shared)} image{'s are' if len(shared) > 1 else ' is'} listed in both --{first}-list "
                    f"{files[first]} and --{second}-list {files[second]}: {listed(shared)}; a split must not hold "
                    "images of another"
                )


def _fingerprint(root: Path, files: dict[str, Path]) -> str:
    """sha256 over the image root's absolute path and each list's role and contents."""
    digest = hashlib.sha256(f"list source\0{root.resolve()}\n".encode())
    for role, path in files.items():
        digest.update(f"{role}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _decode(
    listings: dict[str, _Listing],
    images_file: Path,
    header_file: Path,
    fingerprint: str,
    source: str,
    *,
    store_size: int | None,
    skip_bad_images: bool,
) -> dict:
    """Decode the listed images into the store and write its header (see the module docstring)."""
    paths = [path for listing in listings.values() for path in listing.paths]
    roles = np.repeat(np.arange(len(listings)), [len(listing.paths) for listing in listings.values()])
    exists = np.asarray(parallel_map(os.path.isfile, paths, "checking the listed files"), bool)
    missing = [paths[i] for i in np.flatnonzero(~exists)]
    if missing and not skip_bad_images:
        raise LongtailError(
            f"{source}: {len(missing)} listed image file{'s do' if len(missing) > 1 else ' does'} not exist: "
            f"{listed(missing)}; fix the lists or --data ROOT, or pass --skip-bad-images to leave them out"
        )
    present = np.flatnonzero(exists)
    files = [paths[i] for i in present]
    if store_size is None:
        sizes = parallel_map(header_image_size, files, "reading image sizes")
        store_size = default_store_size([size for size in sizes if size is not None])
    kept = np.zeros(len(paths), bool)

    def accept(failures: list[tuple[int, str]]) -> None:
        bad = [files[position] for position, _ in failures]
        if bad and not skip_bad_images:
            raise unreadable_error(bad, source)
        kept[present] = True
        kept[present[[position for position, _ in failures]]] = False
        _check_training_images(listings, kept)

    count = write_store(images_file, files, store_size, f"decoding images at {store_size} px", accept)
    skipped = [paths[i] for i in np.flatnonzero(~kept)]
    if skipped:
        tqdm.write(
            f"longtail: left out {len(skipped)} missing or unreadable image file(s) (--skip-bad-images): "
            f"{skipped[0]}, ...",
            file=sys.stderr,
        )
    labels = np.concatenate([listing.labels for listing in listings.values()])[kept]
    extra = {
        "source": source,
        "parts": {role: int(np.sum(kept[roles == i])) for i, role in enumerate(listings)},
        "labels": labels.tolist(),  # as written in the lists
        "skipped": skipped,
    }
    return write_header(header_file, fingerprint, (count, store_size, store_size, 3), extra)


def _check_training_images(listings: dict[str, _Listing], kept: np.ndarray) -> None:
    """Every class of the training list keeps a training image after the bad files are left out."""
    train = listings["train"]
    classes = np.unique(train.labels)
    left = np.unique(train.labels[kept[: len(train.labels)]])
    lost = np.setdiff1d(classes, left)
    if len(lost):
        raise LongtailError(
            f"--skip-bad-images leaves no training image for label {listed(list(map(str, lost)))}: fix those "
            "images or the training list"
        )


def load_list_source(
    root: str | os.PathLike | None,
    lists: ListFiles,
    cache_dir: Path | None = None,
    *,
    store_size: int | None = None,
    skip_bad_images: bool = False,
    test_fraction: float | None = None,
) -> Arrays:
    """The arrays of a list source (see the module docstring): decoded into its store the first time
    (with a progress bar), opened from it afterwards. ``x_train`` holds the training list's images and
    then the validation list's (``Arrays.val_rows``), ``x_test`` the test list's, all ``np.memmap``s
    of the store."""
    root = data_path(root)
    if not root.is_dir():
        raise LongtailError(
            f"--train-list reads image paths relative to --data ROOT, a folder; {root} is a file: pass the folder "
            "the list's paths start from"
        )
    cache_dir = cache_directory(cache_dir)
    files = lists.given()
    source = f"{root} (lists: {', '.join(str(path) for path in files.values())})"
    for role, path in files.items():
        _check_file(path, f"--{role}-list")
    if lists.names_file is not None:
        _check_file(lists.names_file, "--class-names")
    check_test_split("test" in files, test_fraction, source, "no --test-list")
    fingerprint = _fingerprint(root, files)
    size_key = "auto" if store_size is None else f"{store_size}px"
    images_file, header_file = store_files(cache_dir, f"{fingerprint[:16]}-{size_key}")
    header = read_header(images_file, header_file, fingerprint)
    if header is None:
        listings = {role: _read_list(path, f"--{role}-list", str(root)) for role, path in files.items()}
        _check_lists(listings, files)
        _class_names(lists.names_file, np.unique(listings["train"].labels))  # a bad names file fails before decoding
        header = _decode(
            listings,
            images_file,
            header_file,
            fingerprint,
            source,
            store_size=store_size,
            skip_bad_images=skip_bad_images,
        )
    elif header["skipped"] and not skip_bad_images:  # the store was written with --skip-bad-images
        skipped = header["skipped"]
        raise LongtailError(
            f"{source}: {len(skipped)} listed file{'s are' if len(skipped) > 1 else ' is'} missing or not a readable "
            f"image: {listed(skipped)}; fix or remove them, or pass --skip-bad-images to leave them out"
        )
    return _arrays(header, images_file, lists, fingerprint, source)


def _arrays(header: dict, images_file: Path, lists: ListFiles, fingerprint: str, source: str) -> Arrays:
    """The arrays of a store's header and images file."""
    parts = [header["parts"].get(role, 0) for role in ROLES]
    written = np.asarray(header["labels"], np.int64)
    n_train, n_val, _ = parts
    class_labels = np.unique(written[:n_train])
    labels = np.searchsorted(class_labels, written)  # 0..C-1 in the order of the labels as written
    x_train, x_test = open_store(images_file, header["shape"], [n_train + n_val, parts[2]])
    class_names = _class_names(lists.names_file, class_labels)
    return Arrays(
        x_train=x_train,
        y_train=labels[: n_train + n_val],
        x_test=x_test,
        y_test=labels[n_train + n_val :],
        class_names=class_names,
        fingerprint=fingerprint,
        source=source,
        skipped=tuple(header["skipped"]),
        val_rows=np.arange(n_train, n_train + n_val) if lists.val is not None else None,
    )
