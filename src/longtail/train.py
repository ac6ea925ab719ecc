"""Stage 1: end-to-end training of EfficientNet-B0 on a long-tailed set.

Plain functions in the spirit of torchvision's reference scripts: ``train`` runs epochs of
``train_one_epoch``, writes one checkpoint dict per epoch (``longtail.checkpoint``) and, when
finished, evaluates the run (``longtail.evaluation``). Distributed training (``torchrun``,
``longtail.runtime``) splits each global batch evenly across processes, each with its own random
stream; only rank 0 writes, and an error on any rank stops every rank.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from longtail import cudnn
from longtail.checkpoint import TrainingState, checkpoint_dict, read_checkpoint, restore_checkpoint, rng_state
from longtail.config import TrainConfig
from longtail.data import (
    Dataset,
    batches,
    load_dataset,
    load_source,
    random_crop_boxes,
    random_crop_flip,
    resized_crops,
    sha256_file,
    to_model_input,
)
from longtail.evaluation import evaluate_run
from longtail.features import features_and_logits, staged_on_device
from longtail.metrics import top1_accuracy
from longtail.mixing import MIXINGS, Mixed, mixing_generator
from longtail.models import (
    build_model,
    freeze_blocks,
    reestimate_bn_statistics,
    resolve_bn_mode,
    set_train_mode,
)
from longtail.optimization import training_state
from longtail.priors import DEFAULT_TEST_PRIORS, Prior, check_classes
from longtail.runs import (
    CHECKPOINT_FILE,
    RUN_FILE,
    RunLock,
    atomic_torch_save,
    atomic_write_json,
    check_run_dir,
    prepare_run_dir,
    read_json,
)
from longtail.runtime import Runtime, check_distributed, seed_everything
from longtail.samplers import epoch_generator, epoch_order
from longtail.strategies import epoch_loss, strategy_of, uses_cosine_head
from longtail.tally import EpochStats, Tally, check_finite

__all__ = ["TrainConfig", "train"]  # TrainConfig lives in longtail.config
# ---------------------------------------------------------------- stage 1


def steps_per_epoch(total: int, config: TrainConfig, bn_mode: str, world_size: int) -> int:
    """Optimizer steps in one epoch of ``total`` images (every rank takes the same number: each step
    all-reduces gradients). A last global batch too small to give every rank an image is left out
    (at most world_size - 1 images), and so is a last batch of one image per rank when BatchNorm
    trains (it cannot normalise a single image)."""
    per_rank_batch = config.batch_size // world_size
    global_batch = per_rank_batch * world_size
    steps = -(-(total // world_size) // per_rank_batch)
    if bn_mode != "frozen" and steps > 1 and (total - (steps - 1) * global_batch) // world_size == 1:
        steps -= 1
    return steps


def _epoch_order(
    state: TrainingState, config: TrainConfig, dataset: Dataset, bn_mode: str, runtime: Runtime, max_steps: int | None
) -> tuple[torch.Tensor, int]:
    """``(positions, steps)``: this process's share of the epoch's sampled order, cut to the epoch's
    optimizer steps (its first ``max_steps`` if given)."""
    order = epoch_order(
        strategy_of(config).sampler, dataset.train_labels, config.seed, state.epoch, runtime.rank, runtime.world_size
    )
    steps = steps_per_epoch(len(dataset.train_labels), config, bn_mode, runtime.world_size)
    if max_steps is not None:
        steps = min(steps, max_steps)
    return order[: steps * (config.batch_size // runtime.world_size)], steps


def _step(
    state: TrainingState,
    train_model: nn.Module,
    loss_fn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    mixed: Mixed | None,
    share: float,
    runtime: Runtime,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch (mixed with ``mixed``'s partners, if any): ``(loss, logits)``.
    ``share``: the batch's share of the global batch, which weights its mean loss (DDP averages
    the ranks' gradients, so that gives the global batch's mean gradient even when a last batch
    splits unevenly)."""
    with runtime.autocast():
        logits = train_model(mixed.inputs if mixed else inputs)
    loss = mixed.loss(loss_fn, logits.float(), targets) if mixed else loss_fn(logits.float(), targets)
    state.optimizer.zero_grad(set_to_none=True)
    (loss * share).backward()
    state.optimizer.step()
    if state.scheduler is not None:
        state.scheduler.step()
    if state.ema is not None:
        state.ema.update_parameters(state.model)
    state.step += 1
    return loss, logits


