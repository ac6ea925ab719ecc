"""Your own data, end to end: an image folder as it comes, built here from real CIFAR-10 images.

The folder holds the first 40, 30, ..., 4 training images of the ten classes (a natural
imbalance, 155 files), upscaled to mixed sizes from 32 to 160 px, some non-square, saved as
grayscale PNG, RGBA PNG with a varying alpha, JPEG, WebP and BMP, plus one file that is no image
and a hidden file, and no ``test/`` folder. Through the command line, in this process:
``longtail data``, ``train`` (one epoch, 32 px, real pretrained weights), ``decouple`` and
``predict`` on the folder and on single files. Checked: the counts of every split, that the
splits are disjoint and the test split held out of train/, the CSV and JSON columns, and that
``predict`` on the run's own test images gives the run's own evaluation (confusion matrix and
probabilities). About a minute on one CPU thread.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from longtail import cli, data, runs
from longtail.artifacts import load_head
from longtail.features import apply_head, feature_file
from longtail.models import head_from_state_dict

pytestmark = pytest.mark.slow

COUNTS = [40, 30, 22, 16, 12, 10, 8, 6, 5, 4]  # images per class in train/: a natural imbalance of 10
FRACTION = 0.2  # --val-fraction and --test-fraction
BROKEN = "train/cat/broken.jpg"
FORMATS = ("gray.png", "rgba.png", "jpg", "webp", "bmp")


def _share(n: int) -> int:
    """max(1, round half up (0.2 n)): the documented size of a held-out share."""
    return max(1, math.floor(FRACTION * n + 0.5))


TEST_COUNTS = [_share(n) for n in COUNTS]
VAL_COUNTS = [_share(n - t) for n, t in zip(COUNTS, TEST_COUNTS, strict=True)]
TRAIN_COUNTS = [n - t - v for n, t, v in zip(COUNTS, TEST_COUNTS, VAL_COUNTS, strict=True)]


def _write_image(image: np.ndarray, path: Path, rng: np.random.Generator, kind: str) -> Path:
    side = int(rng.integers(32, 161))
    size = (side, side) if rng.random() < 0.5 else (side, max(32, side * 3 // 4))  # (width, height)
    picture = Image.fromarray(image).resize(size, Image.Resampling.BICUBIC)
    if kind == "gray.png":
        picture = picture.convert("L")
    elif kind == "rgba.png":
        alpha = rng.integers(64, 256, (size[1], size[0]), dtype=np.uint8)
        picture = Image.fromarray(np.dstack([np.asarray(picture), alpha]), "RGBA")
    path = path.with_name(f"{path.name}.{kind.split('.')[-1]}")
    picture.save(path, quality=95) if kind in ("jpg", "webp") else picture.save(path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory, cifar10_npz) -> Path:
    root = tmp_path_factory.mktemp("own") / "pictures"
    rng = np.random.default_rng(0)
    with np.load(cifar10_npz) as archive:
        x, y = archive["x_train"], archive["y_train"]
    for label, (name, count) in enumerate(zip(data.CIFAR10_CLASSES, COUNTS, strict=True)):
        (root / "train" / name).mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(y == label)[:count]):
            _write_image(x[index], root / "train" / name / f"{i:03d}", rng, FORMATS[(i + label) % len(FORMATS)])
    (root / BROKEN).write_bytes(b"this is not a JPEG")
    (root / "train" / "dog" / ".DS_Store").write_bytes(b"\0\1\2")
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("own-runs")


def _longtail(*argv: str, capsys) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _data_options(folder: Path, workspace: Path) -> list[str]:
    return [
        "--data", str(folder),
        "--imbalance", "natural",
        "--val-fraction", str(FRACTION),
        "--test-fraction", str(FRACTION),
        "--skip-bad-images",
        "--groups", "shots",
        "--cache-dir", str(workspace / "cache"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def stage1(folder, workspace, weights_file) -> Path:
    out = workspace / "stage1"
    argv = [
        "train", *_data_options(folder, workspace),
        "--weights", str(weights_file),
        "--epochs", "1",
        "--batch-size", "32",
        "--image-size", "32",
        "--out", str(out),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def stage2(stage1, workspace) -> Path:
    out = workspace / "balanced-softmax"
    assert cli.main(["decouple", str(stage1), "--loss", "balanced-softmax", "--epochs", "5", "--out", str(out)]) == 0
    return out


def _train_files(folder: Path) -> list[Path]:
    """The readable files of train/ in the order they were decoded: classes by name, files by path."""
    return [
        path
        for name in data.CIFAR10_CLASSES
        for path in data.image_files(folder / "train" / name)
        if path != folder / BROKEN
    ]


def _probabilities(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits, dim=1).numpy()


def test_without_a_test_folder_or_fraction_the_error_says_to_give_one(folder, workspace, capsys):
    options = _data_options(folder, workspace)
    options.remove("--test-fraction")
    options.remove(str(FRACTION))  # the first: --val-fraction keeps its own
    code, out, err = _longtail("data", *options, capsys=capsys)
    assert code == 2 and out == ""
    assert err.startswith("longtail: error: ") and len(err.splitlines()) == 1
    assert str(folder) in err and "--test-fraction" in err and "no test/ folder" in err


def test_data_prints_the_counts_of_every_split_and_the_imbalance(folder, workspace, capsys):
    code, out, _ = _longtail("data", *_data_options(folder, workspace), capsys=capsys)
    assert code == 0
    assert "images stored at 64x64 px" in out  # mixed sizes: median shorter side, capped at 64
    assert f"left out 1 unreadable image file(s) (--skip-bad-images): {folder / BROKEN}" in out
    assert "natural imbalance (every image kept)" in out
    rows = {line.split()[1]: line.split()[2:] for line in out.splitlines() if line[:3].strip().isdigit()}
    for c, name in enumerate(data.CIFAR10_CLASSES):
        profile, train, val, test, group = rows[name]
        assert [int(profile), int(train), int(val), int(test)] == [
            COUNTS[c] - TEST_COUNTS[c],
            TRAIN_COUNTS[c],
            VAL_COUNTS[c],
            TEST_COUNTS[c],
        ]
        assert group == ("medium" if TRAIN_COUNTS[c] >= 20 else "few")  # shots: 20..100 medium, < 20 few
    most, fewest = max(TRAIN_COUNTS), min(TRAIN_COUNTS)
    assert f"imbalance factor of the training counts: {most / fewest:.1f} ({most} / {fewest})" in out
    assert f"test: {sum(TEST_COUNTS)} images held out of the training images" in out


def test_train_records_the_data_and_evaluates_on_the_held_out_test_split(stage1, folder):
    run = runs.read_json(stage1 / runs.RUN_FILE)
    assert run["status"] == "finished"
    assert run["data_store_size"] == [64, 64]
    assert run["class_names"] == list(data.CIFAR10_CLASSES)
    assert run["skipped_images"] == {"count": 1, "paths": [str(folder / BROKEN)]}
    assert run["train_counts"] == TRAIN_COUNTS
    assert run["config"]["imbalance"] == "natural" and run["config"]["test_fraction"] == FRACTION

    index = json.loads(Path(run["index_file"]).read_text())
    train, val, test = (set(index[part]) for part in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == set(range(sum(COUNTS)))  # every readable image of train/, once
    labels = np.repeat(np.arange(10), COUNTS)
    for part, expected in (("train", TRAIN_COUNTS), ("val", VAL_COUNTS), ("test", TEST_COUNTS)):
        assert np.bincount(labels[index[part]], minlength=10).tolist() == expected, part
    # The test split is the data's, not the run's: another seed holds out the same images.
    other = data.select_long_tail(labels, 10, "natural", "exp", 7, 0, val_fraction=0.5, test_fraction=FRACTION)
    assert other.test.tolist() == index["test"]

    metrics = json.loads((stage1 / "metrics.json").read_text())
    assert metrics["per_class"]["support"] == TEST_COUNTS
    assert metrics["grouping"] == "shots"
    assert metrics["group_classes"] == {"many": [], "medium": [0], "few": list(range(1, 10))}
    assert metrics["groups"]["many"] is None


def test_predict_on_the_folder_gives_the_runs_own_evaluation(stage1, folder, workspace, capsys):
    out = workspace / "predictions.csv"
    code, stdout, err = _longtail("predict", str(stage1), str(folder / "train"), "--out", str(out), capsys=capsys)
    assert code == 0
    assert f"longtail: skipped {folder / BROKEN}: not a readable image" in err
    assert f"classified {sum(COUNTS)} images -> {out}" in stdout
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    header = ["path", "predicted_class", "probability"]
    header += [f"top{k}_{what}" for k in range(1, 6) for what in ("class", "probability")]
    assert list(rows[0]) == header
    assert len(rows) == sum(COUNTS)
    for row in rows:
        assert row["predicted_class"] == row["top1_class"] and row["probability"] == row["top1_probability"]
        chances = [float(row[f"top{k}_probability"]) for k in range(1, 6)]
        assert chances == sorted(chances, reverse=True) and 0 < chances[0] <= 1

    # The run's own test images, found by the index file, predicted as its evaluation predicted them.
    run = runs.read_json(stage1 / runs.RUN_FILE)
    test = json.loads(Path(run["index_file"]).read_text())["test"]
    by_path = {row["path"]: row for row in rows}
    test_rows = [by_path[str(_train_files(folder)[i])] for i in test]
    labels = np.repeat(np.arange(10), COUNTS)[test]
    predicted = [data.CIFAR10_CLASSES.index(row["predicted_class"]) for row in test_rows]
    confusion = np.zeros((10, 10), int)
    np.add.at(confusion, (labels, predicted), 1)
    metrics = json.loads((stage1 / "metrics.json").read_text())
    assert confusion.tolist() == metrics["confusion_matrix"]
    # ... with the probabilities of its cached test features (classifier applied at the run's test size).
    cached = runs.torch_load(stage1 / feature_file(run["test_image_size"]))
    head = head_from_state_dict(runs.torch_load(stage1 / "model.pt"), 10)
    expected = _probabilities(apply_head(head, cached["test"]))
    got = np.array([[float(row["top1_probability"])] for row in test_rows])
    np.testing.assert_allclose(got[:, 0], expected.max(1), atol=1e-4)


def test_predict_single_files_with_the_stage2_head_as_json(stage1, stage2, folder, workspace, capsys):
    run = runs.read_json(stage1 / runs.RUN_FILE)
    test = json.loads(Path(run["index_file"]).read_text())["test"]
    files = [_train_files(folder)[i] for i in test[:2]]
    out = workspace / "predictions.json"
    code, _, err = _longtail(
        "predict", str(stage1), *map(str, files), "--head", str(stage2), "--top-k", "3", "--out", str(out),
        capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    document = json.loads(out.read_text())
    assert document["head"] == str(stage2) and document["top_k"] == 3 and document["unreadable"] == []
    head_size = runs.read_json(stage2 / runs.RUN_FILE)["test_image_size"]  # the head's own feature size
    assert document["store_size"] == [64, 64] and document["image_size"] == head_size
    assert [entry["path"] for entry in document["predictions"]] == list(map(str, files))
    cached = runs.torch_load(stage1 / feature_file(head_size))
    expected = _probabilities(apply_head(load_head(stage2, 10), cached["test"][:2]))
    for entry, chances in zip(document["predictions"], expected, strict=True):
        assert [top["class"] for top in entry["top"]] == [data.CIFAR10_CLASSES[c] for c in np.argsort(-chances)[:3]]
        np.testing.assert_allclose([top["probability"] for top in entry["top"]], np.sort(chances)[::-1][:3], atol=1e-4)


def test_predict_writes_csv_to_stdout_without_out(stage1, folder, capsys):
    code, stdout, _ = _longtail("predict", str(stage1), str(_train_files(folder)[0]), "--top-k", "1", capsys=capsys)
    assert code == 0
    lines = stdout.splitlines()
    assert lines[0] == "path,predicted_class,probability,top1_class,top1_probability" and len(lines) == 2
