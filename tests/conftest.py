"""Shared fixtures: paths of the real shared files, an isolated cache, a tiny synthetic dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from shared_files import CIFAR10_NPZ, WEIGHTS


@pytest.fixture(autouse=True, scope="session")
def _never_touch_home_cache(tmp_path_factory):
    """Whatever a test forgets, nothing it does lands in ~/.cache/longtail."""
    old = os.environ.get("LONGTAIL_CACHE")
    os.environ["LONGTAIL_CACHE"] = str(tmp_path_factory.mktemp("longtail-cache"))
    yield
    if old is None:
        os.environ.pop("LONGTAIL_CACHE", None)
    else:
        os.environ["LONGTAIL_CACHE"] = old


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread: on the 2 shared cores, two threads spin-wait on each other and a
    forward pass measured 50x slower (5 s instead of 0.07 s for a 32-px batch of 2) under load."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """A fresh, empty cache directory, also set as LONGTAIL_CACHE."""
    path = tmp_path / "cache"
    path.mkdir()
    monkeypatch.setenv("LONGTAIL_CACHE", str(path))
    return path


def shared_file(path: Path, what: str) -> Path:
    """``path``, a file of ``../shared`` the real-data tests need. Missing, the test is skipped, but
    under ``CI=true`` (``.ci/run`` sets it) it fails: a CI run never passes without the real data."""
    if path.is_file():
        return path
    missing = f"{what} not found at {path}"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{missing}, and CI=true: CI runs every real-data test; put ../shared beside the checkout")
    pytest.skip(missing)


@pytest.fixture(scope="session")
def cifar10_npz() -> Path:
    return shared_file(CIFAR10_NPZ, "real CIFAR-10")


@pytest.fixture(scope="session")
def weights_file() -> Path:
    return shared_file(WEIGHTS, "shared weights")


@pytest.fixture(scope="session")
def cifar10_subset(tmp_path_factory, cifar10_npz):
    """``cifar10_subset(train_per_class, test_per_class)``: the path of an .npz holding the first
    that many train and test images of every class of the real CIFAR-10 (class by class), made
    once per session for each pair."""
    made: dict[tuple[int, int], Path] = {}

    def make(train_per_class: int, test_per_class: int) -> Path:
        key = (train_per_class, test_per_class)
        if key not in made:
            with np.load(cifar10_npz, allow_pickle=False) as source:
                arrays = {}
                for split, per_class in (("train", train_per_class), ("test", test_per_class)):
                    labels = source[f"y_{split}"]
                    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
                    arrays[f"x_{split}"], arrays[f"y_{split}"] = source[f"x_{split}"][keep], labels[keep]
            made[key] = tmp_path_factory.mktemp("cifar10-subset") / f"cifar10-{train_per_class}-{test_per_class}.npz"
            np.savez(made[key], **arrays)
        return made[key]

    return make


def tiny_dataset(num_classes: int = 10, train_per_class: int = 6, test_per_class: int = 2, seed: int = 0) -> dict:
    """Random 32x32 uint8 images grouped by class (class 0 first), as the arrays of an .npz."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        arrays[f"x_{split}"] = rng.integers(0, 256, (num_classes * per_class, 32, 32, 3), dtype=np.uint8)
        arrays[f"y_{split}"] = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    return arrays


@pytest.fixture(scope="session")
def tiny_arrays() -> dict:
    """The arrays of ``tiny_npz`` (read-only): 10 classes, 6 train and 2 test images each."""
    arrays = tiny_dataset()
    for array in arrays.values():
        array.flags.writeable = False
    return arrays


@pytest.fixture
def tiny_npz(tmp_path, tiny_arrays) -> Path:
    """A tiny CIFAR-style .npz (no class names stored) holding ``tiny_arrays``."""
    path = tmp_path / "tiny.npz"
    np.savez(path, **tiny_arrays)
    return path


@pytest.fixture(scope="session")
def real_stage1(tmp_path_factory, cifar10_subset, weights_file):
    """``real_stage1(train_per_class, test_per_class, **settings)``: ``(run directory, cache)`` of a
    real stage-1 run (pretrained B0 on the first images of each real CIFAR-10 class, 32 px, two
    epochs, batch 32; ``settings`` are further ``TrainConfig`` fields), trained once per session
    for each combination."""
    from longtail.config import TrainConfig
    from longtail.train import train

    made: dict[tuple, tuple[Path, Path]] = {}

    def make(train_per_class: int, test_per_class: int, **settings) -> tuple[Path, Path]:
        key = (train_per_class, test_per_class, *sorted(settings.items()))
        if key not in made:
            root = tmp_path_factory.mktemp("stage1")
            config = TrainConfig(
                data=str(cifar10_subset(train_per_class, test_per_class)),
                weights=str(weights_file),
                image_size=32,
                epochs=2,
                batch_size=32,
                **settings,
            )
            train(config, root / "run", cache_dir=root / "cache", figures=False)
            made[key] = (root / "run", root / "cache")
        return made[key]

    return make
