"""``results.md``: the study's results as Markdown (the tables of ``longtail.report.tables``, the
notes of ``longtail.report.notes``, the figures as links into ``figures/``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from longtail.report.figures import has_prior_figure
from longtail.report.notes import PRIOR_NOTE, TTA_NOTE, TUNED_NOTE, prior_verdict, seed_note, study_title
from longtail.report.tables import (
    RUN_HEADER,
    STUDY_HEADER,
    TUNED_HEADER,
    class_table,
    comparison_header,
    comparison_rows,
    format_value,
    prior_header,
    prior_rows,
    run_rows,
    study_rows,
    tuned_rows,
)
from longtail.runs import atomic_write_bytes


def _md_cell(text: str) -> str:
    """A table cell with pipes escaped."""
    return text.replace("|", "\\|")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table: first column left-aligned, the rest right-aligned."""
    rule = ["---"] + ["---:"] * (len(header) - 1)
    return ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in (header, rule, *rows)]


def write_results_markdown(results: dict, path) -> None:
    """``results.md``: the summary chart and the comparison table first, then the study-reported
    numbers, flip-TTA rows (when measured), per-class tables, the runs, and configuration and
    environment at the end."""
    strategies = results["strategies"]
    lines = [
        f"# {study_title(results)}",
        "",
        "![Top-1 and many/medium/few by strategy](figures/summary.png)",
    ]
    lines += ["", "## Comparison", "", seed_note(strategies), ""]
    lines += _md_table(comparison_header(strategies), comparison_rows(strategies))
    if prior_header(strategies):
        lines += ["", "## Under the deployment prior", "", prior_verdict(strategies), ""]
        if has_prior_figure(strategies):
            lines += ["![Top-1 by the test prior](figures/prior_accuracy.png)", ""]
        lines += [PRIOR_NOTE, ""] + _md_table(prior_header(strategies), prior_rows(strategies))
    if tuned_rows(results):
        lines += ["", "## Fixed setting vs tuned on validation", "", TUNED_NOTE, ""]
        lines += _md_table(TUNED_HEADER, tuned_rows(results))
    if study_rows(strategies):
        lines += ["", "## Study-reported numbers", ""]
        lines += _md_table(STUDY_HEADER, study_rows(strategies))
    if results.get("strategies_tta_flip"):
        flipped = results["strategies_tta_flip"]
        lines += ["", "## With flip test-time augmentation", "", TTA_NOTE, ""]
        lines += _md_table(comparison_header(flipped), comparison_rows(flipped))
    lines += ["", "## Per-class results (mean over seeds, %)"]
    for name, entry in strategies.items():
        lines += ["", f"### {name}", ""] + _md_table(*class_table(entry))
    if results.get("runs"):
        lines += ["", "## Runs", ""] + _md_table(RUN_HEADER, run_rows(results["runs"]))
    lines += ["", "## Configuration", ""]
    lines += [f"- {key}: {format_value(value)}" for key, value in results["config"].items()]
    if results.get("environment"):
        lines += ["", "## Environment", ""]
        lines += [f"- {key}: {format_value(value)}" for key, value in results["environment"].items()]
    atomic_write_bytes(Path(path), ("\n".join(lines) + "\n").encode("utf-8"))
