"""A process's first training step and its steady steps under the old and the new cuDNN policy, and
with ``--compile`` (its compile time counted): what a study pays before its work starts (issue 28).

Each variant runs in a process of its own, since cuDNN's autotuning results and torch.compile's
graphs live as long as the process:

- ``old``: ``cudnn.benchmark`` on for everything (longtail before issue 28): every new (batch, size)
  shape is autotuned, inference batches unpadded;
- ``new``: ``longtail.cudnn``'s policy: full training batches autotuned, the epoch's last (partial)
  batch and every inference pass not, inference padded to one shape per size
  (``longtail.features.extract_features``);
- ``heuristic``: no autotuning anywhere, training included (cuDNN's heuristic choice for every
  shape), inference as in ``new``: what the first step saves against what the steady steps lose;
- ``limit``: ``new`` with ``torch.backends.cudnn.benchmark_limit`` lowered to ``--benchmark-limit``
  (the number of algorithms cuDNN times per convolution; torch's default is 10);
- ``compile``: ``new`` with the training step's model compiled as ``longtail train --compile`` does
  (``torch.compile(model, dynamic=False)``): the first step of each shape includes its compilation.

Whichever wins on a GPU becomes ``longtail.cudnn``'s policy (one function there).

Per variant, on random uint8 images in the study's shapes (the data's content does not change what
a step costs): the first step (nothing autotuned or compiled yet), the median of the next
``--steps`` steps, the first and a second step of the epoch's last partial batch (``--train-images``
modulo the batch), then the inference a study does after training: validation (``--val-images``) at
every size of the test-size grid and a feature pass over the training images at the training size,
each timed the first time. ``training_estimate_s``: one stage-1 run of ``--epochs`` epochs from
these (first step, steady steps, partial steps), the number to set against the first-step cost.
Each process's wall is reported too (``process_s``: interpreter, imports, model, everything).

On a CPU cuDNN is not used: the script runs and says so (``cudnn``: false); its numbers are then the
CPU's own first-step cost. The last line of stdout is one JSON object.

    python benchmarks/first_step.py --device cuda --image-size 224 --batch-size 128
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from longtail import cudnn
from longtail.config import TrainConfig
from longtail.data import IMAGENET_MEAN, IMAGENET_STD, to_model_input
from longtail.features import INFERENCE_BATCH_SIZE, extract_features
from longtail.hardware import cpu_name
from longtail.models import build_model, resolve_bn_mode, set_train_mode, trainable_parameters
from longtail.optimization import make_optimizer
from longtail.resolution import size_grid
from longtail.runtime import Runtime
from shared_files import WEIGHTS

VARIANTS = ("old", "new", "heuristic", "limit", "compile")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--weights", default=str(WEIGHTS) if WEIGHTS.is_file() else "none", help="as for `longtail train`"
    )
    parser.add_argument("--bn", default="auto", help="as for `longtail train --bn` (auto: frozen for folded weights)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-images", type=int, default=12_356, help="CIFAR-10-LT, IF 100, 50 held out per class")
    parser.add_argument("--val-images", type=int, default=500)
    parser.add_argument("--inference-batch", type=int, default=INFERENCE_BATCH_SIZE)
    parser.add_argument("--steps", type=int, default=20, help="steady steps timed after the first")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the training estimate")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--benchmark-limit", type=int, default=3, help="cuDNN's benchmark_limit of the limit variant")
    parser.add_argument("--timeout", type=float, default=540.0, help="seconds per variant's process")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_images % args.batch_size == 0:
        parser.error("--train-images must leave a last partial batch (it is one of the shapes measured)")
    return args


def _timed(action, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    action()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def _plain_inference(model, images, size, batch_size, runtime) -> None:
    """The inference of longtail before issue 28: batches as they come, the last one unpadded."""
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            with runtime.autocast():
                model(to_model_input(images[start : start + batch_size], size, IMAGENET_MEAN, IMAGENET_STD))


def _inference(variant: str, model, images, size: int, args, runtime) -> float:
    """Seconds of one inference pass over ``images`` at ``size``: longtail's, or the plain one of
    before (``old``)."""

    def run() -> None:
        if variant == "old":
            _plain_inference(model, images, size, args.inference_batch, runtime)
        else:
            extract_features(model, images, size, IMAGENET_MEAN, IMAGENET_STD, runtime, batch_size=args.inference_batch)

    return _timed(run, runtime.device)


def child(args: argparse.Namespace) -> dict:
    """One variant, in this process."""
    variant, runtime = args.child, Runtime.create(args.device)
    device, size, batch = runtime.device, args.image_size, args.batch_size
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = variant == "old"
    if variant == "limit" and torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark_limit = args.benchmark_limit
    model, info = build_model(10, args.weights)
    model = model.to(device, memory_format=torch.channels_last)
    bn_mode = resolve_bn_mode(args.bn, info)
    optimizer = make_optimizer(TrainConfig(), trainable_parameters(model))
    step_model = torch.compile(model, dynamic=False) if variant == "compile" else model
    images = torch.randint(0, 256, (args.train_images, 32, 32, 3), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (args.train_images,), device=device)
    partial = args.train_images % batch

    def step(count: int) -> None:
        set_train_mode(model, bn_mode)
        autotune = count == batch and variant != "heuristic"
        policy = contextlib.nullcontext() if variant == "old" else cudnn.training_step(full=autotune)
        inputs = to_model_input(images[:count], size, IMAGENET_MEAN, IMAGENET_STD)
        with policy:
            with runtime.autocast():
                logits = step_model(inputs)
            loss = F.cross_entropy(logits.float(), labels[:count])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    first = _timed(lambda: step(batch), device)
    steady = statistics.median(_timed(lambda: step(batch), device) for _ in range(args.steps))
    partial_first, partial_again = (_timed(lambda: step(partial), device) for _ in range(2))
    val = images[: args.val_images]
    grid = {str(s): round(_inference(variant, model, val, s, args, runtime), 3) for s in size_grid(size)}
    features = _inference(variant, model, images, size, args, runtime)
    steps_per_epoch = -(-args.train_images // batch)
    estimate = first + (args.epochs * (steps_per_epoch - 1) - 1) * steady + partial_first
    estimate += (args.epochs - 1) * partial_again
    return {
        "first_step_s": round(first, 3),
        "steady_step_s": round(steady, 4),
        "partial_step_first_s": round(partial_first, 3),
        "partial_step_again_s": round(partial_again, 4),
        "validation_grid_s": grid,
        "feature_pass_s": round(features, 3),
        "inference_s": round(sum(grid.values()) + features, 3),
        "training_estimate_s": round(estimate, 1),
        "bn_mode": bn_mode,
    }


def _run_variant(variant: str, argv: list[str], timeout: float) -> dict:
    """``variant`` in a fresh process: its JSON line, or why there is none."""
    command = [sys.executable, os.path.abspath(__file__), *argv, "--child", variant]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": f"exit status {done.returncode}: {done.stderr.strip()[-500:]}"}
    return {**json.loads(lines[-1]), "process_s": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        result = child(args)
        print(json.dumps(result), flush=True)
        return result
    device = Runtime.create(args.device).device
    uses_cudnn = device.type == "cuda" and torch.backends.cudnn.is_available()
    name = f"cpu ({cpu_name()}, {os.cpu_count()} cores)"
    if device.type == "cuda":
        name = f"cuda ({torch.cuda.get_device_name(device)})"
    print(f"{name}, torch {torch.__version__}; {args.image_size} px, batch {args.batch_size}, variants {args.variants}")
    if not uses_cudnn:
        print("cuDNN is not used on this device: the policies differ only on a GPU; these are the CPU's own numbers")
    variants = {}
    for variant in args.variants:
        variants[variant] = _run_variant(variant, argv, args.timeout)
        print(f"{variant:8} {json.dumps(variants[variant])}", flush=True)
    result = {
        "variants": variants,
        "cudnn": uses_cudnn,
        "device": name,
        "torch": torch.__version__,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "train_images": args.train_images,
        "val_images": args.val_images,
        "inference_batch": args.inference_batch,
        "benchmark_limit": args.benchmark_limit,
        "steps": args.steps,
        "epochs": args.epochs,
        "test_size_grid": size_grid(args.image_size),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
