"""Finished runs as the commands after training read them: a stage-1 run's record, data, network
and classifier, and a stage-2 head, each checked before use: ``model.pt`` against the sha256 its
run.json recorded, the data against the checksum it was trained on (``stage1_dataset``), a head
against the stage-1 model it was fitted on (``check_head_model``). What ``decouple``, ``evaluate``,
``predict`` and ``reproduce`` load.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from longtail.config import TrainConfig, from_record
from longtail.data import sha256_file
from longtail.data.dataset import Dataset, load_dataset, load_source
from longtail.errors import LongtailError
from longtail.models import build_model, head_from_state_dict, make_head
from longtail.runs import RUN_FILE, read_json, short_sha256, torch_load
from longtail.runtime import Runtime
from longtail.strategies import uses_cosine_head


def read_finished_stage1(run_dir: Path) -> tuple[TrainConfig, dict]:
    """``(config, run_record)`` of a finished stage-1 run, checked; its data is not loaded."""
    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).exists():
        raise LongtailError(
            f"{run_dir} is not a longtail run directory (no {RUN_FILE}); pass the --out of a `longtail train` run"
        )
    run = read_json(run_dir / RUN_FILE)
    if not isinstance(run, dict) or run.get("kind") != "train":
        raise LongtailError(f"{run_dir} is not a stage-1 (`longtail train`) run ({run_dir / RUN_FILE} says otherwise)")
    if run.get("status") != "finished":
        raise LongtailError(f"{run_dir} has not finished training; resume it with `longtail train ... --resume`")
    try:
        config = from_record(TrainConfig, run["config"])
        config.validate()
        run["weights"]["pretrained"], run["class_names"], run["data_store_size"]
    except (KeyError, TypeError, LongtailError) as error:
        raise LongtailError(
            f"{run_dir / RUN_FILE}: not a valid longtail run record ({type(error).__name__}: {error}); "
            "it was written by an earlier longtail or edited or damaged: train the run again with --overwrite"
        ) from error
    return config, run


def stage1_dataset(run_dir: Path, config: TrainConfig, run: dict, cache_dir: Path | None = None) -> Dataset:
    """The data of a finished stage-1 run (``read_finished_stage1``), checked to be the data it was
    trained on: a source whose checksum is not the one run.json recorded is refused before its split
    is read (the run's split, features and metrics belong to the other data)."""
    arrays = load_source(config, cache_dir)
    recorded = run.get("data_sha256")
    if arrays.fingerprint != recorded:
        raise LongtailError(
            f"{arrays.source} has changed since {run_dir} was trained on it (sha256 {short_sha256(recorded)} then, "
            f"{short_sha256(arrays.fingerprint)} now): restore the data the run was trained on, or train the run again "
            "on this data with --overwrite"
        )
    return load_dataset(config, run["weights"]["pretrained"], cache_dir, arrays)


def load_finished_stage1(run_dir: Path, cache_dir: Path | None = None) -> tuple[TrainConfig, Dataset, dict]:
    """``(config, dataset, run_record)`` of a finished stage-1 run (its data checked: ``stage1_dataset``),
    without building its network."""
    config, run = read_finished_stage1(run_dir)
    return config, stage1_dataset(run_dir, config, run, cache_dir), run


def load_trained_model(run_dir: Path, runtime: Runtime, cache_dir: Path | None = None):
    """``(model, config, dataset, run_record)`` of a finished stage-1 run, in eval mode."""
    config, dataset, run = load_finished_stage1(run_dir, cache_dir)
    model = trained_model(run_dir, config, run, dataset.arrays.num_classes, runtime)
    return model, config, dataset, run


def trained_model(run_dir: Path, config: TrainConfig, run: dict, num_classes: int, runtime: Runtime) -> nn.Module:
    """The network of a finished stage-1 run (``read_finished_stage1``), in eval mode on the runtime's device."""
    model, _ = build_model(num_classes, "none", cosine_head=uses_cosine_head(config))
    state = _model_state(run_dir, run)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as error:
        raise LongtailError(
            f"{Path(run_dir) / 'model.pt'}: not this run's EfficientNet-B0 weights; "
            "train the run again with --overwrite"
        ) from error
    return model.to(runtime.device, memory_format=torch.channels_last).eval()


def _model_state(run_dir: Path, run: dict, mmap: bool = False) -> dict:
    """``model.pt`` of a finished run, checked against the sha256 its run.json recorded."""
    path = Path(run_dir) / "model.pt"
    if not path.exists():
        raise LongtailError(f"{path} does not exist; train the run again with --overwrite")
    recorded = run.get("model_sha256")
    if recorded is not None and sha256_file(path) != recorded:
        raise LongtailError(
            f"{path}: its sha256 is not the one {Path(run_dir) / RUN_FILE} recorded (the file was replaced or "
            "damaged); train the run again with --overwrite"
        )
    state = torch_load(path, mmap=mmap)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LongtailError(f"{path}: not a state dict of tensors; train the run again with --overwrite")
    return state


def load_trained_classifier(run_dir: Path, config: TrainConfig, num_classes: int) -> nn.Module:
    """The classifier of a finished stage-1 run alone (from ``model.pt``, the network not built)."""
    state = _model_state(run_dir, read_json(Path(run_dir) / RUN_FILE), mmap=True)
    try:
        return head_from_state_dict(state, num_classes, uses_cosine_head(config))
    except (RuntimeError, KeyError) as error:
        raise LongtailError(
            f"{Path(run_dir) / 'model.pt'}: has no {num_classes}-way classifier; train the run again with --overwrite"
        ) from error


def run_test_size(run: dict, config: TrainConfig) -> int:
    """The input size of a finished run's test metrics and stage-2 features (its training size
    for runs evaluated before the size was chosen on validation)."""
    return int(run.get("test_image_size", config.image_size))


def load_head(run_dir: Path, num_classes: int) -> nn.Module:
    """The classifier of a finished stage-2 run (``head.pt``), in eval mode."""
    path = Path(run_dir) / "head.pt"
    stored = torch_load(path)
    try:
        head = make_head(num_classes, bool(stored["cosine"]))
        head.load_state_dict(stored["state_dict"])
    except (KeyError, TypeError, RuntimeError) as error:
        raise LongtailError(
            f"{path}: not a {num_classes}-class longtail stage-2 head; "
            "fit it again with `longtail decouple ... --overwrite`"
        ) from error
    return head.eval()


def check_head_model(head_dir: Path, head_record: dict, stage1_dir: Path, stage1_run: dict) -> None:
    """A stage-2 head classifies the features of the stage-1 model it was fitted on and no other:
    the model sha256 its run.json recorded (``head_record``) must be the stage-1 run's now
    (``stage1_run``, its run.json); after ``train --overwrite`` or ``--resume --epochs N`` it is not."""
    fitted, now = head_record.get("stage1_model_sha256"), stage1_run.get("model_sha256")
    if fitted != now:
        raise LongtailError(
            f"{head_dir} was fitted on an earlier model of {stage1_dir} (model.pt sha256 {short_sha256(fitted)} then, "
            f"{short_sha256(now)} now: the run was trained again since); fit the head again with "
            f"`longtail decouple {stage1_dir} --out {head_dir} ... --overwrite`"
        )


def stage1_of(run_dir: Path) -> Path:
    """The stage-1 run directory a stage-2 run was fitted on (from its run.json)."""
    record = read_json(Path(run_dir) / RUN_FILE)
    if not isinstance(record, dict) or record.get("kind") != "decouple" or not isinstance(record.get("stage1"), str):
        raise LongtailError(f"{Path(run_dir) / RUN_FILE}: not the record of a `longtail decouple` run")
    return Path(record["stage1"])
