"""`longtail reproduce`: the whole study in one command, resumable, with a report.

Per seed: stage 1 (the baseline) is trained once and reused by every decoupled loss; Reweight
is its own end-to-end run; ``--extras`` adds the strategies beyond the study. Every piece is
its own run directory under ``OUT/seed<S>/<strategy>``, so rerunning skips what is finished
and resumes what is not. Results of all seeds are aggregated into ``results.json``,
``results.md``, ``figures/`` and ``report.html``. The run directories get ``metrics.json`` but no
figures of their own: the study draws one set per strategy, from its seeds together.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from longtail.data import load_arrays
from longtail.decouple import Stage2Config, decouple_many
from longtail.errors import LongtailError
from longtail.metrics import aggregate_seeds
from longtail.models import build_model
from longtail.report import render_study
from longtail.runs import RunLock, atomic_write_json, read_json, run_status
from longtail.train import TrainConfig, train


@dataclass(frozen=True)
class Preset:
    """Stage-1 settings of a preset; everything else is the study's (Adam, lr 1e-4, batch 128)."""

    image_size: int
    epochs: int
    max_per_class: int | None
    reason: str


PRESETS = {
    # The study's recipe: pretrained B0 at 224 px, 30 epochs. About 25 min per epoch on 2 CPU
    # cores, so it is meant for a GPU.
    "seed": Preset(224, 30, None, "the study's recipe: 224 px, 30 epochs (GPU)"),
    # The most faithful configuration whose whole study (baseline + Reweight stage-1 runs,
    # features, all stage-2 heads, evaluation) fits 60 minutes on 2 CPU cores: chosen by
    # measurement, see RESULTS.md ("Choosing the cpu preset").
    "cpu": Preset(64, 8, None, "64 px, 8 epochs: the largest that fits 60 min on 2 CPU cores (measured)"),
    # A few minutes: a small long-tailed subset at 32 px, for tests and a first look.
    "smoke": Preset(32, 1, 200, "32 px, 1 epoch, 200 images in the head class (a few minutes)"),
}

