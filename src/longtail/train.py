"""Stage 1: end-to-end training of EfficientNet-B0 on a long-tailed set, checkpoints, resume, evaluation.

Plain functions in the spirit of torchvision's reference scripts: ``train`` runs epochs of
``train_one_epoch`` and writes one checkpoint dict per epoch; ``evaluate_run`` turns a finished
run into ``metrics.json`` (and figures) at the test size chosen on validation
(``longtail.resolution``). Distributed training (``torchrun``) splits each global batch evenly
across processes, each with its own random stream; only rank 0 writes, and an error on any
rank stops every rank.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from longtail import data as data_module
from longtail.choices import STRATEGIES
from longtail.config import TrainConfig, config_differences, describe_differences, from_record
from longtail.data import Arrays, Split
from longtail.errors import LongtailError
from longtail.features import apply_head, extract_features, features_and_logits, store_evaluation_features
from longtail.losses import build_loss, class_balanced_weights, loss_spec
from longtail.metrics import classification_metrics
from longtail.models import (
    build_model,
    head_from_state_dict,
    head_of,
    reestimate_bn_statistics,
    resolve_bn_mode,
    set_train_mode,
)
from longtail.resolution import choose_size, resolve_test_size
from longtail.runs import (
    CHECKPOINT_FILE,
    RUN_FILE,
    RunLock,
    atomic_torch_save,
    atomic_write_json,
    check_run_dir,
    prepare_run_dir,
    read_json,
    torch_load,
)
from longtail.samplers import epoch_generator, epoch_order

__all__ = ["TrainConfig", "train", "evaluate_run"]  # TrainConfig lives in longtail.config
T = TypeVar("T")


def uses_cosine_head(config: TrainConfig) -> bool:
    """Whether the strategy's loss needs a cosine classifier (LDAM's)."""
    return loss_spec(STRATEGIES[config.strategy][0]).cosine_head


def class_balanced_beta(config: TrainConfig) -> float:
    """The Class-Balanced beta of a run's class-balanced losses: its --decay-value under the
    ``cb-beta`` reading of "weight decay 0.9999", the standard 0.9999 under the others."""
    return config.decay_value if config.decay_reading == "cb-beta" else 0.9999


# ---------------------------------------------------------------- runtime context


@dataclass
class Runtime:
    """Device and process group of this process."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def create(cls, device: str = "auto") -> Runtime:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise LongtailError("--device cuda asked for, but no CUDA device is available")
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls(torch.device(device))
        rank = int(os.environ["RANK"])
        if device == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            torch_device = torch.device("cuda", local)
        else:
            torch_device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device == "cuda" else "gloo")
        return cls(torch_device, rank, world_size)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def all_sum(self, *values: float) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, value) -> list:
        """Every rank's ``value`` (picklable), in rank order."""
        if self.world_size == 1:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def on_all(self, action: Callable[[], T]) -> T:
        """``action()`` on every rank; when it raises a ``LongtailError`` on any rank, every rank
        raises one (the first failing rank's message), so no rank is left waiting for the others."""
        error, result = None, None
        try:
            result = action()
        except LongtailError as raised:
            error = raised
        messages = [m for m in self.gather(None if error is None else str(error)) if m is not None]
        if error is not None:
            raise error
        if messages:
            raise LongtailError(messages[0])
        return result

    def on_main(self, action: Callable[[], T]) -> T:
        """``action()`` on rank 0 alone (the one that reads and writes the run directory); every
        rank gets its result, or raises its error."""
        outcome = None
        if self.is_main:
            try:
                outcome = ("ok", action())
            except LongtailError as error:
                outcome = ("error", str(error))
        if self.world_size > 1:
            box = [outcome]
            dist.broadcast_object_list(box, src=0)
            outcome = box[0]
        kind, value = outcome
        if kind == "error":
            raise LongtailError(value)
        return value

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()


