"""The feature cache of a stage-1 run (``longtail.features``): stage 2 reuses what stage 1
computed, extracts only what is missing (building the network only then), and never mixes
features of another model, other data, another size or the other precision."""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from longtail import features as features_module
from longtail.config import TrainConfig
from longtail.data import load_dataset
from longtail.features import (
    apply_head,
    batched_inference,
    extract_features,
    feature_file,
    features_and_logits,
    load_or_extract_features,
    store_evaluation_features,
)
from longtail.models import FEATURE_DIM, build_model, head_of
from longtail.runs import torch_load
from longtail.runtime import Runtime

RUNTIME = Runtime(torch.device("cpu"))
SIZE = 32  # the pretend run's test image size


@pytest.fixture
def stage1(tiny_npz, cache_dir, weights_file, tmp_path):
    """(run dir, model, config, dataset) of a pretend stage-1 run on the tiny dataset."""
    config = TrainConfig(data=str(tiny_npz), imbalance=5, val_per_class=1, image_size=32)
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
    store_evaluation_features(run_dir, "sha-a", dataset, SIZE, RUNTIME, test)
    found = load_or_extract_features(run_dir, "sha-a", lambda: model, dataset, 0, 0, RUNTIME, SIZE)
    n_train, n_val = len(dataset.split.train), len(dataset.split.val)
    assert extraction_sizes == [n_train, n_val]  # never the test set again
    assert torch.equal(found.test, test)
    assert found.train.shape == (1, n_train, FEATURE_DIM) and found.val.shape == (n_val, FEATURE_DIM)
    # Now complete: a second head extracts nothing and does not even build the network.
    again = load_or_extract_features(run_dir, "sha-a", _never, dataset, 0, 0, RUNTIME, SIZE)
    assert extraction_sizes == [n_train, n_val]
    assert torch.equal(again.train, found.train) and torch.equal(again.val, found.val)


def test_stored_validation_features_leave_only_the_train_set_to_extract(stage1, extraction_sizes):
    run_dir, model, config, dataset = stage1
    val = extract_features(model, torch.from_numpy(dataset.val_images), *_args(config, dataset))
    store_evaluation_features(run_dir, "sha-a", dataset, SIZE, RUNTIME, _test_features(stage1), val)
    extraction_sizes.clear()
    found = load_or_extract_features(run_dir, "sha-a", lambda: model, dataset, 0, 0, RUNTIME, SIZE)
    assert extraction_sizes == [len(dataset.split.train)]
    assert torch.equal(found.val, val)


def test_features_of_another_model_are_recomputed(stage1, extraction_sizes):
    run_dir, model, config, dataset = stage1
    stale = torch.zeros(len(dataset.arrays.x_test), FEATURE_DIM)
    store_evaluation_features(run_dir, "sha-old", dataset, SIZE, RUNTIME, stale, stale[:1])
    found = load_or_extract_features(run_dir, "sha-new", lambda: model, dataset, 0, 0, RUNTIME, SIZE)
    assert extraction_sizes[-1] == len(dataset.arrays.x_test)
    torch.testing.assert_close(found.test, _test_features(stage1), atol=0, rtol=0)
    assert torch_load(run_dir / feature_file(SIZE))["model_sha256"] == "sha-new"


def test_more_views_extract_only_the_new_ones_and_keep_the_old(stage1, extraction_sizes):
    run_dir, model, config, dataset = stage1
    n_train = len(dataset.split.train)
    plain = load_or_extract_features(run_dir, "sha-a", lambda: model, dataset, 0, 0, RUNTIME, SIZE)
    extraction_sizes.clear()
    augmented = load_or_extract_features(run_dir, "sha-a", lambda: model, dataset, 0, 2, RUNTIME, SIZE)
    assert extraction_sizes == [n_train, n_train]  # views 1 and 2 only
    assert augmented.train.shape[0] == 3
    assert torch.equal(augmented.train[0], plain.train[0])
    assert not torch.allclose(augmented.train[1], augmented.train[0])
    extraction_sizes.clear()
    fewer = load_or_extract_features(run_dir, "sha-a", _never, dataset, 0, 1, RUNTIME, SIZE)
    assert extraction_sizes == [] and torch.equal(fewer.train, augmented.train[:2])
    # Storing new test features keeps the cached train views of the same model.
    store_evaluation_features(run_dir, "sha-a", dataset, SIZE, RUNTIME, plain.test)
    assert torch_load(run_dir / feature_file(SIZE))["train"].shape[0] == 3


