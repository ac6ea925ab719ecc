"""The report's tables as rows of strings, shared by the Markdown and HTML writers: headers, rows,
and the formatting of their cells (metric values are fractions in [0, 1]; the tables show them as
percentages with 2 decimals)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

from longtail.knobs import LOSS_KNOBS
from longtail.metrics import PER_CLASS_LIMIT, paired_differences
from longtail.priors import TRAIN, UNIFORM
from longtail.report.study_numbers import study_reported

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
GROUPS = ("many", "medium", "few")  # the frequency groups, in the order the tables and figures show them


def shared_priors(strategies: Mapping[str, dict]) -> list[str]:
    """The test priors every strategy has metrics under (``under_prior``), in the first one's order."""
    entries = list(strategies.values())
    return [
        name for name in entries[0].get("under_prior", {}) if all(name in e.get("under_prior", {}) for e in entries)
    ]


def percent(value: float) -> str:
    """A fraction as a percentage with 2 decimals."""
    return f"{100 * value:.2f}"


def _percent_std(mean: float, std: float | None) -> str:
    """``mean ± std`` in %; the mean alone where there is no std (one seed has none)."""
    return percent(mean) if std is None else f"{percent(mean)} ± {percent(std)}"


def _mean_std(entry: dict, key: str) -> str:
    """``mean ± std`` over seeds of a headline number, in % (``—`` where it has none; the mean
    alone for one seed, which has no std)."""
    if entry["mean"][key] is None:
        return _NONE
    return _percent_std(entry["mean"][key], entry["std"][key])


def _points(values) -> str:
    """Differences (fractions) in percentage points, signed, ``a / b / c``."""
    return " / ".join(f"{100 * value:+.2f}" for value in values)


def balanced_test(strategies: Mapping[str, dict]) -> bool:
    """Whether every class has the same number of test images (mean over seeds), in every strategy."""
    supports = [np.asarray(entry["per_class"]["support"], dtype=float) for entry in strategies.values()]
    return all(np.ptp(support) < 1e-9 for support in supports)


def comparison_header(strategies: Mapping[str, dict]) -> tuple[str, ...]:
    """The comparison table's columns: ``COMPARISON_HEADER`` on a balanced test set, else
    ``COMPARISON_HEADER_IMBALANCED``; the study's column only on the study's data."""
    header = COMPARISON_HEADER if balanced_test(strategies) else COMPARISON_HEADER_IMBALANCED
    return header if study_reported(strategies) else tuple(c for c in header if c != "Study top-1")


def _tuned_top1(entry: dict) -> str:
    """Top-1 of a row's tuned result, mean ± std in % (``—`` for a row with no knob)."""
    tuned = entry.get("tuned")
    return _NONE if tuned is None else _percent_std(tuned["accuracy"], tuned["std"])


def _comparison_row(
    name: str, entry: dict, baseline: dict | None, header: Sequence[str], reported: Mapping[str, dict]
) -> list[str]:
    """One strategy's row of the comparison table (``header``'s columns; ``reported``: the study's numbers)."""
    study = reported.get(name, {}).get("accuracy")
    paired = paired_differences(entry, baseline) if baseline is not None and entry is not baseline else None
    cells = {
        "Strategy": name,
        "Study top-1": _NONE if study is None else percent(study),
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
    reported = study_reported(strategies)
    return [_comparison_row(name, entry, baseline, header, reported) for name, entry in strategies.items()]


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


def prior_label(name: str) -> str:
    return {TRAIN: "the training prior", UNIFORM: "uniform"}.get(name, name)


def prior_header(strategies: Mapping[str, dict]) -> tuple[str, ...]:
    """The deployment table's columns: the headline top-1 and top-1 under each ``PRIOR_TABLE``
    prior the results have (``()`` when they have none)."""
    shown = [name for name in PRIOR_TABLE if name in shared_priors(strategies)]
    if not shown:
        return ()
    return ("Strategy", "Top-1 (mean ± std)", *(f"Under {prior_label(name)} (mean ± std)" for name in shown))


def prior_rows(strategies: Mapping[str, dict]) -> list[list[str]]:
    """Rows (``prior_header``): each strategy's headline top-1 beside its top-1 under the test priors."""
    shown = [name for name in PRIOR_TABLE if name in shared_priors(strategies)]
    rows = []
    for name, entry in strategies.items():
        under = [entry["under_prior"][prior] for prior in shown]
        cells = [_percent_std(prior["accuracy"], prior["std"]) for prior in under]
        rows.append([name, _mean_std(entry, "accuracy"), *cells])
    return rows


def study_rows(strategies: Mapping[str, dict]) -> list[list[str]]:
    """Rows (``STUDY_HEADER``) setting every number the study reported beside ours (blank if not run);
    none where ours are not on the study's data."""
    rows = []
    for name, reported in study_reported(strategies).items():
        for key, value in reported.items():
            entry = strategies.get(name)
            ours = _mean_std(entry, key) if entry else ""
            gap = f"{100 * (entry['mean'][key] - value):+.2f}" if entry else ""
            rows.append([name, _METRIC_LABELS[key], percent(value), ours, gap])
    return rows


def per_class_rows(entry: dict) -> list[list[str]]:
    """Rows (``PER_CLASS_HEADER``) of one strategy's per-class metrics, mean over seeds."""
    per_class = entry["per_class"]
    return [
        [name, str(count), percent(precision), percent(recall), percent(f1)]
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
        means = [percent(float(np.mean(np.asarray(entry["per_class"][key])[members]))) if members else _NONE
                 for key in ("precision", "recall", "f1")]  # fmt: skip
        rows.append([group, str(len(members)), str(int(counts[members].sum())), *means])
    return rows


def class_table(entry: dict) -> tuple[Sequence[str], list[list[str]]]:
    """``(header, rows)`` of a strategy's per-class table, or beyond ``PER_CLASS_LIMIT`` classes its
    per-group table (``per_group_rows``)."""
    if len(entry["class_names"]) > PER_CLASS_LIMIT:
        return GROUP_HEADER, per_group_rows(entry)
    return PER_CLASS_HEADER, per_class_rows(entry)


def format_value(value) -> str:
    """A config or environment value as compact text."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def run_rows(runs: Mapping[str, dict]) -> list[list[str]]:
    """Rows (``RUN_HEADER``) of every run of a study: its kind, input sizes and what was chosen."""
    rows = []
    for name, run in runs.items():
        if run["kind"] == "train":
            sizes = run.get("epoch_sizes") or []
            schedule = ", ".join(f"{size}×{sizes.count(size)}" for size in dict.fromkeys(sizes))
            grid = run.get("test_size_grid") or {}
            chosen = ", ".join(f"{size}: {percent(acc)}" for size, acc in grid.items())
            rows.append([name, "stage 1", schedule, str(run["test_image_size"]), chosen or _NONE])
        else:
            chosen = run.get("chosen") or {}
            knobs = chosen.get("tuned", ["tau"] if chosen.get("tau") is not None else [])
            picked = ", ".join(f"{knob} {chosen[knob]}" for knob in knobs)
            rows.append([name, f"stage 2 on {run['stage1']}", _NONE, str(run.get("feature_image_size")),
                         picked or _NONE])  # fmt: skip
    return rows


RUN_HEADER = ("Run", "Kind", "Training sizes (px × epochs)", "Test size (px)", "Chosen on validation (%)")