def check_distributed(config: TrainConfig, bn_mode: str, runtime: Runtime) -> None:
    """A multi-process run must be the same training as one process: an even split of the global
    batch, and BatchNorm that trains synchronised across processes (SyncBatchNorm, GPUs only)."""
    if runtime.world_size == 1:
        return
    if config.batch_size % runtime.world_size:
        raise LongtailError(
            f"--batch-size {config.batch_size} does not split evenly over {runtime.world_size} processes; "
            f"pass a multiple of {runtime.world_size} (the global batch stays what --batch-size says)"
        )
    if bn_mode != "frozen" and runtime.device.type != "cuda":
        raise LongtailError(
            f"--bn {bn_mode} trains BatchNorm, which must be synchronised across processes (SyncBatchNorm), "
            "and torch does that on GPUs only: use --bn frozen, --device cuda, or one process"
        )


@dataclass
class Dataset:
    """Arrays, the long-tailed split and the input normalisation of one run."""

    arrays: Arrays
    split: Split
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def train_labels(self) -> np.ndarray:
        return self.arrays.y_train[self.split.train]

    @property
    def test_images(self) -> np.ndarray:
        """The test split's images: the source's own, or those held out of its training images."""
        return self.arrays.x_test if self.split.test is None else self.arrays.x_train[self.split.test]

    @property
    def test_labels(self) -> np.ndarray:
        return self.arrays.y_test if self.split.test is None else self.arrays.y_train[self.split.test]


def normalisation(pretrained: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of the model input: ImageNet's for pretrained weights, CIFAR-10's otherwise."""
    if pretrained:
        return data_module.IMAGENET_MEAN, data_module.IMAGENET_STD
    return data_module.CIFAR10_MEAN, data_module.CIFAR10_STD


def load_source(config: TrainConfig, cache_dir: Path | None = None) -> Arrays:
    """The arrays of a run's data source, decoded as its config says (store size, unreadable
    images) and checked to have a test split or to hold one out (``--test-fraction``)."""
    return data_module.load_arrays(
        config.data,
        cache_dir,
        store_size=config.store_size,
        skip_bad_images=config.skip_bad_images,
        test_fraction=config.test_fraction,
    )


def load_dataset(
    config: TrainConfig, pretrained: bool, cache_dir: Path | None = None, arrays: Arrays | None = None
) -> Dataset:
    """The arrays (loaded unless given), the run's split (from its index file) and its input
    normalisation: what every command sees of a run's data (data, train, evaluate, decouple)."""
    arrays = arrays or load_source(config, cache_dir)
    split = data_module.long_tail_split(
        arrays,
        config.imbalance,
        config.profile,
        config.seed,
        config.val_per_class,
        config.max_per_class,
        cache_dir,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
    )
    return Dataset(arrays, split, *normalisation(pretrained))


def process_seed(seed: int, rank: int) -> int:
    """The seed of one process's random streams: ``seed`` itself on rank 0 (so one process draws
    what it always drew), one derived from ``(seed, rank)`` on every other rank, so the ranks'
    dropout and stochastic-depth masks differ as one process's masks differ across its batch."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def seed_everything(seed: int, deterministic: bool, rank: int = 0) -> None:
    seed = process_seed(seed, rank)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def rng_state() -> dict:
    """This process's random states (its own CUDA device's only), as tensors and plain types,
    so a checkpoint loads with ``torch.load(weights_only=True)``."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian]
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict) -> None:
    """Restore ``rng_state()``. A checkpoint written where more GPUs were visible (older format:
    one state per device) restores the current device's state only."""
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, (list, tuple)):  # one state per device, as torch.cuda.get_rng_state_all() gives
            index = torch.cuda.current_device()
            if index >= len(cuda):
                return
            cuda = cuda[index]
        torch.cuda.set_rng_state(cuda)


def restore_process_rng(saved, config: TrainConfig, runtime: Runtime) -> None:
    """Restore this rank's random state from a checkpoint's ``rng`` (one state per rank; a
    single dict in checkpoints written before that). A rank the checkpoint has no state for (it
    was written by fewer processes) is seeded afresh from (seed, rank, epoch)."""
    states = saved if isinstance(saved, list) else [saved]
    if runtime.rank < len(states):
        restore_rng_state(states[runtime.rank])
    else:
        torch.manual_seed(process_seed(config.seed, runtime.rank))


# ---------------------------------------------------------------- evaluation helpers


