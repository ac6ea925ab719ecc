"""`longtail reproduce`: the whole study in one command, resumable, with a report.

Per seed: stage 1 (the baseline) is trained once and reused by every decoupled loss; Reweight
is its own end-to-end run; ``--extras`` adds the strategies beyond the study. Every piece is
its own run directory under ``OUT/seed<S>/<strategy>``, so rerunning skips what is finished
and resumes what is not. Results of all seeds are aggregated into ``results.json``,
``results.md``, ``figures/`` and ``report.html``. The run directories get ``metrics.json`` but no
figures of their own: the study draws one set per strategy, from its seeds together.

The study's rows keep the study's settings (focal gamma 1, Class-Balanced beta 0.9999); each
decoupled loss with a knob it does not tune itself is also fitted with that knob tuned on the
validation split (``seed<S>/decoupled-<loss>-tuned``, in the same grid of heads, same batches and
learning rate), reported beside its row as ``strategies.<row>.tuned``. Modified CE tunes its tau in
its own row, so its ``tuned`` is the row itself; Balanced Softmax has no knob.

``reproduce`` reads as its steps: the settings, the plan, every conflict checked before any
training (``check_plan``, ``check_existing_runs``), the seeds run (``_run_seeds``), the results
written (``_results``).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from longtail.artifacts import run_test_size
from longtail.config import (
    PRESETS,
    TUNABLE,
    Stage2Config,
    TrainConfig,
    config_differences,
    describe_differences,
    from_record,
    study_config,
    validation_choices,
)
from longtail.data import load_source
from longtail.decouple import decouple_many
from longtail.errors import LongtailError
from longtail.metrics import aggregate_seeds
from longtail.models import build_model
from longtail.priors import DEFAULT_TEST_PRIORS, Prior, check_classes, with_test_priors
from longtail.report import render_study
from longtail.runs import RUN_FILE, RunLock, atomic_write_json, read_json, run_status
from longtail.stage2.tuning import tuning_grid
from longtail.train import train

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
TUNED_SUFFIX = "-tuned"  # the run of a row's tuned variant: seed<S>/decoupled-focal-tuned


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


# ---------------------------------------------------------------- the plan of a study


@dataclass(frozen=True)
class Stage1Run:
    directory: Path
    config: TrainConfig


@dataclass(frozen=True)
class Stage2Group:
    """Stage-2 heads fitted together on one stage-1 run: {name: config}; ``tuned`` maps each row
    of the study whose knobs are tuned somewhere to the head holding that result: its tuned
    variant (``<row>-tuned``, gamma and beta tuned on validation), or the row itself where its
    own setting is tuned (Modified CE's tau)."""

    stage1: Path
    heads: dict[str, Stage2Config]
    tuned: dict[str, str] = field(default_factory=dict)


def _stage2_group(stage1: Path, rows: dict[str, Stage2Config], seed: int) -> Stage2Group:
    """The rows' heads on ``stage1`` with the seed (where they train), each row with a knob that
    it does not tune itself joined by its tuned variant: the same head with ``tune``, trained in
    the same grid (the same batches and learning rate)."""
    heads, tuned = {}, {}
    for name, config in rows.items():
        heads[name] = dataclasses.replace(config, seed=seed) if config.trains else config
        if heads[name].tuned_knobs:
            tuned[name] = name
        elif any(knob in TUNABLE for knob in config.knobs):
            heads[name + TUNED_SUFFIX] = dataclasses.replace(heads[name], tune=True)
            tuned[name] = name + TUNED_SUFFIX
    return Stage2Group(stage1, heads, tuned)


def _plan(base: TrainConfig, seeds: tuple[int, ...], extras: bool, out: Path) -> list[list]:
    """Per seed, the list of runs in the order they are made: stage 1 (the baseline) is trained once and
    reused by every decoupled loss; cheap stage-2 heads right after the stage 1 they share, so
    results arrive early; Reweight (and with ``extras`` the other end-to-end strategies) are runs
    of their own."""
    plan = []
    for seed in seeds:
        seed_dir = out / f"seed{seed}"
        stage1 = seed_dir / "baseline"
        study_heads = {f"decoupled-{loss}": Stage2Config(loss=loss) for loss in STUDY_LOSSES}
        steps: list = [
            Stage1Run(stage1, dataclasses.replace(base, seed=seed)),
            _stage2_group(stage1, study_heads, seed),
            Stage1Run(seed_dir / "reweight", dataclasses.replace(base, seed=seed, strategy="reweight")),
        ]
        if extras:
            steps.append(_stage2_group(stage1, EXTRA_STAGE2, seed))
            steps += [
                Stage1Run(seed_dir / strategy, dataclasses.replace(base, seed=seed, strategy=strategy))
                for strategy in EXTRA_STAGE1
            ]
        plan.append(steps)
    return plan


def _groups(steps: list) -> list[Stage2Group]:
    return [step for step in steps if isinstance(step, Stage2Group)]


def check_plan(plan: list[list], base: TrainConfig) -> None:
    """Every conflict the study would otherwise meet only after training, found before any run:
    each stage-2 head's settings, and a validation split for the knobs tuned on it."""
    heads = {name: config for steps in plan for group in _groups(steps) for name, config in group.heads.items()}
    for config in heads.values():
        config.validate()
    tuned = [
        f"{name} ({validation_choices(config.chosen_on_validation)[0]})"
        for name, config in heads.items()
        if config.chosen_on_validation
    ]
    if tuned and base.val_per_class == 0 and base.val_fraction is None:
        raise LongtailError(
            f"--val-per-class 0 leaves no validation split, and the study tunes on it: {', '.join(tuned)}; keep "
            "a validation split (--val-per-class 50, the default, or --val-fraction)"
        )


def _recorded(run_dir: Path) -> dict | None:
    """The run.json of ``run_dir``, or None when there is none."""
    return read_json(run_dir / RUN_FILE) if (run_dir / RUN_FILE).exists() else None


def _mismatch(run_dir: Path, differences: dict) -> LongtailError:
    return LongtailError(
        f"{run_dir} holds a run made with other settings ({describe_differences(differences)}); the study would "
        "mix them: write the study into a new --out, or pass --overwrite to retrain every run"
    )


def _check_stage1(run: Stage1Run, data_sha256: str, weights_sha256: str | None) -> None:
    record = _recorded(run.directory)
    if record is None:
        if (run.directory / "checkpoint.pt").exists():
            raise LongtailError(
                f"{run.directory} holds a checkpoint but no {RUN_FILE}, so its settings are unknown: write the "
                "study into a new --out, or pass --overwrite to retrain every run"
            )
        return
    if record.get("kind") != "train" or not isinstance(record.get("config"), dict):
        raise _mismatch(run.directory, {"kind": (record.get("kind"), "train")})
    differences = config_differences(record["config"], run.config)
    recorded_weights = (record.get("weights") or {}).get("sha256")
    for name, recorded, requested in (
        ("data_sha256", record.get("data_sha256"), data_sha256),
        ("weights_sha256", recorded_weights, weights_sha256),
    ):
        if recorded != requested:
            differences[name] = (recorded, requested)
    if differences:
        raise _mismatch(run.directory, differences)


def _check_stage2(group: Stage2Group, seed_dir: Path) -> None:
    stage1 = _recorded(group.stage1)
    stage1_done = stage1 is not None and stage1.get("status") == "finished"
    for name, config in group.heads.items():
        record = _recorded(seed_dir / name)
        if record is None:
            continue
        if record.get("kind") != "decouple" or not isinstance(record.get("config"), dict):
            raise _mismatch(seed_dir / name, {"kind": (record.get("kind"), "decouple")})
        differences = config_differences(record["config"], config.resolved())
        if record.get("target_prior") is not None:  # served under a prior of its own: not the study's head
            differences["target_prior"] = (record["target_prior"]["name"], None)
        if record.get("stage1") != str(group.stage1.resolve()):
            differences["stage1"] = (record.get("stage1"), str(group.stage1.resolve()))
        if record.get("status") == "finished":
            model_now = stage1.get("model_sha256") if stage1_done else None
            if record.get("stage1_model_sha256") != model_now:
                differences["stage1_model_sha256"] = (record.get("stage1_model_sha256"), model_now)
        if differences:
            raise _mismatch(seed_dir / name, differences)


def check_existing_runs(plan, data_sha256: str, weights_sha256: str | None) -> None:
    """Every run the study would reuse or resume was made with exactly the requested settings
    (configuration, data and weights sha256; a stage-2 head also on the stage-1 model it would
    now be fitted on); otherwise one error names the run and the differing settings."""
    for steps in plan:
        for step in steps:
            if isinstance(step, Stage1Run):
                _check_stage1(step, data_sha256, weights_sha256)
            else:
                _check_stage2(step, step.stage1.parent)


# ---------------------------------------------------------------- running it


def _finished(run_dir: Path) -> bool:
    """Finished and evaluated: a rerun of the study reuses it as it is."""
    return run_status(run_dir) == "finished" and (run_dir / "metrics.json").exists()


def _run_stage1(run: Stage1Run, overwrite: bool, cache_dir: Path | None, test_priors: Sequence[Prior]) -> dict:
    if overwrite or not _finished(run.directory):
        train(
            run.config,
            run.directory,
            resume=not overwrite,
            overwrite=overwrite,
            cache_dir=cache_dir,
            figures=False,
            test_priors=test_priors,
        )
    return read_json(run.directory / "metrics.json")


def _run_stage2(group: Stage2Group, overwrite: bool, cache_dir: Path | None, test_priors: Sequence[Prior]) -> dict:
    """Metrics of the stage-2 runs of ``group``, fitted together where not finished."""
    seed_dir = group.stage1.parent
    pending = {
        seed_dir / name: config for name, config in group.heads.items() if overwrite or not _finished(seed_dir / name)
    }
    if pending:  # stage 2 takes seconds: unfinished runs are redone
        decouple_many(
            group.stage1, pending, overwrite=True, cache_dir=cache_dir, figures=False, test_priors=test_priors
        )
    return {name: read_json(seed_dir / name / "metrics.json") for name in group.heads}


def _run_seeds(
    plan: list[list], seeds: tuple[int, ...], out: Path, overwrite: bool, cache_dir, test_priors: Sequence[Prior]
) -> list[dict]:
    """Per seed, the metrics of each of its runs (tuned variants included), in the study's order,
    each under the study's ``test_priors`` (from its confusion matrices: a run made before, or
    under other priors, is reported under the same ones). One lock per seed: seeds can be trained
    by processes of their own into one --out (e.g. `--seeds 1` and `--seeds 2` side by side), then
    reported together by `--seeds 0 1 2`."""
    per_seed = []
    for seed, steps in zip(seeds, plan, strict=True):
        with RunLock(out / f"seed{seed}"):
            runs: dict[str, dict] = {}
            for step in steps:
                if isinstance(step, Stage1Run):
                    runs[step.directory.name] = _run_stage1(step, overwrite, cache_dir, test_priors)
                else:
                    runs.update(_run_stage2(step, overwrite, cache_dir, test_priors))
        ordered = {"baseline": runs.pop("baseline"), "reweight": runs.pop("reweight"), **runs}
        per_seed.append({name: with_test_priors(metrics, test_priors) for name, metrics in ordered.items()})
    return per_seed


# ---------------------------------------------------------------- its results


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


def _environment(out: Path, seed: int, started: float) -> dict:
    baseline_run = read_json(out / f"seed{seed}" / "baseline" / RUN_FILE)
    return {
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


def _results(out: Path, base: TrainConfig, plan: list[list], per_seed: list[dict], study: dict) -> dict:
    """``results.json``: the shared configuration (and per stage-2 head what it used), each
    strategy aggregated over seeds with its tuned result, each run's own record, the environment."""
    seeds, groups = study["seeds"], _groups(plan[0])
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
    results["environment"] = _environment(out, seeds[0], study["started"])
    return results


def _study_settings(preset: str, seeds: tuple[int, ...], overrides: dict | None, **common) -> tuple:
    """The stage-1 settings every run of the study shares (``study_config``) and the settings given."""
    if not seeds:
        raise LongtailError("--seeds needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise LongtailError(f"--seeds lists a seed twice: {list(seeds)}")
    given = dict(overrides or {})
    return study_config(preset, given=given, **common), given


def reproduce(
    out: Path,
    *,
    preset: str = "cpu",
    seeds: tuple[int, ...] = (0,),
    imbalance: float | str = 100.0,
    extras: bool = False,
    data: str | None = None,
    weights: str = "imagenet",
    overwrite: bool = False,
    cache_dir: Path | None = None,
    overrides: dict | None = None,
    test_priors: Sequence[Prior] = DEFAULT_TEST_PRIORS,
) -> dict:
    """Run (or resume) the study and write its results and report into ``out``.

    ``overrides`` sets ``TrainConfig`` fields over the preset's settings (recorded in
    ``results.json`` as ``overrides``): the study-wide options of ``longtail reproduce``
    (``longtail.config.STUDY_FIELDS``), its data options, and small internal configurations in tests. A run
    already under ``out`` is reused or resumed only when it was made with exactly these settings;
    otherwise nothing is written and the error says what differs (``overwrite`` retrains
    everything). Every strategy is also reported under each of ``test_priors``
    (``longtail.priors``): evaluation only, so a finished run is reused whatever priors it was
    evaluated under.
    """
    seeds = tuple(seeds)
    base, given = _study_settings(preset, seeds, overrides, data=data, weights=weights, imbalance=imbalance)
    out, started = Path(out), time.perf_counter()
    plan = _plan(base, seeds, extras, out)
    check_plan(plan, base)
    # Bad data or weights fail here, before anything is written.
    arrays = load_source(base, cache_dir)
    check_classes(test_priors, arrays.num_classes, "--test-priors")
    _, weights_info = build_model(arrays.num_classes, weights)
    if not overwrite:
        check_existing_runs(plan, arrays.fingerprint, weights_info.sha256)
    per_seed = _run_seeds(plan, seeds, out, overwrite, cache_dir, test_priors)
    # The study's own lock only for writing its results (seconds): seed processes that finish
    # together take turns instead of the later one failing after all its training.
    with RunLock(out, wait=True):
        study = dict(preset=preset, given=given, seeds=seeds, extras=extras, started=started, test_priors=test_priors)
        results = _results(out, base, plan, per_seed, study)
        atomic_write_json(out / "results.json", results)
        render_study(results, out, environment=results["environment"])
    return results
