"""Crash and exact resume: a ``longtail train`` killed with SIGKILL mid-epoch and rerun with
``--resume`` ends with the same weights and metrics, bit for bit, as a run never interrupted.
Checkpoints are written atomically and hold everything a resume needs.

The runs are real (``python -m longtail train --deterministic`` on real CIFAR-10 images with the
real pretrained weights), on a tiny subset: 20 to 2 training images per class (79 in all, ten
steps of 8 per epoch), 2 validation images per class and a 20-per-class test subset of the
official test set.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from longtail import runs
from shared_files import WEIGHTS

EPOCHS = 3
STEPS_PER_EPOCH = 10  # train counts 20, 15, 12, 9, 7, 5, 4, 3, 2, 2 (79) in batches of 8


@pytest.fixture(scope="module")
def subset(cifar10_subset) -> Path:
    """A small .npz of real CIFAR-10 images: 40 train and 20 test images per class."""
    return cifar10_subset(40, 20)


# Sizes and epochs: a fixed 32 px, progressive resizing with a cosine learning rate, which resumes
# inside its second size (48 px), mid-warm-down, or a fixed 32 px with B0's first three blocks frozen.
FROZEN_BLOCKS = 3
SCHEDULES = {
    "fixed": ["--image-size", "32", "--epochs", str(EPOCHS)],
    "progressive-cosine": ["--size-schedule", f"32:1,48:{EPOCHS - 1}", "--lr-schedule", "cosine"],
    "frozen-blocks": ["--image-size", "32", "--epochs", str(EPOCHS), "--freeze-blocks", str(FROZEN_BLOCKS)],
}


def _command(data: Path, out: Path, cache: Path, schedule: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "longtail", "train",
        "--data", str(data),
        "--weights", str(WEIGHTS),
        "--imbalance", "10",
        "--max-per-class", "20",
        "--val-per-class", "2",
        *SCHEDULES[schedule],
        "--batch-size", "8",
        "--deterministic",
        "--cache-dir", str(cache),
        "--out", str(out),
        *extra,
    ]  # fmt: skip


def _environment(cache: Path) -> dict:
    # One thread per process: the resumed and the uninterrupted run share the (2) cores, and the
    # same thread count everywhere keeps the float reductions, and so the bits, the same.
    return {**os.environ, "LONGTAIL_CACHE": str(cache), "OMP_NUM_THREADS": "1"}


def _check(process: subprocess.Popen, timeout: float = 600) -> None:
    _, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]


def _kill_mid_epoch_2(process: subprocess.Popen, checkpoint: Path) -> None:
    """Wait for the epoch-1 checkpoint, then SIGKILL the process part-way through epoch 2.

    Epoch 2 has no warm-up, so it is at least as fast as epoch 1 minus its warm-up; a delay of 30%
    of epoch 1's training time (read from the checkpoint) lands inside epoch 2's steps.
    """
    deadline = time.monotonic() + 600
    while not checkpoint.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint after 10 minutes"
        time.sleep(0.05)
    epoch_seconds = runs.torch_load(checkpoint)["history"][0]["seconds"]
    time.sleep(0.3 * epoch_seconds)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_sigkilled_run_resumes_to_the_same_weights_and_metrics(subset, tmp_path, schedule):
    cache = tmp_path / "cache"
    crashed, reference = tmp_path / "crashed", tmp_path / "reference"
    env = _environment(cache)
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    process = subprocess.Popen(_command(subset, crashed, cache, schedule), **pipes)
    _kill_mid_epoch_2(process, crashed / runs.CHECKPOINT_FILE)
    # It died before finishing: no final model, run.json still says running, an early checkpoint.
    assert not (crashed / "model.pt").exists()
    assert runs.read_json(crashed / runs.RUN_FILE)["status"] == "running"
    killed_at = runs.torch_load(crashed / runs.CHECKPOINT_FILE)["epoch"]
    assert 1 <= killed_at < EPOCHS
    print(f"\nkilled after the checkpoint of epoch {killed_at}")

    # The resumed run and a run never interrupted, side by side.
    resumed = subprocess.Popen(_command(subset, crashed, cache, schedule, "--resume"), **pipes)
    uninterrupted = subprocess.Popen(_command(subset, reference, cache, schedule), **pipes)
    _check(resumed)
    _check(uninterrupted)

    got, want = runs.torch_load(crashed / "model.pt"), runs.torch_load(reference / "model.pt")
    assert got.keys() == want.keys()
    differing = [name for name in want if not torch.equal(got[name], want[name])]
    assert not differing, f"{len(differing)} tensors differ after resuming, e.g. {differing[:3]}"
    # The weights changed from the pretrained start (identical untrained weights would prove nothing).
    start = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    frozen = tuple(f"features.{block}." for block in range(FROZEN_BLOCKS if schedule == "frozen-blocks" else 0))
    trained = [name for name in want if name.startswith("features.") and not name.startswith(frozen)]
    assert any(not torch.equal(want[name], start[name]) for name in trained)
    if frozen:  # the frozen blocks' tensors are the loaded weights, bit for bit
        kept = [name for name in want if name.startswith(frozen)]
        assert kept and all(torch.equal(want[name], start[name]) for name in kept)
    else:
        assert not torch.equal(want["features.0.0.weight"], start["features.0.0.weight"])

    assert json.loads((crashed / "metrics.json").read_text()) == json.loads((reference / "metrics.json").read_text())

    def history(run_dir):
        records = runs.read_json(run_dir / runs.RUN_FILE)["history"]
        return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second")} for r in records]

    assert history(crashed) == history(reference)
    assert [r["epoch"] for r in history(reference)] == list(range(1, EPOCHS + 1))

    # The checkpoint (loaded with weights_only=True) holds what a resume needs.
    checkpoint = runs.torch_load(reference / runs.CHECKPOINT_FILE)
    assert {"model", "optimizer", "epoch", "step", "rng", "sampler"} <= checkpoint.keys()
    assert checkpoint["epoch"] == EPOCHS and checkpoint["step"] == EPOCHS * STEPS_PER_EPOCH
    assert checkpoint["model"].keys() == want.keys()
    assert checkpoint["optimizer"]["state"]  # Adam's moments, not just its hyperparameters
    trainable = [name for name in want if name.startswith("features.") or name.startswith("classifier.")]
    trainable = [n for n in trainable if not n.startswith(frozen) and "running_" not in n and "num_batches" not in n]
    assert len(checkpoint["optimizer"]["state"]) == len(trainable)  # no optimizer state for a frozen block
    assert len(checkpoint["rng"]) == 1 and isinstance(checkpoint["rng"][0]["torch"], torch.Tensor)  # one per rank
    run = runs.read_json(reference / runs.RUN_FILE)
    assert run["epoch_sizes"] == ([32] + [48] * (EPOCHS - 1) if schedule == "progressive-cosine" else [32] * EPOCHS)
    assert run["config"]["freeze_blocks"] == (FROZEN_BLOCKS if schedule == "frozen-blocks" else 0)
    assert [r["image_size"] for r in run["history"]] == run["epoch_sizes"]
    if schedule == "progressive-cosine":
        assert checkpoint["lr_scheduler"]["last_epoch"] == EPOCHS * STEPS_PER_EPOCH
        assert run["history"][-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # decayed to zero at the last step
    assert checkpoint["sampler"] == {"name": "instance", "seed": 0, "next_epoch": EPOCHS}


# ---------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, failing):
    path = tmp_path / runs.CHECKPOINT_FILE
    runs.atomic_write_bytes(path, b"old checkpoint")

    def crash(*args, **kwargs):
        raise OSError(f"simulated crash in os.{failing}")

    monkeypatch.setattr(runs.os, failing, crash)
    with pytest.raises(OSError, match="simulated crash"):
        runs.atomic_write_bytes(path, b"new checkpoint, half written")
    monkeypatch.undo()

    assert path.read_bytes() == b"old checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == [runs.CHECKPOINT_FILE]

    runs.atomic_torch_save(path, {"epoch": 2})
    assert runs.torch_load(path) == {"epoch": 2}
    assert [p.name for p in tmp_path.iterdir()] == [runs.CHECKPOINT_FILE]