def save_evaluation(
    run_dir: Path,
    y_true,
    logits: torch.Tensor,
    dataset: Dataset,
    figures: bool = True,
    *,
    grouping: str,
    flip_logits: torch.Tensor | None = None,
    extra: dict | None = None,
) -> dict:
    """Write ``metrics.json`` (and, with ``figures``, the run's figures) from its test logits,
    with the stage-1 run's frequency ``grouping`` (its ``--groups``); ``flip_logits`` (flip TTA)
    add their own metrics under ``tta_flip``, beside the plain ones; ``extra`` adds keys (such as
    the test image size)."""
    names, counts = dataset.arrays.class_names, dataset.split.train_counts
    metrics = classification_metrics(y_true, logits.argmax(1).numpy(), names, counts, grouping)
    metrics.update(extra or {})
    if flip_logits is not None:
        metrics["tta_flip"] = classification_metrics(y_true, flip_logits.argmax(1).numpy(), names, counts, grouping)
    atomic_write_json(Path(run_dir) / "metrics.json", metrics)
    if figures:
        from longtail.report import write_run_figures

        write_run_figures(metrics, run_dir)
    return metrics


# ---------------------------------------------------------------- stage 1


def _make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    if config.decay_reading == "l2":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.decay_value)
    if config.decay_reading == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.decay_value)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=0.0)


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


def lr_factor(config: TrainConfig, steps_in_epoch: int) -> Callable[[int], float]:
    """The learning rate at optimizer step ``step`` as a fraction of --lr. ``constant``: 1 (the
    study). ``cosine`` (a named deviation): linear warm-up over the first epoch's steps, then half
    a cosine from 1 down to 0 at the last step."""
    if config.lr_schedule == "constant":
        return lambda step: 1.0
    warmup, total = steps_in_epoch, steps_in_epoch * config.epochs

    def cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return cosine


def _loss_for_epoch(config: TrainConfig, counts: list[int], epoch: int):
    loss_name, _ = STRATEGIES[config.strategy]
    if config.strategy == "ldam-drw" and epoch >= int(config.drw_start * config.epochs):
        return build_loss(loss_name, counts, weights=class_balanced_weights(counts, class_balanced_beta(config)))
    return build_loss(loss_name, counts)


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    images_per_second: float
    seconds: float
    image_size: int


@dataclass
class TrainingState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: torch.optim.swa_utils.AveragedModel | None
    epoch: int = 0
    step: int = 0
    history: list = field(default_factory=list)
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None


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
    steps if given), at the epoch's image size (``config.epoch_size``)."""
    _, sampler = STRATEGIES[config.strategy]
    loss_fn = _loss_for_epoch(config, dataset.split.train_counts, state.epoch)
    order = epoch_order(sampler, dataset.train_labels, config.seed, state.epoch, runtime.rank, runtime.world_size)
    augment_generator = epoch_generator(config.seed, state.epoch, stream=1 + runtime.rank, device=images.device)
    per_rank_batch = config.batch_size // runtime.world_size
    global_batch = per_rank_batch * runtime.world_size
    total = len(dataset.train_labels)  # length of the epoch's global order
    steps = steps_per_epoch(total, config, bn_mode, runtime.world_size)
    if max_steps is not None:
        steps = min(steps, max_steps)
    order = order[: steps * per_rank_batch]
    image_size = config.epoch_size(state.epoch)
    set_train_mode(train_model, bn_mode)
    started = time.perf_counter()
    seen = correct = 0
    loss_sum = 0.0
    progress = tqdm(
        data_module.batches(order, per_rank_batch),
        total=steps,
        desc=f"epoch {state.epoch + 1}/{config.epochs} ({image_size} px)",
        disable=not runtime.is_main,
        mininterval=1.0 if os.isatty(2) else 30.0,
        leave=False,
    )
    for step, positions in enumerate(progress):
        batch = images[positions.to(images.device)]
        if config.augment:
            batch = data_module.random_crop_flip(batch, augment_generator)
        targets = labels[positions.to(labels.device)]
        inputs = data_module.to_model_input(batch, image_size, dataset.mean, dataset.std)
        with runtime.autocast():
            logits = train_model(inputs)
        loss = loss_fn(logits.float(), targets)
        loss_value = loss.item()
        finite = bool(np.isfinite(loss_value))
        if runtime.world_size > 1:  # every rank stops together, or the others would wait in backward
            finite = runtime.all_sum(float(not finite))[0] == 0
        if not finite:
            raise LongtailError(
                f"loss became {loss_value} at epoch {state.epoch + 1}, step {step + 1}; stopped with the last "
                "good checkpoint kept (a run resumes only with its own settings: start it again with a lower "
                "--lr and --overwrite, or into another --out)"
            )
        state.optimizer.zero_grad(set_to_none=True)
        # DDP averages the ranks' gradients; weighting each rank's mean loss by its share of the global
        # batch makes that the global batch's mean gradient even when a last batch splits unevenly.
        share = len(targets) * runtime.world_size / min(global_batch, total - step * global_batch)
        (loss * share).backward()
        state.optimizer.step()
        if state.scheduler is not None:
            state.scheduler.step()
        if state.ema is not None:
            state.ema.update_parameters(state.model)
        state.step += 1
        seen += len(targets)
        loss_sum += loss_value * len(targets)
        correct += int((logits.argmax(1) == targets).sum())
        elapsed = time.perf_counter() - started
        progress.set_postfix(
            loss=f"{loss_sum / seen:.3f}",
            acc=f"{correct / seen:.3f}",
            img_s=f"{seen * runtime.world_size / elapsed:.0f}",
            refresh=False,
        )
    progress.close()
    seconds = time.perf_counter() - started
    total_seen, total_correct, total_loss = runtime.all_sum(seen, correct, loss_sum)
    return EpochStats(total_loss / total_seen, total_correct / total_seen, total_seen / seconds, seconds, image_size)


