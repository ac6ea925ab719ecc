"""Training and evaluation throughput of longtail against a bare ceiling and a plain reference loop.

In one process, with the same EfficientNet-B0 (same weights and BatchNorm handling), batch size,
image size and optimizer (Adam, lr 1e-4):

- ceiling: bare forward + backward + Adam step on random tensors already in model-input format
  (no data, no augmentation, no ``loss.item()``): the most any data pipeline could reach;
- longtail: ``longtail.train.train_one_epoch`` (the code ``longtail train`` runs) on the real
  CIFAR-10-LT training set (IF = 100), ``max_steps`` steps per round, augmentation on;
- reference: a torchvision-style ``Dataset`` over the same uint8 images with PIL transforms
  (RandomCrop(32, padding=4), RandomHorizontalFlip, Resize(S) when S > 32, ToTensor, Normalize)
  and ``DataLoader(num_workers=0)``, default (NCHW) memory format, ``loss.item()`` per step as in
  torchvision's reference scripts.

Evaluation: ``longtail.features.features_and_logits`` (how longtail evaluates) on uint8 test
images versus a bare forward in ``inference_mode`` on random tensors. Every path uses
longtail's autocast (bfloat16 on CUDA, none on CPU). ``--channels-last`` sets the model's
memory format for the ceiling and longtail (longtail's ``to_model_input`` always hands the
model channels_last inputs); ``--compile`` compiles the training forward of the ceiling and
longtail (as ``longtail train --compile`` does), while evaluation and the reference stay eager.

Measurements are interleaved (one round of every path, rotating which goes first, ``--rounds``
times) and the median of each is reported, so background load affects them alike. The last
line of stdout is one JSON object.

    python benchmarks/throughput.py --data ../shared/data/cifar10.npz \\
        --weights ../shared/weights/efficientnet_b0_imagenet_tfhub.pth
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from longtail.checkpoint import TrainingState
from longtail.config import TrainConfig
from longtail.data import load_dataset
from longtail.features import features_and_logits
from longtail.hardware import cpu_name
from longtail.models import build_model, resolve_bn_mode, set_train_mode
from longtail.runtime import Runtime
from longtail.train import train_one_epoch
from shared_files import CIFAR10_NPZ, WEIGHTS

DEFAULT_DATA = os.environ.get("LONGTAIL_DATA", str(CIFAR10_NPZ))
DEFAULT_WEIGHTS = str(WEIGHTS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="as for `longtail train --data`")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS, help="as for `longtail train --weights`")
    parser.add_argument("--cache-dir", type=Path, help="longtail cache (default: $LONGTAIL_CACHE)")
    parser.add_argument("--imbalance", type=float, default=100.0)
    parser.add_argument("--max-per-class", type=int, help="head-class count (default: all 5,000)")
    parser.add_argument("--val-per-class", type=int, default=50, help="held out per class, as in training")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="training steps (eval batches) per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per path before the rounds")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--compile", action="store_true", help="torch.compile the training forward (ceiling, longtail)")
    args = parser.parse_args(argv)
    for name in ("batch_size", "steps", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.image_size < 32:
        parser.error("--image-size must be at least 32")
    return args


# ---------------------------------------------------------------- the plain reference pipeline


class ReferenceDataset(torch.utils.data.Dataset):
    """What ``torchvision.datasets.CIFAR10`` does per item: uint8 array -> PIL image -> transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def reference_transform(image_size: int, mean, std) -> transforms.Compose:
    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    if image_size > 32:
        steps.append(transforms.Resize(image_size))
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])


