"""The feature cache of a stage-1 run (``longtail.features``): stage 2 reuses what stage 1
computed, extracts only what is missing (building the network only then), and never mixes
features of another model."""

from __future__ import annotations

import pytest
import torch

from longtail import features as features_module
from longtail.features import (
    FEATURES_FILE,
    batched_inference,
    extract_features,
    features_and_logits,
    load_or_extract_features,
    store_evaluation_features,
)
from longtail.models import FEATURE_DIM, build_model
from longtail.runs import torch_load
from longtail.train import Runtime, TrainConfig, load_dataset

RUNTIME = Runtime(torch.device("cpu"))


@pytest.fixture
def stage1(tiny_npz, cache_dir, weights_file, tmp_path):
    """(run dir, model, config, dataset) of a pretend stage-1 run on the tiny dataset."""
    config = TrainConfig(data=str(tiny_npz), imbalance=5, val_per_class=1)
    dataset = load_dataset(config, pretrained=True, cache_dir=cache_dir)
    model, _ = build_model(10, str(weights_file))
    run_dir = tmp_path / "stage1"
    run_dir.mkdir()
    return run_dir, model.to(memory_format=torch.channels_last).eval(), config, dataset


@pytest.fixture
def extraction_sizes(monkeypatch) -> list[int]:
    """How many images each backbone pass in ``longtail.features`` sees."""
    sizes: list[int] = []

    def counting(model, images, *args, **kwargs):
        sizes.append(len(images))
        return extract_features(model, images, *args, **kwargs)

    monkeypatch.setattr(features_module, "extract_features", counting)
    return sizes


def _never(*args):
    raise AssertionError("the network was built although every feature needed was cached")


def _args(config, dataset) -> tuple:
    return config.image_size, dataset.mean, dataset.std, RUNTIME


def _test_features(stage1) -> torch.Tensor:
    _, model, config, dataset = stage1
    return extract_features(model, torch.from_numpy(dataset.arrays.x_test), *_args(config, dataset))


def test_classifier_on_features_equals_the_model_forward(stage1):
    # Stage-1 evaluation and validation compute logits this way, so the features they cache cost nothing extra.
    _, model, config, dataset = stage1
    x_test = torch.from_numpy(dataset.arrays.x_test)
    args = (config.image_size, dataset.mean, dataset.std, RUNTIME)
    direct = batched_inference(model.eval(), x_test, *args)
    features, via_features = features_and_logits(model, x_test, *args)
    assert direct.shape == (len(x_test), 10)
    torch.testing.assert_close(via_features, direct, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features, _test_features(stage1), atol=0, rtol=0)


def test_stage2_reuses_the_stored_test_features(stage1, extraction_sizes):
    run_dir, model, config, dataset = stage1
    test = _test_features(stage1)
    store_evaluation_features(run_dir, "sha-a", test)
    found = load_or_extract_features(run_dir, "sha-a", lambda: model, config, dataset, 0, RUNTIME)
    n_train, n_val = len(dataset.split.train), len(dataset.split.val)
    assert extraction_sizes == [n_train, n_val]  # never the test set again
    assert torch.equal(found.test, test)
    assert found.train.shape == (1, n_train, FEATURE_DIM) and found.val.shape == (n_val, FEATURE_DIM)
    # Now complete: a second head extracts nothing and does not even build the network.
    again = load_or_extract_features(run_dir, "sha-a", _never, config, dataset, 0, RUNTIME)
    assert extraction_sizes == [n_train, n_val]
    assert torch.equal(again.train, found.train) and torch.equal(again.val, found.val)


def test_stored_validation_features_leave_only_the_train_set_to_extract(stage1, extraction_sizes):
    run_dir, model, config, dataset = stage1
    val = extract_features(model, torch.from_numpy(dataset.arrays.x_train[dataset.split.val]), *_args(config, dataset))
    store_evaluation_features(run_dir, "sha-a", _test_features(stage1), val)
    extraction_sizes.clear()
    found = load_or_extract_features(run_dir, "sha-a", lambda: model, config, dataset, 0, RUNTIME)
    assert extraction_sizes == [len(dataset.split.train)]
    assert torch.equal(found.val, val)


def test_features_of_another_model_are_recomputed(stage1, extraction_sizes):
    run_dir, model, config, dataset = stage1
    stale = torch.zeros(len(dataset.arrays.x_test), FEATURE_DIM)
    store_evaluation_features(run_dir, "sha-old", stale, stale[:1])
    found = load_or_extract_features(run_dir, "sha-new", lambda: model, config, dataset, 0, RUNTIME)
    assert extraction_sizes[-1] == len(dataset.arrays.x_test)
    torch.testing.assert_close(found.test, _test_features(stage1), atol=0, rtol=0)
    assert torch_load(run_dir / FEATURES_FILE)["model_sha256"] == "sha-new"


def test_more_views_extract_only_the_new_ones_and_keep_the_old(stage1, extraction_sizes):
    run_dir, model, config, dataset = stage1
    n_train = len(dataset.split.train)
    plain = load_or_extract_features(run_dir, "sha-a", lambda: model, config, dataset, 0, RUNTIME)
    extraction_sizes.clear()
    augmented = load_or_extract_features(run_dir, "sha-a", lambda: model, config, dataset, 2, RUNTIME)
    assert extraction_sizes == [n_train, n_train]  # views 1 and 2 only
    assert augmented.train.shape[0] == 3
    assert torch.equal(augmented.train[0], plain.train[0])
    assert not torch.allclose(augmented.train[1], augmented.train[0])
    extraction_sizes.clear()
    fewer = load_or_extract_features(run_dir, "sha-a", _never, config, dataset, 1, RUNTIME)
    assert extraction_sizes == [] and torch.equal(fewer.train, augmented.train[:2])
    # Storing new test features keeps the cached train views of the same model.
    store_evaluation_features(run_dir, "sha-a", plain.test)
    assert torch_load(run_dir / FEATURES_FILE)["train"].shape[0] == 3