def _checkpoint(state: TrainingState, config: TrainConfig, rng_states: list[dict]) -> dict:
    return {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "lr_scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "epoch": state.epoch,
        "step": state.step,
        "rng": rng_states,  # one per rank, in rank order
        "sampler": {"name": STRATEGIES[config.strategy][1], "seed": config.seed, "next_epoch": state.epoch},
        "history": state.history,
        "config": dataclasses.asdict(config),
    }


def _check_resumable(stored: dict, config: TrainConfig, run_dir: Path) -> None:
    """A run resumes only with the settings it started with; more --epochs extend a run whose
    epochs shape nothing else (a constant learning rate and no size schedule)."""
    differing = config_differences(stored, config)
    if config.lr_schedule == "constant" and config.size_schedule is None:
        differing.pop("epochs", None)
    if differing:
        raise LongtailError(
            f"{run_dir} was started with other settings ({describe_differences(differing)}); rerun with the "
            "same settings to resume, or pass --overwrite to start over"
        )


def _restore(state: TrainingState, checkpoint: dict, config: TrainConfig, runtime: Runtime, run_dir: Path) -> None:
    path = run_dir / CHECKPOINT_FILE
    missing = sorted({"config", "model", "optimizer", "epoch", "step", "history", "rng"} - set(checkpoint))
    if missing:
        raise LongtailError(
            f"{path}: not a longtail checkpoint (no {', '.join(missing)}); pass --overwrite to start the run over"
        )
    _check_resumable(checkpoint["config"], config, run_dir)
    try:
        state.model.load_state_dict(checkpoint["model"])
        state.optimizer.load_state_dict(checkpoint["optimizer"])
        if state.scheduler is not None and checkpoint.get("lr_scheduler") is not None:
            state.scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if state.ema is not None:
            state.ema.load_state_dict(checkpoint["ema"])
        restore_process_rng(checkpoint["rng"], config, runtime)
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as error:
        raise LongtailError(
            f"{path}: does not fit this run ({type(error).__name__}); pass --overwrite to start the run over"
        ) from error
    state.epoch, state.step, state.history = checkpoint["epoch"], checkpoint["step"], checkpoint["history"]


def _read_checkpoint(path: Path) -> dict | None:
    if not path.exists():
        return None
    checkpoint = torch_load(path)
    if not isinstance(checkpoint, dict):
        raise LongtailError(f"{path}: not a longtail checkpoint; pass --overwrite to start the run over")
    return checkpoint


def _run_record(config: TrainConfig, info, bn_mode: str, dataset: Dataset, runtime: Runtime) -> dict:
    """run.json of a run: its settings and where its data and weights came from, with what
    ``longtail predict`` needs to read new images without the data (class names, store size)."""
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
    }


