"""`longtail predict`: classify image files with a finished stage-1 run, or with a stage-2 head
fitted on it (``--head``). ``longtail.predict`` is ``predict`` below, for notebooks.

A new image goes exactly the way the run's own test images went, so an image the run was
evaluated on gets the prediction the run's evaluation gave it:
- decoded by ``data.decode_image`` at the run's store size (``data_store_size`` in its run.json):
  shorter side scaled to S and centre-cropped, as an image folder is stored (a run on an .npz or
  a CIFAR root has 32 x 32 arrays: new images are brought to 32 x 32 the same way);
- normalised as the run's inputs (ImageNet statistics for pretrained weights) and resized to the
  run's test image size (``artifacts.run_test_size``), or with ``--head`` to the head's own
  (``test_image_size`` in its run.json, chosen by ``--feature-size``), by
  ``features.extract_features``, the one batched inference of longtail;
- the pooled backbone features go through the stage-1 classifier, or the stage-2 head.
Probabilities are the softmax of the logits (of ``LDAM_SCALE`` times the cosine logits of LDAM's
cosine head: the scale its loss trains them at), shifted toward the target prior of a head fitted
with ``--target-prior`` (its run.json's ``target_prior``). No test-time augmentation: the numbers
of the run's headline metrics.

``--target-prior NAME`` (``target_prior``) serves the classifier under the class prior the images
will come from: its unadjusted logits shifted by ``tau (log pi_target - log pi_own)``, ``pi_own``
the prior it is calibrated to (``stage2.calibration``: ``stage1_calibration`` for a stage-1 run,
``head_calibration`` for a head) and tau chosen on the run's validation split re-weighted
to the target, as ``longtail decouple --target-prior`` chooses it (``stage2.calibration.target_adjustment``;
the run's data is read for the validation labels, under ``--cache-dir``, and refused if it is not
the data the run was trained on). It replaces a head's recorded adjustment.

Outputs (``write_predictions``), chosen by the file's extension:
- ``.csv`` (also what goes to stdout without ``--out``): one row per image with the columns
  ``path, predicted_class, probability, top1_class, top1_probability, ..., topK_class,
  topK_probability`` (top 1 is the predicted class; probabilities with 6 decimals);
- ``.json``: ``{"run", "head", "class_names", "store_size", "image_size", "top_k",
  "target_prior" (the adjustment applied, or null), "predictions": [{"path", "predicted_class",
  "probability", "top": [{"class", "probability"}, ...]}, ...], "unreadable": [{"path", "error"},
  ...]}``.
Files that are not readable images are reported (``Predictions.failed``) and the rest still
classified; none readable at all is an error.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from longtail import data as data_module
from longtail.artifacts import (
    check_head_model,
    load_head,
    read_finished_stage1,
    run_test_size,
    stage1_dataset,
    stage1_of,
    trained_model,
)
from longtail.config import DEFAULT_TOP_K, Stage2Config, TrainConfig, check_prediction_options, from_record
from longtail.data import normalisation
from longtail.errors import LongtailError
from longtail.features import extract_features, validation_features
from longtail.models import head_of
from longtail.priors import Prior, check_classes
from longtail.runs import RUN_FILE, atomic_write_bytes, read_json
from longtail.runtime import Runtime
from longtail.stage2.calibration import adjusted_logits, head_calibration, stage1_calibration, target_adjustment

CHUNK = 2048  # images decoded and classified at a time: memory stays that many images whatever the folder


@dataclass
class Predictions:
    """Class probabilities of the images ``predict`` could read, in the order found."""

    paths: list[str]
    probabilities: np.ndarray  # (N, C), rows sum to 1
    class_names: tuple[str, ...]
    failed: list[tuple[str, str]]  # (path, why) of the files that are not readable images
    top_k: int
    run: str
    head: str | None
    store_size: tuple[int, int]  # (height, width) the images were decoded to
    image_size: int  # the model's input size (the run's test size, or the head's)
    target_prior: dict | None = None  # the adjustment toward a target prior applied (target_adjustment)

    def top(self, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(classes, probabilities)``, each (N, k): the k most probable classes of each image,
        most probable first (ties: the lower class index)."""
        k = self.top_k if k is None else k
        order = np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(self.probabilities, order, axis=1)

    def records(self) -> list[dict]:
        """One dict per image: ``path``, ``predicted_class``, ``probability`` and ``top``."""
        classes, probabilities = self.top()
        return [
            {
                "path": path,
                "predicted_class": self.class_names[row[0]],
                "probability": float(chances[0]),
                "top": [
                    {"class": self.class_names[c], "probability": float(p)} for c, p in zip(row, chances, strict=True)
                ],
            }
            for path, row, chances in zip(self.paths, classes, probabilities, strict=True)
        ]