def test_features_of_another_image_size_are_computed_at_that_size_and_cached_beside(stage1, extraction_sizes):
    run_dir, model, config, dataset = stage1
    store_evaluation_features(run_dir, "sha-a", dataset, SIZE, RUNTIME, _test_features(stage1))
    extraction_sizes.clear()
    found = load_or_extract_features(run_dir, "sha-a", lambda: model, dataset, 0, 0, RUNTIME, 48)
    n_train, n_val, n_test = len(dataset.split.train), len(dataset.split.val), len(dataset.arrays.x_test)
    assert sorted(extraction_sizes) == sorted([n_train, n_val, n_test])  # nothing of the 32-px cache reused
    x_test = torch.from_numpy(dataset.arrays.x_test)
    at_48 = extract_features(model, x_test, 48, dataset.mean, dataset.std, RUNTIME)
    torch.testing.assert_close(found.test, at_48, atol=0, rtol=0)
    assert not torch.allclose(found.test, _test_features(stage1))
    assert torch_load(run_dir / feature_file(48))["image_size"] == 48
    kept = torch_load(run_dir / feature_file(SIZE))  # the first size's cache is left as it was
    assert kept["image_size"] == SIZE and torch.equal(kept["test"], _test_features(stage1))
    extraction_sizes.clear()
    again = load_or_extract_features(run_dir, "sha-a", _never, dataset, 0, 0, RUNTIME, 48)
    assert extraction_sizes == [] and torch.equal(again.test, found.test)


def test_flip_tta_is_the_mean_of_the_two_forward_passes(stage1):
    _, model, config, dataset = stage1
    x_test = torch.from_numpy(dataset.arrays.x_test)
    args = (config.image_size, dataset.mean, dataset.std, RUNTIME)
    plain = batched_inference(model.eval(), x_test, *args)
    mirrored = batched_inference(model.eval(), torch.flip(x_test, dims=(2,)), *args)
    features = extract_features(model, x_test, *args)
    flipped = extract_features(model, x_test, *args, flip=True)
    averaged = apply_head(head_of(model), features, flipped)
    torch.testing.assert_close(averaged, (plain + mirrored) / 2, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(averaged, plain, atol=1e-4)


def test_flip_features_are_cached_once_and_reused(stage1, extraction_sizes):
    run_dir, model, config, dataset = stage1
    found = load_or_extract_features(run_dir, "sha-a", lambda: model, dataset, 0, 0, RUNTIME, SIZE, flip=True)
    assert found.test_flip is not None and found.test_flip.shape == found.test.shape
    extraction_sizes.clear()
    again = load_or_extract_features(run_dir, "sha-a", _never, dataset, 0, 0, RUNTIME, SIZE, flip=True)
    assert extraction_sizes == [] and torch.equal(again.test_flip, found.test_flip)


def test_features_of_other_data_are_recomputed(stage1, extraction_sizes):
    # The data's checksum keys the cache: features never pair with the labels of an edited source.
    run_dir, model, config, dataset = stage1
    first = load_or_extract_features(run_dir, "sha-a", lambda: model, dataset, 0, 0, RUNTIME, SIZE)
    edited = dataclasses.replace(dataset, arrays=dataclasses.replace(dataset.arrays, fingerprint="edited-source"))
    extraction_sizes.clear()
    again = load_or_extract_features(run_dir, "sha-a", lambda: model, edited, 0, 0, RUNTIME, SIZE)
    n_train, n_val, n_test = len(dataset.split.train), len(dataset.split.val), len(dataset.arrays.x_test)
    assert sorted(extraction_sizes) == sorted([n_train, n_val, n_test])  # nothing of the other data's cache reused
    assert torch.equal(again.test, first.test)  # (the images are in fact the same here)
    assert torch_load(run_dir / feature_file(SIZE))["data_sha256"] == "edited-source"


class _Bfloat16Runtime(Runtime):
    """A CPU runtime that computes under bf16 autocast, as a GPU's does (``Runtime.autocast``)."""

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16)