def train(
    config: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    cache_dir: Path | None = None,
    evaluate: bool = True,
    figures: bool = True,
) -> Path:
    """Train stage 1 into ``out`` (resuming from its checkpoint when asked) and evaluate it
    (``evaluate``; ``figures``: also draw the run's figures)."""
    config.validate()
    out = Path(out)
    runtime = Runtime.create(config.device)
    # Everything that can fail on bad input happens before the run directory is touched; rank 0
    # alone reads the run directory, and an error on any rank stops them all.
    runtime.on_main(lambda: check_run_dir(out, resume=resume, overwrite=overwrite))
    seed_everything(config.seed, config.deterministic, runtime.rank)

    def load():
        arrays = load_source(config, cache_dir)
        model, info = build_model(arrays.num_classes, config.weights, cosine_head=uses_cosine_head(config))
        dataset = load_dataset(config, info.pretrained, cache_dir, arrays)
        bn_mode = resolve_bn_mode(config.bn, info)
        check_distributed(config, bn_mode, runtime)
        return model, info, dataset, bn_mode

    model, info, dataset, bn_mode = runtime.on_all(load)
    with RunLock(out) if runtime.is_main else nullcontext():
        resuming = runtime.on_main(lambda: prepare_run_dir(out, resume=resume, overwrite=overwrite))
        images = torch.from_numpy(dataset.arrays.x_train[dataset.split.train]).to(runtime.device)
        labels = torch.from_numpy(dataset.train_labels).to(runtime.device)
        model = model.to(runtime.device, memory_format=torch.channels_last)
        checkpoint_path = out / CHECKPOINT_FILE
        checkpoint = runtime.on_all(lambda: _read_checkpoint(checkpoint_path) if resuming else None)
        if checkpoint is None and bn_mode == "reestimate":
            sample = images[torch.randperm(len(images), generator=epoch_generator(config.seed, 0, 99))[:1024]]
            reestimate_bn_statistics(
                model,
                (
                    data_module.to_model_input(b, config.epoch_size(0), dataset.mean, dataset.std)
                    for b in torch.split(sample, 128)
                ),
            )
        if runtime.world_size > 1 and bn_mode != "frozen":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # on a GPU (check_distributed)
        optimizer = _make_optimizer(config, model.parameters())
        factor = lr_factor(config, steps_per_epoch(len(labels), config, bn_mode, runtime.world_size))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor) if config.lr_schedule != "constant" else None
        ema = None
        if config.decay_reading == "ema":
            ema = torch.optim.swa_utils.AveragedModel(
                model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.decay_value), use_buffers=True
            )
        state = TrainingState(model, optimizer, ema, scheduler=scheduler)
        if checkpoint is not None:
            runtime.on_all(lambda: _restore(state, checkpoint, config, runtime, out))

        train_model = model
        if runtime.world_size > 1:
            train_model = nn.parallel.DistributedDataParallel(model)
        if config.compile:
            train_model = torch.compile(train_model)

        writer = None
        if runtime.is_main:
            atomic_write_json(out / RUN_FILE, _run_record(config, info, bn_mode, dataset, runtime))
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tensorboard"))
        val_images = torch.from_numpy(dataset.arrays.x_train[dataset.split.val])
        val_features = None  # (size, features) of the latest epoch's weights: reused by the evaluation
        started = time.perf_counter()
        while state.epoch < config.epochs:
            stats = train_one_epoch(state, train_model, config, images, labels, dataset, bn_mode, runtime)
            state.epoch += 1
            record = {"epoch": state.epoch, **dataclasses.asdict(stats), "lr": optimizer.param_groups[0]["lr"]}
            if len(val_images) and runtime.is_main:  # the other ranks wait at the barrier below
                eval_model = ema.module if ema is not None else model
                features, val_logits = features_and_logits(
                    eval_model, val_images, stats.image_size, dataset.mean, dataset.std, runtime
                )
                val_features = (stats.image_size, features)
                val_true = dataset.arrays.y_train[dataset.split.val]
                record["val_accuracy"] = float((val_logits.argmax(1).numpy() == val_true).mean())
            state.history.append(record)
            rng_states = runtime.gather(rng_state())
            if runtime.is_main:
                for key, value in record.items():
                    if key != "epoch":
                        writer.add_scalar(key, value, state.epoch)
                writer.flush()
                atomic_torch_save(checkpoint_path, _checkpoint(state, config, rng_states))
                tqdm.write(
                    f"epoch {state.epoch}/{config.epochs} ({stats.image_size} px): loss {stats.loss:.4f}, "
                    f"train acc {stats.accuracy:.4f}"
                    + (f", val acc {record['val_accuracy']:.4f}" if "val_accuracy" in record else "")
                    + f", {stats.images_per_second:.0f} img/s, {stats.seconds:.0f} s"
                )
            runtime.barrier()
        if runtime.is_main:
            writer.close()
            final = ema.module if ema is not None else model
            atomic_torch_save(out / "model.pt", final.state_dict())
            run = read_json(out / RUN_FILE)
            run.update(
                status="finished",
                wall_seconds_this_session=time.perf_counter() - started,
                history=state.history,
                model_sha256=data_module.sha256_file(out / "model.pt"),
            )
            atomic_write_json(out / RUN_FILE, run)
            if evaluate:
                evaluate_run(out, cache_dir=cache_dir, runtime=runtime, val_features=val_features, figures=figures)
        runtime.barrier()
    return out