def image_paths(paths: Sequence[str | Path]) -> list[Path]:
    """The files to classify: each file as given, every file under each folder
    (``data.image_files``: recursively, hidden files left out)."""
    files = []
    for path in map(Path, paths):
        if not path.exists():
            raise LongtailError(f"{path} does not exist; pass image files or folders of them")
        found = data_module.image_files(path) if path.is_dir() else [path]
        if not found:
            raise LongtailError(f"{path}: no files in this folder; pass image files or folders of them")
        files += found
    if not files:
        raise LongtailError("no image files given; pass image files or folders of them")
    return files


def _check_head(head: Path, run: Path, record: dict) -> dict:
    """A stage-2 head classifies the features of the stage-1 model it was fitted on, and no other;
    returns the head's run.json."""
    if not (head / RUN_FILE).exists():
        raise LongtailError(
            f"--head {head} is not a stage-2 run directory (no {RUN_FILE}); pass a `longtail decouple` --out"
        )
    fitted_on = stage1_of(head)
    if fitted_on.resolve() != run.resolve():
        raise LongtailError(
            f"--head {head} was fitted on {fitted_on}, not on {run}: pass that run, or leave --head out"
        )
    head_record = read_json(head / RUN_FILE)
    check_head_model(head, head_record, run, record)
    return head_record


def _serving_adjustment(
    target: Prior,
    run: Path,
    config: TrainConfig,
    record: dict,
    head_record: dict | None,
    classifier,
    model,
    size: int,
    runtime: Runtime,
    cache_dir: Path | None,
) -> dict:
    """The classifier's adjustment to ``target`` (``target_adjustment``), its tau chosen
    on the run's validation split at the classifier's input size (the run's data read, and
    checked to be the data it was trained on, with ``cache_dir``)."""
    dataset = stage1_dataset(run, config, record, cache_dir)
    if len(dataset.split.val) == 0:
        raise LongtailError(
            f"--target-prior {target.name} chooses its tau on the validation split, and {run} has none (trained with "
            "--val-per-class 0): train the run with a validation split"
        )
    counts = dataset.split.train_counts
    if head_record is None:
        calibration = stage1_calibration(config, counts)
    else:
        head_config = from_record(Stage2Config, head_record["config"])
        calibration = head_calibration(head_config, head_record["chosen"], counts, config)
    val = validation_features(run, record.get("model_sha256"), model, dataset, size, runtime)
    return target_adjustment(target, classifier, calibration, val, dataset)


def _classify(
    files: list[Path],
    store_size: tuple[int, int],
    model,
    classifier,
    adjustment: dict | None,
    size: int,
    mean_std: tuple,
    runtime: Runtime,
) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """``(paths, probabilities, failed)``: the files decoded at ``store_size`` and classified
    ``CHUNK`` at a time, the readable ones' paths and class probabilities, and the others with why;
    none readable is an error."""
    (height, width), (mean, std) = store_size, mean_std
    read, probabilities, failed = [], [], []
    for start in range(0, len(files), CHUNK):
        chunk = files[start : start + CHUNK]
        label = f"images {start + 1}-{start + len(chunk)} of {len(files)}"
        images, failures = data_module.decode_images(chunk, height, width, f"decoding {label}")
        failed += [(str(chunk[position]), why) for position, why in failures]
        readable = np.ones(len(chunk), bool)
        readable[[position for position, _ in failures]] = False
        if not readable.any():
            continue
        features = extract_features(
            model, torch.from_numpy(images[readable]), size, mean, std, runtime, progress=f"classifying {label}"
        )
        probabilities.append(torch.softmax(adjusted_logits(classifier, features, adjustment), dim=1).numpy())
        read += [str(path) for path, ok in zip(chunk, readable, strict=True) if ok]
    if not read:
        raise LongtailError(
            f"none of the {len(files)} files is a readable image: {data_module.listed([path for path, _ in failed])}"
        )
    return read, np.concatenate(probabilities), failed


