"""``longtail evaluate``: a finished run's metrics and figures recomputed, whichever stage made it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from longtail.decouple import evaluate_decoupled
from longtail.errors import LongtailError
from longtail.evaluation import evaluate_run
from longtail.priors import DEFAULT_TEST_PRIORS, Prior
from longtail.report import write_run_figures
from longtail.runs import RUN_FILE, RunLock, read_json


def reevaluate(
    run_dir: Path, cache_dir: Path | None = None, test_priors: Sequence[Prior] = DEFAULT_TEST_PRIORS
) -> dict:
    """Recompute the test metrics of the finished run in ``run_dir`` under its lock, and draw its
    figures: a stage-2 head (its run.json's kind is ``decouple``) with ``evaluate_decoupled``, any
    other run as a stage-1 run with ``evaluate_run`` (which refuses what is not one)."""
    run_dir = Path(run_dir)
    run_file = run_dir / RUN_FILE
    if not run_file.exists():
        raise LongtailError(f"{run_dir} is not a longtail run directory (no {RUN_FILE})")
    record = read_json(run_file)
    evaluate = evaluate_decoupled if isinstance(record, dict) and record.get("kind") == "decouple" else evaluate_run
    with RunLock(run_dir):
        metrics = evaluate(run_dir, cache_dir=cache_dir, test_priors=test_priors)
        write_run_figures(metrics, run_dir)
    return metrics