# ---------------------------------------------------------------- loading finished runs


def read_finished_stage1(run_dir: Path) -> tuple[TrainConfig, dict]:
    """``(config, run_record)`` of a finished stage-1 run, checked; its data is not loaded."""
    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).exists():
        raise LongtailError(
            f"{run_dir} is not a longtail run directory (no {RUN_FILE}); pass the --out of a `longtail train` run"
        )
    run = read_json(run_dir / RUN_FILE)
    if not isinstance(run, dict) or run.get("kind") != "train":
        raise LongtailError(f"{run_dir} is not a stage-1 (`longtail train`) run ({run_dir / RUN_FILE} says otherwise)")
    if run.get("status") != "finished":
        raise LongtailError(f"{run_dir} has not finished training; resume it with `longtail train ... --resume`")
    try:
        config = from_record(TrainConfig, run["config"])
        config.validate()
        run["weights"]["pretrained"]
    except (KeyError, TypeError, LongtailError) as error:
        raise LongtailError(
            f"{run_dir / RUN_FILE}: not a valid longtail run record ({type(error).__name__}: {error}); "
            "it was edited or damaged: train the run again with --overwrite"
        ) from error
    return config, run


def load_finished_stage1(run_dir: Path, cache_dir: Path | None = None) -> tuple[TrainConfig, Dataset, dict]:
    """``(config, dataset, run_record)`` of a finished stage-1 run, without building its network."""
    config, run = read_finished_stage1(run_dir)
    return config, load_dataset(config, run["weights"]["pretrained"], cache_dir), run


def load_trained_model(run_dir: Path, runtime: Runtime, cache_dir: Path | None = None):
    """``(model, config, dataset, run_record)`` of a finished stage-1 run, in eval mode."""
    config, dataset, run = load_finished_stage1(run_dir, cache_dir)
    model = trained_model(run_dir, config, run, dataset.arrays.num_classes, runtime)
    return model, config, dataset, run


def trained_model(run_dir: Path, config: TrainConfig, run: dict, num_classes: int, runtime: Runtime) -> nn.Module:
    """The network of a finished stage-1 run (``read_finished_stage1``), in eval mode on the runtime's device."""
    model, _ = build_model(num_classes, "none", cosine_head=uses_cosine_head(config))
    state = _model_state(run_dir, run)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as error:
        raise LongtailError(
            f"{Path(run_dir) / 'model.pt'}: not this run's EfficientNet-B0 weights; "
            "train the run again with --overwrite"
        ) from error
    return model.to(runtime.device, memory_format=torch.channels_last).eval()


def _model_state(run_dir: Path, run: dict, mmap: bool = False) -> dict:
    """``model.pt`` of a finished run, checked against the sha256 its run.json recorded."""
    path = Path(run_dir) / "model.pt"
    if not path.exists():
        raise LongtailError(f"{path} does not exist; train the run again with --overwrite")
    recorded = run.get("model_sha256")
    if recorded is not None and data_module.sha256_file(path) != recorded:
        raise LongtailError(
            f"{path}: its sha256 is not the one {Path(run_dir) / RUN_FILE} recorded (the file was replaced or "
            "damaged); train the run again with --overwrite"
        )
    state = torch_load(path, mmap=mmap)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LongtailError(f"{path}: not a state dict of tensors; train the run again with --overwrite")
    return state


