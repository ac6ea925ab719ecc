"""`longtail reproduce` end to end on real CIFAR-10 images with the real pretrained weights, at the
``smoke`` preset (32 px, 1 epoch, 200 images in the head class) on a subset of the official
arrays (250 train images per class: 200 for the long tail, 50 for validation; 30 test images
per class): every strategy of the study is run, aggregated and reported, and a second
invocation finds everything finished and redoes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from longtail import runs
from longtail.features import FEATURES_FILE

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "weights" / "efficientnet_b0_imagenet_tfhub.pth"
STRATEGIES = [
    "baseline",
    "reweight",
    "decoupled-modified-ce",
    "decoupled-balanced-softmax",
    "decoupled-focal",
    "decoupled-class-balanced",
    "decoupled-cb-focal",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def subset(cifar10_subset) -> Path:
    return cifar10_subset(250, 30)


def _reproduce(data: Path, out: Path, cache: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "longtail", "reproduce",
        "--preset", "smoke",
        "--seeds", "0",
        "--data", str(data),
        "--weights", str(WEIGHTS),
        "--cache-dir", str(cache),
        "--out", str(out),
    ]  # fmt: skip
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "LONGTAIL_CACHE": str(cache), "OMP_NUM_THREADS": "1"},
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_reproduce_runs_the_whole_study_and_resumes_without_redoing_anything(subset, tmp_path):
    out, cache = tmp_path / "study", tmp_path / "cache"
    _reproduce(subset, out, cache)

    results = json.loads((out / "results.json").read_text())
    assert list(results["strategies"]) == STRATEGIES
    assert results["config"]["preset"] == "smoke" and results["config"]["seeds"] == [0]
    for name, entry in results["strategies"].items():
        assert 0.0 <= entry["accuracy"] <= 1.0, name
        assert sum(entry["per_class"]["support"]) == 300, name  # the whole test subset
    assert (out / "results.md").is_file()
    assert "<html" in (out / "report.html").read_text(encoding="utf-8").lower()
    for figure in ("recall_comparison.png", "class_histogram.png", "confusion_decoupled-modified-ce.png"):
        assert (out / "figures" / figure).read_bytes().startswith(b"\x89PNG")

    seed_dir = out / "seed0"
    for name in STRATEGIES:
        assert runs.read_json(seed_dir / name / runs.RUN_FILE)["status"] == "finished"
        assert (seed_dir / name / "metrics.json").is_file()
        assert not (seed_dir / name / "figures").exists()  # the study draws its figures once, per strategy
    # The five decoupled heads were fitted together, on the features stage 1 cached.
    decoupled = [name for name in STRATEGIES if name.startswith("decoupled-")]
    for name in decoupled:
        record = runs.read_json(seed_dir / name / runs.RUN_FILE)
        assert sorted(Path(other).name for other in record["fitted_with"]) == sorted(set(decoupled) - {name})
    cached = runs.torch_load(seed_dir / "baseline" / FEATURES_FILE)
    assert cached["train"].shape[1] == sum(results["environment"]["train_counts"])
    assert cached["val"].shape[0] == 500 and cached["test"].shape[0] == 300

    # Everything finished: a rerun redoes nothing and reports the same numbers.
    stamps = {path: path.stat().st_mtime_ns for path in seed_dir.rglob("*") if path.is_file()}
    _reproduce(subset, out, cache)
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps
    again = json.loads((out / "results.json").read_text())
    assert again["strategies"] == results["strategies"]
