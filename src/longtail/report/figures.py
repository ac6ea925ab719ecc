"""The report's figures, drawn on ``matplotlib.figure.Figure`` objects (Agg renderer, no pyplot
state, so no display is needed) and saved as PNGs: a run's (``write_run_figures``) and a study's
(``write_study_figures``)."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from longtail.metrics import PER_CLASS_LIMIT, confusion_cells, row_normalize
from longtail.priors import UNIFORM, axis_order
from longtail.report.study_numbers import study_reported
from longtail.report.tables import GROUPS, percent, shared_priors
from longtail.runs import atomic_write_bytes

_DPI = 100
# Up to this many classes a figure labels every class (and the confusion matrix every cell);
# beyond it (CIFAR-100's 100 classes) every k-th class is labelled and cells are colour only.
LABELLED_CLASSES = 20


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
    """Per-class recall (in %) of each strategy, one line per strategy; beyond ``LABELLED_CLASSES``
    classes (CIFAR-100-LT's 100 included, where a line per strategy over 100 classes is a tangle) the
    mean recall by training count instead (``plot_recall_by_count``)."""
    if len(next(iter(strategies.values()))["class_names"]) > LABELLED_CLASSES:
        return plot_recall_by_count(strategies, path)
    fig = Figure(figsize=(10, 5), layout="constrained")
    ax = fig.add_subplot()
    markers = "osD^v<>ph*"
    names = next(iter(strategies.values()))["class_names"]
    for index, (name, entry) in enumerate(strategies.items()):
        ax.plot(
            np.arange(len(names)),
            100 * np.asarray(entry["per_class"]["recall"]),
            marker=markers[index % len(markers)],
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
    study = study_reported(strategies)
    reported = [(row, 100 * study[n]["accuracy"]) for row, n in zip(y, names, strict=True) if n in study]
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
    top1 = f"top-1 {percent(metrics['accuracy'])}%"
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
            entry, figures / f"confusion_{_slug(name)}.png", f"{name} (top-1 {percent(entry['accuracy'])}%)"
        )
        for name, entry in strategies.items()
    }
    paths["summary"] = plot_summary(strategies, figures / "summary.png")
    if "baseline" in strategies:
        baseline = strategies["baseline"]
        title = f"baseline: per-class precision and recall (top-1 {percent(baseline['accuracy'])}%)"
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