def predict(
    run: str | Path,
    paths: Sequence[str | Path],
    *,
    head: str | Path | None = None,
    top_k: int | None = None,
    target_prior: Prior | None = None,
    runtime: Runtime | None = None,
    cache_dir: Path | None = None,
) -> Predictions:
    """Classify image files (and every file in folders) with the finished stage-1 run ``run``,
    or with the stage-2 head in the directory ``head`` fitted on it (see the module docstring).
    ``top_k``: classes listed per image in ``Predictions.records`` and the outputs (default 5, or
    the number of classes if fewer). ``target_prior``: serve the classifier under that class
    prior (the module docstring; only then is the run's data read, decoded into ``cache_dir``:
    otherwise its run.json records the class names and the store size)."""
    run = Path(run)
    config, record = read_finished_stage1(run)
    class_names, (height, width) = tuple(record["class_names"]), tuple(record["data_store_size"])
    if top_k is None:
        top_k = min(DEFAULT_TOP_K, len(class_names))
    if not 1 <= top_k <= len(class_names):
        raise LongtailError(f"--top-k must be between 1 and the run's {len(class_names)} classes, got {top_k}")
    if target_prior is not None:
        check_classes([target_prior], len(class_names), "--target-prior")
    head_record = None
    if head is not None:
        head = Path(head)
        head_record = _check_head(head, run, record)
    files = image_paths(paths)
    runtime = runtime or Runtime.create()
    model = trained_model(run, config, record, len(class_names), runtime)
    classifier = load_head(head, len(class_names)) if head is not None else head_of(model)
    # The size the classifier's features were evaluated at: the stage-1 test size, or the head's own.
    size = head_record["test_image_size"] if head_record is not None else run_test_size(record, config)
    adjustment = head_record.get("target_prior") if head_record is not None else None
    if target_prior is not None:
        adjustment = _serving_adjustment(
            target_prior, run, config, record, head_record, classifier, model, size, runtime, cache_dir
        )
    mean_std = normalisation(record["weights"]["pretrained"])
    read, probabilities, failed = _classify(
        files, (height, width), model, classifier, adjustment, size, mean_std, runtime
    )
    return Predictions(
        paths=read,
        probabilities=probabilities,
        class_names=tuple(class_names),
        failed=failed,
        top_k=top_k,
        run=str(run),
        head=None if head is None else str(head),
        store_size=(height, width),
        image_size=size,
        target_prior=adjustment,
    )


def _csv(predictions: Predictions) -> str:
    header = ["path", "predicted_class", "probability"]
    for rank in range(1, predictions.top_k + 1):
        header += [f"top{rank}_class", f"top{rank}_probability"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for record in predictions.records():
        row = [record["path"], record["predicted_class"], f"{record['probability']:.6f}"]
        for entry in record["top"]:
            row += [entry["class"], f"{entry['probability']:.6f}"]
        writer.writerow(row)
    return buffer.getvalue()


def _json(predictions: Predictions) -> str:
    document = {
        "run": predictions.run,
        "head": predictions.head,
        "class_names": list(predictions.class_names),
        "store_size": list(predictions.store_size),
        "image_size": predictions.image_size,
        "top_k": predictions.top_k,
        "target_prior": predictions.target_prior,
        "predictions": predictions.records(),
        "unreadable": [{"path": path, "error": why} for path, why in predictions.failed],
    }
    return json.dumps(document, indent=2) + "\n"


def write_predictions(predictions: Predictions, out: Path | None = None) -> None:
    """Write the predictions as CSV or JSON by ``out``'s extension (atomically), or as CSV on
    stdout when ``out`` is None."""
    if out is None:
        sys.stdout.write(_csv(predictions))
        return
    check_prediction_options(out, None)
    write = {".csv": _csv, ".json": _json}[Path(out).suffix.lower()]
    atomic_write_bytes(Path(out), write(predictions).encode())
