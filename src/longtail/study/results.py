"""``results.json`` of a study: the shared configuration (and per stage-2 head what it used), each
strategy aggregated over seeds with its tuned result (``strategies.<row>.tuned``: the head with its
knobs tuned on validation; Modified CE's ``tuned`` is its row itself), each run's own record, and
the environment (``study_results``)."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

from longtail.artifacts import run_test_size
from longtail.config import PRESETS, TrainConfig, from_record
from longtail.hardware import hardware_description
from longtail.metrics import aggregate_seeds
from longtail.runs import RUN_FILE, read_json
from longtail.stage2.tuning import tuning_grid
from longtail.study.plan import Stage2Group, stage2_groups


def _run_summary(run_dir: Path, out: Path) -> dict:
    """What results.json records of one run: its own configuration and provenance."""
    record = read_json(run_dir / RUN_FILE)
    if record["kind"] == "train":
        config = from_record(TrainConfig, record["config"])
        return {
            "kind": "train",
            "config": record["config"],
            "epoch_sizes": record.get("epoch_sizes", config.epoch_sizes),
            "test_image_size": run_test_size(record, config),
            "test_size_grid": record.get("test_size_grid", {}),
            "data_sha256": record["data_sha256"],
            "weights_sha256": record["weights"]["sha256"],
            "model_sha256": record.get("model_sha256"),
            "wall_seconds": record.get("wall_seconds_this_session"),
        }
    return {
        "kind": "decouple",
        "config": record["config"],
        "stage1": str(Path(record["stage1"]).relative_to(out.resolve())),
        "stage1_model_sha256": record.get("stage1_model_sha256"),
        "feature_image_size": record.get("feature_image_size"),
        "beta": record.get("beta"),
        "chosen": {k: v for k, v in record.get("chosen", {}).items() if not k.startswith("val_accuracy_by")},
    }


def _tuned_values(chosen: dict) -> dict:
    """The values a head chose on validation (``{"gamma": 2.0}``), from its run.json's ``chosen``."""
    knobs = chosen.get("tuned", ["tau"] if "val_accuracy_by_tau" in chosen else [])
    return {knob: chosen[knob] for knob in knobs}


def _tuned_entry(metrics: list[dict], chosen: list[dict], grid: list[dict], seeds, run: str) -> dict:
    """``strategies.<row>.tuned``: top-1 of the head tuned on validation, mean and sample std over
    seeds with each seed's value, what each seed chose and the grid it chose from."""
    aggregated = aggregate_seeds(metrics, seeds)
    return {
        "accuracy": aggregated["mean"]["accuracy"],
        "std": aggregated["std"]["accuracy"],
        "accuracy_by_seed": aggregated["by_seed"]["accuracy"],
        "seeds": aggregated["seeds"],
        "chosen": chosen,
        "grid": grid,
        "run": run,
        "mean": aggregated["mean"],
    }


def _strategies(per_seed: list[dict], groups: list[Stage2Group], seeds, out: Path, part=None) -> dict:
    """The study's rows aggregated over seeds, each row with a knob given its ``tuned`` result;
    ``part`` picks a part of each metrics.json (``tta_flip``)."""
    variants = {run for group in groups for row, run in group.tuned.items() if run != row}

    def metrics_of(name):
        return [m[name] if part is None else m[name][part] for m in per_seed]

    strategies = {name: aggregate_seeds(metrics_of(name), seeds) for name in per_seed[0] if name not in variants}
    for group in groups:
        for row, run in group.tuned.items():
            chosen = [_tuned_values(read_json(out / f"seed{seed}" / run / RUN_FILE)["chosen"]) for seed in seeds]
            grid = tuning_grid(group.heads[run])
            strategies[row]["tuned"] = _tuned_entry(metrics_of(run), chosen, grid, seeds, run)
    return strategies


def _stage2_settings(groups: list[Stage2Group], out: Path, seed: int) -> dict:
    """What stage 2 used, per head (its seed aside): the config it ran with (``resolved``), the
    Class-Balanced beta it took from the stage-1 run, and the knobs it tuned with their grid."""
    settings = {}
    for group in groups:
        for name, config in group.heads.items():
            record = read_json(out / f"seed{seed}" / name / RUN_FILE)
            used = {k: v for k, v in record["config"].items() if k != "seed"}
            if "beta" in config.knobs and "beta" not in config.tuned_knobs and used["beta"] is None:
                used["beta"] = record.get("beta")  # the stage-1 run's
            if config.tuned_knobs:
                used.update(tuned=list(config.tuned_knobs), grid=tuning_grid(config))
            settings[name] = used
    return settings


def _environment(out: Path, seed: int, study: dict) -> dict:
    """The data, weights and machine of the study, with its wall times (``longtail.study.walltime``):
    this invocation's, and the whole study's over every invocation; ``gpu`` where it trained on one."""
    baseline_run = read_json(out / f"seed{seed}" / "baseline" / RUN_FILE)
    return {
        "data_source": baseline_run["data_source"],
        "data_sha256": baseline_run["data_sha256"],
        "weights": baseline_run["weights"]["name"],
        "weights_sha256": baseline_run["weights"]["sha256"],
        "bn_mode": baseline_run["bn_mode"],
        "train_counts": baseline_run["train_counts"],
        **hardware_description(study["device"]),
        **{name: round(seconds, 1) for name, seconds in study["wall"].items()},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def study_results(out: Path, base: TrainConfig, plan: list[list], per_seed: list[dict], study: dict) -> dict:
    """``results.json``: the shared configuration (and per stage-2 head what it used), each
    strategy aggregated over seeds with its tuned result, each run's own record, the environment."""
    seeds, groups = study["seeds"], stage2_groups(plan[0])
    results = {
        "config": {
            "preset": study["preset"],
            "preset_reason": PRESETS[study["preset"]].reason,
            "overrides": study["given"],
            **{k: v for k, v in dataclasses.asdict(base).items() if k != "seed"},
            "seeds": list(seeds),
            "extras": study["extras"],
            "test_priors": [prior.name for prior in study["test_priors"]],
            "stage2": _stage2_settings(groups, out, seeds[0]),
        },
        "strategies": _strategies(per_seed, groups, seeds, out),
    }
    if base.tta == "flip":  # rows of their own, never mixed into the study's
        results["strategies_tta_flip"] = _strategies(per_seed, groups, seeds, out, part="tta_flip")
    results["runs"] = {
        f"seed{seed}/{name}": _run_summary(out / f"seed{seed}" / name, out) for seed in seeds for name in per_seed[0]
    }
    results["environment"] = _environment(out, seeds[0], study)
    return results