def load_trained_classifier(run_dir: Path, config: TrainConfig, num_classes: int) -> nn.Module:
    """The classifier of a finished stage-1 run alone (from ``model.pt``, the network not built)."""
    state = _model_state(run_dir, read_json(Path(run_dir) / RUN_FILE), mmap=True)
    try:
        return head_from_state_dict(state, num_classes, uses_cosine_head(config))
    except (RuntimeError, KeyError) as error:
        raise LongtailError(
            f"{Path(run_dir) / 'model.pt'}: has no {num_classes}-way classifier; train the run again with --overwrite"
        ) from error


def run_test_size(run: dict, config: TrainConfig) -> int:
    """The input size of a finished run's test metrics and stage-2 features (its training size
    for runs evaluated before the size was chosen on validation)."""
    return int(run.get("test_image_size", config.image_size))


def _choose_test_size(
    model: nn.Module, config: TrainConfig, dataset: Dataset, runtime: Runtime, val_features: tuple | None
) -> tuple[int, dict[int, float], torch.Tensor | None]:
    """``(test size, {size: validation accuracy}, validation features at that size)``: the sizes of
    ``--test-size`` scored on the validation split only (``longtail.resolution``)."""
    sizes, choose = resolve_test_size(config.test_size, config.image_size)
    val_images = torch.from_numpy(dataset.arrays.x_train[dataset.split.val])
    val_true = dataset.arrays.y_train[dataset.split.val]
    if len(val_true) == 0:
        return sizes[0], {}, None
    known = {} if val_features is None else {val_features[0]: val_features[1]}

    def features_at(size: int) -> torch.Tensor:
        if size not in known:
            known[size] = extract_features(model, val_images, size, dataset.mean, dataset.std, runtime)
        return known[size]

    def accuracy(size: int) -> float:
        return float((apply_head(head_of(model), features_at(size)).argmax(1).numpy() == val_true).mean())

    size, scores = choose_size(accuracy, sizes) if choose else (sizes[0], {sizes[0]: accuracy(sizes[0])})
    return size, scores, features_at(size)


def evaluate_run(
    run_dir: Path,
    cache_dir: Path | None = None,
    runtime: Runtime | None = None,
    *,
    val_features: tuple[int, torch.Tensor] | None = None,
    figures: bool = True,
) -> dict:
    """Evaluate a finished stage-1 run on its test split (the source's test set, or the one held out
    of its training images) at its test size; writes metrics.json (and the figures, with ``figures``).

    The test size is the one run.json records, else the one ``--test-size`` gives (chosen on the
    validation split for ``auto``), then recorded. The logits are the classifier applied to the
    pooled backbone features (the model's forward in eval mode); the features go into the run's
    feature cache at that size, with the validation features (``val_features``: ``(size, features)``
    of the final weights, when training just computed them), so stage 2 does not recompute them.
    With ``--tta flip`` the mirrored test images' features are cached too and their metrics added.
    """
    runtime = runtime or Runtime.create()
    model, config, dataset, run = load_trained_model(run_dir, runtime, cache_dir)
    if "test_image_size" in run:
        size, val = run["test_image_size"], None
        run.setdefault("test_size_grid", {})
    else:
        size, grid, val = _choose_test_size(model, config, dataset, runtime, val_features)
        run.update(test_image_size=size, test_size_grid={str(k): v for k, v in grid.items()})
        atomic_write_json(Path(run_dir) / RUN_FILE, run)
    args = (size, dataset.mean, dataset.std, runtime)
    x_test = torch.from_numpy(dataset.test_images)
    test_features, logits = features_and_logits(model, x_test, *args)
    test_flip = extract_features(model, x_test, *args, flip=True) if config.tta == "flip" else None
    store_evaluation_features(run_dir, run.get("model_sha256"), size, test_features, val, test_flip=test_flip)
    flip_logits = apply_head(head_of(model), test_features, test_flip) if test_flip is not None else None
    extra = {"test_image_size": size, "test_size_grid": run["test_size_grid"]}
    return save_evaluation(
        run_dir,
        dataset.test_labels,
        logits,
        dataset,
        figures,
        grouping=config.groups,
        flip_logits=flip_logits,
        extra=extra,
    )
