"""The plan of a study (``longtail reproduce``): its runs per seed, in the order they are made
(``plan_study``), and every conflict found before any training: each stage-2 head's settings and
the validation split its tuned knobs need (``check_plan``), and every run already under ``--out``
made with exactly the requested settings (``check_existing_runs``).

The study's rows keep the study's settings (focal gamma 1, Class-Balanced beta 0.9999); each
decoupled loss with a knob it does not tune itself is also fitted with that knob tuned on the
validation split (``seed<S>/decoupled-<loss>-tuned``, in the same grid of heads, same batches and
learning rate). Modified CE tunes its tau in its own row; Balanced Softmax has no knob.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from longtail.config import (
    Stage2Config,
    TrainConfig,
    config_differences,
    describe_differences,
    training_differences,
    validation_choices,
)
from longtail.errors import LongtailError
from longtail.knobs import TUNABLE
from longtail.runs import RUN_FILE, read_json

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


@dataclass(frozen=True)
class Stage1Run:
    """A stage-1 run of the study: its directory and its settings."""

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


def _stage2_group(stage1: Path, rows: dict[str, Stage2Config], seed: int, feature_size: int | str) -> Stage2Group:
    """The rows' heads on ``stage1`` on features at ``feature_size`` with the seed (where they
    train), each row with a knob that it does not tune itself joined by its tuned variant: the same
    head with ``tune``, trained in the same grid (the same batches and learning rate)."""
    heads, tuned = {}, {}
    for name, config in rows.items():
        config = dataclasses.replace(config, feature_size=feature_size)
        heads[name] = dataclasses.replace(config, seed=seed) if config.trains else config
        if heads[name].tuned_knobs:
            tuned[name] = name
        elif any(knob in TUNABLE for knob in config.knobs):
            heads[name + TUNED_SUFFIX] = dataclasses.replace(heads[name], tune=True)
            tuned[name] = name + TUNED_SUFFIX
    return Stage2Group(stage1, heads, tuned)


def plan_study(
    base: TrainConfig, seeds: tuple[int, ...], extras: bool, out: Path, feature_size: int | str
) -> list[list]:
    """Per seed, the list of runs in the order they are made: stage 1 (the baseline) is trained once and
    reused by every decoupled loss; cheap stage-2 heads (on features at ``feature_size``) right
    after the stage 1 they share, so results arrive early; Reweight (and with ``extras`` the other
    end-to-end strategies) are runs of their own."""
    plan = []
    for seed in seeds:
        seed_dir = out / f"seed{seed}"
        stage1 = seed_dir / "baseline"
        study_heads = {f"decoupled-{loss}": Stage2Config(loss=loss) for loss in STUDY_LOSSES}
        steps: list = [
            Stage1Run(stage1, dataclasses.replace(base, seed=seed)),
            _stage2_group(stage1, study_heads, seed, feature_size),
            Stage1Run(seed_dir / "reweight", dataclasses.replace(base, seed=seed, strategy="reweight")),
        ]
        if extras:
            steps.append(_stage2_group(stage1, EXTRA_STAGE2, seed, feature_size))
            steps += [
                Stage1Run(seed_dir / strategy, dataclasses.replace(base, seed=seed, strategy=strategy))
                for strategy in EXTRA_STAGE1
            ]
        plan.append(steps)
    return plan


def stage2_groups(steps: list) -> list[Stage2Group]:
    """The stage-2 groups of one seed's steps."""
    return [step for step in steps if isinstance(step, Stage2Group)]


def check_plan(plan: list[list], base: TrainConfig) -> None:
    """Every conflict the study would otherwise meet only after training, found before any run:
    each stage-2 head's settings, and a validation split for the knobs tuned on it."""
    heads = {name: config for steps in plan for group in stage2_groups(steps) for name, config in group.heads.items()}
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
    differences = training_differences(record["config"], run.config)  # device and --compile may change, as in a resume
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
