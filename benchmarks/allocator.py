"""glibc's default allocation against ``longtail.allocator.keep_freed_memory``, side by side.

Each measurement is a process of its own (the policy is process-wide, and its peak resident memory
must be its own), alternating between the two policies for ``--rounds`` rounds; medians reported.
A process runs what a `cpu`-preset study spends its time on, on CIFAR-10-LT (IF = 100):

- ``--steps`` training steps of ``train_one_epoch`` (what ``longtail train`` runs) at
  ``--image-size`` with B0's first ``--freeze-blocks`` blocks frozen, after one untimed step;
- a feature pass (``extract_features``, what stage 2, the test-size grid and the test pass run) over
  ``--images`` test images at ``--feature-size``.

Per policy: the images/s of each, the kernel (system) CPU-seconds and minor page faults each caused,
and the process's peak resident memory (``ru_maxrss`` of ``os.wait4``). Keys: ``train_speedup`` and
``features_speedup`` (keep over default, medians), ``default`` and ``keep``. The last stdout line is
one JSON object.

    .venv/bin/python benchmarks/allocator.py --data ../shared/data/cifar10.npz \\
        --weights ../shared/weights/efficientnet_b0_imagenet_tfhub.pth
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
POLICIES = ("default", "keep")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="as for `longtail train --data`")
    parser.add_argument("--weights", default="none", help="as for `longtail train --weights` (default none)")
    parser.add_argument("--cache-dir", type=Path, help="longtail cache (default: $LONGTAIL_CACHE)")
    parser.add_argument("--imbalance", type=float, default=100.0, help="as for `longtail train` (default 100)")
    parser.add_argument("--max-per-class", type=int, help="head-class count (default: all 5,000)")
    parser.add_argument("--val-per-class", type=int, default=50, help="held out per class, as in training (default 50)")
    parser.add_argument(
        "--image-size", type=int, default=128, help="training input size (default 128, the cpu preset's)"
    )
    parser.add_argument("--feature-size", type=int, default=160, help="feature pass input size (default 160)")
    parser.add_argument("--freeze-blocks", type=int, default=4, help="B0 blocks frozen in training (default 4)")
    parser.add_argument("--batch-size", type=int, default=128, help="training images per step (default 128)")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps (default 8)")
    parser.add_argument("--images", type=int, default=1024, help="test images of the feature pass (default 1024)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each running both policies (default 3)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the children (default: torch's choice)")
    parser.add_argument("--child", choices=POLICIES, help=argparse.SUPPRESS)  # run in a child process
    return parser.parse_args(argv)


def _usage() -> tuple[float, int]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_stime, usage.ru_minflt


def _timed(work) -> dict:
    """``work()`` (returning the images it processed): images/s, system seconds and minor faults."""
    system, faults = _usage()
    started = time.perf_counter()
    images = work()
    seconds = time.perf_counter() - started
    system_after, faults_after = _usage()
    return {
        "images_per_s": round(images / seconds, 1),
        "system_seconds": round(system_after - system, 2),
        "minor_faults": faults_after - faults,
    }


def child(args: argparse.Namespace) -> None:
    """One process under one policy: the training steps, then the feature pass."""
    if args.child == "keep":
        from longtail.allocator import keep_freed_memory

        if not keep_freed_memory():
            raise SystemExit("this C library has no mallopt: nothing to compare")
    import torch

    from longtail.config import TrainConfig
    from longtail.data import load_dataset
    from longtail.features import extract_features
    from longtail.models import build_model, freeze_blocks, resolve_bn_mode
    from longtail.optimization import training_state
    from longtail.runtime import Runtime
    from longtail.train import steps_per_epoch, train_one_epoch

    config = TrainConfig(
        data=args.data,
        weights=args.weights,
        imbalance=args.imbalance,
        max_per_class=args.max_per_class,
        val_per_class=args.val_per_class,
        image_size=args.image_size,
        batch_size=args.batch_size,
        freeze_blocks=args.freeze_blocks,
        device="cpu",
    )
    config.validate()
    runtime = Runtime.create(config.device)
    torch.manual_seed(0)
    dataset = load_dataset(config, pretrained=config.weights != "none", cache_dir=args.cache_dir)
    model, info = build_model(dataset.arrays.num_classes, config.weights)
    model = model.to(memory_format=torch.channels_last)
    freeze_blocks(model, config.freeze_blocks)
    images = dataset.images("train")
    labels = torch.from_numpy(dataset.train_labels)
    bn_mode = resolve_bn_mode(config.bn, info)
    state = training_state(model, config, steps_per_epoch(len(labels), config, bn_mode, runtime.world_size))

    def train(steps: int) -> int:
        stats = train_one_epoch(state, model, config, images, labels, dataset, bn_mode, runtime, max_steps=steps)
        state.epoch += 1
        return round(stats.images_per_second * stats.seconds)

    test_images = torch.from_numpy(dataset.test_images[: args.images])
    train(1)  # untimed: the first step's one-off costs
    result = {"train": _timed(lambda: train(args.steps))}
    result["features"] = _timed(
        lambda: len(extract_features(model, test_images, args.feature_size, dataset.mean, dataset.std, runtime))
    )
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result), flush=True)


def measured(argv: list[str], threads: int | None, policy: str) -> dict:
    """This script on ``argv`` in a child process under ``policy``: its measurements and its peak
    resident memory (MB)."""
    command = [sys.executable, __file__, *argv, "--child", policy]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(command, stdout=out, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        out.seek(0)
        text = out.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the {policy} child failed with exit status {os.waitstatus_to_exitcode(status)}")
    result = json.loads(text.strip().splitlines()[-1])
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    return result


def _medians(runs: list[dict]) -> dict:
    summary = {
        part: {key: statistics.median(run[part][key] for run in runs) for key in runs[0][part]}
        for part in ("train", "features")
    }
    summary["peak_rss_mb"] = statistics.median(run["peak_rss_mb"] for run in runs)
    summary["threads"] = runs[0]["threads"]
    return summary


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        child(args)
        return None
    sys.path.insert(0, str(SRC))
    from longtail.hardware import cpu_name

    runs = {policy: [] for policy in POLICIES}
    for round_number in range(1, args.rounds + 1):
        for policy in POLICIES:
            run = measured(argv, args.threads, policy)
            runs[policy].append(run)
            system = run["train"]["system_seconds"] + run["features"]["system_seconds"]
            print(
                f"round {round_number}, {policy}: train {run['train']['images_per_s']} img/s, features at "
                f"{args.feature_size} px {run['features']['images_per_s']} img/s, system {system:.1f} s, "
                f"peak {run['peak_rss_mb']:.0f} MB"
            )
    summary = {policy: _medians(runs[policy]) for policy in POLICIES}
    speedup = {
        f"{part}_speedup": round(summary["keep"][part]["images_per_s"] / summary["default"][part]["images_per_s"], 3)
        for part in ("train", "features")
    }
    result = {
        **speedup,
        **summary,
        "image_size": args.image_size,
        "feature_size": args.feature_size,
        "freeze_blocks": args.freeze_blocks,
        "steps": args.steps,
        "images": args.images,
        "rounds": args.rounds,
        "cpu": cpu_name(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
