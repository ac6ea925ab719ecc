"""`longtail reproduce` end to end on real CIFAR-10 images with the real pretrained weights, in a
small internal configuration (the ``smoke`` preset with overrides: 32 px, 1 epoch, 200 images in
the head class) on a subset of the official arrays (250 train images per class: 200 for the long
tail, 50 for validation; 30 test images per class): every strategy of the study is run,
aggregated and reported, each loss with a knob beside its variant tuned on validation, and the
network sees few input shapes; a second invocation finds everything finished, redoes nothing and
adds its wall time to the study's; one with another --device reuses the runs; an invocation with
other settings into the same directory is refused before it writes anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from longtail import runs
from longtail.features import feature_file
from shared_files import WEIGHTS

STRATEGIES = [
    "baseline",
    "reweight",
    "decoupled-modified-ce",
    "decoupled-balanced-softmax",
    "decoupled-focal",
    "decoupled-class-balanced",
    "decoupled-cb-focal",
]
# The study's losses with a knob, each also fitted with it tuned on validation (a run of its own)
# or, for Modified CE, tuned in its own row; Balanced Softmax has none.
TUNED = {
    "decoupled-modified-ce": ("decoupled-modified-ce", ["tau"], 13),
    "decoupled-focal": ("decoupled-focal-tuned", ["gamma"], 13),
    "decoupled-class-balanced": ("decoupled-class-balanced-tuned", ["beta"], 13),
    "decoupled-cb-focal": ("decoupled-cb-focal-tuned", ["beta", "gamma"], 16),
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def subset(cifar10_subset) -> Path:
    return cifar10_subset(250, 30)


SMALL = {"image_size": 32, "epochs": 1, "max_per_class": 200, "size_schedule": None}  # tests only: seconds


# Records the (batch, size) of every input the network's stem convolution (B0's one convolution with
# three input channels) sees in the process, written to the given file at exit.
SHAPE_RECORDER = """
import atexit, json, torch
shapes = set()
def _record(module, inputs):
    if isinstance(module, torch.nn.Conv2d) and module.in_channels == 3:
        shapes.add((inputs[0].shape[0], inputs[0].shape[-1]))
