"""Inference in batches and the cache of a stage-1 run's backbone features.

Every pass of the frozen network over a uint8 image array goes through ``batched_inference``:
stage-1 validation and test logits (``longtail.train``), the pooled 1280-d features that stage 2
trains its heads on (``longtail.stage2``) and predictions on new images (``longtail.predict``).
Pooled features and classifier heads are computed in float32 even where the backbone runs under
bf16 autocast (``models.pooled_features``, ``apply_head``), so CPU and GPU mean the same thing.

Flip test-time augmentation (``--tta flip``) averages the logits of each image and of its mirror:
``apply_head(head, features, flipped)``. It is reported beside the plain numbers, never instead.

A finished stage-1 run keeps its features in one file per input size, ``features-<S>px.pt``
(``feature_file``): at the run's test image size (``test_image_size`` in its run.json, chosen on
validation by ``longtail.resolution``) the test set's and the validation set's, written by stage 1's
evaluation (which computes them anyway on its way to the logits), the mirrored test images' under
``--tta flip``, and the train set's (plus ``views`` augmented copies), added by the first stage-2
head; at the other sizes stage 2 tries, the parts it needed there. So a stage-2 head never runs the backbone
over the test or validation set again, and once the train features are cached it does not build
the network at all. The cache is keyed (``cache_key``) by the sha256 of the run's ``model.pt``, the
checksum of the data the features were computed on, the image size and the precision of the backbone
(float32, or bfloat16 under a GPU's autocast: ``feature_precision``), and records a checksum of its
contents: a file keyed otherwise (another model, other data, another size, features of the other
precision, or a file written before the key held all four) is recomputed whole, so the parts it holds
are always of one key, and a file that cannot be read or fails its checksum is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm import tqdm

from longtail import cudnn
from longtail import data as data_module
from longtail.errors import LongtailError
from longtail.losses import LDAM_SCALE
from longtail.models import FEATURE_DIM, CosineLinear, head_of, pooled_features
from longtail.runs import atomic_torch_save, torch_load
from longtail.samplers import epoch_generator

if TYPE_CHECKING:  # only for annotations
    from longtail.data import Dataset
    from longtail.runtime import Runtime


def feature_file(image_size: int) -> str:
    """The file of a stage-1 run's feature cache at one input size (``features-80px.pt``): the
    stage-1 test size's, written by the evaluation, and those of other sizes stage 2 tries."""
    return f"features-{image_size}px.pt"


FEATURE_FILES = "features-*px.pt"  # every size's cache file of a run (a glob of feature_file's names)


INFERENCE_BATCH_SIZE = 256
# In-memory images up to this size go to the device in one copy for inference (all of CIFAR's train set
# is 150 MB); a larger array goes batch by batch. Every inference pass stages its images through
# ``staged_on_device``; stage-1 training keeps its training images on the device whole (its steps index
# them there), and a memory-mapped store (``data.store``) reads batch by batch whatever the size.
WHOLE_COPY_BYTES = 1 << 30


def staged_on_device(images, runtime: Runtime):
    """``images`` for inference on ``runtime``'s device: an in-memory tensor of at most
    ``WHOLE_COPY_BYTES`` copied there whole, a larger one left where it is for ``batched_inference`` to
    copy batch by batch, a memory-mapped store (``data.store.StoredImages``) told to read onto it."""
    if isinstance(images, torch.Tensor) and images.nbytes > WHOLE_COPY_BYTES:
        return images
    return images.to(runtime.device)


@dataclass
class Features:
    """Pooled features of a stage-1 run's images at one input size."""

    train: torch.Tensor  # (1 + views, N, 1280): view 0 un-augmented
    val: torch.Tensor
    test: torch.Tensor | None  # None where only the train and validation features were asked for
    test_flip: torch.Tensor | None = None  # of the mirrored test images, for --tta flip


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
    flip: bool = False,
    progress: str | None = None,
) -> torch.Tensor:
    """``fn`` of uint8 images (N, H, W, 3) in model-input form, batch by batch, as float32 on the
    CPU; the images are augmented (``random_crop_flip``) when ``generator`` is given and mirrored
    left-right with ``flip``. ``progress``: a label for a progress bar.

    Under ``longtail.cudnn``'s policy: no autotuning, and one batch shape per pass (a last partial
    batch padded, its padded rows' outputs dropped). Images in memory go to the device in one copy
    (up to ``WHOLE_COPY_BYTES``; a larger array batch by batch), and the outputs come back into one
    (pinned) tensor without waiting on the device batch by batch: one synchronisation per pass."""
    images = staged_on_device(images, runtime)
    total, outputs = len(images), None
    starts = range(0, total, batch_size)
    with cudnn.inference():
        for start in tqdm(starts, desc=progress, disable=progress is None, leave=False, mininterval=1.0):
            batch = images[start : start + batch_size].to(runtime.device, non_blocking=True)
            if generator is not None:
                batch = data_module.random_crop_flip(batch, generator)
            if flip:
                batch = batch.flip(2)  # (B, H, W, 3): the width axis
            inputs = data_module.to_model_input(cudnn.padded(batch, batch_size, total), image_size, mean, std)
            with runtime.autocast():
                output = fn(inputs)[: len(batch)].float()
            if outputs is None:
                outputs = torch.empty((total, *output.shape[1:]), pin_memory=output.is_cuda)
            outputs[start : start + len(batch)].copy_(output, non_blocking=True)
    if runtime.device.type == "cuda":
        torch.cuda.synchronize(runtime.device)  # the non-blocking copies have landed
    return outputs if outputs is not None else torch.empty(0)