def endless(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


# ---------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(run: Callable[[], int], device: torch.device) -> float:
    """``run()`` returns how many images it processed."""
    synchronize(device)
    started = time.perf_counter()
    images = run()
    synchronize(device)
    return images / (time.perf_counter() - started)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({cpu_name()}, {os.cpu_count()} cores)"


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(
        data=args.data,
        weights=args.weights,
        imbalance=args.imbalance,
        max_per_class=args.max_per_class,
        val_per_class=args.val_per_class,
        image_size=args.image_size,
        batch_size=args.batch_size,
        device=args.device,
    )
    config.validate()
    runtime = Runtime.create(config.device)
    device = runtime.device
    torch.manual_seed(0)
    if device.type == "cuda":
        # The ceiling's shapes autotuned (the most cuDNN gives); longtail's paths set their own flags
        # (longtail.cudnn: its full training batches autotuned, inference not).
        torch.backends.cudnn.benchmark = True
    dataset = load_dataset(config, pretrained=config.weights != "none", cache_dir=args.cache_dir)
    base_model, info = build_model(dataset.arrays.num_classes, config.weights)
    bn_mode = resolve_bn_mode(config.bn, info)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    batch, size, steps = args.batch_size, args.image_size, args.steps

    def fresh_model(fmt: torch.memory_format):
        model = copy.deepcopy(base_model).to(device, memory_format=fmt)
        return model, torch.optim.Adam(model.parameters(), lr=config.lr)  # longtail's optimizer (cb-beta reading)

    # (a) ceiling
    ceiling_model, ceiling_optimizer = fresh_model(memory_format)
    set_train_mode(ceiling_model, bn_mode)
    ceiling_forward = torch.compile(ceiling_model) if args.compile else ceiling_model
    random_inputs = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    random_targets = torch.randint(0, dataset.arrays.num_classes, (batch,), device=device)

    def ceiling_train(n: int) -> int:
        for _ in range(n):
            with runtime.autocast():
                logits = ceiling_forward(random_inputs)
            loss = F.cross_entropy(logits.float(), random_targets)
            ceiling_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            ceiling_optimizer.step()
        return n * batch

    # (b) longtail: exactly what train() hands train_one_epoch
    longtail_model, longtail_optimizer = fresh_model(memory_format)
    state = TrainingState(longtail_model, longtail_optimizer, None)
    longtail_forward = torch.compile(longtail_model) if args.compile else longtail_model
    images = torch.from_numpy(dataset.arrays.x_train[dataset.split.train]).to(device)
    labels = torch.from_numpy(dataset.train_labels).to(device)
    if steps * batch > len(images):
        print(f"note: {steps} steps of {batch} exceed the {len(images)} training images; rounds are shorter")

    def longtail_train(n: int) -> int:
        stats = train_one_epoch(state, longtail_forward, config, images, labels, dataset, bn_mode, runtime, max_steps=n)
        state.epoch += 1  # a fresh sampled order per round, as in training
        return round(stats.images_per_second * stats.seconds)

    # (c) plain reference: PIL transforms + DataLoader, NCHW
    reference_model, reference_optimizer = fresh_model(torch.contiguous_format)
    set_train_mode(reference_model, bn_mode)
    reference_set = ReferenceDataset(
        dataset.arrays.x_train[dataset.split.train],
        dataset.train_labels,
        reference_transform(size, dataset.mean, dataset.std),
    )
    reference_batches = endless(
        DataLoader(reference_set, batch_size=batch, shuffle=True, num_workers=0, drop_last=len(reference_set) > batch)
    )

    def reference_train(n: int) -> int:
        seen = 0
        for _ in range(n):
            inputs, targets = next(reference_batches)
            seen += len(targets)
            inputs, targets = inputs.to(device), targets.to(device)
            with runtime.autocast():
                logits = reference_model(inputs)
            loss = F.cross_entropy(logits.float(), targets)
            reference_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            reference_optimizer.step()
            loss.item()
        return seen

    # evaluation: longtail's features_and_logits (uint8 CPU images in, as evaluate_run) vs a bare forward
    eval_images = torch.from_numpy(dataset.test_images[: steps * batch])
    eval_batches = math.ceil(len(eval_images) / batch)

    def longtail_eval() -> int:
        features_and_logits(longtail_model, eval_images, size, dataset.mean, dataset.std, runtime, batch_size=batch)
        return len(eval_images)

    def ceiling_eval() -> int:
        longtail_model.eval()
        with torch.inference_mode():
            for _ in range(eval_batches):
                with runtime.autocast():
                    longtail_model(random_inputs)
        return eval_batches * batch

    runs = {
        "ceiling_train": lambda: ceiling_train(steps),
        "longtail_train": lambda: longtail_train(steps),
        "reference_train": lambda: reference_train(steps),
        "ceiling_eval": ceiling_eval,
        "longtail_eval": longtail_eval,
    }
    print(
        f"{describe_device(device)}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"image {size} px, batch {batch}, {steps} steps x {args.rounds} rounds, "
        f"channels_last {'on' if args.channels_last else 'off'}, compile {'on' if args.compile else 'off'}; "
        f"{len(images)} LT training images, weights {info.name}, BN {bn_mode}",
        flush=True,
    )
    if args.warmup:
        ceiling_train(args.warmup)
        longtail_train(args.warmup)
        reference_train(args.warmup)
        ceiling_eval()
        longtail_eval()
        synchronize(device)

    rates: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for index in range(args.rounds):
        for name in names[index % len(names) :] + names[: index % len(names)]:  # rotate who goes first
            rates[name].append(images_per_second(runs[name], device))
    median = {name: statistics.median(values) for name, values in rates.items()}

    result = {
        "ceiling_train_images_per_s": round(median["ceiling_train"], 2),
        "longtail_train_images_per_s": round(median["longtail_train"], 2),
        "reference_train_images_per_s": round(median["reference_train"], 2),
        "ceiling_eval_images_per_s": round(median["ceiling_eval"], 2),
        "longtail_eval_images_per_s": round(median["longtail_eval"], 2),
        "train_vs_ceiling": round(median["longtail_train"] / median["ceiling_train"], 4),
        "train_vs_reference": round(median["longtail_train"] / median["reference_train"], 4),
        "eval_vs_ceiling": round(median["longtail_eval"] / median["ceiling_eval"], 4),
        "all_rounds_images_per_s": {name: [round(v, 2) for v in values] for name, values in rates.items()},
        "device": describe_device(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "image_size": size,
        "batch_size": batch,
        "steps": steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "reference_num_workers": 0,
        "weights": info.name,
        "bn_mode": bn_mode,
        "train_images": len(images),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    print(f"train ceiling   {median['ceiling_train']:9.1f} img/s  bare fwd+bwd+Adam on random tensors")
    print(
        f"train longtail  {median['longtail_train']:9.1f} img/s  train_one_epoch on the LT set "
        f"({result['train_vs_ceiling']:.2f}x ceiling, {result['train_vs_reference']:.2f}x reference)"
    )
    print(f"train reference {median['reference_train']:9.1f} img/s  PIL transforms + DataLoader(num_workers=0), NCHW")
    print(f"eval  ceiling   {median['ceiling_eval']:9.1f} img/s  bare forward, inference_mode")
    print(
        f"eval  longtail  {median['longtail_eval']:9.1f} img/s  features_and_logits on uint8 test images "
        f"({result['eval_vs_ceiling']:.2f}x ceiling)"
    )
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
