"""``report.html``: one self-contained page (inline CSS, the figures embedded as ``data:`` URIs),
rendered from the Jinja templates beside this module (``templates/report.html.j2``, with the table
and figure macros of ``templates/elements.html.j2``) with autoescaping on: every text from the
results (run, strategy and class names, configuration values) is escaped by the template."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from pathlib import Path

import jinja2

from longtail.report.figures import write_study_figures
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

_SEED_COUNT = re.compile(r"\(n=\d+\)")


def _is_text(cell: str) -> bool:
    """Whether a table cell holds words (a grid, a choice: it may wrap) rather than numbers (it never
    wraps: a mean ± std broken over lines misreads). The seed count "(n=3)" is no word."""
    return any(char.isalpha() for char in _SEED_COUNT.sub("", cell))


_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("longtail.report"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_TEMPLATES.tests["text"] = _is_text  # `cell is text` in the table macro


def _data_uri(path: Path) -> str:
    """A PNG as a base64 ``data:`` URI."""
    return f"data:image/png;base64,{base64.b64encode(Path(path).read_bytes()).decode('ascii')}"


def _key_values(mapping: Mapping) -> list[list[str]]:
    """Rows of every key and its value, as text."""
    return [[str(key), format_value(value)] for key, value in mapping.items()]


def write_report_html(results: dict, out_dir, *, environment: dict, figures: Mapping[str, Path] | None = None) -> Path:
    """``out_dir/report.html``: one self-contained page (inline CSS, images as ``data:`` URIs).

    ``figures`` are the paths ``write_study_figures`` returned; when not given they are drawn here.
    """
    strategies, flipped = results["strategies"], results.get("strategies_tta_flip")
    if figures is None:
        figures = write_study_figures(results, out_dir)
    page = _TEMPLATES.get_template("report.html.j2").render(
        title=study_title(results),
        images={name: _data_uri(path) for name, path in figures.items()},
        seed_note=seed_note(strategies),
        comparison=(comparison_header(strategies), comparison_rows(strategies)),
        prior=(prior_header(strategies), prior_rows(strategies)) if prior_header(strategies) else None,
        prior_verdict=prior_verdict(strategies),
        prior_note=PRIOR_NOTE,
        tuned=(TUNED_HEADER, tuned_rows(results)) if tuned_rows(results) else None,
        tuned_note=TUNED_NOTE,
        study=(STUDY_HEADER, study_rows(strategies)) if study_rows(strategies) else None,
        flipped=(comparison_header(flipped), comparison_rows(flipped)) if flipped else None,
        tta_note=TTA_NOTE,
        per_class={name: class_table(entry) for name, entry in strategies.items()},
        runs=(RUN_HEADER, run_rows(results["runs"])) if results.get("runs") else None,
        configuration=_key_values(results["config"]),
        environment=_key_values(environment),
    )
    path = Path(out_dir) / "report.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path
