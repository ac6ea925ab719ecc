"""Peak memory of a list source stored memory-mapped: ``longtail data`` and one training epoch.

Builds a synthetic list source of ``--images N`` training images at ``--size S`` px under ``--work``
(a pool of ``--distinct`` JPEG files listed over and over, a natural long tail over ``--classes``
classes with non-contiguous labels, a validation and a test list of files of their own), then, each
in a process of its own so that its peak resident memory (``ru_maxrss`` of ``os.wait4``) is its own:

- ``longtail data`` decoding the lists into the store (the first time) and opening it (the second);
- one training epoch (``train_one_epoch``, what ``longtail train`` runs; ``--steps K``: its first K
  steps) reading its batches from the store, randomly initialised B0 at ``--image-size``;
- unless ``--no-speed``, and only when the training split fits in a quarter of the available
  memory: the epoch's speed from the store against the same steps from the training split loaded in
  memory (what every in-memory source does), interleaved rounds, medians, and the time a batch's
  read from the store takes (``store_read_ms_per_batch``: the store's share of a step, which the
  rounds' noise can hide).

The store is N x S x S x 3 bytes: 150,000 images at 96 px are 4.1 GB. The peak of ``longtail data``
is bounded by one decoding chunk (``longtail.data.store.CHUNK_BYTES``) and the lists; the epoch's by
the model and a batch: neither grows with N. The last stdout line is one JSON object.

    python benchmarks/memory.py --images 150000 --size 96 --steps 200 --work /scratch/longtail-memory
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SRC = Path(__file__).resolve().parents[1] / "src"
LISTS = {"train": "train.txt", "val": "val.txt", "test": "test.txt"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, required=True, help="training images listed (N)")
    parser.add_argument("--size", type=int, required=True, help="store size S in px (also the image files' size)")
    parser.add_argument("--classes", type=int, default=100, help="classes (default 100)")
    parser.add_argument("--distinct", type=int, default=500, help="distinct training files listed (default 500)")
    parser.add_argument("--image-size", type=int, help="training input size (default: --size, at least 32)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    parser.add_argument("--steps", type=int, help="steps of the training epoch (default: the whole epoch)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the speed check (default 3)")
    parser.add_argument("--no-speed", action="store_true", help="skip the store-against-memory speed check")
    parser.add_argument("--threads", type=int, help="torch threads and OMP_NUM_THREADS of the children")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--work", type=Path, help="where the images, lists and store go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep --work's temporary folder")
    parser.add_argument("--child", choices=("epoch", "speed"), help=argparse.SUPPRESS)  # run in a child process
    args = parser.parse_args(argv)
    if args.images < args.classes or args.classes < 2:
        parser.error("--images must be at least --classes, and --classes at least 2")
    if args.size < 16 or args.batch_size < 1 or args.rounds < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--size must be at least 16, --batch-size, --rounds and --steps positive")
    args.image_size = args.image_size or max(32, args.size)
    return args


# ---------------------------------------------------------------- the synthetic list source


def _picture(rng: np.random.Generator, size: int) -> Image.Image:
    """A smooth random picture: 8x8 noise upscaled (a JPEG of it decodes like a photo, not like noise)."""
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


def build_source(work: Path, images: int, size: int, classes: int, distinct: int) -> Path:
    """The image root ``work/tree`` with ``train.txt`` (``images`` lines over ``distinct`` files,
    class ``c`` of label ``7c + 3`` with a share proportional to ``100^(-c/(C-1))``), ``val.txt`` (one
    file per class) and ``test.txt`` (two per class)."""
    root = work / "tree"
    rng = np.random.default_rng(0)
    for folder in ("train", "val", "test"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    pool = [f"train/{i:06d}.jpg" for i in range(min(distinct, images))]
    held_out = {
        "val": [f"val/{c:05d}.jpg" for c in range(classes)],
        "test": [f"test/{i:05d}.jpg" for i in range(2 * classes)],
    }
    for relative in pool + held_out["val"] + held_out["test"]:
        if not (root / relative).exists():
            _picture(rng, size).save(root / relative, quality=90)
    shares = 100.0 ** (-np.arange(classes) / (classes - 1))
    counts = np.maximum(1, np.floor(shares / shares.sum() * images)).astype(int)
    counts[0] += images - counts.sum()  # exactly `images` lines, every class at least one
    labels = np.repeat(np.arange(classes), counts)
    lines = {"train": [f"{pool[i % len(pool)]} {7 * c + 3}" for i, c in enumerate(labels)]}
    lines["val"] = [f"{path} {7 * c + 3}" for c, path in enumerate(held_out["val"])]
    lines["test"] = [f"{path} {7 * (i % classes) + 3}" for i, path in enumerate(held_out["test"])]
    for role, name in LISTS.items():
        (root / name).write_text("\n".join(lines[role]) + "\n")
    return root


# ---------------------------------------------------------------- measured children


def _source_options(root: Path, work: Path, size: int) -> list[str]:
    options = ["--data", str(root), "--store-size", str(size), "--cache-dir", str(work / "cache")]
    return options + [arg for role, name in LISTS.items() for arg in (f"--{role}-list", str(root / name))]


def measured(command: list[str], threads: int | None) -> dict:
    """Run ``command``; its wall seconds, peak resident memory (MB, ``os.wait4``) and last stdout line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(command, stdout=out, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0)
        text = out.read()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit status {process.returncode}")
    print(text, end="")
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "last_line": text.strip().splitlines()[-1],
    }


