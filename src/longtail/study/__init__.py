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

- ``longtail.study.plan``: the runs of each seed, in order, and every conflict found before any training;
- ``longtail.study.results``: ``results.json``, the seeds' metrics aggregated;
- ``longtail.study.walltime``: how long the study has been worked on, over all its invocations.

``reproduce`` reads as its steps: the settings and the device (``--preset seed``, meant for a GPU, is
refused on a machine without CUDA unless ``--device cpu`` asks for it), the plan (``plan_study``),
every conflict checked before any training (``check_plan``, ``check_existing_runs``), the seeds run
(``_run_seeds``) while this invocation's wall time is recorded, the results written
(``study_results``, then ``render_study``). The public names of the submodules are importable from
``longtail.study``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from longtail.config import PRESETS, gpu_job, study_config
from longtail.data import load_source
from longtail.decouple import decouple_many
from longtail.errors import LongtailError
from longtail.models import build_model
from longtail.priors import DEFAULT_TEST_PRIORS, Prior, check_classes, with_test_priors
from longtail.report import render_study
from longtail.runs import RunLock, atomic_write_json, read_json, run_status
from longtail.runtime import device_of
from longtail.study.plan import (
    EXTRA_STAGE1,
    EXTRA_STAGE2,
    STUDY_LOSSES,
    TUNED_SUFFIX,
    Stage1Run,
    Stage2Group,
    check_existing_runs,
    check_plan,
    plan_study,
    stage2_groups,
)
from longtail.study.results import study_results
from longtail.study.walltime import Invocation, study_wall_seconds
from longtail.train import train

__all__ = [
    "EXTRA_STAGE1",
    "EXTRA_STAGE2",
    "STUDY_LOSSES",
    "TUNED_SUFFIX",
    "Invocation",
    "Stage1Run",
    "Stage2Group",
    "check_existing_runs",
    "check_plan",
    "plan_study",
    "reproduce",
    "stage2_groups",
    "study_results",
    "study_wall_seconds",
]


def _finished(run_dir: Path) -> bool:
    """Finished and evaluated: a rerun of the study reuses it as it is."""
    return run_status(run_dir) == "finished" and (run_dir / "metrics.json").exists()


def _run_stage1(run: Stage1Run, overwrite: bool, cache_dir: Path | None, test_priors: Sequence[Prior]) -> dict:
    """The run's metrics: trained (or resumed, where it was started) unless finished and evaluated."""
    if overwrite or not _finished(run.directory):
        train(
            run.config,
            run.directory,
            resume=not overwrite and run_status(run.directory) != "empty",
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
    feature_size: int | str | None = None,
    test_priors: Sequence[Prior] = DEFAULT_TEST_PRIORS,
) -> dict:
    """Run (or resume) the study and write its results and report into ``out``.

    ``overrides`` sets ``TrainConfig`` fields over the preset's settings (recorded in
    ``results.json`` as ``overrides``): the study-wide options of ``longtail reproduce``
    (``longtail.config.STUDY_FIELDS``), its data options, and small internal configurations in tests.
    ``feature_size`` is the stage-2 heads' (``Stage2Config.feature_size``; None: the preset's). A run
    already under ``out`` is reused or resumed only when it was made with exactly these settings;
    otherwise nothing is written and the error says what differs (``overwrite`` retrains
    everything). Every strategy is also reported under each of ``test_priors``
    (``longtail.priors``): evaluation only, so a finished run is reused whatever priors it was
    evaluated under. A run is reused whatever device it was trained on (``config.SESSION_FIELDS``);
    a preset meant for a GPU needs ``device="cpu"`` on a machine without CUDA. ``results.json``'s
    environment gives this invocation's wall time and the whole study's (``longtail.study.walltime``).
    """
    seeds, started = tuple(seeds), time.time()
    base, given = _study_settings(preset, seeds, overrides, data=data, weights=weights, imbalance=imbalance)
    device = device_of(base.device, gpu_job(preset))  # --preset seed needs CUDA or --device cpu
    out = Path(out)
    if feature_size is None:
        feature_size = PRESETS[preset].feature_size
    plan = plan_study(base, seeds, extras, out, feature_size)
    check_plan(plan, base)
    # Bad data or weights fail here, before anything is written.
    arrays = load_source(base, cache_dir)
    check_classes(test_priors, arrays.num_classes, "--test-priors")
    _, weights_info = build_model(arrays.num_classes, weights)
    if not overwrite:
        check_existing_runs(plan, arrays.fingerprint, weights_info.sha256)
    with Invocation(out, started) as invocation:  # this invocation's wall time from `started`, in OUT/invocations/
        per_seed = _run_seeds(plan, seeds, out, overwrite, cache_dir, test_priors)
        # The study's own lock only for writing its results (seconds): seed processes that finish
        # together take turns instead of the later one failing after all its training.
        with RunLock(out, wait=True):
            wall = {"wall_seconds_this_invocation": invocation.finish(), "study_wall_seconds": study_wall_seconds(out)}
            study = dict(preset=preset, given=given, seeds=seeds, extras=extras, test_priors=test_priors)
            results = study_results(out, base, plan, per_seed, {**study, "wall": wall, "device": device})
            atomic_write_json(out / "results.json", results)
            render_study(results, out, environment=results["environment"])
    return results
