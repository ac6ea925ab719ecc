"""Metrics and the report at the large benchmarks' class counts (ImageNet-LT's 1,000 classes, here;
iNaturalist's 8,142 the same way).

Above ``PER_CLASS_LIMIT`` (100) classes ``metrics.json`` keeps the confusion matrix sparse (its
non-zero cells, at most one per test image) and leaves its normalised copy out; seeds aggregate it
by summing cells; the figures show per-group and per-training-count summaries instead of a cell or a
bar per class, and the per-class tables of results.md and report.html become per-group tables. Up to
100 classes (CIFAR-100) everything stays per class and dense.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from longtail import report
from longtail.metrics import PER_CLASS_LIMIT, aggregate_seeds, classification_metrics, confusion_cells
from longtail.report import figures as report_figures

CLASSES = 1000
PER_CLASS_TEST = 3  # test images per class


def _metrics(num_classes: int, seed: int = 0) -> dict:
    """Metrics of a head-biased classifier on an ImageNet-LT-shaped long tail (1,280 down to 5)."""
    rng = np.random.default_rng(seed)
    counts = [max(5, int(1280 * 256 ** (-i / (num_classes - 1)))) for i in range(num_classes)]
    y_true = np.repeat(np.arange(num_classes), PER_CLASS_TEST)
    right = rng.random(len(y_true)) < np.linspace(0.8, 0.2, num_classes)[y_true]
    guesses = rng.integers(0, max(1, num_classes // 4), len(y_true))  # wrong guesses go to the head
    y_pred = np.where(right, y_true, guesses)
    return classification_metrics(y_true, y_pred, [f"n{c:08d}" for c in range(num_classes)], counts, "shots")


@pytest.fixture(scope="module")
def many() -> dict:
    return _metrics(CLASSES)


def test_the_confusion_matrix_is_sparse_above_the_limit(many):
    matrix = many["confusion_matrix"]
    assert set(matrix) == {"shape", "true", "predicted", "count"} and matrix["shape"] == [CLASSES, CLASSES]
    assert "confusion_matrix_normalized" not in many
    assert sum(matrix["count"]) == CLASSES * PER_CLASS_TEST and len(matrix["count"]) <= CLASSES * PER_CLASS_TEST
    cells = np.asarray(matrix["true"]) * CLASSES + np.asarray(matrix["predicted"])
    assert np.all(np.diff(cells) > 0)  # row-major, each cell once
    diagonal = {t: n for t, p, n in zip(matrix["true"], matrix["predicted"], matrix["count"], strict=True) if t == p}
    recall = [diagonal.get(c, 0) / PER_CLASS_TEST for c in range(CLASSES)]
    assert recall == pytest.approx(many["per_class"]["recall"])
    assert len(json.dumps(many)) < 400_000  # a dense 1000 x 1000 pair would be ~10 MB


def test_at_the_limit_the_matrix_stays_dense_and_both_forms_read_the_same():
    dense = _metrics(PER_CLASS_LIMIT)
    assert len(dense["confusion_matrix"]) == PER_CLASS_LIMIT and "confusion_matrix_normalized" in dense
    cells, counts = confusion_cells(dense)
    rebuilt = np.zeros(PER_CLASS_LIMIT**2, int)
    rebuilt[cells] = counts
    assert rebuilt.reshape(PER_CLASS_LIMIT, PER_CLASS_LIMIT).tolist() == dense["confusion_matrix"]


def test_seeds_sum_a_sparse_matrix(many):
    other = _metrics(CLASSES, seed=1)
    combined = aggregate_seeds([many, other], [0, 1])
    total = {}
    for metrics in (many, other):
        for cell, count in zip(*confusion_cells(metrics), strict=True):
            total[int(cell)] = total.get(int(cell), 0) + int(count)
    cells, counts = confusion_cells(combined)
    assert dict(zip(cells.tolist(), counts.tolist(), strict=True)) == total
    assert "confusion_matrix_normalized" not in combined


def test_group_confusion_says_where_each_groups_images_go():
    # 101 classes: 0 many (200 images), 1..100 few (5 images); class 1's three test images: one right,
    # two predicted as class 0; the others all right.
    counts = [200] + [5] * 101
    y_true = np.repeat(np.arange(102), 3)
    y_pred = y_true.copy()
    y_pred[3:5] = 0
    metrics = classification_metrics(y_true, y_pred, [str(c) for c in range(102)], counts, "shots")
    table = report.group_confusion(metrics)
    assert table[0].tolist() == [1.0, 0.0, 0.0, 0.0]  # many: all right
    assert table[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # medium: no class
    assert table[2] == pytest.approx([301 / 303, 2 / 303, 0.0, 0.0])  # few: two sent to a head class


def _drawn_figures(monkeypatch) -> list:
    figures = []
    save = report_figures._save
    monkeypatch.setattr(report_figures, "_save", lambda fig, path: (figures.append(fig), save(fig, path))[1])
    return figures


def test_run_figures_summarise_groups_and_counts(many, tmp_path, monkeypatch):
    figures = _drawn_figures(monkeypatch)
    paths = report.write_run_figures(many, tmp_path)
    assert [path.name for path in paths] == ["confusion_matrix.png", "precision_recall.png", "class_histogram.png"]
    confusion, scatter, _ = (figure.axes[0] for figure in figures)
    assert len(confusion.texts) == 3 * 4 and confusion.images[0].get_array().shape == (3, 4)
    assert [label.get_text() for label in confusion.get_xticklabels()][0] == "correct"
    assert scatter.get_xscale() == "log" and len(scatter.collections[0].get_offsets()) == CLASSES
    assert len(scatter.patches) == 0  # no bar per class


def test_the_study_report_has_per_group_tables(many, tmp_path):
    entries = {name: aggregate_seeds([_metrics(CLASSES, seed)], [seed]) for seed, name in enumerate(("baseline", "x"))}
    results = {"config": {"data": "ImageNet_LT", "imbalance": "natural"}, "strategies": entries}
    report.render_study(results, tmp_path, environment={"python": "3"})
    markdown = (tmp_path / "results.md").read_text()
    assert "| Group | Classes | Train images | Precision | Recall | F1 |" in markdown
    assert "n00000999" not in markdown  # no row per class
    page = (tmp_path / "report.html").read_text()
    assert "<th>Group</th>" in page and len(page) < 2_000_000
    header, rows = report.class_table(entries["baseline"])
    assert header == report.GROUP_HEADER and [row[0] for row in rows] == ["many", "medium", "few"]
    assert sum(int(row[1]) for row in rows) == CLASSES
    assert sum(int(row[2]) for row in rows) == sum(entries["baseline"]["train_counts"])
