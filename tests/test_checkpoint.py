"""longtail.checkpoint: a run resumes only with settings it can honour."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from longtail.checkpoint import check_resumable
from longtail.config import TrainConfig
from longtail.errors import LongtailError


def _resume(started: TrainConfig, **now) -> None:
    check_resumable(dataclasses.asdict(started), dataclasses.replace(started, **now), Path("run"))


def test_more_epochs_extend_a_run_whose_epochs_shape_nothing_else():
    _resume(TrainConfig(epochs=4), epochs=6)  # constant lr, no schedule, no re-weighting: allowed


@pytest.mark.parametrize(
    "started",
    [
        TrainConfig(epochs=4, lr_schedule="cosine"),
        TrainConfig(epochs=4, image_size=64, size_schedule="32:2,64:2"),
        TrainConfig(epochs=4, strategy="ldam-drw"),  # its DRW start is int(drw_start * epochs)
    ],
)
def test_more_epochs_are_refused_where_they_would_move_the_schedule_or_the_drw_start(started):
    with pytest.raises(LongtailError, match="epochs: recorded 4, requested 6"):
        _resume(started, epochs=6, **({"size_schedule": "32:3,64:3"} if started.size_schedule else {}))


@pytest.mark.parametrize("now", [{"device": "cpu"}, {"compile": True}, {"device": "cuda", "compile": True}])
def test_a_resume_may_change_where_it_runs(now):
    # --device and --compile change nothing that is trained (run.json records each session's: `sessions`).
    _resume(TrainConfig(device="auto", compile=False), **now)


def test_a_resume_that_changes_the_device_and_a_trained_setting_names_only_the_trained_one():
    with pytest.raises(LongtailError, match="lr: recorded 0.0001, requested 0.001") as refused:
        _resume(TrainConfig(), device="cpu", lr=1e-3)
    assert "device" not in str(refused.value)


def test_a_study_reuses_a_run_made_on_another_device(tmp_path):
    # `reproduce` resumes or reuses a run as `train --resume` does: the device and --compile may differ.
    from longtail.runs import RUN_FILE, atomic_write_json
    from longtail.study import Stage1Run, check_existing_runs

    config = TrainConfig(data="d.npz", weights="w.pth")
    recorded = dataclasses.replace(config, device="cpu", compile=True)
    record = {"kind": "train", "config": dataclasses.asdict(recorded), "data_sha256": "d", "weights": {"sha256": "w"}}
    atomic_write_json(tmp_path / "baseline" / RUN_FILE, record)
    plan = [[Stage1Run(tmp_path / "baseline", config)]]
    check_existing_runs(plan, "d", "w")
    record["config"]["lr"] = 1e-3
    atomic_write_json(tmp_path / "baseline" / RUN_FILE, record)
    with pytest.raises(LongtailError, match="lr: recorded 0.001, requested 0.0001") as refused:
        check_existing_runs(plan, "d", "w")
    assert "device" not in str(refused.value)
