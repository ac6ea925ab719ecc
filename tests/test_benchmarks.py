"""The benchmark scripts run end to end at tiny sizes and end with one JSON line carrying their results.

Numbers at these sizes mean nothing; the point is that the scripts still run against the current
library (they call ``train_one_epoch``, ``train``, ``decouple`` and ``train_head`` directly). The
scripts run in this process (``main(argv)``) to spare two interpreter and torch start-ups; the
GPU script can only be syntax-checked here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import longtail.decouple
import longtail.evaluation
from longtail.features import feature_file
from longtail.stage2 import feature_sizes, tuning_grid

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
    # Both sides fit the same heads (same settings, sizes and choices) on the same stage 1.
    for loss, accuracy in result["stage2_test_accuracy"]["longtail"].items():
        assert result["stage2_test_accuracy"]["naive"][loss] == pytest.approx(accuracy, abs=0.051), loss
    assert len(result["longtail_stage2_seconds_each_repeat"]) == 3
    # Every repeat starts from the cache stage 1 left, so each extracts the same other sizes anew.
    extracted = result["longtail_stage2_feature_files_each_repeat"]
    assert len(extracted) == 3 and extracted[0] and extracted.count(extracted[0]) == 3, extracted
    assert result["longtail_stage2_seconds"] in result["longtail_stage2_seconds_each_repeat"]
    assert set(result["stage2_test_accuracy"]["naive"]) == {
        "modified-ce",
        "balanced-softmax",
        "focal",
        "class-balanced",
        "cb-focal",
    }
    assert not list(tmp_path.glob("longtail-study-bench-*")), "scratch directories were not removed"


def test_restoring_the_stage1_cache_removes_the_files_of_other_sizes(tmp_path):
    study = _script("study")
    kept = tmp_path / feature_file(48)
    torch.save({"image_size": 48, "train": None}, kept)
    for size in (32, 64):
        torch.save({"image_size": size}, tmp_path / feature_file(size))
    (tmp_path / "model.pt").write_bytes(b"not a cache")
    study.restore_stage1_cache(tmp_path, kept, {"image_size": 48, "test": "as stage 1 left it"})
    assert sorted(path.name for path in tmp_path.iterdir()) == [feature_file(48), "model.pt"]
    assert torch.load(kept) == {"image_size": 48, "test": "as stage 1 left it"}


def test_first_step_runs_each_variant_in_a_process_of_its_own_and_says_where_cudnn_is_not_used(capsys):
    argv = ["--device", "cpu", "--weights", "none", "--image-size", "32", "--batch-size", "8", "--threads", "1"]
    argv += ["--train-images", "20", "--val-images", "12", "--inference-batch", "8", "--steps", "2", "--epochs", "2"]
    result = _script("first_step").main([*argv, "--variants", "old", "new", "heuristic", "limit"])
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == result
    assert result["cudnn"] is False and "cuDNN is not used" in out
    assert list(result["variants"]) == ["old", "new", "heuristic", "limit"]
    for name, variant in result["variants"].items():
        assert "error" not in variant, (name, variant)
        for key in ("first_step_s", "steady_step_s", "partial_step_first_s", "feature_pass_s", "process_s"):
            assert variant[key] > 0, (name, key)
        assert set(variant["validation_grid_s"]) == {"32", "48"}  # the test-size grid at 32 px
        assert variant["training_estimate_s"] >= variant["first_step_s"]


def test_allocator_runs_both_policies_each_in_a_process_of_its_own(real_subset, weights_file, cache_dir, capsys):
    argv = ["--data", str(real_subset), "--weights", str(weights_file), "--cache-dir", str(cache_dir), *TINY]
    argv += ["--image-size", "32", "--feature-size", "40", "--batch-size", "8", "--steps", "2", "--images", "12"]
    argv += ["--rounds", "1"]
    result = _script("allocator").main(argv)
    assert _last_json_line(capsys) == result
    for policy in ("default", "keep"):
        for part in ("train", "features"):
            assert result[policy][part]["images_per_s"] > 0 and result[policy][part]["minor_faults"] > 0, (policy, part)
        assert result[policy]["peak_rss_mb"] > 0 and result[policy]["threads"] == 1
    assert result["train_speedup"] == round(
        result["keep"]["train"]["images_per_s"] / result["default"]["train"]["images_per_s"], 3
    )
    assert (result["image_size"], result["feature_size"], result["images"]) == (32, 40, 12)


def test_gpu_check_script_parses():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    subprocess.run([bash, "-n", str(BENCHMARKS / "gpu_check.sh")], check=True)


def test_gpu_study_script_parses_and_refuses_to_run_the_224px_recipe_without_a_gpu(tmp_path):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    subprocess.run([bash, "-n", str(BENCHMARKS / "gpu_study.sh")], check=True)
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script would run the real study")
    env = {k: v for k, v in os.environ.items() if k != "GPU_STUDY_DRY_RUN"}
    done = subprocess.run(
        [bash, str(BENCHMARKS / "gpu_study.sh"), str(tmp_path / "study")],
        cwd=BENCHMARKS.parent, env={**env, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    assert "no CUDA device" in done.stdout + done.stderr
    assert not (tmp_path / "study" / "results.json").exists()


def test_gpu_study_script_dry_run_on_cpu_writes_the_study_and_its_log(tmp_path, tiny_npz):
    """The script end to end at tiny sizes on the CPU, so it does not rot while no GPU is lent."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    out = tmp_path / "study"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "GPU_STUDY_DRY_RUN": "1",
        "DATA": str(tiny_npz),
        "WEIGHTS": "none",
        "OMP_NUM_THREADS": "1",
    }
    small = ["--epochs", "1", "--image-size", "32", "--test-size", "train", "--imbalance", "2", "--val-per-class", "1"]
    done = subprocess.run(
        [bash, str(BENCHMARKS / "gpu_study.sh"), str(out), *small],
        cwd=BENCHMARKS.parent, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["preset"] == "seed" and results["config"]["seeds"] == [0]
    assert {"baseline", "reweight", "decoupled-modified-ce"} <= set(results["strategies"])
    assert (out / "report.html").is_file()
    log = (out / "gpu_study.log").read_text()
    assert "=== gpu_study" in log and "reproduce exit status 0" in log


# A device machine receives the working tree (every tracked file) and what a call carries, 64 MiB in
# all; gpu_study.sh's header sends the data in three calls, the largest carrying seed 0's
# part_train.npz xz'd (28,579,144 bytes, measured with ../shared/tools/gpu/pack.py and `xz -6`).
DEVICE_CALL_BYTES = 64 * 2**20
LARGEST_DEVICE_CARRY_BYTES = 28_579_144


def test_the_tracked_files_leave_room_for_the_largest_device_transfer():
    """A multi-megabyte record committed under results/ once made every documented transfer too large."""
    assert "28.6 MB xz'd" in (BENCHMARKS / "gpu_study.sh").read_text()
    root = BENCHMARKS.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout: what travels is its tracked files")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    tracked = sum((root / name).stat().st_size for name in listed.decode().split("\0") if (root / name).is_file())
    room = DEVICE_CALL_BYTES - LARGEST_DEVICE_CARRY_BYTES
    assert tracked <= room, f"the tracked files take {tracked / 1e6:.1f} MB of the {room / 1e6:.1f} MB left"


def test_results_speed_states_the_heads_the_study_benchmark_fits():
    # RESULTS.md "Speed" once credited the benchmark's 0.9 s of heads to `reproduce`'s 59-head grid.
    configs = _script("study").stage2_configs(30, 0)
    heads = sum(len(tuning_grid(config.resolved())) or 1 for config in configs.values())
    sizes = {len(feature_sizes(config, 48)) for config in configs.values()}
    assert (heads, sizes) == (17, {3})
    text = (BENCHMARKS.parent / "RESULTS.md").read_text()
    speed = " ".join(text[text.index("\n## Speed\n") :].split("\n## ")[1].split())
    measured = re.search(r"\*\*and [\d.]+ s of heads\*\* \(the benchmark's five study rows without the tuned "
                         r"variants: a (\d+)-head grid, .*?, so (\d+) head fits;", speed)  # fmt: skip
    assert measured, "RESULTS.md 'Speed' no longer says which heads the measured 0.9 s fitted"
    assert (int(measured.group(1)), int(measured.group(2))) == (heads, heads * 3)
    assert f"the naive side trains the same {heads * 3} head fits" in speed
