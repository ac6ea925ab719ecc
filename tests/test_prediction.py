"""``longtail.prediction`` without a network: the output formats of known probabilities, which
files a path stands for, and the checks that answer before any model is built (the end-to-end
run on real images is in test_own_data.py)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from longtail import prediction
from longtail.config import TrainConfig
from longtail.errors import LongtailError
from longtail.models import build_model
from longtail.prediction import Predictions, image_paths, predict, write_predictions
from longtail.runtime import Runtime

NAMES = ("cat", "dog", "eel")


def _predictions(top_k: int = 2) -> Predictions:
    return Predictions(
        paths=["a.png", "b.jpg"],
        probabilities=np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], np.float32),
        class_names=NAMES,
        failed=[("c.txt", "c.txt: not a readable image (UnidentifiedImageError: ...)")],
        top_k=top_k,
        run="runs/stage1",
        head=None,
        store_size=(64, 64),
        image_size=48,
    )


def test_records_list_the_top_classes_most_probable_first():
    records = _predictions().records()
    assert records[0]["predicted_class"] == "dog" and records[0]["probability"] == pytest.approx(0.7)
    assert [entry["class"] for entry in records[0]["top"]] == ["dog", "eel"]
    assert [entry["class"] for entry in records[1]["top"]] == ["cat", "dog"]  # a tie: the lower class index first
    classes, chances = _predictions().top(3)
    assert classes.tolist() == [[1, 2, 0], [0, 1, 2]] and chances[0].tolist() == pytest.approx([0.7, 0.2, 0.1])


def test_csv_has_the_documented_columns(tmp_path, capsys):
    write_predictions(_predictions())  # no --out: CSV on stdout
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == [
        "path",
        "predicted_class",
        "probability",
        "top1_class",
        "top1_probability",
        "top2_class",
        "top2_probability",
    ]
    assert rows[1] == ["a.png", "dog", "0.700000", "dog", "0.700000", "eel", "0.200000"]
    write_predictions(_predictions(), tmp_path / "out.csv")
    assert (tmp_path / "out.csv").read_text().splitlines()[1] == ",".join(rows[1])


def test_json_holds_the_predictions_and_the_unreadable_files(tmp_path):
    write_predictions(_predictions(1), tmp_path / "out.JSON")
    document = json.loads((tmp_path / "out.JSON").read_text())
    assert document["class_names"] == list(NAMES) and document["store_size"] == [64, 64]
    assert document["image_size"] == 48 and document["top_k"] == 1 and document["head"] is None
    assert document["predictions"][1] == {
        "path": "b.jpg",
        "predicted_class": "cat",
        "probability": 0.5,
        "top": [{"class": "cat", "probability": 0.5}],
    }
    assert document["unreadable"] == [{"path": "c.txt", "error": _predictions().failed[0][1]}]
    with pytest.raises(LongtailError, match="\\*.csv or \\*.json"):
        write_predictions(_predictions(), tmp_path / "out.xlsx")


def test_image_paths_are_files_as_given_and_folders_recursively(tmp_path):
    (tmp_path / "pics" / "sub").mkdir(parents=True)
    for name in ("b.png", "a.jpg", "sub/c.webp", ".hidden.png"):
        (tmp_path / "pics" / name).write_bytes(b"x")
    (tmp_path / "one.bmp").write_bytes(b"x")
    found = image_paths([tmp_path / "one.bmp", tmp_path / "pics"])
    assert found == [tmp_path / "one.bmp", *(tmp_path / "pics" / n for n in ("a.jpg", "b.png", "sub/c.webp"))]
    with pytest.raises(LongtailError, match="does not exist"):
        image_paths([tmp_path / "missing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(LongtailError, match="no files in this folder"):
        image_paths([tmp_path / "empty"])


def _finished_run(directory: Path, **record) -> Path:
    """A run.json of a finished 3-class stage-1 run (no model: the checks come first)."""
    directory.mkdir(parents=True)
    run = {
        "kind": "train",
        "status": "finished",
        "config": dataclasses.asdict(TrainConfig(data="folder")),
        "weights": {"pretrained": True},
        "class_names": list(NAMES),
        "data_store_size": [32, 32],
        "model_sha256": "model-a",
        **record,
    }
    (directory / "run.json").write_text(json.dumps(run))
    return directory


def _head(directory: Path, stage1: Path, model_sha: str) -> Path:
    directory.mkdir(parents=True)
    record = {"kind": "decouple", "stage1": str(stage1.resolve()), "stage1_model_sha256": model_sha}
    (directory / "run.json").write_text(json.dumps(record))
    return directory


def _no_model(*args, **kwargs):
    raise AssertionError("the model was built before the arguments were checked")


def test_bad_arguments_are_refused_before_any_model_is_built(tmp_path, monkeypatch):
    monkeypatch.setattr(prediction, "trained_model", _no_model)
    run = _finished_run(tmp_path / "stage1")
    image = tmp_path / "x.png"
    image.write_bytes(b"x")
    with pytest.raises(LongtailError, match="--top-k must be between 1 and the run's 3 classes, got 4"):
        predict(run, [image], top_k=4)
    with pytest.raises(LongtailError, match="is not a longtail run directory"):
        predict(tmp_path / "nothing", [image])
    other = _finished_run(tmp_path / "other")
    with pytest.raises(LongtailError, match=f"was fitted on {other.resolve()}, not on {run}"):
        predict(run, [image], head=_head(tmp_path / "head-of-other", other, "model-a"))
    with pytest.raises(LongtailError, match="fitted on an earlier model"):
        predict(run, [image], head=_head(tmp_path / "stale-head", run, "model-old"))
    with pytest.raises(LongtailError, match="not a stage-2 run directory"):
        predict(run, [image], head=tmp_path)
    with pytest.raises(LongtailError, match="does not exist"):
        predict(run, [tmp_path / "absent.png"])


def test_unreadable_files_are_reported_and_the_rest_classified(tmp_path, monkeypatch):
    # A randomly initialised 3-class network stands in for the run's (the checks and the flow are under test).
    model, _ = build_model(3, "none")
    monkeypatch.setattr(prediction, "trained_model", lambda *args: model.eval())
    run = _finished_run(tmp_path / "stage1")
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    for name, size in (("a.png", (40, 60)), ("b.jpg", (32, 32)), ("c.bmp", (90, 50))):
        _save(rng.integers(0, 256, (*size, 3), dtype=np.uint8), images / name)
    (images / "notes.txt").write_text("not an image")
    found = predict(run, [images], runtime=Runtime(torch.device("cpu")))
    assert found.paths == [str(images / name) for name in ("a.png", "b.jpg", "c.bmp")]
    assert [path for path, _ in found.failed] == [str(images / "notes.txt")]
    assert "not a readable image" in found.failed[0][1]
    assert found.probabilities.shape == (3, 3) and np.allclose(found.probabilities.sum(1), 1, atol=1e-5)
    assert found.top_k == 3 and found.store_size == (32, 32) and found.image_size == 32
    with pytest.raises(LongtailError, match="none of the 1 files is a readable image: .*notes.txt"):
        predict(run, [images / "notes.txt"], runtime=Runtime(torch.device("cpu")))


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
