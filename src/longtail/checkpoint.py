"""Checkpoints of a stage-1 run: the training state one dict holds (model, optimizer, schedule,
EMA, every rank's random states, sampler position, epoch and step, and the checksum of the data it
trains on), the check that a run resumes only with the settings and the data it started with, and
restoring it.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from longtail.config import TrainConfig, describe_differences, training_differences
from longtail.data import Arrays
from longtail.errors import LongtailError
from longtail.runs import CHECKPOINT_FILE, short_sha256, torch_load
from longtail.runtime import Runtime, process_seed
from longtail.strategies import strategy_of


@dataclass
class TrainingState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: torch.optim.swa_utils.AveragedModel | None
    epoch: int = 0
    step: int = 0
    history: list = field(default_factory=list)
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None


def rng_state() -> dict:
    """This process's random states (its own CUDA device's only), as tensors and plain types,
    so a checkpoint loads with ``torch.load(weights_only=True)``."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian]
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict) -> None:
    """Restore ``rng_state()``. A checkpoint written where more GPUs were visible (older format:
    one state per device) restores the current device's state only."""
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, (list, tuple)):  # one state per device, as torch.cuda.get_rng_state_all() gives
            index = torch.cuda.current_device()
            if index >= len(cuda):
                return
            cuda = cuda[index]
        torch.cuda.set_rng_state(cuda)


def restore_process_rng(saved, config: TrainConfig, runtime: Runtime) -> None:
    """Restore this rank's random state from a checkpoint's ``rng`` (one state per rank; a
    single dict in checkpoints written before that). A rank the checkpoint has no state for (it
    was written by fewer processes) is seeded afresh from (seed, rank, epoch)."""
    states = saved if isinstance(saved, list) else [saved]
    if runtime.rank < len(states):
        restore_rng_state(states[runtime.rank])
    else:
        torch.manual_seed(process_seed(config.seed, runtime.rank))


def checkpoint_dict(state: TrainingState, config: TrainConfig, rng_states: list[dict], data_sha256: str) -> dict:
    """The checkpoint of ``state``; ``data_sha256``: the fingerprint of the data source it trains on."""
    return {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "lr_scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "epoch": state.epoch,
        "step": state.step,
        "rng": rng_states,  # one per rank, in rank order
        "sampler": {"name": strategy_of(config).sampler, "seed": config.seed, "next_epoch": state.epoch},
        "history": state.history,
        "config": dataclasses.asdict(config),
        "data_sha256": data_sha256,
    }


def check_resumable(stored: dict, config: TrainConfig, run_dir: Path) -> None:
    """A run resumes only with the settings it started with (``training_differences``: the device
    and --compile may change); more --epochs extend a run whose epochs shape nothing else (a
    constant learning rate, no size schedule and no deferred re-weighting, whose start is a
    fraction of the epochs)."""
    differing = training_differences(stored, config)
    shaped_by_epochs = (
        config.lr_schedule != "constant" or config.size_schedule is not None or strategy_of(config).deferred_reweighting
    )
    if not shaped_by_epochs:
        differing.pop("epochs", None)
    if differing:
        raise LongtailError(
            f"{run_dir} was started with other settings ({describe_differences(differing)}); rerun with the "
            "same settings to resume, or pass --overwrite to start over"
        )


def check_same_data(checkpoint: dict, arrays: Arrays, run_dir: Path) -> None:
    """A run resumes only on the data it started on: the source's fingerprint now must be the one
    its checkpoint recorded (a checkpoint that recorded none is refused too)."""
    recorded = checkpoint.get("data_sha256")
    if recorded != arrays.fingerprint:
        raise LongtailError(
            f"{arrays.source} is not the data {run_dir} was trained on (sha256 {short_sha256(recorded)} in its "
            f"checkpoint, {short_sha256(arrays.fingerprint)} now): restore that data to resume the run, or pass "
            "--overwrite to start it over on this data"
        )


def restore_checkpoint(
    state: TrainingState, checkpoint: dict, config: TrainConfig, arrays: Arrays, runtime: Runtime, run_dir: Path
) -> None:
    """Put the checkpoint's training state into ``state``, once the checkpoint is checked to be
    of this run's settings (``check_resumable``) and data (``check_same_data``: ``arrays``)."""
    path = run_dir / CHECKPOINT_FILE
    missing = sorted({"config", "model", "optimizer", "epoch", "step", "history", "rng"} - set(checkpoint))
    if missing:
        raise LongtailError(
            f"{path}: not a longtail checkpoint (no {', '.join(missing)}); pass --overwrite to start the run over"
        )
    check_resumable(checkpoint["config"], config, run_dir)
    check_same_data(checkpoint, arrays, run_dir)
    try:
        state.model.load_state_dict(checkpoint["model"])
        state.optimizer.load_state_dict(checkpoint["optimizer"])
        if state.scheduler is not None and checkpoint.get("lr_scheduler") is not None:
            state.scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if state.ema is not None:
            state.ema.load_state_dict(checkpoint["ema"])
        restore_process_rng(checkpoint["rng"], config, runtime)
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as error:
        raise LongtailError(
            f"{path}: does not fit this run ({type(error).__name__}); pass --overwrite to start the run over"
        ) from error
    state.epoch, state.step, state.history = checkpoint["epoch"], checkpoint["step"], checkpoint["history"]


def read_checkpoint(path: Path) -> dict | None:
    if not path.exists():
        return None
    checkpoint = torch_load(path)
    if not isinstance(checkpoint, dict):
        raise LongtailError(f"{path}: not a longtail checkpoint; pass --overwrite to start the run over")
    return checkpoint