def train_one_epoch(
    state: TrainingState,
    train_model: nn.Module,
    config: TrainConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    dataset: Dataset,
    bn_mode: str,
    runtime: Runtime,
    max_steps: int | None = None,
) -> EpochStats:
    """One pass over this process's share of the epoch's sampled order (its first ``max_steps``
    steps if given), at the epoch's image size (``config.epoch_size``). The host never waits for the
    device within the epoch (the epoch's order goes to the device once; losses, accuracy and the
    finiteness check add up there) but at the progress bar's refresh interval."""
    loss_fn = epoch_loss(config, dataset.split.train_counts, state.epoch)
    order, steps = _epoch_order(state, config, dataset, bn_mode, runtime, max_steps)
    order = order.to(labels.device)  # images and labels live on the run's device
    augment_generator = epoch_generator(config.seed, state.epoch, stream=1 + runtime.rank, device=images.device)
    mixing, mixing_draws = config.mixing, mixing_generator(config.seed, state.epoch, runtime.rank)
    per_rank_batch = config.batch_size // runtime.world_size
    global_batch, total = per_rank_batch * runtime.world_size, len(dataset.train_labels)
    image_size = config.epoch_size(state.epoch)
    set_train_mode(train_model, bn_mode, config.freeze_blocks)
    started = shown = time.perf_counter()
    tally = Tally.on(labels.device)
    progress = tqdm(
        batches(order, per_rank_batch),
        total=steps,
        desc=f"epoch {state.epoch + 1}/{config.epochs} ({image_size} px)",
        disable=not runtime.is_main,
        mininterval=1.0 if os.isatty(2) else 30.0,
        leave=False,
    )
    for step, positions in enumerate(progress):
        batch = images[positions]
        targets = labels[positions]
        if config.random_resized_crop:
            boxes = random_crop_boxes(len(batch), config.random_resized_crop, augment_generator)
            inputs = resized_crops(batch, boxes, image_size, dataset.mean, dataset.std)
        else:
            if config.augment:
                batch = random_crop_flip(batch, augment_generator)
            inputs = to_model_input(batch, image_size, dataset.mean, dataset.std)
        mixed = MIXINGS[mixing[0]](inputs, mixing[1], mixing_draws) if mixing else None
        share = len(targets) * runtime.world_size / min(global_batch, total - step * global_batch)
        with cudnn.training_step(full=len(targets) == per_rank_batch):
            loss, logits = _step(state, train_model, loss_fn, inputs, targets, mixed, share, runtime)
        tally.add(step, loss, logits, targets)
        if not progress.disable and time.perf_counter() - shown >= progress.mininterval:
            shown = time.perf_counter()
            progress.set_postfix(tally.postfix(shown - started, runtime.world_size), refresh=False)
    progress.close()
    check_finite(tally, state.epoch, runtime)
    seconds = time.perf_counter() - started
    total_seen, total_correct, total_loss = runtime.all_sum(tally.seen, tally.correct.item(), tally.loss_sum.item())
    return EpochStats(total_loss / total_seen, total_correct / total_seen, total_seen / seconds, seconds, image_size)


def _sessions(out: Path, resuming: bool, state: TrainingState, config: TrainConfig, runtime: Runtime) -> list[dict]:
    """Every session of a run, this one last: where it ran (device, ``--compile``, processes) and the
    first epoch it trained. A resume may change the device and --compile (``config.SESSION_FIELDS``), so a
    resumed run keeps the earlier sessions its run.json recorded."""
    earlier = read_json(out / RUN_FILE).get("sessions", []) if resuming and (out / RUN_FILE).exists() else []
    this = {
        "device": str(runtime.device),
        "compile": config.compile,
        "world_size": runtime.world_size,
        "first_epoch": state.epoch + 1,
    }
    return [*earlier, this]


def _run_record(
    config: TrainConfig, info, bn_mode: str, dataset: Dataset, runtime: Runtime, sessions: list[dict]
) -> dict:
    """run.json of a run: its settings (this session's device and --compile; ``sessions``: every
    session's) and where its data and weights came from, with what ``longtail predict`` needs to read
    new images without the data (class names, store size)."""
    return {
        "kind": "train",
        "status": "running",
        "config": dataclasses.asdict(config),
        "epoch_sizes": config.epoch_sizes,
        "weights": dataclasses.asdict(info),
        "bn_mode": bn_mode,
        "data_source": dataset.arrays.source,
        "data_sha256": dataset.arrays.fingerprint,
        "data_store_size": list(dataset.arrays.image_shape),  # (height, width) of the stored images
        "class_names": list(dataset.arrays.class_names),
        "skipped_images": {"count": len(dataset.arrays.skipped), "paths": list(dataset.arrays.skipped)},
        "index_file": str(dataset.split.index_file),
        "train_counts": dataset.split.train_counts,
        "world_size": runtime.world_size,
        "device": str(runtime.device),
        "sessions": sessions,
    }


