"""Stage 1: end-to-end training of EfficientNet-B0 on a long-tailed set, checkpoints, resume, evaluation.

Plain functions in the spirit of torchvision's reference scripts: ``train`` runs epochs of
``train_one_epoch`` and writes one checkpoint dict per epoch; ``evaluate_run`` turns a finished
run into ``metrics.json`` and figures. Distributed training (``torchrun``) splits each global
batch across processes; only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from longtail import data as data_module
from longtail.choices import DECAY_READINGS, DEFAULT_DECAY_READING, STRATEGIES
from longtail.data import Arrays, Split
from longtail.errors import LongtailError
from longtail.features import features_and_logits, store_evaluation_features
from longtail.losses import build_loss, class_balanced_weights, loss_spec
from longtail.metrics import classification_metrics
from longtail.models import (
    build_model,
    head_from_state_dict,
    reestimate_bn_statistics,
    resolve_bn_mode,
    set_train_mode,
)
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

# ---------------------------------------------------------------- configuration


@dataclass
class TrainConfig:
    """Everything that determines a stage-1 run. Defaults are the study's fixed hyperparameters."""

    data: str | None = None
    weights: str = "imagenet"
    strategy: str = "baseline"
    imbalance: float = 100.0
    profile: str = "exp"
    max_per_class: int | None = None
    val_per_class: int = 50
    image_size: int = 32
    epochs: int = 30  # study
    batch_size: int = 128  # study
    lr: float = 1e-4  # study, Adam
    decay_reading: str = DEFAULT_DECAY_READING
    decay_value: float = 0.9999  # study
    bn: str = "auto"
    seed: int = 0
    deterministic: bool = False
    augment: bool = True
    drw_start: float = 0.8  # LDAM-DRW re-weights from this fraction of the epochs on (160/200 in Cao et al.)
    device: str = "auto"
    compile: bool = False

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise LongtailError(f"unknown strategy '{self.strategy}': choose one of {', '.join(STRATEGIES)}")
        if self.decay_reading not in DECAY_READINGS:
            raise LongtailError(
                f"unknown --decay-reading '{self.decay_reading}': choose one of {', '.join(DECAY_READINGS)}"
            )
        if not self.imbalance >= 1:
            raise LongtailError(f"--imbalance must be >= 1, got {self.imbalance}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise LongtailError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.image_size < 32:
            raise LongtailError(f"--image-size must be at least 32 (the CIFAR images are 32 px), got {self.image_size}")
        if not self.lr > 0:
            raise LongtailError(f"--lr must be positive, got {self.lr}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise LongtailError(f"--device must be auto, cpu or cuda, got {self.device}")

    @property
    def cosine_head(self) -> bool:
        """Whether the strategy's loss needs a cosine classifier (LDAM's)."""
        return loss_spec(STRATEGIES[self.strategy][0]).cosine_head


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

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()


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


def load_dataset(
    config: TrainConfig, pretrained: bool, cache_dir: Path | None = None, arrays: Arrays | None = None
) -> Dataset:
    """The arrays (loaded unless given), the run's long-tailed split and its input normalisation."""
    arrays = arrays or data_module.load_arrays(config.data, cache_dir)
    split = data_module.long_tail_split(
        arrays, config.imbalance, config.profile, config.seed, config.val_per_class, config.max_per_class, cache_dir
    )
    if pretrained:
        mean, std = data_module.IMAGENET_MEAN, data_module.IMAGENET_STD
    else:
        mean, std = data_module.CIFAR10_MEAN, data_module.CIFAR10_STD
    return Dataset(arrays, split, mean, std)


def seed_everything(seed: int, deterministic: bool) -> None:
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
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian]
    # Only tensors and plain types, so the checkpoint loads with torch.load(weights_only=True).
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- evaluation helpers


def save_evaluation(run_dir: Path, y_true, logits: torch.Tensor, dataset: Dataset, figures: bool = True) -> dict:
    """Write ``metrics.json`` (and, with ``figures``, the run's figures) from its test logits."""
    metrics = classification_metrics(
        y_true, logits.argmax(1).numpy(), dataset.arrays.class_names, dataset.split.train_counts
    )
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


def _loss_for_epoch(config: TrainConfig, counts: list[int], epoch: int):
    loss_name, _ = STRATEGIES[config.strategy]
    if config.strategy == "ldam-drw" and epoch >= int(config.drw_start * config.epochs):
        return build_loss(loss_name, counts, weights=class_balanced_weights(counts, 0.9999))
    return build_loss(loss_name, counts)


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    images_per_second: float
    seconds: float


@dataclass
class TrainingState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: torch.optim.swa_utils.AveragedModel | None
    epoch: int = 0
    step: int = 0
    history: list = field(default_factory=list)


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
    """One pass over this process's share of the epoch's sampled order (its first ``max_steps`` steps if given)."""
    _, sampler = STRATEGIES[config.strategy]
    loss_fn = _loss_for_epoch(config, dataset.split.train_counts, state.epoch)
    order = epoch_order(sampler, dataset.train_labels, config.seed, state.epoch, runtime.rank, runtime.world_size)
    augment_generator = epoch_generator(config.seed, state.epoch, stream=1 + runtime.rank, device=images.device)
    per_rank_batch = max(1, config.batch_size // runtime.world_size)
    global_batch = per_rank_batch * runtime.world_size
    total = len(dataset.train_labels)  # length of the epoch's global order
    # Every rank must take the same number of steps (each step all-reduces gradients), so a last
    # global batch too small to give every rank an image is left out (at most world_size - 1 images).
    steps = -(-(total // runtime.world_size) // per_rank_batch)
    if bn_mode != "frozen" and steps > 1 and (total - (steps - 1) * global_batch) // runtime.world_size == 1:
        steps -= 1  # BatchNorm in train mode cannot normalise a last batch of one image per rank: skip it
    if max_steps is not None:
        steps = min(steps, max_steps)
    order = order[: steps * per_rank_batch]
    set_train_mode(train_model, bn_mode)
    started = time.perf_counter()
    seen = correct = 0
    loss_sum = 0.0
    progress = tqdm(
        data_module.batches(order, per_rank_batch),
        total=steps,
        desc=f"epoch {state.epoch + 1}/{config.epochs}",
        disable=not runtime.is_main,
        mininterval=1.0 if os.isatty(2) else 30.0,
        leave=False,
    )
    for step, positions in enumerate(progress):
        batch = images[positions.to(images.device)]
        if config.augment:
            batch = data_module.random_crop_flip(batch, augment_generator)
        targets = labels[positions.to(labels.device)]
        inputs = data_module.to_model_input(batch, config.image_size, dataset.mean, dataset.std)
        with runtime.autocast():
            logits = train_model(inputs)
        loss = loss_fn(logits.float(), targets)
        loss_value = loss.item()
        if not np.isfinite(loss_value):
            raise LongtailError(
                f"loss became {loss_value} at epoch {state.epoch + 1}, step {step + 1}; stopped "
                "with the last good checkpoint kept (try a lower --lr)"
            )
        state.optimizer.zero_grad(set_to_none=True)
        # DDP averages the ranks' gradients; weighting each rank's mean loss by its share of the global
        # batch makes that the global batch's mean gradient even when a last batch splits unevenly.
        share = len(targets) * runtime.world_size / min(global_batch, total - step * global_batch)
        (loss * share).backward()
        state.optimizer.step()
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
    return EpochStats(total_loss / total_seen, total_correct / total_seen, total_seen / seconds, seconds)


def _checkpoint(state: TrainingState, config: TrainConfig) -> dict:
    return {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "epoch": state.epoch,
        "step": state.step,
        "rng": rng_state(),
        "sampler": {"name": STRATEGIES[config.strategy][1], "seed": config.seed, "next_epoch": state.epoch},
        "history": state.history,
        "config": dataclasses.asdict(config),
    }


def _check_resumable(stored: dict, config: TrainConfig, run_dir: Path) -> None:
    current = dataclasses.asdict(config)
    differing = sorted(k for k in current if k != "epochs" and stored.get(k) != current[k])
    if differing:
        details = ", ".join(f"{k}: {stored.get(k)!r} -> {current[k]!r}" for k in differing)
        raise LongtailError(
            f"{run_dir} was started with other settings ({details}); rerun with the same settings "
            "to resume, or pass --overwrite to start over"
        )


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
    # Everything that can fail on bad input happens before the run directory is touched.
    check_run_dir(out, resume=resume, overwrite=overwrite)
    seed_everything(config.seed, config.deterministic)
    arrays = data_module.load_arrays(config.data, cache_dir)
    model, info = build_model(arrays.num_classes, config.weights, cosine_head=config.cosine_head)
    dataset = load_dataset(config, info.pretrained, cache_dir, arrays)
    with RunLock(out) if runtime.is_main else nullcontext():
        resuming = prepare_run_dir(out, resume=resume, overwrite=overwrite) if runtime.is_main else resume
        runtime.barrier()
        bn_mode = resolve_bn_mode(config.bn, info)
        images = torch.from_numpy(dataset.arrays.x_train[dataset.split.train]).to(runtime.device)
        labels = torch.from_numpy(dataset.train_labels).to(runtime.device)
        model = model.to(runtime.device, memory_format=torch.channels_last)

        checkpoint_path = out / CHECKPOINT_FILE
        checkpoint = torch_load(checkpoint_path) if resuming and checkpoint_path.exists() else None
        if checkpoint is None and bn_mode == "reestimate":
            sample = images[torch.randperm(len(images), generator=epoch_generator(config.seed, 0, 99))[:1024]]
            reestimate_bn_statistics(
                model,
                (
                    data_module.to_model_input(b, config.image_size, dataset.mean, dataset.std)
                    for b in torch.split(sample, 128)
                ),
            )
        optimizer = _make_optimizer(config, model.parameters())
        ema = None
        if config.decay_reading == "ema":
            ema = torch.optim.swa_utils.AveragedModel(
                model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.decay_value), use_buffers=True
            )
        state = TrainingState(model, optimizer, ema)
        if checkpoint is not None:
            _check_resumable(checkpoint["config"], config, out)
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            if ema is not None:
                ema.load_state_dict(checkpoint["ema"])
            state.epoch, state.step, state.history = checkpoint["epoch"], checkpoint["step"], checkpoint["history"]
            restore_rng_state(checkpoint["rng"])

        train_model = model
        if runtime.world_size > 1:
            train_model = nn.parallel.DistributedDataParallel(model)
        if config.compile:
            train_model = torch.compile(train_model)

        if runtime.is_main:
            atomic_write_json(
                out / RUN_FILE,
                {
                    "kind": "train",
                    "status": "running",
                    "config": dataclasses.asdict(config),
                    "weights": dataclasses.asdict(info),
                    "bn_mode": bn_mode,
                    "data_source": dataset.arrays.source,
                    "data_sha256": dataset.arrays.fingerprint,
                    "index_file": str(dataset.split.index_file),
                    "train_counts": dataset.split.train_counts,
                    "world_size": runtime.world_size,
                    "device": str(runtime.device),
                },
            )
        writer = None
        if runtime.is_main:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tensorboard"))
        val_images = torch.from_numpy(dataset.arrays.x_train[dataset.split.val])
        val_features = None  # of the latest epoch's weights: the final ones go into the feature cache
        started = time.perf_counter()
        while state.epoch < config.epochs:
            stats = train_one_epoch(state, train_model, config, images, labels, dataset, bn_mode, runtime)
            state.epoch += 1
            record = {"epoch": state.epoch, **dataclasses.asdict(stats)}
            if len(val_images) and runtime.is_main:  # the other ranks wait at the barrier below
                eval_model = ema.module if ema is not None else model
                val_features, val_logits = features_and_logits(
                    eval_model, val_images, config.image_size, dataset.mean, dataset.std, runtime
                )
                val_true = dataset.arrays.y_train[dataset.split.val]
                record["val_accuracy"] = float((val_logits.argmax(1).numpy() == val_true).mean())
            state.history.append(record)
            if runtime.is_main:
                for key, value in record.items():
                    if key != "epoch":
                        writer.add_scalar(key, value, state.epoch)
                writer.flush()
                atomic_torch_save(checkpoint_path, _checkpoint(state, config))
                tqdm.write(
                    f"epoch {state.epoch}/{config.epochs}: loss {stats.loss:.4f}, train acc {stats.accuracy:.4f}"
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


def load_finished_stage1(run_dir: Path, cache_dir: Path | None = None) -> tuple[TrainConfig, Dataset, dict]:
    """``(config, dataset, run_record)`` of a finished stage-1 run, without building its network."""
    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).exists():
        raise LongtailError(
            f"{run_dir} is not a longtail run directory (no {RUN_FILE}); pass the --out of a `longtail train` run"
        )
    run = read_json(run_dir / RUN_FILE)
    if run.get("kind") != "train":
        raise LongtailError(f"{run_dir} is not a stage-1 (`longtail train`) run")
    if run.get("status") != "finished":
        raise LongtailError(f"{run_dir} has not finished training; resume it with `longtail train ... --resume`")
    config = TrainConfig(**run["config"])
    return config, load_dataset(config, run["weights"]["pretrained"], cache_dir), run


def load_trained_model(run_dir: Path, runtime: Runtime, cache_dir: Path | None = None):
    """``(model, config, dataset, run_record)`` of a finished stage-1 run, in eval mode."""
    config, dataset, run = load_finished_stage1(run_dir, cache_dir)
    model, _ = build_model(dataset.arrays.num_classes, "none", cosine_head=config.cosine_head)
    model.load_state_dict(torch_load(Path(run_dir) / "model.pt"))
    model = model.to(runtime.device, memory_format=torch.channels_last).eval()
    return model, config, dataset, run


def load_trained_classifier(run_dir: Path, config: TrainConfig, num_classes: int) -> nn.Module:
    """The classifier of a finished stage-1 run alone (from ``model.pt``, the network not built)."""
    state = torch_load(Path(run_dir) / "model.pt", mmap=True)
    return head_from_state_dict(state, num_classes, config.cosine_head)


def evaluate_run(
    run_dir: Path,
    cache_dir: Path | None = None,
    runtime: Runtime | None = None,
    *,
    val_features: torch.Tensor | None = None,
    figures: bool = True,
) -> dict:
    """Evaluate a finished stage-1 run on the full balanced test set; writes metrics.json (and
    the figures, with ``figures``).

    The logits are the classifier applied to the pooled backbone features (the model's forward
    in eval mode); the features go into the run's feature cache, with ``val_features`` (the
    final weights' validation features, when training just computed them), so stage 2 does not
    recompute them.
    """
    runtime = runtime or Runtime.create()
    model, config, dataset, run = load_trained_model(run_dir, runtime, cache_dir)
    test_features, logits = features_and_logits(
        model, torch.from_numpy(dataset.arrays.x_test), config.image_size, dataset.mean, dataset.std, runtime
    )
    store_evaluation_features(run_dir, run.get("model_sha256"), test_features, val_features)
    return save_evaluation(run_dir, dataset.arrays.y_test, logits, dataset, figures)
