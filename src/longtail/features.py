"""Inference in batches and the cache of a stage-1 run's backbone features.

Every pass of the frozen network over a uint8 image array goes through ``batched_inference``:
stage-1 validation and test logits (``longtail.train``), and the pooled 1280-d features that
stage 2 trains its heads on (``longtail.decouple``).

A finished stage-1 run keeps its features in ``features.pt``: the test set's and the
validation set's, written by stage 1 (its evaluation and its last epoch's validation compute
them anyway on their way to the logits), and the train set's (plus ``views`` augmented copies),
added by the first stage-2 head. So a stage-2 head never runs the backbone over the test or
validation set again, and once the train features are cached it does not build the network at
all. The cache is tied to the run's ``model.pt`` by its sha256; parts from another model are
recomputed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from longtail import data as data_module
from longtail.models import FEATURE_DIM, head_of, pooled_features
from longtail.runs import atomic_torch_save, torch_load
from longtail.samplers import epoch_generator

if TYPE_CHECKING:  # only for annotations: longtail.train imports this module
    from longtail.train import Dataset, Runtime, TrainConfig

FEATURES_FILE = "features.pt"
INFERENCE_BATCH_SIZE = 256


@dataclass
class Features:
    train: torch.Tensor  # (1 + views, N, 1280): view 0 un-augmented
    val: torch.Tensor
    test: torch.Tensor


@torch.inference_mode()
def batched_inference(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    image_size: int,
    mean,
    std,
    runtime: Runtime,
    generator: torch.Generator | None = None,
    batch_size: int = INFERENCE_BATCH_SIZE,
) -> torch.Tensor:
    """``fn`` of uint8 images (N, H, W, 3) in model-input form, batch by batch, as float32 on the
    CPU; the images are augmented (``random_crop_flip``) when ``generator`` is given."""
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(runtime.device, non_blocking=True)
        if generator is not None:
            batch = data_module.random_crop_flip(batch, generator)
        with runtime.autocast():
            outputs.append(fn(data_module.to_model_input(batch, image_size, mean, std)).float().cpu())
    return torch.cat(outputs)


def extract_features(
    model: nn.Module,
    images: torch.Tensor,
    image_size: int,
    mean,
    std,
    runtime: Runtime,
    generator: torch.Generator | None = None,
    batch_size: int = INFERENCE_BATCH_SIZE,
) -> torch.Tensor:
    """Pooled backbone features (N, 1280) of uint8 images, in eval mode."""
    if len(images) == 0:
        return torch.empty(0, FEATURE_DIM)
    model.eval()
    return batched_inference(
        lambda x: pooled_features(model, x), images, image_size, mean, std, runtime, generator, batch_size
    )


def features_and_logits(
    model: nn.Module,
    images: torch.Tensor,
    image_size: int,
    mean,
    std,
    runtime: Runtime,
    batch_size: int = INFERENCE_BATCH_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features and logits (the classifier applied to them: the model's eval forward) of
    uint8 images, both float32 on the CPU: how longtail evaluates."""
    features = extract_features(model, images, image_size, mean, std, runtime, batch_size=batch_size)
    with torch.inference_mode():
        logits = head_of(model)(features.to(runtime.device)).float().cpu()
    return features, logits


def _read_cache(stage1_dir: Path, model_sha: str | None) -> dict:
    """What ``features.pt`` holds for this model (empty when absent or from another model)."""
    path = Path(stage1_dir) / FEATURES_FILE
    if not path.exists():
        return {}
    cached = torch_load(path, mmap=True)
    return cached if model_sha is not None and cached.get("model_sha256") == model_sha else {}


def store_evaluation_features(
    stage1_dir: Path, model_sha: str | None, test: torch.Tensor, val: torch.Tensor | None = None
) -> None:
    """Put the test-set (and, when given, the validation-set) features into the run's cache,
    keeping the other parts it holds for the same model."""
    cached = _read_cache(stage1_dir, model_sha)
    record = {"train": torch.empty(0, 0, FEATURE_DIM), "val": None, **cached, "test": test, "model_sha256": model_sha}
    if val is not None:
        record["val"] = val
    atomic_torch_save(Path(stage1_dir) / FEATURES_FILE, record)


def load_or_extract_features(
    stage1_dir: Path,
    model_sha: str | None,
    load_model: Callable[[], nn.Module],
    config: TrainConfig,
    dataset: Dataset,
    views: int,
    runtime: Runtime,
) -> Features:
    """The features of a stage-1 run with at least ``views`` augmented train copies: what the
    cache holds, and the missing parts extracted (and added to the cache) by the model that
    ``load_model()`` returns, called only then."""
    cached = _read_cache(stage1_dir, model_sha)
    arrays, split = dataset.arrays, dataset.split
    args = (config.image_size, dataset.mean, dataset.std, runtime)
    val, test = cached.get("val"), cached.get("test")
    if "train" in cached and len(cached["train"]) >= 1 + views and val is not None and test is not None:
        return Features(cached["train"][: 1 + views], val, test)
    model = load_model()
    train_views = list(cached.get("train", ()))  # every cached view, also beyond 1 + views
    train_images = torch.from_numpy(arrays.x_train[split.train])
    for view in range(len(train_views), 1 + views):
        generator = None if view == 0 else epoch_generator(config.seed, view, stream=7, device=runtime.device)
        train_views.append(extract_features(model, train_images, *args, generator=generator))
    if val is None:
        val = extract_features(model, torch.from_numpy(arrays.x_train[split.val]), *args)
    if test is None:
        test = extract_features(model, torch.from_numpy(arrays.x_test), *args)
    everything = Features(torch.stack(train_views), val, test)
    atomic_torch_save(Path(stage1_dir) / FEATURES_FILE, {**dataclasses.asdict(everything), "model_sha256": model_sha})
    return Features(everything.train[: 1 + views], val, test)