def _load(config: TrainConfig, cache_dir: Path | None, runtime: Runtime, test_priors: Sequence[Prior]) -> tuple:
    """``(model, weights info, dataset, BN mode)`` of a run about to train, its settings checked
    against the process group and its test priors against the data's classes."""
    arrays = load_source(config, cache_dir)
    check_classes(test_priors, arrays.num_classes, "--test-priors")
    model, info = build_model(arrays.num_classes, config.weights, cosine_head=uses_cosine_head(config))
    dataset = load_dataset(config, info.pretrained, cache_dir, arrays)
    bn_mode = resolve_bn_mode(config.bn, info)
    check_distributed(config, bn_mode, runtime)
    return model, info, dataset, bn_mode


def _reestimate_bn(model: nn.Module, images: torch.Tensor, config: TrainConfig, dataset: Dataset) -> None:
    """``--bn reestimate``: BatchNorm statistics of 1,024 training images, before the first step."""
    sample = images[torch.randperm(len(images), generator=epoch_generator(config.seed, 0, 99))[:1024]]
    reestimate_bn_statistics(
        model,
        (to_model_input(b, config.epoch_size(0), dataset.mean, dataset.std) for b in torch.split(sample, 128)),
    )


def _wrapped(model: nn.Module, config: TrainConfig, runtime: Runtime) -> nn.Module:
    """The module the steps run: DDP across processes, compiled with ``--compile`` (one static graph
    per batch shape: the full batch and an epoch's last, never a graph of dynamic shapes)."""
    if runtime.world_size > 1:
        model = nn.parallel.DistributedDataParallel(model)
    return torch.compile(model, dynamic=False) if config.compile else model


def _evaluated_model(state: TrainingState) -> nn.Module:
    """The weights a run is evaluated with: the EMA's under ``--ema-decay`` or ``--decay-reading ema``."""
    return state.ema.module if state.ema is not None else state.model


def _validate(
    state: TrainingState, dataset: Dataset, val_images: torch.Tensor, image_size: int, runtime: Runtime
) -> tuple[float, tuple]:
    """``(validation accuracy, (image size, validation features))`` of the current weights on
    ``val_images`` (already on the device); the features are reused by the evaluation when these are
    the final weights."""
    features, logits = features_and_logits(
        _evaluated_model(state), val_images, image_size, dataset.mean, dataset.std, runtime
    )
    return top1_accuracy(logits, dataset.val_labels), (image_size, features)


def _log_epoch(writer, record: dict) -> None:
    """The epoch's record into TensorBoard, flushed."""
    for key, value in record.items():
        if key != "epoch":
            writer.add_scalar(key, value, record["epoch"])
    writer.flush()


def _print_epoch(record: dict, stats: EpochStats, config: TrainConfig) -> None:
    tqdm.write(
        f"epoch {record['epoch']}/{config.epochs} ({stats.image_size} px): loss {stats.loss:.4f}, "
        f"train acc {stats.accuracy:.4f}"
        + (f", val acc {record['val_accuracy']:.4f}" if "val_accuracy" in record else "")
        + f", {stats.images_per_second:.0f} img/s, {stats.seconds:.0f} s"
    )


def _finish(out: Path, state: TrainingState, seconds: float) -> None:
    """``model.pt`` of the final weights, and run.json marked finished with its sha256 and history."""
    atomic_torch_save(out / "model.pt", _evaluated_model(state).state_dict())
    run = read_json(out / RUN_FILE)
    run.update(
        status="finished",
        wall_seconds_this_session=seconds,
        history=state.history,
        model_sha256=sha256_file(out / "model.pt"),
    )
    atomic_write_json(out / RUN_FILE, run)


