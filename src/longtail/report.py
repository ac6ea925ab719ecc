"""Figures, a Markdown summary and a self-contained HTML report of evaluation results.

Inputs are the dictionaries of ``longtail.metrics``: a single run's ``metrics.json``
(``classification_metrics``) or ``results.json`` = ``{"config": {...}, "strategies": {NAME: entry}}``
where each entry comes from ``aggregate_seeds``. Metric values are fractions in [0, 1]; tables show
them as percentages with 2 decimals. Figures are drawn on ``matplotlib.figure.Figure`` objects
(Agg renderer, no pyplot state), so this module is safe to use without a display.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from longtail.config import LOSS_KNOBS
from longtail.metrics import PER_CLASS_LIMIT, confusion_cells, paired_differences, row_normalize
from longtail.priors import TRAIN, UNIFORM, axis_order
from longtail.runs import atomic_write_bytes

# Numbers the study reported (fractions); strategies or metrics not listed were not reported.
STUDY_REPORTED: dict[str, dict[str, float]] = {
    "baseline": {"accuracy": 0.8415},
    "reweight": {"accuracy": 0.8582, "weighted_f1": 0.8584},
    "decoupled-modified-ce": {"accuracy": 0.9378},
}

# The comparison table on a balanced test set (CIFAR-10's): there balanced accuracy and weighted
# recall equal top-1 and macro F1 equals weighted F1, so each appears once; on an imbalanced test
# split they differ and every one appears (COMPARISON_HEADER_IMBALANCED).
COMPARISON_HEADER = (
    "Strategy",
    "Study top-1",
    "Top-1 (mean ± std)",
    "Δ vs baseline (points)",
    "Δ per seed (points)",
    "Top-1 tuned on validation (mean ± std)",
    "Weighted P",
    "Weighted F1",
    "Many",
    "Medium",
    "Few",
)
COMPARISON_HEADER_IMBALANCED = (
    *COMPARISON_HEADER[:6],
    "Balanced accuracy",
    "Weighted P",
    "Weighted R",
    "Weighted F1",
    "Macro F1",
    "Many",
    "Medium",
    "Few",
)
TUNED_HEADER = (
    "Strategy",
    "Fixed setting",
    "Top-1, fixed (mean ± std)",
    "Top-1, tuned on validation (mean ± std)",
    "Tuned − fixed (points)",
    "Tuned − fixed per seed (points)",
    "Chosen on validation (per seed)",
    "Grid",
)
STUDY_HEADER = ("Strategy", "Metric", "Study", "Ours (mean ± std)", "Ours − study (points)")
# The test priors the deployment table shows beside the headline top-1, where the results have them.
PRIOR_TABLE = (TRAIN, UNIFORM, "backward-10")
PER_CLASS_HEADER = ("Class", "Train count", "Precision", "Recall", "F1")

_MEAN_STD_COLUMNS = {  # columns of the comparison table that show a HEADLINE number's mean ± std
    "Balanced accuracy": "balanced_accuracy",
    "Weighted P": "weighted_precision",
    "Weighted R": "weighted_recall",
    "Weighted F1": "weighted_f1",
    "Macro F1": "macro_f1",
    "Many": "many",
    "Medium": "medium",
    "Few": "few",
}
_SYMBOLS = {"tau": "τ", "gamma": "γ", "beta": "β"}
_METRIC_LABELS = {"accuracy": "Top-1", "weighted_f1": "Weighted F1"}
_NONE = "—"  # a number the study did not report, or a frequency group with no class
_DPI = 100
# Up to this many classes a figure labels every class (and the confusion matrix every cell);
# beyond it (CIFAR-100's 100 classes) every k-th class is labelled and cells are colour only.
LABELLED_CLASSES = 20


# ---------------------------------------------------------------------------------------------
# Figures


def _save(fig: Figure, path) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (creating its folder) and return the path."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=_DPI, format="png")
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def _labelled(names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Tick positions and labels along a class axis: every class up to ``LABELLED_CLASSES``,
    else every k-th so that at most that many are labelled."""
    step = -(-len(names) // LABELLED_CLASSES)
    positions = np.arange(0, len(names), step)
    return positions, [names[p] for p in positions]


def _by_count(train_counts: Sequence[int]) -> np.ndarray:
    """Class indices by training count, largest first (stable: CIFAR-LT's order is unchanged)."""
    return np.argsort(-np.asarray(train_counts), kind="stable")


def plot_confusion_matrix(metrics: dict, path, title: str) -> Path:
    """Heatmap of the row-normalised confusion matrix, each cell labelled with its value (colour
    only beyond ``LABELLED_CLASSES`` classes, where the numbers would not be readable); beyond
    ``PER_CLASS_LIMIT`` classes the groups' confusion instead (``plot_group_confusion``)."""
    if len(metrics["class_names"]) > PER_CLASS_LIMIT:
        return plot_group_confusion(metrics, path, title)
    matrix = np.asarray(metrics["confusion_matrix_normalized"], dtype=float)
    names = metrics["class_names"]
    many = len(names) > LABELLED_CLASSES
    fig = Figure(figsize=(9, 8.5) if many else (6, 5.5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax)
    if not many:
        for (row, col), value in np.ndenumerate(matrix):
            color = "white" if value > 0.5 else "black"
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
    ticks, labels = _labelled(names)
    ax.set_xticks(ticks, labels, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")
    ax.set_title(title)
    return _save(fig, path)


def plot_precision_recall(metrics: dict, path, title: str) -> Path:
    """Grouped bar chart of per-class precision and recall (in %), classes by training count
    (largest first); beyond ``PER_CLASS_LIMIT`` classes a scatter against the training count
    instead (``plot_precision_recall_by_count``)."""
    if len(metrics["class_names"]) > PER_CLASS_LIMIT:
        return plot_precision_recall_by_count(metrics, path, title)
    order = _by_count(metrics["train_counts"])
    names = [metrics["class_names"][c] for c in order]
    x = np.arange(len(names))
    fig = Figure(figsize=(12, 4.5) if len(names) > LABELLED_CLASSES else (8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for offset, key in ((-0.2, "precision"), (0.2, "recall")):
        ax.bar(x + offset, 100 * np.asarray(metrics["per_class"][key])[order], width=0.4, label=key.capitalize())
    ax.set_xticks(*_labelled(names), rotation=30, ha="right", rotation_mode="anchor")
    ax.set_ylim(0, 115)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("%")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", ncols=2)
    ax.set_title(title)
    return _save(fig, path)


def _imbalance_factor(counts: Sequence[int]) -> str:
    """Largest over smallest class count, as text (``inf`` when a class is empty)."""
    smallest = min(counts)
    return f"{max(counts) / smallest:.0f}" if smallest > 0 else "inf"


def plot_class_histogram(train_counts: Sequence[int], class_names: Sequence[str], path) -> Path:
    """Bar chart (log scale) of training images per class, largest first, each bar labelled with
    its count (up to ``LABELLED_CLASSES`` classes)."""
    order = _by_count(train_counts)
    names = [class_names[c] for c in order]
    many = len(names) > LABELLED_CLASSES
    fig = Figure(figsize=(12, 4.5) if many else (8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.bar(np.arange(len(names)), np.asarray(train_counts)[order], color="tab:blue")
    if not many:
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(*_labelled(names))
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_yscale("log")
    ax.set_ylabel("training images (log scale)")
    ax.set_title(
        f"Training images per class: {sum(train_counts)} total, imbalance factor {_imbalance_factor(train_counts)}"
    )
    return _save(fig, path)


def plot_recall_comparison(strategies: Mapping[str, dict], path) -> Path:
    """Per-class recall (in %) of each strategy, one line per strategy; beyond ``PER_CLASS_LIMIT``
    classes the mean recall by training count instead (``plot_recall_by_count``)."""
    if len(next(iter(strategies.values()))["class_names"]) > PER_CLASS_LIMIT:
        return plot_recall_by_count(strategies, path)
    fig = Figure(figsize=(10, 5), layout="constrained")
    ax = fig.add_subplot()
    markers = "osD^v<>ph*"
    names = next(iter(strategies.values()))["class_names"]
    many = len(names) > LABELLED_CLASSES
    for index, (name, entry) in enumerate(strategies.items()):
        ax.plot(
            np.arange(len(names)),
            100 * np.asarray(entry["per_class"]["recall"]),
            marker=None if many else markers[index % len(markers)],
            linestyle="-" if index < 10 else "--",
            label=name,
        )
    ax.set_xticks(*_labelled(names))
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_ylim(0, 105)
    ax.set_ylabel("recall (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title("Per-class recall by strategy")
    return _save(fig, path)


def shared_priors(strategies: Mapping[str, dict]) -> list[str]:
    """The test priors every strategy has metrics under (``under_prior``), in the first one's order."""
    entries = list(strategies.values())
    return [
        name for name in entries[0].get("under_prior", {}) if all(name in e.get("under_prior", {}) for e in entries)
    ]


def has_prior_figure(strategies: Mapping[str, dict]) -> bool:
    """Whether the results hold two or more test priors of the forward-to-backward axis to draw."""
    return len(axis_order(shared_priors(strategies))) > 1


def plot_prior_accuracy(strategies: Mapping[str, dict], path) -> Path:
    """Top-1 (mean over seeds, in %) under each test prior of the forward-to-backward axis
    (``priors.axis_order``: forward-50 ... uniform ... backward-50), one line per strategy."""
    axis = axis_order(shared_priors(strategies))
    fig = Figure(figsize=(10, 5), layout="constrained")
    ax = fig.add_subplot()
    markers = "osD^v<>ph*"
    x = np.arange(len(axis))
    for index, (name, entry) in enumerate(strategies.items()):
        values = [100 * entry["under_prior"][prior]["accuracy"] for prior in axis]
        ax.plot(x, values, marker=markers[index % len(markers)], linestyle="-" if index < 10 else "--", label=name)
    if UNIFORM in axis:
        ax.axvline(axis.index(UNIFORM), color="grey", linestyle=":", linewidth=1)
        ax.annotate(
            "balanced test set",
            (axis.index(UNIFORM), 0.03),
            xycoords=("data", "axes fraction"),
            ha="center",
            va="bottom",
            fontsize=8,
            color="grey",
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1},
        )
    ax.set_xticks(x, axis, rotation=30, ha="right", rotation_mode="anchor")
    ax.set_xlabel(
        "test prior: head classes most frequent (forward-N) … uniform … tail classes most frequent (backward-N)"
    )
    ax.set_ylabel("top-1 under the prior (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    seeds = len(next(iter(strategies.values()))["seeds"])
    ax.set_title(f"Top-1 by the class prior of the deployment (mean over {seeds} seed{'s' if seeds > 1 else ''})")
    return _save(fig, path)


def plot_summary(strategies: Mapping[str, dict], path) -> Path:
    """The answer at a glance: top-1 per strategy (mean ± std over seeds) beside the number the
    study reported, and the many / medium / few recall of each strategy."""
    names = list(strategies)
    y = np.arange(len(names))[::-1]
    fig = Figure(figsize=(12, 0.45 * len(names) + 2.2), layout="constrained")
    top1, groups = fig.subplots(1, 2, width_ratios=(1.1, 1))
    means = [100 * strategies[n]["mean"]["accuracy"] for n in names]
    stds = [100 * (strategies[n]["std"]["accuracy"] or 0.0) for n in names]  # one seed: no error bar
    top1.barh(y, means, xerr=stds, color="tab:blue", alpha=0.8, capsize=3, label="ours (mean ± sample std over seeds)")
    # Our value inside its bar (beside it when the bar is too short to hold it) and the study's
    # right of both its diamond and our bar's error bar, so neither covers the other.
    for row, mean, std in zip(y, means, stds, strict=True):
        inside = mean >= 10
        top1.text(
            1.5 if inside else mean + std + 1.5,
            row,
            f"{mean:.1f}",
            va="center",
            fontsize=8,
            color="white" if inside else "black",
            fontweight="bold",
        )
    reported = [
        (row, 100 * STUDY_REPORTED[n]["accuracy"]) for row, n in zip(y, names, strict=True) if n in STUDY_REPORTED
    ]
    if reported:
        rows, values = zip(*reported, strict=True)
        top1.scatter(values, rows, marker="D", color="black", zorder=3, label="the study reported")
        ends = dict(zip(y, (mean + std for mean, std in zip(means, stds, strict=True)), strict=True))
        for row, value in reported:
            top1.text(max(value, ends[row]) + 1.5, row, f"study {value:.1f}", va="center", fontsize=8)
    top1.set_yticks(y, names)
    top1.set_xlim(0, 112)
    top1.set_xlabel("top-1 accuracy (%)")
    top1.grid(axis="x", alpha=0.3)
    top1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, ncols=2, frameon=False)
    top1.set_title("Top-1 by strategy")
    width = 0.27
    colours = {"many": "tab:green", "medium": "tab:orange", "few": "tab:red"}
    for offset, group in zip((width, 0.0, -width), colours, strict=True):
        values = [strategies[n]["mean"].get(group) for n in names]
        shown = [(row + offset, 100 * v) for row, v in zip(y, values, strict=True) if v is not None]
        if shown:
            rows, heights = zip(*shown, strict=True)
            groups.barh(rows, heights, height=width, color=colours[group], label=group)
    groups.set_yticks(y, [""] * len(names))
    groups.set_xlim(0, 105)
    groups.set_xlabel("mean recall of the group's classes (%)")
    groups.grid(axis="x", alpha=0.3)
    groups.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, ncols=3, frameon=False)
    groups.set_title("Many / medium / few-shot classes")
    return _save(fig, path)


# Beyond PER_CLASS_LIMIT classes (ImageNet-LT, Places-LT, iNaturalist) a bar or a cell per class is
# no longer readable: the figures below summarise the classes by frequency group or training count.
GROUPS = ("many", "medium", "few")
COUNT_BINS = 12  # log-spaced training-count bins of plot_recall_by_count


def _group_of_class(metrics: dict) -> np.ndarray:
    """The index in ``GROUPS`` of each class's frequency group."""
    group_of = np.zeros(len(metrics["class_names"]), np.int64)
    for index, group in enumerate(GROUPS):
        group_of[metrics["group_classes"][group]] = index
    return group_of


def group_confusion(metrics: dict) -> np.ndarray:
    """(3, 4): for the test images of each frequency group (rows: many, medium, few), the share
    predicted correctly and the shares predicted as a wrong class of the many, medium and few
    groups (a row sums to 1; 0 for a group without test images)."""
    cells, counts = confusion_cells(metrics)
    num_classes = len(metrics["class_names"])
    true, predicted = cells // num_classes, cells % num_classes
    group_of = _group_of_class(metrics)
    table = np.zeros((len(GROUPS), 1 + len(GROUPS)))
    right = true == predicted
    np.add.at(table, (group_of[true[right]], 0), counts[right])
    np.add.at(table, (group_of[true[~right]], 1 + group_of[predicted[~right]]), counts[~right])
    return row_normalize(table)


def plot_group_confusion(metrics: dict, path, title: str) -> Path:
    """For many classes: where each frequency group's test images go (``group_confusion``), every
    cell labelled: a head-biased classifier sends the tail's images to wrong head classes."""
    table = group_confusion(metrics)
    sizes = [len(metrics["group_classes"][group]) for group in GROUPS]
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(table, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax)
    for (row, col), value in np.ndenumerate(table):
        ax.text(
            col, row, f"{value:.2f}", ha="center", va="center", fontsize=9, color="white" if value > 0.5 else "black"
        )
    ax.set_xticks(range(1 + len(GROUPS)), ["correct", *(f"wrong: {group}" for group in GROUPS)])
    ax.set_yticks(range(len(GROUPS)), [f"{group} ({n} classes)" for group, n in zip(GROUPS, sizes, strict=True)])
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True group")
    ax.set_title(f"{title}\n{len(metrics['class_names'])} classes in {metrics.get('grouping', 'thirds')} groups")
    return _save(fig, path)


def plot_precision_recall_by_count(metrics: dict, path, title: str) -> Path:
    """For many classes: each class's precision and recall (in %) against its training count (log
    scale), one point per class, with each group's mean recall as a line over its counts."""
    counts = np.asarray(metrics["train_counts"])
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for key, colour in (("precision", "tab:orange"), ("recall", "tab:blue")):
        values = 100 * np.asarray(metrics["per_class"][key])
        ax.scatter(counts, values, s=6, alpha=0.35, color=colour, label=f"{key} of a class", linewidths=0)
    for group in GROUPS:
        members = metrics["group_classes"][group]
        if members and metrics["groups"][group] is not None:
            span = counts[members]
            ax.hlines(100 * metrics["groups"][group], span.min(), span.max(), colors="black", linewidth=2)
            ax.text(span.max(), 100 * metrics["groups"][group] + 2, group, fontsize=8, ha="right")
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylim(-3, 108)
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{title}, {len(counts)} classes (black: a group's mean recall)")
    return _save(fig, path)


def _count_bins(counts: np.ndarray) -> np.ndarray:
    """Log-spaced edges over the training counts (at most ``COUNT_BINS`` bins, none empty of counts)."""
    edges = np.unique(np.geomspace(counts.min(), counts.max() + 1, COUNT_BINS + 1).round())
    return edges if len(edges) > 1 else np.asarray([counts.min(), counts.max() + 1])


def plot_recall_by_count(strategies: Mapping[str, dict], path) -> Path:
    """For many classes: each strategy's mean recall (in %) of the classes in each training-count
    bin (log-spaced), one line per strategy, plotted at the bins' geometric centres."""
    first = next(iter(strategies.values()))
    counts = np.asarray(first["train_counts"])
    edges = _count_bins(counts)
    bins = np.clip(np.searchsorted(edges, counts, side="right") - 1, 0, len(edges) - 2)
    used = np.unique(bins)
    centres = np.sqrt(edges[used] * edges[used + 1])
    fig = Figure(figsize=(10, 5), layout="constrained")
    ax = fig.add_subplot()
    for index, (name, entry) in enumerate(strategies.items()):
        recall = np.asarray(entry["per_class"]["recall"])
        means = [100 * recall[bins == b].mean() for b in used]
        ax.plot(centres, means, marker="o", linestyle="-" if index < 10 else "--", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class (log scale, binned)")
    ax.set_ylim(0, 105)
    ax.set_ylabel("mean recall of the bin's classes (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(f"Recall by training count, {len(counts)} classes, by strategy")
    return _save(fig, path)


def write_run_figures(metrics: dict, out_dir) -> list[Path]:
    """The figures of one evaluated run, under ``out_dir/figures``."""
    figures = Path(out_dir) / "figures"
    top1 = f"top-1 {_pct(metrics['accuracy'])}%"
    return [
        plot_confusion_matrix(metrics, figures / "confusion_matrix.png", f"Confusion matrix ({top1})"),
        plot_precision_recall(metrics, figures / "precision_recall.png", f"Per-class precision and recall ({top1})"),
        plot_class_histogram(metrics["train_counts"], metrics["class_names"], figures / "class_histogram.png"),
    ]


def _slug(name: str) -> str:
    """``name`` made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "strategy"


def write_study_figures(results: dict, out_dir) -> dict[str, Path]:
    """All figures of a study under ``out_dir/figures``, keyed ``summary``, ``confusion_<name>``,
    ``precision_recall_baseline`` (when the study has a baseline), ``recall_comparison``,
    ``prior_accuracy`` (when the results hold metrics under two or more test priors of the
    forward-to-backward axis) and ``class_histogram``."""
    figures = Path(out_dir) / "figures"
    strategies = results["strategies"]
    paths = {
        f"confusion_{name}": plot_confusion_matrix(
            entry, figures / f"confusion_{_slug(name)}.png", f"{name} (top-1 {_pct(entry['accuracy'])}%)"
        )
        for name, entry in strategies.items()
    }
    paths["summary"] = plot_summary(strategies, figures / "summary.png")
    if "baseline" in strategies:
        baseline = strategies["baseline"]
        title = f"baseline: per-class precision and recall (top-1 {_pct(baseline['accuracy'])}%)"
        paths["precision_recall_baseline"] = plot_precision_recall(
            baseline, figures / "precision_recall_baseline.png", title
        )
    paths["recall_comparison"] = plot_recall_comparison(strategies, figures / "recall_comparison.png")
    if has_prior_figure(strategies):
        paths["prior_accuracy"] = plot_prior_accuracy(strategies, figures / "prior_accuracy.png")
    first = next(iter(strategies.values()))
    paths["class_histogram"] = plot_class_histogram(
        first["train_counts"], first["class_names"], figures / "class_histogram.png"
    )
    return paths


# ---------------------------------------------------------------------------------------------
# Tables (rows of strings shared by the Markdown and HTML writers)


def _pct(value: float) -> str:
    """A fraction as a percentage with 2 decimals."""
    return f"{100 * value:.2f}"


def _mean_std(entry: dict, key: str) -> str:
    """``mean ± std`` over seeds of a headline number, in % (``—`` where it has none; the mean
    alone for one seed, which has no std)."""
    if entry["mean"][key] is None:
        return _NONE
    std = entry["std"][key]
    return _pct(entry["mean"][key]) if std is None else f"{_pct(entry['mean'][key])} ± {_pct(std)}"


def _points(values) -> str:
    """Differences (fractions) in percentage points, signed, ``a / b / c``."""
    return " / ".join(f"{100 * value:+.2f}" for value in values)


def balanced_test(strategies: Mapping[str, dict]) -> bool:
    """Whether every class has the same number of test images (mean over seeds), in every strategy."""
    supports = [np.asarray(entry["per_class"]["support"], dtype=float) for entry in strategies.values()]
    return all(np.ptp(support) < 1e-9 for support in supports)


def comparison_header(strategies: Mapping[str, dict]) -> tuple[str, ...]:
    """The comparison table's columns: ``COMPARISON_HEADER`` on a balanced test set, else
    ``COMPARISON_HEADER_IMBALANCED``."""
    return COMPARISON_HEADER if balanced_test(strategies) else COMPARISON_HEADER_IMBALANCED


def _tuned_top1(entry: dict) -> str:
    """Top-1 of a row's tuned result, mean ± std in % (``—`` for a row with no knob)."""
    tuned = entry.get("tuned")
    if tuned is None:
        return _NONE
    std = tuned["std"]
    return _pct(tuned["accuracy"]) if std is None else f"{_pct(tuned['accuracy'])} ± {_pct(std)}"


def _comparison_row(name: str, entry: dict, baseline: dict | None, header: Sequence[str]) -> list[str]:
    """One strategy's row of the comparison table (``header``'s columns)."""
    study = STUDY_REPORTED.get(name, {}).get("accuracy")
    paired = paired_differences(entry, baseline) if baseline is not None and entry is not baseline else None
    cells = {
        "Strategy": name,
        "Study top-1": _NONE if study is None else _pct(study),
        "Top-1 (mean ± std)": f"{_mean_std(entry, 'accuracy')} (n={len(entry['seeds'])})",
        "Δ vs baseline (points)": ""
        if baseline is None
        else f"{100 * (entry['mean']['accuracy'] - baseline['mean']['accuracy']):+.2f}",
        "Δ per seed (points)": "" if paired is None else _points(paired["per_seed"]),
        "Top-1 tuned on validation (mean ± std)": _tuned_top1(entry),
    }
    return [cells[column] if column in cells else _mean_std(entry, _MEAN_STD_COLUMNS[column]) for column in header]


def comparison_rows(strategies: Mapping[str, dict]) -> list[list[str]]:
    """Rows of the comparison table (``comparison_header``); Δ is versus our ``baseline`` mean
    top-1, with the paired per-seed differences beside it."""
    header = comparison_header(strategies)
    baseline = strategies.get("baseline")
    return [_comparison_row(name, entry, baseline, header) for name, entry in strategies.items()]


def _setting(values: Mapping[str, float]) -> str:
    return ", ".join(f"{_SYMBOLS.get(knob, knob)} = {value:g}" for knob, value in values.items())


def _grid_text(grid: Sequence[Mapping[str, float]]) -> str:
    """A tuning grid in short: ``γ ∈ {0, 0.25, …} (13)``, or a product ``β ∈ {…} × γ ∈ {…} (16)``."""
    knobs = list(grid[0]) if grid else []
    values = {knob: list(dict.fromkeys(point[knob] for point in grid)) for knob in knobs}

    def short(numbers: list) -> str:  # the first two and the last of a long list: the table stays narrow
        shown = [f"{v:g}" for v in numbers]
        return ", ".join(shown if len(shown) <= 5 else [*shown[:2], "…", shown[-1]])

    parts = [f"{_SYMBOLS.get(knob, knob)} ∈ {{{short(values[knob])}}}" for knob in knobs]
    return f"{' × '.join(parts)} ({len(grid)} heads)" if parts else _NONE


def _fixed_setting(name: str, entry: dict, settings: Mapping | None) -> str:
    """What the study's row of a stage-2 head fixes (``results.json``'s ``config.stage2``)."""
    tuned = entry.get("tuned")
    if tuned is not None and tuned.get("run") == name:
        return f"{', '.join(_SYMBOLS.get(k, k) for k in tuned['grid'][0])} tuned on validation (this row)"
    if settings is None:
        return _NONE
    knobs = LOSS_KNOBS.get(settings.get("loss"), ())
    if not knobs:
        if settings.get("loss") == "balanced-softmax":
            return "no knob: logit-adjusted CE at τ = 1"
        return "no knob"
    return _setting({knob: settings[knob] for knob in knobs if settings.get(knob) is not None}) or _NONE


def tuned_rows(results: dict) -> list[list[str]]:
    """Rows (``TUNED_HEADER``): each stage-2 row of the study at its fixed setting beside the same
    loss with its knobs tuned on validation, the paired per-seed differences and what was chosen."""
    strategies = results["strategies"]
    stage2 = results.get("config", {}).get("stage2") or {}
    stage2 = stage2 if all(isinstance(v, dict) for v in stage2.values()) else {}  # older: one shared config
    rows = []
    for name, entry in strategies.items():
        tuned = entry.get("tuned")
        if tuned is None and name not in stage2:
            continue
        row = [name, _fixed_setting(name, entry, stage2.get(name)), f"{_mean_std(entry, 'accuracy')}"]
        if tuned is None:
            rows.append([*row, _NONE, _NONE, _NONE, _NONE, _NONE])
            continue
        fixed = dict(zip(entry["seeds"], entry["by_seed"]["accuracy"], strict=True))
        gains = [accuracy - fixed[seed] for seed, accuracy in zip(tuned["seeds"], tuned["accuracy_by_seed"],
                                                                   strict=True)]  # fmt: skip
        chosen = " / ".join(_setting(values) or _NONE for values in tuned["chosen"])
        mean_gain = f"{100 * float(np.mean(gains)):+.2f}"
        rows.append([*row, _tuned_top1(entry), mean_gain, _points(gains), chosen, _grid_text(tuned["grid"])])
    return rows


def _prior_label(name: str) -> str:
    return {TRAIN: "the training prior", UNIFORM: "uniform"}.get(name, name)


def prior_header(strategies: Mapping[str, dict]) -> tuple[str, ...]:
    """The deployment table's columns: the headline top-1 and top-1 under each ``PRIOR_TABLE``
    prior the results have (``()`` when they have none)."""
    shown = [name for name in PRIOR_TABLE if name in shared_priors(strategies)]
    if not shown:
        return ()
    return ("Strategy", "Top-1 (mean ± std)", *(f"Under {_prior_label(name)} (mean ± std)" for name in shown))


def prior_rows(strategies: Mapping[str, dict]) -> list[list[str]]:
    """Rows (``prior_header``): each strategy's headline top-1 beside its top-1 under the test priors."""
    shown = [name for name in PRIOR_TABLE if name in shared_priors(strategies)]
    rows = []
    for name, entry in strategies.items():
        cells = []
        for prior in shown:
            under = entry["under_prior"][prior]
            std = under["std"]
            cells.append(_pct(under["accuracy"]) if std is None else f"{_pct(under['accuracy'])} ± {_pct(std)}")
        rows.append([name, _mean_std(entry, "accuracy"), *cells])
    return rows


def prior_verdict(strategies: Mapping[str, dict]) -> str:
    """Which strategy has the best mean top-1 under which test prior, in a sentence: the priors
    off the axis (the training prior, weight files) one by one, then the forward-to-backward axis
    in stretches with the same best strategy (strategies equal to 0.01 points tie and are named
    together); ``""`` when the results hold no test prior."""
    priors = shared_priors(strategies)
    if not priors:
        return ""

    def best(prior) -> tuple[tuple[str, ...], str]:
        shown = {name: _pct(entry["under_prior"][prior]["accuracy"]) for name, entry in strategies.items()}
        top = max(strategies, key=lambda name: strategies[name]["under_prior"][prior]["accuracy"])
        return tuple(name for name in strategies if shown[name] == shown[top]), shown[top]

    def who(names: tuple[str, ...], numbers: str) -> str:
        if len(names) == 1:
            return f"{names[0]} ({numbers})"
        return f"{', '.join(names[:-1])} and {names[-1]} (tied, {numbers})"

    axis = axis_order(priors)
    parts = [f"under {_prior_label(p)}, {who(best(p)[0], best(p)[1] + '%')}" for p in priors if p not in axis]
    stretches: list[list[str]] = []
    for prior in axis:
        if stretches and best(stretches[-1][-1])[0] == best(prior)[0]:
            stretches[-1].append(prior)
        else:
            stretches.append([prior])
    for stretch in stretches:
        (names, first), (_, last) = best(stretch[0]), best(stretch[-1])
        if len(stretch) == 1:
            parts.append(f"under {stretch[0]}, {who(names, first + '%')}")
        else:
            parts.append(f"from {stretch[0]} to {stretch[-1]}, {who(names, f'{first}% to {last}%')}")
    winners = {best(prior)[0] for prior in priors}
    seeds = len(next(iter(strategies.values()))["seeds"])
    mean = f"mean top-1 over {seeds} seed{'s' if seeds > 1 else ''}"
    if len(winners) == 1 and len(next(iter(winners))) == 1:
        (only,) = winners.pop()
        return f"{only} has the best {mean} under every test prior measured: " + "; ".join(parts) + "."
    return f"The best strategy depends on the prior it is deployed to ({mean}): " + "; ".join(parts) + "."


_PRIOR_NOTE = (
    "Top-1 expected where the classes come with another prior than the test set's: each class's recall on the "
    "test set weighted by its probability under the prior (the confusion matrix re-weighted exactly; no test image "
    "is dropped or drawn again). Uniform is a balanced test set; the training prior is the training split's class "
    "frequencies; forward-N is a long tail of imbalance N in the training order and backward-N the same reversed, "
    "the tail classes becoming the most frequent (Zhang et al., NeurIPS 2022). Mean ± sample std over seeds."
)


def study_rows(strategies: Mapping[str, dict]) -> list[list[str]]:
    """Rows (``STUDY_HEADER``) setting every number the study reported beside ours (blank if not run)."""
    rows = []
    for name, reported in STUDY_REPORTED.items():
        for key, value in reported.items():
            entry = strategies.get(name)
            ours = _mean_std(entry, key) if entry else ""
            gap = f"{100 * (entry['mean'][key] - value):+.2f}" if entry else ""
            rows.append([name, _METRIC_LABELS[key], _pct(value), ours, gap])
    return rows


def per_class_rows(entry: dict) -> list[list[str]]:
    """Rows (``PER_CLASS_HEADER``) of one strategy's per-class metrics, mean over seeds."""
    per_class = entry["per_class"]
    return [
        [name, str(count), _pct(precision), _pct(recall), _pct(f1)]
        for name, count, precision, recall, f1 in zip(
            entry["class_names"],
            entry["train_counts"],
            per_class["precision"],
            per_class["recall"],
            per_class["f1"],
            strict=True,
        )
    ]


GROUP_HEADER = ("Group", "Classes", "Train images", "Precision", "Recall", "F1")


def per_group_rows(entry: dict) -> list[list[str]]:
    """Rows (``GROUP_HEADER``) of one strategy's metrics by frequency group: the group's classes and
    training images, and the mean over its classes of their precision, recall and F1."""
    counts = np.asarray(entry["train_counts"])
    rows = []
    for group in GROUPS:
        members = entry["group_classes"][group]
        means = [_pct(float(np.mean(np.asarray(entry["per_class"][key])[members]))) if members else _NONE
                 for key in ("precision", "recall", "f1")]  # fmt: skip
        rows.append([group, str(len(members)), str(int(counts[members].sum())), *means])
    return rows


def class_table(entry: dict) -> tuple[Sequence[str], list[list[str]]]:
    """``(header, rows)`` of a strategy's per-class table, or beyond ``PER_CLASS_LIMIT`` classes its
    per-group table (``per_group_rows``)."""
    if len(entry["class_names"]) > PER_CLASS_LIMIT:
        return GROUP_HEADER, per_group_rows(entry)
    return PER_CLASS_HEADER, per_class_rows(entry)


def _format_value(value) -> str:
    """A config or environment value as compact text."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _seed_note(strategies: Mapping[str, dict]) -> str:
    """Sentences saying what the table numbers are, and which columns a balanced test set merges."""
    counts = sorted({len(entry["seeds"]) for entry in strategies.values()})
    seeds = next(iter(strategies.values()))["seeds"]
    support = np.asarray(next(iter(strategies.values()))["per_class"]["support"], dtype=float)
    if balanced_test(strategies):
        test = (
            f"The test set is balanced ({support[0]:g} images per class), so balanced accuracy and weighted recall "
            "equal top-1 and macro F1 equals weighted F1: each appears once."
        )
    else:
        test = (
            f"The test set is imbalanced ({support.min():g} to {support.max():g} images per class), so balanced "
            "accuracy (mean per-class recall) and macro F1 (every class weighed equally) differ from top-1 and "
            "the weighted averages (classes weighed by their test images): all appear."
        )
    return (
        f"Values in %; mean ± sample standard deviation over seeds (n − 1 in the denominator; n = "
        f"{', '.join(map(str, counts))}; one seed has no standard deviation, so its mean stands alone). "
        "Δ is in percentage points versus our baseline's mean top-1; Δ per seed gives the paired differences "
        f"from the baseline of the same seed (seeds {', '.join(map(str, seeds))}). Tuned on validation: the "
        "same loss with its knob chosen on the validation split (table below). Many/Medium/Few: mean recall of "
        f"the classes in each frequency group. {test}"
    )


_TUNED_NOTE = (
    "The study's rows keep the study's settings (fixed); beside each, the same loss with its knobs chosen on the "
    "balanced validation split alone, per seed, among a grid about as large as Modified CE's τ grid (13 values; "
    "16 for CB-focal's two knobs), ties going to the setting closest to the fixed one. The tuned heads train "
    "side by side with the fixed ones, on the same features, batches and learning rate, so the differences are "
    "paired per seed. Balanced Softmax has no knob: it is logit-adjusted CE at τ = 1, the untuned point of "
    "Modified CE's grid; Modified CE's own row is already tuned on validation."
)


# ---------------------------------------------------------------------------------------------
# Markdown


def _md_cell(text: str) -> str:
    """A table cell with pipes escaped."""
    return text.replace("|", "\\|")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table: first column left-aligned, the rest right-aligned."""
    rule = ["---"] + ["---:"] * (len(header) - 1)
    return ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in (header, rule, *rows)]


_HEAD_TAIL_CAPTION = (
    "Baseline, per class (head classes on the left): the head classes are recalled well but predicted too "
    "often (low precision), the tail classes the reverse"
)
_TTA_NOTE = (
    "With flip test-time augmentation (the logits of each test image and its mirror averaged): rows of their "
    "own, never mixed into the table above; the same heads and temperatures, chosen without it."
)


def study_title(results: dict) -> str:
    """The page's title: what was studied (the data's file or folder name and the imbalance)."""
    config = results.get("config", {})
    data = Path(str(config.get("data") or "")).name
    imbalance = config.get("imbalance", config.get("imbalance_factor"))
    if isinstance(imbalance, int | float):
        imbalance = f"imbalance factor {imbalance:g}"
    elif imbalance is not None:
        imbalance = f"{imbalance} imbalance"  # "natural"
    what = ", ".join(part for part in (data, imbalance) if part)
    return f"Long-tail study: results ({what})" if what else "Long-tail study: results"


def run_rows(runs: Mapping[str, dict]) -> list[list[str]]:
    """Rows (``RUN_HEADER``) of every run of a study: its kind, input sizes and what was chosen."""
    rows = []
    for name, run in runs.items():
        if run["kind"] == "train":
            sizes = run.get("epoch_sizes") or []
            schedule = ", ".join(f"{size}×{sizes.count(size)}" for size in dict.fromkeys(sizes))
            grid = run.get("test_size_grid") or {}
            chosen = ", ".join(f"{size}: {_pct(acc)}" for size, acc in grid.items())
            rows.append([name, "stage 1", schedule, str(run["test_image_size"]), chosen or _NONE])
        else:
            chosen = run.get("chosen") or {}
            knobs = chosen.get("tuned", ["tau"] if chosen.get("tau") is not None else [])
            picked = ", ".join(f"{knob} {chosen[knob]}" for knob in knobs)
            rows.append([name, f"stage 2 on {run['stage1']}", _NONE, str(run.get("feature_image_size")),
                         picked or _NONE])  # fmt: skip
    return rows


RUN_HEADER = ("Run", "Kind", "Training sizes (px × epochs)", "Test size (px)", "Chosen on validation (%)")


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
    lines += ["", "## Comparison", "", _seed_note(strategies), ""]
    lines += _md_table(comparison_header(strategies), comparison_rows(strategies))
    if prior_header(strategies):
        lines += ["", "## Under the deployment prior", "", prior_verdict(strategies), ""]
        if has_prior_figure(strategies):
            lines += ["![Top-1 by the test prior](figures/prior_accuracy.png)", ""]
        lines += [_PRIOR_NOTE, ""] + _md_table(prior_header(strategies), prior_rows(strategies))
    if tuned_rows(results):
        lines += ["", "## Fixed setting vs tuned on validation", "", _TUNED_NOTE, ""]
        lines += _md_table(TUNED_HEADER, tuned_rows(results))
    lines += ["", "## Study-reported numbers", ""]
    lines += _md_table(STUDY_HEADER, study_rows(strategies))
    if results.get("strategies_tta_flip"):
        flipped = results["strategies_tta_flip"]
        lines += ["", "## With flip test-time augmentation", "", _TTA_NOTE, ""]
        lines += _md_table(comparison_header(flipped), comparison_rows(flipped))
    lines += ["", "## Per-class results (mean over seeds, %)"]
    for name, entry in strategies.items():
        lines += ["", f"### {name}", ""] + _md_table(*class_table(entry))
    if results.get("runs"):
        lines += ["", "## Runs", ""] + _md_table(RUN_HEADER, run_rows(results["runs"]))
    lines += ["", "## Configuration", ""]
    lines += [f"- {key}: {_format_value(value)}" for key, value in results["config"].items()]
    if results.get("environment"):
        lines += ["", "## Environment", ""]
        lines += [f"- {key}: {_format_value(value)}" for key, value in results["environment"].items()]
    atomic_write_bytes(Path(path), ("\n".join(lines) + "\n").encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# HTML

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1400px;
       padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { border-bottom: 2px solid #2a6fb0; padding-bottom: .3rem; }
h2 { margin-top: 2.2rem; color: #2a6fb0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .78rem; }
th, td { border: 1px solid #ccc; padding: .3rem .35rem; }
th { background: #eef3f9; font-size: .8rem; }
td { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td:first-child { text-align: left; font-weight: 600; }
td.text { white-space: normal; text-align: left; }  /* a text cell (a grid, a choice) wraps; numbers never do */
tr:nth-child(even) td { background: #fafafa; }
table.kv td { text-align: left; font-weight: normal; }
table.kv td:first-child { font-weight: 600; }
.note { color: #555; font-size: .9rem; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { color: #555; font-size: .85rem; }
.strategy { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
"""

_IMAGES_LOADED_JS = """
window.addEventListener("load", function () {
  var decoded = Array.prototype.filter.call(document.images, function (img) { return img.naturalWidth > 0; });
  document.body.dataset.imagesLoaded = String(decoded.length);
});
"""


_SEED_COUNT = re.compile(r"\(n=\d+\)")


def _is_text(cell: str) -> bool:
    """Whether a table cell holds words (a grid, a choice: it may wrap) rather than numbers (it never
    wraps: a mean ± std broken over lines misreads). The seed count "(n=3)" is no word."""
    return any(char.isalpha() for char in _SEED_COUNT.sub("", cell))


def _html_cell(cell: str, column: int) -> str:
    """One escaped cell; a text cell after the first column (the row's name) may wrap."""
    wraps = column > 0 and _is_text(cell)
    return f'<td class="text">{html.escape(cell)}</td>' if wraps else f"<td>{html.escape(cell)}</td>"


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], css_class: str = "") -> str:
    """An HTML table with escaped cells."""
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(_html_cell(cell, column) for column, cell in enumerate(row)) + "</tr>\n" for row in rows
    )
    class_attr = f' class="{css_class}"' if css_class else ""
    return f"<table{class_attr}><thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table>"


def _html_key_values(mapping: Mapping) -> str:
    """A two-column table of every key and its value."""
    rows = [[str(key), _format_value(value)] for key, value in mapping.items()]
    return _html_table(("Key", "Value"), rows, css_class="kv")


def _html_figure(path: Path, caption: str) -> str:
    """A PNG embedded as a base64 ``data:`` URI, with a caption."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    text = html.escape(caption)
    return f'<figure><img src="data:image/png;base64,{data}" alt="{text}"><figcaption>{text}</figcaption></figure>'


def _html_strategy_sections(strategies: Mapping[str, dict], figures: Mapping[str, Path]) -> list[str]:
    """Per strategy: its per-class table beside its confusion matrix."""
    parts = []
    for name, entry in strategies.items():
        parts += [
            f"<h3>{html.escape(name)}</h3>",
            '<div class="strategy">',
            _html_table(*class_table(entry)),
            _html_figure(figures[f"confusion_{name}"], f"Row-normalised confusion matrix: {name}"),
            "</div>",
        ]
    return parts


def write_report_html(results: dict, out_dir, *, environment: dict, figures: Mapping[str, Path] | None = None) -> Path:
    """``out_dir/report.html``: one self-contained page (inline CSS, images as ``data:`` URIs).

    ``figures`` are the paths ``write_study_figures`` returned; when not given they are drawn here.
    """
    strategies = results["strategies"]
    if figures is None:
        figures = write_study_figures(results, out_dir)
    title = study_title(results)
    body = [
        f"<h1>{html.escape(title)}</h1>",
        _html_figure(
            figures["summary"],
            "Top-1 by strategy (mean ± std over seeds; ◆ the study's number) and many / medium / few-shot recall",
        ),  # fmt: skip
        "<h2>Comparison</h2>",
        f'<p class="note">{html.escape(_seed_note(strategies))}</p>',
        f'<div class="scroll">{_html_table(comparison_header(strategies), comparison_rows(strategies))}</div>',
    ]
    if prior_header(strategies):
        body += [
            "<h2>Under the deployment prior</h2>",
            f"<p>{html.escape(prior_verdict(strategies))}</p>",
            *(
                [_html_figure(figures["prior_accuracy"], "Top-1 by the class prior of the deployment, per strategy")]
                if "prior_accuracy" in figures
                else []
            ),
            f'<p class="note">{html.escape(_PRIOR_NOTE)}</p>',
            f'<div class="scroll">{_html_table(prior_header(strategies), prior_rows(strategies))}</div>',
        ]
    if tuned_rows(results):
        body += [
            "<h2>Fixed setting vs tuned on validation</h2>",
            f'<p class="note">{html.escape(_TUNED_NOTE)}</p>',
            f'<div class="scroll">{_html_table(TUNED_HEADER, tuned_rows(results))}</div>',
        ]
    body += ["<h2>Study-reported numbers</h2>", _html_table(STUDY_HEADER, study_rows(strategies))]
    if results.get("strategies_tta_flip"):
        flipped = results["strategies_tta_flip"]
        body += [
            "<h2>With flip test-time augmentation</h2>",
            f'<p class="note">{html.escape(_TTA_NOTE)}</p>',
            f'<div class="scroll">{_html_table(comparison_header(flipped), comparison_rows(flipped))}</div>',
        ]
    body += [
        "<h2>Figures</h2>",
        _html_figure(figures["class_histogram"], "Training images per class"),
        *(
            [_html_figure(figures["precision_recall_baseline"], _HEAD_TAIL_CAPTION)]
            if "precision_recall_baseline" in figures
            else []
        ),
        _html_figure(figures["recall_comparison"], "Per-class recall by strategy"),
        "<h2>Per-class results (mean over seeds, %)</h2>",
        *_html_strategy_sections(strategies, figures),
    ]
    if results.get("runs"):
        body += ["<h2>Runs</h2>", f'<div class="scroll">{_html_table(RUN_HEADER, run_rows(results["runs"]))}</div>']
    body += [
        "<h2>Run configuration</h2>",
        _html_key_values(results["config"]),
        "<h2>Environment</h2>",
        _html_key_values(environment),
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n<script>{_IMAGES_LOADED_JS}</script>\n"
        "</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )
    path = Path(out_dir) / "report.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path


def render_study(results: dict, out_dir, *, environment: dict) -> None:
    """Write the study's figures, ``results.md`` and ``report.html`` under ``out_dir``."""
    figures = write_study_figures(results, out_dir)
    write_results_markdown(results, Path(out_dir) / "results.md")
    write_report_html(results, out_dir, environment=environment, figures=figures)