STUDY_LOSSES = ("modified-ce", "balanced-softmax", "focal", "class-balanced", "cb-focal")
EXTRA_STAGE2 = {
    "decoupled-crt": Stage2Config(loss="crt"),
    "decoupled-ldam": Stage2Config(loss="ldam"),
    "decoupled-inverse-frequency-ce": Stage2Config(loss="inverse-frequency-ce"),
    "tau-norm": Stage2Config(method="tau-norm"),
    "lws": Stage2Config(method="lws"),
    "post-hoc-la": Stage2Config(method="post-hoc-la"),
}
EXTRA_STAGE1 = ("ldam-drw",)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_description() -> dict:
    description = {
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        description["gpu"] = torch.cuda.get_device_name(0)
    return description


def _finished(run_dir: Path) -> bool:
    """Finished and evaluated: a rerun of the study reuses it as it is."""
    return run_status(run_dir) == "finished" and (run_dir / "metrics.json").exists()


def _stage1(config: TrainConfig, out: Path, cache_dir: Path | None) -> dict:
    if not _finished(out):
        train(config, out, resume=True, cache_dir=cache_dir, figures=False)
    return read_json(out / "metrics.json")


def _stage2(stage1: Path, configs: dict[str, Stage2Config], seed_dir: Path, cache_dir: Path | None) -> dict:
    """Metrics of the stage-2 runs ``seed_dir/NAME``, fitted together where not finished."""
    pending = {seed_dir / name: config for name, config in configs.items() if not _finished(seed_dir / name)}
    if pending:  # stage 2 takes seconds: unfinished runs are redone
        decouple_many(stage1, pending, overwrite=True, cache_dir=cache_dir, figures=False)
    return {name: read_json(seed_dir / name / "metrics.json") for name in configs}


def reproduce(
    out: Path,
    *,
    preset: str = "cpu",
    seeds: tuple[int, ...] = (0,),
    imbalance: float = 100.0,
    extras: bool = False,
    data: str | None = None,
    weights: str = "imagenet",
    decay_reading: str | None = None,
    epochs: int | None = None,
    image_size: int | None = None,
    cache_dir: Path | None = None,
) -> dict:
    """Run (or resume) the study and write its results and report into ``out``.

    ``epochs`` and ``image_size`` override the preset's (recorded in ``results.json``).
    """
    if preset not in PRESETS:
        raise LongtailError(f"unknown preset '{preset}': choose one of {', '.join(PRESETS)}")
    if not seeds:
        raise LongtailError("--seeds needs at least one seed")
    chosen = PRESETS[preset]
    out = Path(out)
    started = time.perf_counter()
    base = TrainConfig(
        data=data,
        weights=weights,
        imbalance=imbalance,
        image_size=chosen.image_size if image_size is None else image_size,
        epochs=chosen.epochs if epochs is None else epochs,
        max_per_class=chosen.max_per_class,
    )
    if decay_reading is not None:
        base = dataclasses.replace(base, decay_reading=decay_reading)
    base.validate()
    # Bad data or weights fail here, before anything is written.
    build_model(load_arrays(data, cache_dir).num_classes, weights)
    per_strategy: dict[str, list[dict]] = {}
    with RunLock(out):
        for seed in seeds:
            seed_dir = out / f"seed{seed}"
            stage1_dir = seed_dir / "baseline"
            # Cheap stage-2 heads right after the stage 1 they share, so results arrive early.
            runs = {"baseline": _stage1(dataclasses.replace(base, seed=seed), stage1_dir, cache_dir)}
            study_heads = {f"decoupled-{loss}": Stage2Config(loss=loss, seed=seed) for loss in STUDY_LOSSES}
            runs.update(_stage2(stage1_dir, study_heads, seed_dir, cache_dir))
            runs["reweight"] = _stage1(
                dataclasses.replace(base, seed=seed, strategy="reweight"), seed_dir / "reweight", cache_dir
            )
            if extras:
                extra_heads = {name: dataclasses.replace(config, seed=seed) for name, config in EXTRA_STAGE2.items()}
                runs.update(_stage2(stage1_dir, extra_heads, seed_dir, cache_dir))
                for strategy in EXTRA_STAGE1:
                    runs[strategy] = _stage1(
                        dataclasses.replace(base, seed=seed, strategy=strategy), seed_dir / strategy, cache_dir
                    )
            runs = {"baseline": runs.pop("baseline"), "reweight": runs.pop("reweight"), **runs}  # the study's order
            for name, metrics in runs.items():
                per_strategy.setdefault(name, []).append(metrics)
        baseline_run = read_json(out / f"seed{seeds[0]}" / "baseline" / "run.json")
        results = {
            "config": {
                "preset": preset,
                "preset_reason": chosen.reason,
                "overrides": {k: v for k, v in (("epochs", epochs), ("image_size", image_size)) if v is not None},
                **dataclasses.asdict(base),
                "seeds": list(seeds),
                "extras": extras,
                "stage2": dataclasses.asdict(Stage2Config()),
            },
            "strategies": {name: aggregate_seeds(metrics, seeds) for name, metrics in per_strategy.items()},
        }
        environment = {
            "data_source": baseline_run["data_source"],
            "data_sha256": baseline_run["data_sha256"],
            "weights": baseline_run["weights"]["name"],
            "weights_sha256": baseline_run["weights"]["sha256"],
            "bn_mode": baseline_run["bn_mode"],
            "train_counts": baseline_run["train_counts"],
            **hardware_description(),
            "wall_seconds_this_invocation": round(time.perf_counter() - started, 1),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        results["environment"] = environment
        atomic_write_json(out / "results.json", results)
        render_study(results, out, environment=environment)
    return results