torch.nn.modules.module.register_module_forward_pre_hook(_record)
atexit.register(lambda: open({path!r}, "w").write(json.dumps(sorted(shapes))))
"""


def _reproduce(
    data: Path, out: Path, cache: Path, shapes: Path | None = None, feature_size: str | None = None, **settings
) -> subprocess.CompletedProcess:
    """``longtail.study.reproduce`` in a fresh process (one thread), with the small configuration;
    ``shapes``: a file to record the network's input shapes in (``SHAPE_RECORDER``); ``feature_size``:
    the stage-2 heads' (None: the preset's)."""
    call = (
        (SHAPE_RECORDER.format(path=str(shapes)) if shapes is not None else "")
        + "import sys; from pathlib import Path; from longtail.errors import LongtailError\n"
        "from longtail.study import reproduce\n"
        "try:\n"
        f"    reproduce(Path({str(out)!r}), preset='smoke', seeds=(0,), data={str(data)!r}, weights={str(WEIGHTS)!r},\n"
        f"              cache_dir=Path({str(cache)!r}), overrides={ {**SMALL, **settings}!r},\n"
        f"              feature_size={feature_size!r})\n"
        "except LongtailError as error:\n"
        "    print(f'longtail: error: {error}', file=sys.stderr); sys.exit(2)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", call],
        capture_output=True,
        text=True,
        env={**os.environ, "LONGTAIL_CACHE": str(cache), "OMP_NUM_THREADS": "1"},
        timeout=1200,
    )


@pytest.fixture(scope="module")
def first_study(subset, tmp_path_factory) -> dict:
    """The small study's first invocation, the network's input shapes recorded."""
    root = tmp_path_factory.mktemp("study")
    paths = {"out": root / "study", "cache": root / "cache", "shapes": root / "shapes.json"}
    paths["done"] = _reproduce(subset, paths["out"], paths["cache"], shapes=paths["shapes"])
    return paths


def test_a_smoke_study_feeds_the_network_one_shape_per_training_size_and_batch_and_one_per_inference_size(
    first_study,
):
    """cuDNN autotunes each new input shape (longtail.cudnn): a smoke study meets two training shapes
    (the full batch and each epoch's last, partial one, at 32 px; the baseline and Reweight share
    them) and one inference shape per input size (every pass pads its last batch to 256), over the
    test-size grid (32, 48) and the sizes stage 2 tries (its test size and 16 px either side, none
    below 32): at most 2 + 3 = 5 shapes. Without the padding every pass's last batch was one more
    (validation 500 = 256 + 244, test 300 = 256 + 44, train features 256 + the rest) at each size."""
    assert first_study["done"].returncode == 0, first_study["done"].stderr[-3000:]
    out = first_study["out"]
    results = json.loads((out / "results.json").read_text())
    shapes = {tuple(shape) for shape in json.loads(first_study["shapes"].read_text())}
    train_images = sum(results["environment"]["train_counts"])
    training = {(128, 32), (train_images % 128, 32)}
    tried = set(map(int, results["runs"]["seed0/baseline"]["test_size_grid"]))
    for name, run in results["runs"].items():
        if run["kind"] == "decouple":
            record = runs.read_json(out / name / runs.RUN_FILE)
            tried |= set(map(int, record["chosen"].get("feature_size_grid", {})))
    assert tried <= {32, 48, 64} and {32, 48} <= tried
    assert shapes == training | {(256, size) for size in tried}
    assert len(shapes) <= 5


def test_reproduce_runs_the_whole_study_and_resumes_without_redoing_anything(subset, first_study):
    out, cache, done = first_study["out"], first_study["cache"], first_study["done"]
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    assert list(results["strategies"]) == STRATEGIES
    assert results["config"]["preset"] == "smoke" and results["config"]["seeds"] == [0]
    assert "seed" not in results["config"]  # the list of seeds, not one of them
    baseline_run = results["runs"]["seed0/baseline"]
    assert baseline_run["config"]["seed"] == 0 and baseline_run["config"]["epochs"] == 1
    assert baseline_run["test_image_size"] in (32, 48) and set(baseline_run["test_size_grid"]) == {"32", "48"}
    assert results["runs"]["seed0/decoupled-focal"]["stage1"] == "seed0/baseline"
    for name, entry in results["strategies"].items():
        assert 0.0 <= entry["accuracy"] <= 1.0, name
        assert sum(entry["per_class"]["support"]) == 300, name  # the whole test subset
    # Each loss with a knob: its tuned result beside the study's row, chosen on validation per seed.
    for name, (run, knobs, grid_size) in TUNED.items():
        tuned = results["strategies"][name]["tuned"]
        assert {"accuracy", "std", "chosen", "grid"} <= set(tuned), name
        assert 0.0 <= tuned["accuracy"] <= 1.0 and tuned["std"] is None  # one seed: no sample std
        assert tuned["run"] == run and tuned["accuracy_by_seed"] == [tuned["accuracy"]]
        assert [sorted(chosen) for chosen in tuned["chosen"]] == [knobs] and len(tuned["grid"]) == grid_size
        assert tuned["chosen"][0] in tuned["grid"], name
        record = runs.read_json(out / "seed0" / run / runs.RUN_FILE)
        assert {k: record["chosen"][k] for k in knobs} == tuned["chosen"][0]
        metrics = json.loads((out / "seed0" / run / "metrics.json").read_text())
        assert tuned["accuracy"] == metrics["accuracy"]
    assert "tuned" not in results["strategies"]["decoupled-balanced-softmax"]
    assert results["strategies"]["baseline"]["std"]["accuracy"] is None
    # What stage 2 used, per head: the study's fixed settings and, for the tuned variants, the grid.
    stage2 = results["config"]["stage2"]
    assert set(stage2) == {name for name in STRATEGIES if name.startswith("decoupled-")} | {
        run for run, _, _ in TUNED.values()
    }
    assert stage2["decoupled-focal"]["loss"] == "focal" and stage2["decoupled-focal"]["gamma"] == 1.0
    assert stage2["decoupled-class-balanced"]["beta"] == 0.9999 and stage2["decoupled-cb-focal"]["gamma"] == 1.0
    assert stage2["decoupled-balanced-softmax"]["gamma"] is None and stage2["decoupled-modified-ce"]["tau"] is None
    assert stage2["decoupled-focal-tuned"]["tuned"] == ["gamma"] and len(stage2["decoupled-focal-tuned"]["grid"]) == 13
    assert all("seed" not in settings and settings["lr"] == 1e-3 for settings in stage2.values())  # one lr for all
    assert (out / "results.md").is_file()
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<html" in page.lower() and "<h2>Fixed setting vs tuned on validation</h2>" in page
    for figure in ("recall_comparison.png", "class_histogram.png", "confusion_decoupled-modified-ce.png"):
        assert (out / "figures" / figure).read_bytes().startswith(b"\x89PNG")

    seed_dir = out / "seed0"
    assert set(results["runs"]) == {f"seed0/{name}" for name in STRATEGIES} | {
        f"seed0/{run}" for run, _, _ in TUNED.values()
    }
    for name in STRATEGIES:
        assert runs.read_json(seed_dir / name / runs.RUN_FILE)["status"] == "finished"
        assert (seed_dir / name / "metrics.json").is_file()
        assert not (seed_dir / name / "figures").exists()  # the study draws its figures once, per strategy
    # The five decoupled heads and the tuned variants were fitted together, on the features stage 1 cached.
    decoupled = [name for name in STRATEGIES if name.startswith("decoupled-")]
    decoupled += [run for run, _, _ in TUNED.values() if run not in decoupled]
    for name in decoupled:
        record = runs.read_json(seed_dir / name / runs.RUN_FILE)
        assert sorted(Path(other).name for other in record["fitted_with"]) == sorted(set(decoupled) - {name})
    stage1_run = runs.read_json(seed_dir / "baseline" / runs.RUN_FILE)
    cached = runs.torch_load(seed_dir / "baseline" / feature_file(stage1_run["test_image_size"]))
    assert cached["train"].shape[1] == sum(results["environment"]["train_counts"])
    assert cached["val"].shape[0] == 500 and cached["test"].shape[0] == 300

    # Everything finished: a rerun redoes nothing and reports the same numbers.
    stamps = {path: path.stat().st_mtime_ns for path in seed_dir.rglob("*") if path.is_file()}
    assert _reproduce(subset, out, cache).returncode == 0
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps
    again = json.loads((out / "results.json").read_text())
    assert again["strategies"] == results["strategies"]
    # The study's wall time sums its invocations (each keeps its record in OUT/invocations/); no GPU here.
    first, second = results["environment"], again["environment"]
    assert first["study_wall_seconds"] == pytest.approx(first["wall_seconds_this_invocation"], abs=0.11)
    assert second["study_wall_seconds"] == pytest.approx(
        first["study_wall_seconds"] + second["wall_seconds_this_invocation"], abs=0.21
    )
    assert len(list((out / "invocations").glob("*.json"))) == 2
    assert "gpu" not in first and "gpu" not in second

    # Another --device trains nothing differently: the finished runs are reused, not refused.
    on_cpu = _reproduce(subset, out, cache, device="cpu")
    assert on_cpu.returncode == 0, on_cpu.stderr[-3000:]
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps
    assert json.loads((out / "results.json").read_text())["strategies"] == results["strategies"]

    # Other settings into the same directory: refused, naming the run and the setting, nothing written.
    everything = {path: path.read_bytes() for path in out.rglob("*") if path.is_file() and path.name != ".lock"}
    refused = _reproduce(subset, out, cache, epochs=2)
    assert refused.returncode == 2
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("longtail: error:")]
    assert str(seed_dir / "baseline") in line and "epochs: recorded 1, requested 2" in line and "--overwrite" in line
    assert {path: path.read_bytes() for path in everything} == everything
    # The stage-2 heads' feature size is the preset's (smoke: auto) unless given; another one is refused the same way.
    assert {head["feature_size"] for head in results["config"]["stage2"].values()} == {"auto"}
    refused = _reproduce(subset, out, cache, feature_size="stage1")
    assert refused.returncode == 2
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("longtail: error:")]
    assert "decoupled-" in line and "feature_size" in line and "stage1" in line, line
    assert {path: path.read_bytes() for path in everything} == everything
    assert {p for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == set(everything)
