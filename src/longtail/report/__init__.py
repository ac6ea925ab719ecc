"""The report: figures, a Markdown summary and a self-contained HTML page of evaluation results.

Inputs are the dictionaries of ``longtail.metrics``: a single run's ``metrics.json``
(``classification_metrics``) or ``results.json`` = ``{"config": {...}, "strategies": {NAME: entry}}``
where each entry comes from ``aggregate_seeds``. Metric values are fractions in [0, 1]; tables show
them as percentages with 2 decimals.

- ``longtail.report.study_numbers``: the numbers the study reported, set beside ours;
- ``longtail.report.tables``: the tables' headers and rows, shared by Markdown and HTML;
- ``longtail.report.notes``: the sentences around the tables (title, notes, the deployment verdict);
- ``longtail.report.figures``: the matplotlib figures of a run and of a study;
- ``longtail.report.markdown``: ``results.md``;
- ``longtail.report.html``: ``report.html``, from the Jinja templates in ``templates/``.

The public names of all six are importable from ``longtail.report`` itself, with ``render_study``,
which writes a study's whole report.
"""

from pathlib import Path

from longtail.report.figures import (
    COUNT_BINS,
    LABELLED_CLASSES,
    group_confusion,
    has_prior_figure,
    plot_class_histogram,
    plot_confusion_matrix,
    plot_group_confusion,
    plot_precision_recall,
    plot_precision_recall_by_count,
    plot_prior_accuracy,
    plot_recall_by_count,
    plot_recall_comparison,
    plot_summary,
    write_run_figures,
    write_study_figures,
)
from longtail.report.html import write_report_html
from longtail.report.markdown import write_results_markdown
from longtail.report.notes import prior_verdict, study_title
from longtail.report.study_numbers import STUDY_REPORTED
from longtail.report.tables import (
    COMPARISON_HEADER,
    COMPARISON_HEADER_IMBALANCED,
    GROUP_HEADER,
    GROUPS,
    PER_CLASS_HEADER,
    PRIOR_TABLE,
    RUN_HEADER,
    STUDY_HEADER,
    TUNED_HEADER,
    balanced_test,
    class_table,
    comparison_header,
    comparison_rows,
    per_class_rows,
    per_group_rows,
    prior_header,
    prior_rows,
    run_rows,
    shared_priors,
    study_rows,
    tuned_rows,
)

__all__ = [
    "COMPARISON_HEADER",
    "COMPARISON_HEADER_IMBALANCED",
    "COUNT_BINS",
    "GROUPS",
    "GROUP_HEADER",
    "LABELLED_CLASSES",
    "PER_CLASS_HEADER",
    "PRIOR_TABLE",
    "RUN_HEADER",
    "STUDY_HEADER",
    "STUDY_REPORTED",
    "TUNED_HEADER",
    "balanced_test",
    "class_table",
    "comparison_header",
    "comparison_rows",
    "group_confusion",
    "has_prior_figure",
    "per_class_rows",
    "per_group_rows",
    "plot_class_histogram",
    "plot_confusion_matrix",
    "plot_group_confusion",
    "plot_precision_recall",
    "plot_precision_recall_by_count",
    "plot_prior_accuracy",
    "plot_recall_by_count",
    "plot_recall_comparison",
    "plot_summary",
    "prior_header",
    "prior_rows",
    "prior_verdict",
    "render_study",
    "run_rows",
    "shared_priors",
    "study_rows",
    "study_title",
    "tuned_rows",
    "write_report_html",
    "write_results_markdown",
    "write_run_figures",
    "write_study_figures",
]


def render_study(results: dict, out_dir, *, environment: dict) -> None:
    """Write the study's figures, ``results.md`` and ``report.html`` under ``out_dir``."""
    figures = write_study_figures(results, out_dir)
    write_results_markdown(results, Path(out_dir) / "results.md")
    write_report_html(results, out_dir, environment=environment, figures=figures)
