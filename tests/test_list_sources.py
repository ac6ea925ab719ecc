"""List-file sources (``--data ROOT --train-list FILE [--val-list FILE] [--test-list FILE]``) on a
benchmark-shaped tree built here from real CIFAR-10 images.

The tree is laid out as ImageNet-LT is: ``train/<wnid>/<wnid>_<i>.JPEG`` for the training and
validation lists (ImageNet-LT's validation images come from ImageNet's training set) and
``val/<wnid>/ILSVRC2012_val_<n>.JPEG`` for the test list (ImageNet's validation set), JPEGs of mixed
sizes, five classes with the non-contiguous labels 2, 5, 9, 17 and 30, a natural long tail of 12, 8,
5, 3 and 2 training images, two validation and three test images per class; the lists have comments,
blank lines and one absolute path. Through the command line, in this process: ``longtail data``,
``train`` (one epoch, 32-px store, random initialisation), ``decouple`` and ``predict``; then the
split rules (natural by default, an integer imbalance subsamples, class names), the store reused
without decoding, and every bad input: one line, exit 2, nothing written.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longtail import cli
from longtail.cli.commands import _data_settings
from longtail.config import TrainConfig
from longtail.data import StoredImages, load_dataset, load_source
from longtail.data import images as images_module

LABELS = (2, 5, 9, 17, 30)  # as written in the lists: classes 0..4 in this order
TRAIN = (12, 8, 5, 3, 2)
VAL, TEST = 2, 3


def _wnid(c: int) -> str:
    return f"n0{1440764 + 1111 * c:07d}"


@pytest.fixture(scope="module")
def tree(tmp_path_factory, cifar10_npz) -> Path:
    root = tmp_path_factory.mktemp("imagenet-lt")
    rng = np.random.default_rng(0)
    with np.load(cifar10_npz) as archive:
        x, y = archive["x_train"], archive["y_train"]
    lines = {"train": ["# ImageNet_LT_train.txt, in miniature", ""], "val": [], "test": []}
    for c, (label, count) in enumerate(zip(LABELS, TRAIN, strict=True)):
        wnid = _wnid(c)
        for i, index in enumerate(np.flatnonzero(y == c)[: count + VAL + TEST]):
            if i < count + VAL:
                relative, role = f"train/{wnid}/{wnid}_{i}.JPEG", "train" if i < count else "val"
            else:
                relative, role = f"val/{wnid}/ILSVRC2012_val_{100 * c + i:08d}.JPEG", "test"
            size = (int(rng.integers(32, 72)), int(rng.integers(32, 72)))
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[index]).resize(size, Image.Resampling.BICUBIC).save(root / relative, quality=90)
            shown = str(root / relative) if (role, c, i) == ("test", 4, count + VAL) else relative
            lines[role].append(f"{shown}  {label}" if i % 2 else f"{shown} {label}")
    for role, name in (
        ("train", "ImageNet_LT_train.txt"),
        ("val", "ImageNet_LT_val.txt"),
        ("test", "ImageNet_LT_test.txt"),
    ):
        (root / name).write_text("\n".join(lines[role]) + "\n\n# end\n")
    return root


def _lists(tree: Path, *roles: str) -> list[str]:
    names = {"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt", "test": "ImageNet_LT_test.txt"}
    return [arg for role in roles for arg in (f"--{role}-list", str(tree / names[role]))]


def _call(argv: list[str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = cli.main(argv)
    return status, stdout.getvalue(), stderr.getvalue()


# ---------------------------------------------------------------- end to end


def test_data_train_decouple_predict_on_a_list_source(tree, tmp_path, cache_dir):
    source = ["--data", str(tree), *_lists(tree, "train", "val", "test"), "--store-size", "32", "--groups", "shots"]
    status, out, err = _call(["data", *source])
    assert status == 0, err
    assert "images stored at 32x32 px" in out and "images memory-mapped from" in out
    assert "natural imbalance (every image kept)" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in [[str(c)] for c in range(5)]]
    assert [row[1] for row in rows] == [str(label) for label in LABELS]  # the labels name the classes
    assert [int(row[3]) for row in rows] == list(TRAIN)  # natural: every training image
    assert [(int(row[4]), int(row[5])) for row in rows] == [(VAL, TEST)] * 5

    run = tmp_path / "run"
    train = [*source, "--weights", "none", "--epochs", "1", "--batch-size", "8", "--bn", "frozen", "--out", str(run)]
    status, out, err = _call(["train", *train])
    assert status == 0, err
    record = json.loads((run / "run.json").read_text())
    config = record["config"]
    assert config["train_list"] == str(tree / "ImageNet_LT_train.txt") and config["imbalance"] == "natural"
    assert config["val_list"].endswith("ImageNet_LT_val.txt") and config["test_list"].endswith("ImageNet_LT_test.txt")
    assert (config["val_per_class"], config["class_names_file"], config["store_size"]) == (0, None, 32)
    assert record["class_names"] == [str(label) for label in LABELS] and record["data_store_size"] == [32, 32]
    assert record["train_counts"] == list(TRAIN)
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.asarray(metrics["confusion_matrix"]).sum(axis=1).tolist() == [TEST] * 5

    head = tmp_path / "head"
    status, out, err = _call(["decouple", str(run), "--loss", "modified-ce", "--epochs", "2", "--out", str(head)])
    assert status == 0, err
    chosen = json.loads((head / "run.json").read_text())["chosen"]
    assert json.loads((head / "metrics.json").read_text())["class_names"] == record["class_names"]
    assert chosen["loss"] == "logit-adjusted" and len(chosen["val_accuracy_by_tau"]) > 1  # tuned on the val list

    # predict decodes each file as the store did: the run's own test images get the run's evaluation.
    labels = {}
    for line in (tree / "ImageNet_LT_test.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            path, label = line.split()
            labels[str(Path(path) if Path(path).is_absolute() else tree / path)] = str(label)
    out_file = tmp_path / "predictions.csv"
    status, out, err = _call(["predict", str(run), str(tree / "val"), "--out", str(out_file)])
    assert status == 0, err
    predicted = list(csv.DictReader(out_file.open()))
    assert sorted(row["path"] for row in predicted) == sorted(labels)
    confusion = np.zeros((5, 5), int)
    names = record["class_names"]
    for row in predicted:
        confusion[names.index(labels[row["path"]]), names.index(row["predicted_class"])] += 1
    assert confusion.tolist() == metrics["confusion_matrix"]


# ---------------------------------------------------------------- splits, names, the store


def _config(tree: Path, **settings) -> TrainConfig:
    base = dict(
        data=str(tree),
        train_list=str(tree / "ImageNet_LT_train.txt"),
        test_list=str(tree / "ImageNet_LT_test.txt"),
        store_size=32,
        imbalance="natural",
        val_per_class=1,
    )
    config = TrainConfig(**{**base, **settings})
    config.validate()
    return config


def test_an_integer_imbalance_subsamples_and_the_validation_split_is_held_out_without_a_list(tree, cache_dir):
    dataset = load_dataset(_config(tree, imbalance=2.0, val_per_class=0), pretrained=False, cache_dir=cache_dir)
    assert dataset.split.train_counts == [2, 1, 1, 1, 1] and len(dataset.split.val) == 0  # n_max: the smallest, 2
    natural = load_dataset(_config(tree), pretrained=False, cache_dir=cache_dir)
    assert natural.split.train_counts == [n - 1 for n in TRAIN]
    assert np.array_equal(np.bincount(natural.test_labels), [TEST] * 5)


def test_the_store_is_opened_memory_mapped_and_not_decoded_again(tree, cache_dir, monkeypatch):
    config = _config(tree, val_list=str(tree / "ImageNet_LT_val.txt"), val_per_class=0)
    first = load_dataset(config, pretrained=False, cache_dir=cache_dir)

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(images_module, "decode_image", no_decoding)
    again = load_dataset(config, pretrained=False, cache_dir=cache_dir)
    assert isinstance(again.arrays.x_train, np.memmap) and isinstance(again.arrays.x_test, np.memmap)
    assert again.arrays.store_file == str(next(cache_dir.glob("images-*-32px.u8")))
    assert np.array_equal(again.split.val, np.arange(sum(TRAIN), sum(TRAIN) + 5 * VAL))  # the validation list
    for split in ("train", "val", "test"):
        images = again.images(split)
        assert isinstance(images, StoredImages)
        assert np.array_equal(images[:].numpy(), first.images(split)[:].numpy())
    assert np.array_equal(again.images("train")[:].numpy(), np.asarray(again.arrays.x_train[again.split.train]))


def test_class_names_name_the_labels(tree, tmp_path, cache_dir):
    names = tmp_path / "names.txt"
    names.write_text("# label name\n0 unused\n" + "".join(f"{label} n{label:03d} class {label}\n" for label in LABELS))
    arrays = load_source(_config(tree, class_names_file=str(names)), cache_dir)
    assert arrays.class_names == tuple(f"n{label:03d} class {label}" for label in LABELS)
    names.write_text("".join(f"{label} same\n" for label in LABELS))
    with pytest.raises(Exception, match="name more than one class|names more than one class"):
        load_source(_config(tree, class_names_file=str(names)), cache_dir)


# ---------------------------------------------------------------- bad input


def _edited(tree: Path, tmp_path: Path, role: str, edit) -> str:
    """A copy of a list of ``tree`` with its lines edited (paths made absolute, so it can live elsewhere)."""
    names = {"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt", "test": "ImageNet_LT_test.txt"}
    lines = []
    for line in (tree / names[role]).read_text().splitlines():
        fields = line.split()
        if len(fields) == 2 and not line.startswith("#") and not Path(fields[0]).is_absolute():
            line = f"{tree / fields[0]} {fields[1]}"
        lines.append(line)
    path = tmp_path / f"edited-{role}.txt"
    path.write_text("\n".join(edit(lines)) + "\n")
    return str(path)


def _first_entry(lines: list[str]) -> int:
    return next(i for i, line in enumerate(lines) if line and not line.startswith("#"))


def _first_replaced(text_of):
    """An edit replacing the first entry of a list by ``text_of(entry, tmp_path)``."""

    def edit(lines, tree, tmp_path):
        i = _first_entry(lines)
        return [*lines[:i], text_of(lines[i], tmp_path), *lines[i + 1 :]]

    return edit


def unreadable_error(line: str, tmp_path: Path) -> str:
    broken = tmp_path / "broken.JPEG"
    broken.write_text("not a JPEG")
    return f"{broken} {line.split()[1]}"


def _a_training_image_too(lines, tree, tmp_path):
    train = (tree / "ImageNet_LT_train.txt").read_text().splitlines()
    return [*lines, f"{tree / train[_first_entry(train)].split()[0]} {LABELS[0]}"]


BAD_LISTS = {  # (the list edited, the edit, what the error says)
    "one field": ("train", _first_replaced(lambda line, _: line.split()[0]), "1 field"),
    "three fields": ("train", _first_replaced(lambda line, _: line + " extra"), "3 fields"),
    "a label that is not an integer": ("train", _first_replaced(lambda line, _: line.split()[0] + " cat"), "'cat'"),
    "a negative label": ("train", _first_replaced(lambda line, _: line.split()[0] + " -2"), "label '-2'"),
    "an empty list": ("train", lambda lines, tree, tmp_path: ["# nothing listed", ""], "no images listed"),
    "a path that does not exist": (
        "train",
        _first_replaced(lambda line, _: line.replace(".JPEG", "-absent.JPEG")),
        "1 listed image file does not exist",
    ),
    "an unreadable image": ("train", _first_replaced(unreadable_error), "not a readable image"),
    "a test class absent from training": ("test", _first_replaced(lambda line, _: line.split()[0] + " 99"), "label 99"),
    "a validation class absent from training": (
        "val",
        _first_replaced(lambda line, _: line.split()[0] + " 3"),
        "label 3",
    ),
    "an image in two lists": ("test", _a_training_image_too, "listed in both --train-list"),
}


@pytest.mark.parametrize("case", sorted(BAD_LISTS))
def test_a_bad_list_is_one_line_exit_2_and_nothing_written(case, tree, tmp_path, cache_dir):
    role, edit, expected = BAD_LISTS[case]
    lists = dict(zip(("train", "val", "test"), _lists(tree, "train", "val", "test")[1::2], strict=True))
    lists[role] = _edited(tree, tmp_path, role, lambda lines: edit(lines, tree, tmp_path))
    argv = ["data", "--data", str(tree), "--store-size", "32", "--cache-dir", str(cache_dir)]
    argv += [arg for r, path in lists.items() for arg in (f"--{r}-list", path)]
    status, out, err = _call(argv)
    assert status == 2 and out == "", (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("longtail: error: ") and expected in lines[0], err
    assert list(cache_dir.iterdir()) == [], "a refused list source must write nothing"


def test_missing_and_unreadable_files_are_left_out_with_skip_bad_images(tree, tmp_path, cache_dir):
    broken = tmp_path / "broken.JPEG"
    broken.write_text("not a JPEG")

    def edit(lines):
        i = _first_entry(lines)
        label = lines[i].split()[1]
        return [*lines, f"{tmp_path / 'absent.JPEG'} {label}", f"{broken} {label}"]

    train_list = _edited(tree, tmp_path, "train", edit)
    config = _config(tree, train_list=train_list)
    with pytest.raises(Exception, match="does not exist"):
        load_source(config, cache_dir)
    skipping = _config(tree, train_list=train_list, skip_bad_images=True)
    arrays = load_source(skipping, cache_dir)
    assert sorted(arrays.skipped) == sorted([str(tmp_path / "absent.JPEG"), str(broken)])
    assert len(arrays.y_train) == sum(TRAIN)
    with pytest.raises(Exception, match="2 listed files are missing or not a readable image"):  # remembered
        load_source(config, cache_dir)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--val-per-class", "5"], "--val-list"),
        (["--val-fraction", "0.2"], "--val-list"),
        (["--test-fraction", "0.2"], "--test-list"),
    ],
)
def test_options_a_list_source_cannot_honour_are_errors_before_any_work(options, expected, tree, cache_dir):
    argv = ["data", "--data", str(tree), *_lists(tree, "train", "val", "test"), *options]
    status, out, err = _call([*argv, "--cache-dir", str(cache_dir)])
    assert status == 2 and out == "" and len(err.splitlines()) == 1 and expected in err, err
    assert list(cache_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--class-names", "names.txt"], "--class-names goes with a list source"),
        (["--test-list", "test.txt"], "--test-list goes with a list source"),
        (["--train-list", "absent.txt"], "--train-list absent.txt does not exist"),
    ],
)
def test_list_options_without_a_list_source_or_its_files(argv, expected, tree, cache_dir, monkeypatch):
    monkeypatch.chdir(tree)
    status, out, err = _call(["data", "--data", str(tree), *argv, "--cache-dir", str(cache_dir)])
    assert status == 2 and out == "" and len(err.splitlines()) == 1 and expected in err, err
    assert list(cache_dir.iterdir()) == []


def test_the_root_of_a_list_source_is_a_folder_and_a_test_split_is_needed(tree, tmp_path, cache_dir):
    status, _, err = _call(["data", "--data", str(tree / "ImageNet_LT_val.txt"), *_lists(tree, "train")])
    assert status == 2 and "a folder" in err and len(err.splitlines()) == 1
    status, _, err = _call(["data", "--data", str(tree), *_lists(tree, "train"), "--cache-dir", str(cache_dir)])
    assert status == 2 and "no --test-list" in err and "--test-fraction" in err
    status, out, err = _call(
        ["data", "--data", str(tree), *_lists(tree, "train"), "--test-fraction", "0.3", "--val-per-class", "0",
         "--store-size", "32", "--cache-dir", str(cache_dir)]
    )  # fmt: skip
    assert status == 0, err
    assert "held out of the training images" in out


def test_reproduce_takes_the_list_options_into_every_run(tree):
    from longtail.config import study_config

    argv = [
        "reproduce",
        "--out",
        "study",
        "--data",
        str(tree),
        *_lists(tree, "train", "val", "test"),
        "--store-size",
        "32",
    ]
    settings = _data_settings(cli.build_parser().parse_args(argv))
    assert settings["imbalance"] == "natural" and settings["val_per_class"] == 0
    imbalance = settings.pop("imbalance")
    config = study_config("smoke", data=str(tree), weights="none", imbalance=imbalance, given=settings)
    assert config.train_list == str(tree / "ImageNet_LT_train.txt") and config.test_list.endswith("test.txt")
    assert (config.imbalance, config.val_per_class, config.store_size) == ("natural", 0, 32)