def test_features_of_the_other_precision_are_recomputed_never_mixed(stage1, extraction_sizes):
    # Stage 2, evaluate and predict pick the device themselves: float32 features of a CPU and bfloat16
    # features of a GPU never share a cache file; each precision rebuilds the file of the other.
    run_dir, model, config, dataset = stage1
    gpu_like = _Bfloat16Runtime(torch.device("cpu"))
    assert isinstance(RUNTIME.autocast(), nullcontext)
    cpu = load_or_extract_features(run_dir, "sha-a", lambda: model, dataset, 0, 0, RUNTIME, SIZE)
    n_train, n_val, n_test = len(dataset.split.train), len(dataset.split.val), len(dataset.arrays.x_test)
    for runtime, precision in ((gpu_like, "bfloat16"), (RUNTIME, "float32")):
        extraction_sizes.clear()
        found = load_or_extract_features(run_dir, "sha-a", lambda: model, dataset, 0, 0, runtime, SIZE)
        assert sorted(extraction_sizes) == sorted([n_train, n_val, n_test]), precision
        assert torch_load(run_dir / feature_file(SIZE))["precision"] == precision
        assert features_module.feature_precision(runtime) == precision
        if precision == "bfloat16":
            assert not torch.equal(found.test, cpu.test)  # the backbone rounded to bf16 gives other features
        else:
            torch.testing.assert_close(found.test, cpu.test, atol=0, rtol=0)
    # Test features stored by an evaluation in one precision are not read in the other.
    store_evaluation_features(run_dir, "sha-a", dataset, SIZE, gpu_like, cpu.test)
    assert features_module.validation_features(run_dir, "sha-a", model, dataset, SIZE, gpu_like).shape[0] == n_val
    extraction_sizes.clear()
    load_or_extract_features(run_dir, "sha-a", lambda: model, dataset, 0, 0, RUNTIME, SIZE)
    assert sorted(extraction_sizes) == sorted([n_train, n_val, n_test])


@pytest.mark.parametrize("damage", ["empty", "truncated", "random-bytes", "other-kind", "edited-values"])
def test_a_damaged_cache_is_rebuilt_never_trusted(stage1, extraction_sizes, damage):
    run_dir, model, config, dataset = stage1
    good = load_or_extract_features(run_dir, "sha-a", lambda: model, dataset, 0, 0, RUNTIME, SIZE)
    path = run_dir / feature_file(SIZE)
    payload = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(payload[: len(payload) // 2])
    elif damage == "random-bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "other-kind":
        torch.save(model.state_dict(), path)
    else:  # a valid file whose numbers changed: only the checksum can tell
        record = torch_load(path)
        record["test"] = record["test"] + 1.0
        torch.save(record, path)
    extraction_sizes.clear()
    rebuilt = load_or_extract_features(run_dir, "sha-a", lambda: model, dataset, 0, 0, RUNTIME, SIZE)
    assert len(extraction_sizes) == 3  # train, validation and test extracted again
    torch.testing.assert_close(rebuilt.test, good.test, atol=0, rtol=0)
    assert torch_load(run_dir / feature_file(SIZE))["checksum"]


def test_logits_and_pooled_features_stay_float32_under_bf16_autocast(stage1):
    # The GPU path runs the backbone under bf16 autocast; the pooling and the classifier must not
    # be rounded to bf16 (shown here with the CPU's autocast, which behaves the same way).
    _, model, config, dataset = stage1
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.eval()(x)
        features = model.features(x)
    assert logits.dtype == torch.float32
    pooled = torch.flatten(model.avgpool(features.float()), 1)
    with torch.no_grad():
        expected = head_of(model)(pooled)
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=1e-6)
