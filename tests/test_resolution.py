"""The test input size chosen on the validation split (``longtail.resolution``, ``--test-size auto``):
the grid, the tie rule, the choice made from validation accuracy alone (test images and labels
cannot move it), and the feature cache at the chosen size."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from longtail import runs
from longtail.artifacts import load_trained_model
from longtail.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, PRESETS, Stage2Config
from longtail.data import dataset as dataset_module
from longtail.evaluation import evaluate_run
from longtail.features import FEATURE_FILES, feature_file, features_and_logits
from longtail.resolution import choose_size, resolve_test_size, size_grid
from longtail.runtime import Runtime


def test_grid_runs_from_the_training_size_in_16px_steps_up_to_one_and_a_half_times_it_at_most_four_sizes():
    assert size_grid(32) == [32, 48]
    assert size_grid(48) == [48, 64]
    assert size_grid(64) == [64, 80, 96]
    assert size_grid(128) == [128, 144, 160, 176]
    assert size_grid(224) == [224, 240, 256, 272]


def test_grid_stays_near_the_training_size():
    """At most four sizes, none above 1.5x the training size, for every preset's training size and
    every size from 32 to 1024 px (issue 28: every recorded grid peaked at or below 1.5x)."""
    for train_size in sorted({preset.image_size for preset in PRESETS.values()} | set(range(MIN_IMAGE_SIZE, 1025))):
        grid = size_grid(train_size)
        assert grid[0] == train_size and grid == sorted(set(grid)), train_size
        assert 1 <= len(grid) <= 4, train_size
        assert max(grid) <= 1.5 * train_size and max(grid) <= MAX_IMAGE_SIZE, train_size
        assert all(b - a == 16 for a, b in zip(grid[:-1], grid[1:], strict=True)), train_size


def test_best_validation_accuracy_wins_and_a_tie_goes_to_the_smaller_size():
    assert choose_size({64: 0.70, 80: 0.75, 96: 0.74}.__getitem__, [64, 80, 96]) == (80, {64: 0.70, 80: 0.75, 96: 0.74})
    assert choose_size({64: 0.70, 80: 0.75, 96: 0.75}.__getitem__, [96, 80, 64])[0] == 80


def test_test_size_modes():
    assert resolve_test_size("auto", 64) == ([64, 80, 96], True)
    assert resolve_test_size("train", 64) == ([64], False)
    assert resolve_test_size(96, 64) == ([96], False)


@pytest.fixture(scope="module")
def finished_run(real_stage1):
    """A real stage-1 run (pretrained B0, real CIFAR-10 images, two short epochs at 32 px), its test
    size chosen on validation."""
    return real_stage1(100, 10, imbalance=2, max_per_class=80, val_per_class=20, test_size="auto")


def test_the_choice_is_the_best_validation_accuracy_of_the_grid(finished_run):
    run_dir, cache = finished_run
    record = runs.read_json(run_dir / runs.RUN_FILE)
    runtime = Runtime(torch.device("cpu"))
    model, config, dataset, _ = load_trained_model(run_dir, runtime, cache)
    val_images = torch.from_numpy(dataset.val_images)
    val_labels = dataset.val_labels
    expected = {}
    for size in size_grid(config.image_size):
        _, logits = features_and_logits(
            model, val_images, size, dataset.mean, dataset.std, Runtime(torch.device("cpu"))
        )
        expected[str(size)] = float((logits.argmax(1).numpy() == val_labels).mean())
    assert record["test_size_grid"] == expected
    best = max(expected.values())
    assert record["test_image_size"] == min(int(size) for size, acc in expected.items() if acc == best)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test_image_size"] == record["test_image_size"]
    cached = runs.torch_load(run_dir / feature_file(record["test_image_size"]))
    assert cached["image_size"] == record["test_image_size"] and cached["val"].shape[0] == len(val_labels)


def _scrambled_copy(run_dir: Path, tmp_path: Path, monkeypatch, seed: int) -> Path:
    """A copy of ``run_dir`` without its feature cache, whose data from now on loads with the same
    training and validation images but random test images and permuted test labels."""
    real_load = dataset_module.load_arrays

    def scrambled(*args, **kwargs):
        arrays = real_load(*args, **kwargs)
        rng = np.random.default_rng(seed)
        return dataclasses.replace(
            arrays,
            x_test=rng.integers(0, 256, arrays.x_test.shape, dtype=np.uint8),
            y_test=rng.permutation(arrays.y_test),
        )

    monkeypatch.setattr(dataset_module, "load_arrays", scrambled)
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for cached in copy.glob(FEATURE_FILES):
        cached.unlink()
    return copy


def test_test_images_and_labels_cannot_move_the_choice(finished_run, monkeypatch, tmp_path):
    run_dir, cache = finished_run
    record = runs.read_json(run_dir / runs.RUN_FILE)
    choice = {k: record[k] for k in ("test_image_size", "test_size_grid")}
    accuracy = json.loads((run_dir / "metrics.json").read_text())["accuracy"]

    copy = _scrambled_copy(run_dir, tmp_path, monkeypatch, seed=1)
    again = runs.read_json(copy / runs.RUN_FILE)
    del again["test_image_size"], again["test_size_grid"]  # choose again, from scratch
    runs.atomic_write_json(copy / runs.RUN_FILE, again)
    metrics = evaluate_run(copy, cache_dir=cache)
    rechosen = runs.read_json(copy / runs.RUN_FILE)
    assert {k: rechosen[k] for k in choice} == choice
    assert metrics["accuracy"] != accuracy  # the test set did change


# ---------------------------------------------------------------- stage 2 at its own size


def test_stage2_feature_size_is_chosen_on_validation_and_test_images_cannot_move_it(
    finished_run, monkeypatch, tmp_path
):
    """``--feature-size auto`` fits each head at the stage-1 test size and 16 px either side and
    keeps the size of its best validation accuracy; scrambling the test set leaves every choice."""
    from longtail.decouple import decouple_many
    from longtail.stage2 import feature_sizes

    run_dir, cache = finished_run
    stage1_size = runs.read_json(run_dir / runs.RUN_FILE)["test_image_size"]
    configs = {"modified-ce": Stage2Config(loss="modified-ce", epochs=3), "ce": Stage2Config(epochs=3)}

    def fit(stage1: Path, where: Path) -> dict:
        metrics = decouple_many(
            stage1, {where / name: c for name, c in configs.items()}, cache_dir=cache, figures=False
        )
        records = {name: runs.read_json(where / name / runs.RUN_FILE) for name in configs}
        for name, record in records.items():
            grid = {int(size): score for size, score in record["chosen"]["feature_size_grid"].items()}
            assert sorted(grid) == feature_sizes(configs[name], stage1_size)
            best = max(grid.values())
            assert (
                record["test_image_size"]
                == record["feature_image_size"]
                == min(grid, key=lambda size: (grid[size] != best, abs(size - stage1_size), size))
            )
            assert metrics[where / name]["test_image_size"] == record["test_image_size"]
        return {name: (r["test_image_size"], r["chosen"]) for name, r in records.items()}, metrics

    chosen, metrics = fit(run_dir, tmp_path / "plain")
    for name in configs:  # each size's features are cached in a file of their own
        assert (run_dir / feature_file(chosen[name][0])).exists()

    copy = _scrambled_copy(run_dir, tmp_path, monkeypatch, seed=2)
    again, scrambled_metrics = fit(copy, tmp_path / "scrambled")
    assert again == chosen
    assert [m["accuracy"] for m in scrambled_metrics.values()] != [m["accuracy"] for m in metrics.values()]
