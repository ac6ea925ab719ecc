"""Run directories: a finished run is never lost, an unfinished one is never silently restarted,
two processes never write one directory, and a non-finite loss stops training with the last good
checkpoint intact.

Training here is real (``longtail train`` through ``longtail.cli.main``) but tiny: a synthetic
3-class .npz, a randomly initialised EfficientNet-B0, 17 training images.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from longtail import cli, runs, strategies
from longtail.losses import build_loss as real_build_loss

STEPS_PER_EPOCH = 3  # train counts 8, 5, 4 (imbalance 2, head 8) in batches of 6, 6, 5


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (36, 32, 32, 3), dtype=np.uint8),
        y_train=np.repeat(np.arange(3), 12),
        x_test=rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8),
        y_test=np.repeat(np.arange(3), 4),
    )
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("LONGTAIL_CACHE", str(path))
    return path


def _train_args(npz: Path, out: Path, cache: Path, *extra: str, epochs: int = 1) -> list[str]:
    return [
        "train",
        "--data", str(npz),
        "--weights", "none",
        "--imbalance", "2",
        "--max-per-class", "8",
        "--val-per-class", "2",
        "--image-size", "32",
        "--batch-size", "6",
        "--epochs", str(epochs),
        "--cache-dir", str(cache),
        "--out", str(out),
        *extra,
    ]  # fmt: skip


def _snapshot(run_dir: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file under ``run_dir`` but the lock file (reopened by every attempt)."""
    return {
        str(p.relative_to(run_dir)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _error_line(stderr: str) -> str:
    """The one error line of a failed command (tqdm's progress bar may share stderr)."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if "error" in line]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("longtail: error: ")
    return lines[0]


def _longtail_process(argv: list[str], cache: Path) -> subprocess.CompletedProcess:
    """``longtail ARGV`` in a process of its own (a lock this process holds then binds it)."""
    env = {**os.environ, "LONGTAIL_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "longtail", *argv], capture_output=True, text=True, env=env, timeout=300
    )


def _train(argv, capsys) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err


def test_finished_run_is_kept_unless_overwrite(npz, cache, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(_train_args(npz, out, cache), capsys)[0] == 0
    assert runs.run_status(out) == "finished"
    before = _snapshot(out)

    code, err = _train(_train_args(npz, out, cache), capsys)
    assert code == 2
    line = _error_line(err)
    assert "finished run" in line and "--overwrite" in line
    assert _snapshot(out) == before

    (out / "stale.txt").write_text("from the old run")
    code, _ = _train(_train_args(npz, out, cache, "--overwrite"), capsys)
    assert code == 0
    assert not (out / "stale.txt").exists()
    after = _snapshot(out)
    assert after["run.json"][1] > before["run.json"][1]
    assert after["model.pt"][1] > before["model.pt"][1]
    assert runs.run_status(out) == "finished"


def test_locked_run_dir_is_refused_and_left_unchanged(npz, cache, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text('{"kind": "train", "status": "finished"}\n')
    (out / "model.pt").write_bytes(b"weights of the run being written")
    before = _snapshot(out)
    with runs.RunLock(out):
        result = _longtail_process(_train_args(npz, out, cache, "--overwrite"), cache)
    assert result.returncode == 2, result.stderr
    line = _error_line(result.stderr)
    assert "another longtail process" in line
    assert _snapshot(out) == before


def test_decouple_and_evaluate_refuse_a_stage1_run_another_process_holds(npz, cache, tmp_path, capsys):
    """Both may rewrite the stage-1 run's feature cache, so both take its lock (issue 12, item 11)."""
    run = tmp_path / "run"
    assert _train(_train_args(npz, run, cache), capsys)[0] == 0
    head = tmp_path / "head"
    before = _snapshot(run)
    with runs.RunLock(run):
        for argv in (["decouple", str(run), "--loss", "ce", "--out", str(head)], ["evaluate", str(run)]):
            result = _longtail_process(argv, cache)
            assert result.returncode == 2, result.stderr
            assert "another longtail process" in _error_line(result.stderr)
    assert _snapshot(run) == before
    assert not head.exists() or not [p for p in head.rglob("*") if p.is_file() and p.name != ".lock"]


def _nan_after(calls_before_nan: int, bad: float, seen_checkpoint: dict):
    """A ``build_loss`` whose losses turn ``bad`` after ``calls_before_nan`` batches; on the first
    bad batch it records the checkpoint's bytes as they are at that moment."""
    calls = {"n": 0}

    def build(*args, **kwargs):
        loss_fn = real_build_loss(*args, **kwargs)

        def loss(logits, targets):
            calls["n"] += 1
            value = loss_fn(logits, targets)
            if calls["n"] <= calls_before_nan:
                return value
            if "bytes" not in seen_checkpoint:
                seen_checkpoint["bytes"] = seen_checkpoint["path"].read_bytes()
            return value + bad

        return loss

    return build


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_loss_stops_with_last_good_checkpoint(npz, cache, tmp_path, capsys, monkeypatch, bad):
    out = tmp_path / "run"
    checkpoint = out / runs.CHECKPOINT_FILE
    seen = {"path": checkpoint}
    # Epoch 1 runs normally; the second batch of epoch 2 gives a non-finite loss.
    monkeypatch.setattr(strategies, "build_loss", _nan_after(STEPS_PER_EPOCH + 1, bad, seen))
    code, err = _train(_train_args(npz, out, cache, epochs=3), capsys)
    assert code == 2
    line = _error_line(err)
    assert f"loss became {bad}" in line and "epoch 2, step 2" in line
    assert "--overwrite" in line  # resuming refuses a changed --lr, so the advice is to start again

    assert checkpoint.read_bytes() == seen["bytes"]  # nothing written after the bad loss
    state = runs.torch_load(checkpoint)
    assert state["epoch"] == 1 and state["step"] == STEPS_PER_EPOCH
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert not (out / "model.pt").exists()
    assert runs.run_status(out) == "unfinished"

    if bad != bad:  # once (NaN): the unfinished run asks for a decision, and resumes from epoch 1
        before = _snapshot(out)
        code, err = _train(_train_args(npz, out, cache, epochs=3), capsys)
        assert code == 2
        line = _error_line(err)
        assert "unfinished run" in line and "--resume" in line and "--overwrite" in line
        assert _snapshot(out) == before

        monkeypatch.setattr(strategies, "build_loss", real_build_loss)
        code, _ = _train(_train_args(npz, out, cache, "--resume", epochs=2), capsys)
        assert code == 0
        run = runs.read_json(out / runs.RUN_FILE)
        assert run["status"] == "finished"
        assert [record["epoch"] for record in run["history"]] == [1, 2]
        assert runs.torch_load(checkpoint)["step"] == 2 * STEPS_PER_EPOCH


def test_last_batch_of_one_image_is_skipped_when_batchnorm_trains(npz, cache, tmp_path, capsys):
    """17 training images in batches of 16 leave one image; BatchNorm in train mode (random
    weights) cannot normalise it, so that step is skipped instead of crashing the run."""
    out = tmp_path / "run"
    code, err = _train(_train_args(npz, out, cache, "--batch-size", "16"), capsys)
    assert code == 0, err
    history = runs.read_json(out / runs.RUN_FILE)["history"]
    assert len(history) == 1 and history[0]["epoch"] == 1
    assert torch.load(out / runs.CHECKPOINT_FILE, weights_only=True)["step"] == 1


def test_a_waiting_lock_is_taken_when_the_holder_lets_go(tmp_path):
    """Two seed processes of one study finishing together take turns writing its results."""
    holder = runs.RunLock(tmp_path).__enter__()
    with pytest.raises(runs.LongtailError, match="another longtail process"):
        runs.RunLock(tmp_path).__enter__()
    release = threading.Timer(0.5, holder.__exit__)
    release.start()
    started = time.monotonic()
    with runs.RunLock(tmp_path, wait=True):
        assert time.monotonic() - started >= 0.4  # it waited for the holder
    release.join()