def _prepare(
    model: nn.Module,
    config: TrainConfig,
    dataset: Dataset,
    bn_mode: str,
    runtime: Runtime,
    checkpoint: dict | None,
    out: Path,
) -> tuple[TrainingState, nn.Module, torch.Tensor, torch.Tensor]:
    """``(state, the module the steps run, training images, labels)`` on the run's device: the model
    with its BatchNorm mode and frozen blocks, a fresh training state or the checkpoint's."""
    images = dataset.images("train").to(runtime.device)  # read batch by batch from a memory-mapped store
    labels = torch.from_numpy(dataset.train_labels).to(runtime.device)
    model = model.to(runtime.device, memory_format=torch.channels_last)
    if checkpoint is None and bn_mode == "reestimate":
        _reestimate_bn(model, images, config, dataset)
    if runtime.world_size > 1 and bn_mode != "frozen":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # on a GPU (check_distributed)
    freeze_blocks(model, config.freeze_blocks)
    state = training_state(model, config, steps_per_epoch(len(labels), config, bn_mode, runtime.world_size))
    if checkpoint is not None:
        runtime.on_all(lambda: restore_checkpoint(state, checkpoint, config, dataset.arrays, runtime, out))
    return state, _wrapped(model, config, runtime), images, labels


def _train_epochs(
    state: TrainingState,
    train_model: nn.Module,
    config: TrainConfig,
    data: tuple,
    bn_mode: str,
    runtime: Runtime,
    out: Path,
    writer,
) -> tuple | None:
    """The epochs left, each validated, logged and checkpointed; ``data``: (images, labels, dataset).
    Returns the last epoch's (size, validation features), which the evaluation reuses."""
    images, labels, dataset = data
    # On the main rank, which alone validates; once, not once per epoch.
    val_images = staged_on_device(dataset.images("val"), runtime) if runtime.is_main else None
    val_features = None
    while state.epoch < config.epochs:
        stats = train_one_epoch(state, train_model, config, images, labels, dataset, bn_mode, runtime)
        state.epoch += 1
        record = {"epoch": state.epoch, **dataclasses.asdict(stats), "lr": state.optimizer.param_groups[0]["lr"]}
        if len(dataset.val_labels) and runtime.is_main:  # the other ranks wait at the barrier below
            record["val_accuracy"], val_features = _validate(state, dataset, val_images, stats.image_size, runtime)
        state.history.append(record)
        rng_states = runtime.gather(rng_state())
        if runtime.is_main:
            _log_epoch(writer, record)
            checkpoint = checkpoint_dict(state, config, rng_states, dataset.arrays.fingerprint)
            atomic_torch_save(out / CHECKPOINT_FILE, checkpoint)
            _print_epoch(record, stats, config)
        runtime.barrier()
    return val_features


def train(
    config: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    cache_dir: Path | None = None,
    evaluate: bool = True,
    figures: bool = True,
    test_priors: Sequence[Prior] = DEFAULT_TEST_PRIORS,
) -> Path:
    """Train stage 1 into ``out`` (resuming from its checkpoint when asked) and evaluate it
    (``evaluate``; ``figures``: also draw the run's figures; ``test_priors``: the priors its
    metrics are also given under, ``longtail.priors``)."""
    config.validate()
    out = Path(out)
    runtime = Runtime.create(config.device)
    # Everything that can fail on bad input happens before the run directory is touched; rank 0
    # alone reads the run directory, and an error on any rank stops them all.
    runtime.on_main(lambda: check_run_dir(out, resume=resume, overwrite=overwrite))
    seed_everything(config.seed, config.deterministic, runtime.rank)
    model, info, dataset, bn_mode = runtime.on_all(lambda: _load(config, cache_dir, runtime, test_priors))
    with RunLock(out) if runtime.is_main else nullcontext():
        resuming = runtime.on_main(lambda: prepare_run_dir(out, resume=resume, overwrite=overwrite))
        checkpoint = runtime.on_all(lambda: read_checkpoint(out / CHECKPOINT_FILE) if resuming else None)
        state, train_model, images, labels = _prepare(model, config, dataset, bn_mode, runtime, checkpoint, out)
        writer = None
        if runtime.is_main:
            sessions = _sessions(out, resuming, state, config, runtime)
            atomic_write_json(out / RUN_FILE, _run_record(config, info, bn_mode, dataset, runtime, sessions))
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tensorboard"))
        started = time.perf_counter()
        val_features = _train_epochs(
            state, train_model, config, (images, labels, dataset), bn_mode, runtime, out, writer
        )
        if runtime.is_main:
            writer.close()
            _finish(out, state, time.perf_counter() - started)
            if evaluate:
                metrics = evaluate_run(
                    out, cache_dir=cache_dir, runtime=runtime, val_features=val_features, test_priors=test_priors
                )
                if figures:
                    from longtail.report import write_run_figures  # matplotlib only when figures are drawn

                    write_run_figures(metrics, out)
        runtime.barrier()
    return out
