"""The benchmark scripts run end to end at tiny sizes and end with one JSON line carrying their results.

Numbers at these sizes mean nothing; the point is that the scripts still run against the current
library (they call ``train_one_epoch``, ``train``, ``decouple`` and ``train_head`` directly). The
scripts run in this process (``main(argv)``) to spare two interpreter and torch start-ups; the
GPU script can only be syntax-checked here.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import longtail.decouple
import longtail.evaluation

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# 6 train / 2 test images per class; with --max-per-class 4 --imbalance 2 --val-per-class 1 the
# long-tailed set has 27 training images.
TINY = ["--max-per-class", "4", "--imbalance", "2", "--val-per-class", "1", "--threads", "1"]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def real_subset(cifar10_subset) -> Path:
    """The first 6 train and 2 test images of every class of the real CIFAR-10."""
    return cifar10_subset(6, 2)


def _last_json_line(capsys) -> dict:
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines, "no output"
    return json.loads(lines[-1])


def test_throughput_runs_and_reports(real_subset, weights_file, cache_dir, capsys):
    argv = ["--data", str(real_subset), "--weights", str(weights_file), "--cache-dir", str(cache_dir), *TINY]
    argv += ["--image-size", "32", "--batch-size", "8", "--steps", "2", "--warmup", "1", "--rounds", "1"]
    _script("throughput").main(argv)
    result = _last_json_line(capsys)
    for key in (
        "ceiling_train_images_per_s",
        "longtail_train_images_per_s",
        "reference_train_images_per_s",
        "ceiling_eval_images_per_s",
        "longtail_eval_images_per_s",
        "train_vs_ceiling",
        "train_vs_reference",
        "eval_vs_ceiling",
        "threads",
        "image_size",
        "batch_size",
    ):
        assert result[key] > 0, key
    assert result["device"].startswith(("cpu", "cuda"))
    assert result["torch"] and result["date"]
    assert (result["image_size"], result["batch_size"], result["threads"]) == (32, 8, 1)
    assert result["train_vs_ceiling"] == pytest.approx(
        result["longtail_train_images_per_s"] / result["ceiling_train_images_per_s"], rel=0.01
    )


def test_study_runs_and_reports(real_subset, weights_file, cache_dir, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the script's scratch directories land here
    argv = ["--data", str(real_subset), "--weights", str(weights_file), "--cache-dir", str(cache_dir), *TINY]
    argv += ["--image-size", "32", "--batch-size", "8", "--epochs", "1", "--stage2-epochs", "1"]
    _script("study").main(argv)
    result = _last_json_line(capsys)
    for key in (
        "study_speedup",
        "stage2_speedup",
        "longtail_study_seconds",
        "naive_study_seconds",
        "longtail_stage2_seconds",
        "naive_stage2_seconds",
        "stage2_speedup_excluding_writing",
        "longtail_stage2_writing_seconds",
        "naive_stage2_writing_seconds",
    ):
        assert result[key] > 0, key
    # The writing both sides share was timed inside stage 2, and the patch timing it is undone.
    assert result["longtail_stage2_writing_seconds"] < result["longtail_stage2_seconds"]
    assert result["naive_stage2_writing_seconds"] < result["naive_stage2_seconds"]
    assert longtail.decouple.save_evaluation is longtail.evaluation.save_evaluation
    assert result["stage1_runs"] == {"longtail": 2, "naive": 7}
    assert len(result["longtail_stage2_seconds_each_repeat"]) == 3
    assert result["longtail_stage2_seconds"] in result["longtail_stage2_seconds_each_repeat"]
    assert set(result["stage2_test_accuracy"]["naive"]) == {
        "modified-ce",
        "balanced-softmax",
        "focal",
        "class-balanced",
        "cb-focal",
    }
    assert not list(tmp_path.glob("longtail-study-bench-*")), "scratch directories were not removed"


def test_gpu_check_script_parses():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    subprocess.run([bash, "-n", str(BENCHMARKS / "gpu_check.sh")], check=True)