def extract_features(
    model: nn.Module,
    images: torch.Tensor,
    image_size: int,
    mean,
    std,
    runtime: Runtime,
    generator: torch.Generator | None = None,
    batch_size: int = INFERENCE_BATCH_SIZE,
    flip: bool = False,
    progress: str | None = None,
) -> torch.Tensor:
    """Pooled backbone features (N, 1280) of uint8 images, in eval mode."""
    if len(images) == 0:
        return torch.empty(0, FEATURE_DIM)
    model.eval()
    return batched_inference(
        lambda x: pooled_features(model, x),
        images,
        image_size,
        mean,
        std,
        runtime,
        generator,
        batch_size,
        flip,
        progress,
    )


@torch.inference_mode()
def apply_head(head: nn.Module, features: torch.Tensor, flipped: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of a classifier head on pooled features, in float32 with autocast off; with the
    features of the mirrored images (``flipped``), the mean of the two logits (flip TTA). The head
    runs in the mode it is in: longtail's heads (linear, cosine) have no layer that the mode changes."""
    device = next(head.parameters(), torch.empty(0)).device
    with torch.autocast(device.type, enabled=False):
        logits = head(features.to(device).float()).float().cpu()
        if flipped is not None:
            logits = (logits + head(flipped.to(device).float()).float().cpu()) / 2
    return logits


def softmax_logits(head: nn.Module, features: torch.Tensor, flipped: torch.Tensor | None = None) -> torch.Tensor:
    """The logits a head's softmax reads (``apply_head``): ``LDAM_SCALE`` times the cosine logits of
    LDAM's cosine head (the scale its loss trains them at), a linear head's as they are. A shift of
    the logits toward a class prior (``longtail.priors``) is added to these."""
    scale = LDAM_SCALE if isinstance(head, CosineLinear) else 1.0
    return scale * apply_head(head, features, flipped)


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
    return features, apply_head(head_of(model), features)


# ---------------------------------------------------------------- the cache


CACHE_KEY = ("model_sha256", "data_sha256", "image_size", "precision")  # what a cache file's features are of


def feature_precision(runtime: Runtime) -> str:
    """The precision the backbone computes features in on ``runtime``: that of its autocast
    (``bfloat16`` on a GPU), else ``float32``."""
    return str(getattr(runtime.autocast(), "fast_dtype", torch.float32)).removeprefix("torch.")


def cache_key(model_sha: str | None, dataset: Dataset, image_size: int, runtime: Runtime) -> dict:
    """The key of the cached features (``CACHE_KEY``) that ``runtime`` computes at ``image_size``
    with the model of sha256 ``model_sha`` on ``dataset``'s images."""
    values = (model_sha, dataset.arrays.fingerprint, image_size, feature_precision(runtime))
    return dict(zip(CACHE_KEY, values, strict=True))


def _checksum(record: dict) -> str:
    """sha256 over the cache key and every tensor's bytes, in key order."""
    digest = hashlib.sha256("".join(f"{record.get(name)}\0" for name in CACHE_KEY).encode())
    for key in sorted(k for k, v in record.items() if isinstance(v, torch.Tensor)):
        tensor = record[key].contiguous()
        digest.update(f"{key}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _read_cache(stage1_dir: Path, key: dict) -> dict:
    """What the cache file of the key's image size holds for this key (``cache_key``): empty when
    the file is absent, keyed otherwise, unreadable, or fails its checksum (a cache is rebuilt,
    never trusted)."""
    path = Path(stage1_dir) / feature_file(key["image_size"])
    if key["model_sha256"] is None or not path.exists():
        return {}
    try:
        cached = torch_load(path, mmap=True)
    except LongtailError:
        tqdm.write(f"longtail: {path} cannot be read; rebuilding it")
        return {}
    if not isinstance(cached, dict) or any(cached.get(name) != value for name, value in key.items()):
        return {}
    if cached.get("checksum") != _checksum(cached):
        tqdm.write(f"longtail: {path} fails its checksum; rebuilding it")
        return {}
    return {name: value for name, value in cached.items() if isinstance(value, torch.Tensor)}


def _write_cache(stage1_dir: Path, key: dict, parts: dict) -> None:
    record = {**{k: v for k, v in parts.items() if v is not None}, **key}
    record["checksum"] = _checksum(record)
    atomic_torch_save(Path(stage1_dir) / feature_file(key["image_size"]), record)


def store_evaluation_features(
    stage1_dir: Path,
    model_sha: str | None,
    dataset: Dataset,
    image_size: int,
    runtime: Runtime,
    test: torch.Tensor,
    val: torch.Tensor | None = None,
    *,
    test_flip: torch.Tensor | None = None,
) -> None:
    """Put the test-set (and, when given, the validation-set and mirrored test-set) features that
    ``runtime`` computed at ``image_size`` on ``dataset`` into the run's cache, keeping the other
    parts it holds of the same key (``cache_key``)."""
    key = cache_key(model_sha, dataset, image_size, runtime)
    parts = _read_cache(stage1_dir, key)
    given = {"test": test, "val": val, "test_flip": test_flip}
    _write_cache(stage1_dir, key, {**parts, **{k: v for k, v in given.items() if v is not None}})


def load_or_extract_features(
    stage1_dir: Path,
    model_sha: str | None,
    load_model: Callable[[], nn.Module],
    dataset: Dataset,
    seed: int,
    views: int,
    runtime: Runtime,
    image_size: int,
    flip: bool = False,
    test: bool = True,
) -> Features:
    """The features at ``image_size`` of a stage-1 run, with at least ``views`` augmented train
    copies (and the mirrored test images with ``flip``): what the cache holds, and
    the missing parts extracted (and added to the cache) by the model that ``load_model()``
    returns, called only then. ``seed`` draws the augmented views. ``test=False``: the train
    and validation features alone (no test pass at a size that stage 2 only tries). The cache is
    read and written under ``cache_key`` (this model, data, size and ``runtime``'s precision)."""
    keyed = cache_key(model_sha, dataset, image_size, runtime)
    parts = _read_cache(stage1_dir, keyed)
    needed = ["val"]
    if test:
        needed += ["test", "test_flip"] if flip else ["test"]
    train_views = list(parts.get("train", ()))  # every cached view, also beyond 1 + views
    if set(needed) <= parts.keys() and len(train_views) >= 1 + views:
        return _features(parts, views, flip and test)
    model = load_model()
    args = (image_size, dataset.mean, dataset.std, runtime)
    train_images = dataset.images("train")
    for view in range(len(train_views), 1 + views):
        generator = None if view == 0 else epoch_generator(seed, view, stream=7, device=runtime.device)
        label = f"train features at {image_size} px" + (f", view {view}" if view else "")
        train_views.append(extract_features(model, train_images, *args, generator=generator, progress=label))
    parts["train"] = torch.stack(train_views)
    for key in [key for key in needed if key not in parts]:
        name = key.removesuffix("_flip")
        label = f"{name} features at {image_size} px" + (", mirrored" if key.endswith("_flip") else "")
        parts[key] = extract_features(model, dataset.images(name), *args, flip=key.endswith("_flip"), progress=label)
    _write_cache(stage1_dir, keyed, parts)
    return _features(parts, views, flip and test)


def validation_features(
    stage1_dir: Path, model_sha: str | None, model: nn.Module, dataset: Dataset, image_size: int, runtime: Runtime
) -> torch.Tensor:
    """The validation set's features at ``image_size``: the cache's (stage 1 and stage 2 put them
    there, under the same ``cache_key``), else extracted by ``model`` and not stored (the caller
    holds no lock on the run)."""
    cached = _read_cache(stage1_dir, cache_key(model_sha, dataset, image_size, runtime))
    if "val" in cached:
        return cached["val"]
    images = torch.from_numpy(dataset.val_images)
    return extract_features(model, images, image_size, dataset.mean, dataset.std, runtime)


def _features(parts: dict, views: int, flip: bool) -> Features:
    return Features(
        parts["train"][: 1 + views],
        parts["val"],
        parts.get("test"),
        parts["test_flip"] if flip else None,
    )