def _resident_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TimedReads:
    """Images (a ``StoredImages``) whose batch reads are timed: the store's share of a step."""

    def __init__(self, images):
        self.images, self.seconds, self.reads = images, 0.0, 0

    @property
    def device(self):
        return self.images.device

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        started = time.perf_counter()
        batch = self.images[key]
        self.seconds += time.perf_counter() - started
        self.reads += 1
        return batch


def child(args: argparse.Namespace) -> None:
    """In a child process: one epoch from the store (``epoch``), or store against memory (``speed``)."""
    import torch

    from longtail.checkpoint import TrainingState
    from longtail.config import TrainConfig
    from longtail.data import load_dataset
    from longtail.models import build_model, resolve_bn_mode
    from longtail.runtime import Runtime
    from longtail.train import steps_per_epoch, train_one_epoch

    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.work / "tree"
    lists = {f"{role}_list": str(root / name) for role, name in LISTS.items()}
    config = TrainConfig(data=str(root), **lists, store_size=args.size, imbalance="natural", val_per_class=0,
                         weights="none", image_size=args.image_size, batch_size=args.batch_size, epochs=1,
                         device=args.device)  # fmt: skip
    config.validate()
    runtime = Runtime.create(config.device)
    before = _resident_mb()
    started = time.perf_counter()
    dataset = load_dataset(config, pretrained=False, cache_dir=args.work / "cache")
    opened = {
        "open_seconds": round(time.perf_counter() - started, 3),
        "peak_rss_growth_opening_mb": round(_resident_mb() - before, 1),
    }
    model, info = build_model(dataset.arrays.num_classes, "none")
    model = model.to(runtime.device, memory_format=torch.channels_last)
    state = TrainingState(model, torch.optim.Adam(model.parameters(), lr=config.lr), None)
    bn_mode = resolve_bn_mode(config.bn, info)
    labels = torch.from_numpy(dataset.train_labels).to(runtime.device)
    stored = TimedReads(dataset.images("train").to(runtime.device))
    steps = args.steps or steps_per_epoch(len(labels), config, bn_mode, 1)

    def rate(images) -> float:
        stats = train_one_epoch(state, model, config, images, labels, dataset, bn_mode, runtime, max_steps=steps)
        state.epoch += 1
        return stats.images_per_second

    if args.child == "epoch":
        result = {
            "images_per_s": round(rate(stored), 2),
            "steps": steps,
            **opened,
            "store": type(stored.images).__name__,
        }
    else:
        in_memory = torch.from_numpy(np.asarray(dataset.arrays.x_train[dataset.split.train])).to(runtime.device)
        rates = {"store": [], "in_memory": []}
        rate(in_memory)  # warm-up
        for index in range(args.rounds):
            for name in ("store", "in_memory") if index % 2 == 0 else ("in_memory", "store"):
                rates[name].append(rate(stored if name == "store" else in_memory))
        store, memory = statistics.median(rates["store"]), statistics.median(rates["in_memory"])
        result = {"store_images_per_s": round(store, 2), "in_memory_images_per_s": round(memory, 2),
                  "store_vs_in_memory": round(store / memory, 4), "steps": steps, "rounds": args.rounds,
                  "all_rounds_images_per_s": {k: [round(v, 2) for v in vs] for k, vs in rates.items()},
                  "store_read_ms_per_batch": round(1e3 * stored.seconds / stored.reads, 3)}  # fmt: skip
    print(json.dumps(result), flush=True)


def _available_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.child:
        return child(args)
    from longtail.hardware import cpu_name

    temporary = args.work is None
    args.work = Path(tempfile.mkdtemp(prefix="longtail-memory-")) if temporary else args.work
    try:
        started = time.perf_counter()
        root = build_source(args.work, args.images, args.size, args.classes, args.distinct)
        print(
            f"built {args.images} listed images at {args.size} px under {root} in {time.perf_counter() - started:.1f} s"
        )
        data = [sys.executable, "-m", "longtail", "data", *_source_options(root, args.work, args.size)]
        decode = measured(data, args.threads)
        reopen = measured(data, args.threads)
        store_bytes = sum(p.stat().st_size for p in (args.work / "cache").glob("images-*.u8"))
        me = [sys.executable, str(Path(__file__).resolve()), *(argv if argv is not None else sys.argv[1:])]
        me += [] if "--work" in me else ["--work", str(args.work)]
        epoch = measured([*me, "--child", "epoch"], args.threads)
        train_bytes = args.images * args.size * args.size * 3
        speed = None
        if not args.no_speed and train_bytes < _available_bytes() // 4:
            speed = json.loads(measured([*me, "--child", "speed"], args.threads)["last_line"])
        result = {
            "images": args.images,
            "size": args.size,
            "store_bytes": store_bytes,
            "data_decode": {k: decode[k] for k in ("seconds", "peak_rss_mb")},
            "data_open": {k: reopen[k] for k in ("seconds", "peak_rss_mb")},
            "epoch": {
                "seconds": epoch["seconds"],
                "peak_rss_mb": epoch["peak_rss_mb"],
                **json.loads(epoch["last_line"]),
            },
            "speed": speed,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        print(
            f"store {store_bytes / 2**30:.2f} GiB; longtail data: decode {decode['seconds']} s, peak RSS "
            f"{decode['peak_rss_mb']} MB; open {reopen['seconds']} s, peak RSS {reopen['peak_rss_mb']} MB; "
            f"epoch ({result['epoch']['steps']} steps): peak RSS {epoch['peak_rss_mb']} MB"
            + ("" if speed is None else f"; store vs in memory {speed['store_vs_in_memory']:.3f}x")
        )
        print(json.dumps(result), flush=True)
        return result
    finally:
        if temporary and not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
