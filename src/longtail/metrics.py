"""Classification metrics for long-tailed evaluation, computed with scikit-learn.

``classification_metrics`` returns the dictionary written as ``metrics.json``:

- ``accuracy``, ``balanced_accuracy`` (mean per-class recall): fractions in [0, 1].
- ``per_class``: ``precision``, ``recall``, ``f1``, ``support`` lists in class order.
- ``macro`` and ``weighted``: ``precision``, ``recall``, ``f1`` averaged over classes
  (unweighted, or weighted by test support).
- ``confusion_matrix``: counts, rows = true class, columns = predicted class;
  ``confusion_matrix_normalized``: each row divided by its total (row = recall profile). Above
  ``PER_CLASS_LIMIT`` classes (ImageNet-LT's 1,000: a million cells; iNaturalist's 8,142: 66 million)
  ``confusion_matrix`` is sparse, ``{"shape": [C, C], "true": [...], "predicted": [...], "count":
  [...]}``, its non-zero cells in row-major order (at most one per test image), and the normalised
  copy is left out (``confusion_cells`` reads either form).
- ``groups``: ``many``/``medium``/``few`` accuracy (mean recall of the classes in the group;
  ``null`` for a group with no class, as ``medium`` with fewer than three classes),
  ``group_classes``: which classes form each group, and ``grouping``: the rule that formed them
  (``frequency_groups``: ``thirds`` or ``shots``).
- ``class_names`` and ``train_counts``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_recall_fscore_support

from longtail.choices import GROUPINGS
from longtail.errors import LongtailError

HEADLINE = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "weighted_precision",
    "weighted_recall",
    "weighted_f1",
    "many",
    "medium",
    "few",
)
# Training-shot thresholds of "shots" groups: many > 100 images, medium 20..100, few < 20.
MANY_SHOT_ABOVE, FEW_SHOT_BELOW = 100, 20
# Up to this many classes metrics.json holds the dense confusion matrix and the report shows every
# class (CIFAR-100's 100 included); above it the matrix is stored sparse and the report summarises
# the many/medium/few groups instead (``longtail.report``).
PER_CLASS_LIMIT = 100


def top1_accuracy(logits, labels: np.ndarray) -> float:
    """The fraction of rows of ``logits`` (a CPU tensor or an array, one row per sample) whose largest
    logit is at the sample's label: the validation accuracy every choice on validation compares."""
    return float((np.asarray(logits.argmax(1)) == labels).mean())


def row_normalize(counts: np.ndarray) -> np.ndarray:
    """Divide each row of a confusion matrix by its total (rows with no samples stay 0)."""
    counts = np.asarray(counts)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)


def frequency_groups(train_counts: Sequence[int], grouping: str = "thirds") -> dict[str, list[int]]:
    """Split classes into many / medium / few shot by training count.

    ``thirds``: the classes are ranked by count (largest first); the top 30 % are ``many``, the
    bottom 30 % ``few`` and the rest ``medium``. For CIFAR-10-LT this is classes 0-2, 3-6 and
    7-9, the split used by the CIFAR-LT literature for 10 classes.

    ``shots``: by the training count ``n_c`` itself, ``many`` for ``n_c > 100``, ``medium`` for
    ``20 <= n_c <= 100``, ``few`` for ``n_c < 20``: the convention of ImageNet-LT (Liu et al.,
    CVPR 2019, "Large-Scale Long-Tailed Recognition in an Open World") that the CIFAR-100-LT
    literature follows (Kang et al., ICLR 2020; Menon et al., ICLR 2021). CIFAR-100-LT at IF = 100
    (500 down to 5 images) gives 35 many, 35 medium and 30 few classes. A group may be empty.
    """
    if grouping not in GROUPINGS:
        raise LongtailError(f"unknown grouping '{grouping}': choose one of {', '.join(GROUPINGS)}")
    if grouping == "shots":
        return {
            "many": [c for c, n in enumerate(train_counts) if n > MANY_SHOT_ABOVE],
            "medium": [c for c, n in enumerate(train_counts) if FEW_SHOT_BELOW <= n <= MANY_SHOT_ABOVE],
            "few": [c for c, n in enumerate(train_counts) if n < FEW_SHOT_BELOW],
        }
    order = [int(c) for c in np.argsort(-np.asarray(train_counts), kind="stable")]
    n_edge = max(1, round(0.3 * len(order)))
    return {
        "many": sorted(order[:n_edge]),
        "medium": sorted(order[n_edge : len(order) - n_edge]),
        "few": sorted(order[len(order) - n_edge :]),
    }


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    train_counts: Sequence[int],
    grouping: str = "thirds",
) -> dict:
    """All metrics of a prediction, as plain JSON-serialisable Python types; ``grouping`` forms the
    frequency groups (``frequency_groups``)."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or len(y_true) == 0:
        raise LongtailError(f"y_true and y_pred must be equal-length 1-D arrays, got {y_true.shape} and {y_pred.shape}")
    if len(class_names) != len(train_counts):
        raise LongtailError(f"{len(class_names)} class names but {len(train_counts)} train counts")
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    averaged = {
        average: dict(
            zip(
                ("precision", "recall", "f1"),
                map(
                    float,
                    precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average, zero_division=0)[
                        :3
                    ],
                ),
                strict=True,
            )
        )
        for average in ("macro", "weighted")
    }
    groups = frequency_groups(train_counts, grouping)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "per_class": {
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f1": f1.tolist(),
            "support": support.tolist(),
        },
        "macro": averaged["macro"],
        "weighted": averaged["weighted"],
        **confusion_entries(
            y_true.astype(np.int64) * len(labels) + y_pred, np.ones(len(y_true), np.int64), len(labels)
        ),
        "groups": {name: float(np.mean(recall[members])) if members else None for name, members in groups.items()},
        "group_classes": groups,
        "grouping": grouping,
        "class_names": list(class_names),
        "train_counts": [int(c) for c in train_counts],
    }


def headline(metrics: dict) -> dict[str, float]:
    """The scalar numbers a comparison table shows, flattened to one level."""
    return {
        "accuracy": metrics["accuracy"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "macro_f1": metrics["macro"]["f1"],
        "weighted_precision": metrics["weighted"]["precision"],
        "weighted_recall": metrics["weighted"]["recall"],
        "weighted_f1": metrics["weighted"]["f1"],
        **metrics["groups"],
    }


def aggregate_seeds(per_seed: Sequence[dict], seeds: Sequence[int]) -> dict:
    """Combine the metrics of several seeds of one strategy.

    The result has every key of a single ``metrics.json``, where lists and scalars are the mean
    over seeds and ``confusion_matrix`` is the sum of counts (its normalised form recomputed);
    plus ``seeds``, ``per_seed`` (the individual metrics), ``by_seed`` (each ``HEADLINE`` number's
    value per seed, in the order of ``seeds``) and ``mean``/``std`` of the ``HEADLINE`` numbers;
    ``under_prior`` (the metrics under each test prior every seed has) holds the means, with the
    accuracy's sample ``std`` and ``accuracy_by_seed``.
    ``std`` is the **sample** standard deviation over seeds (n - 1 in the denominator: the seeds
    are a sample of the runs one could make), ``None`` for a single seed, where it is not
    defined; any statistic of an empty frequency group is ``None`` too.
    """
    if not per_seed or len(per_seed) != len(seeds):
        raise LongtailError(f"need one metrics dict per seed, got {len(per_seed)} for seeds {list(seeds)}")
    first = per_seed[0]

    def mean_of(values):
        return np.mean(np.asarray(values, dtype=float), axis=0).tolist()

    def over_seeds(statistic, key):  # None where the number is None (an empty frequency group)
        values = [h[key] for h in headlines]
        return None if None in values else float(statistic(values))

    def sample_std(values):
        return np.std(values, ddof=1)

    cells = [confusion_cells(m) for m in per_seed]
    headlines = [headline(m) for m in per_seed]
    aggregated = {
        "accuracy": mean_of([m["accuracy"] for m in per_seed]),
        "balanced_accuracy": mean_of([m["balanced_accuracy"] for m in per_seed]),
        "per_class": {k: mean_of([m["per_class"][k] for m in per_seed]) for k in first["per_class"]},
        "macro": {k: mean_of([m["macro"][k] for m in per_seed]) for k in first["macro"]},
        "weighted": {k: mean_of([m["weighted"][k] for m in per_seed]) for k in first["weighted"]},
        **confusion_entries(
            np.concatenate([c[0] for c in cells]), np.concatenate([c[1] for c in cells]), len(first["class_names"])
        ),
        "groups": {k: over_seeds(np.mean, k) for k in first["groups"]},
        "group_classes": first["group_classes"],
        "grouping": first.get("grouping", "thirds"),  # metrics written before --groups were all thirds
        "class_names": first["class_names"],
        "train_counts": first["train_counts"],
        "seeds": [int(s) for s in seeds],
        "per_seed": list(per_seed),
        "by_seed": {k: [h[k] for h in headlines] for k in HEADLINE},
        "mean": {k: over_seeds(np.mean, k) for k in HEADLINE},
        "std": {k: None if len(per_seed) < 2 else over_seeds(sample_std, k) for k in HEADLINE},
    }
    shared = [name for name in first.get("under_prior", {}) if all(name in m.get("under_prior", {}) for m in per_seed)]
    if shared:
        aggregated["under_prior"] = {
            name: _prior_over_seeds([m["under_prior"][name] for m in per_seed]) for name in shared
        }
    return aggregated


def _prior_over_seeds(per_seed: Sequence[dict]) -> dict:
    """One prior's metrics (``longtail.priors.metrics_under_prior``) over seeds: the means, and
    ``std`` (sample; ``None`` for one seed) and ``accuracy_by_seed`` of its accuracy."""

    def mean(values):
        return None if None in values else float(np.mean(values))

    accuracies = [m["accuracy"] for m in per_seed]
    return {
        "accuracy": mean(accuracies),
        "std": float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else None,
        "accuracy_by_seed": accuracies,
        **{
            part: {k: mean([m[part][k] for m in per_seed]) for k in per_seed[0][part]}
            for part in ("macro", "weighted", "groups")
        },
        "prior": np.mean([m["prior"] for m in per_seed], axis=0).tolist(),
    }


def paired_differences(entry: dict, reference: dict, key: str = "accuracy") -> dict | None:
    """The paired per-seed differences ``entry - reference`` of a ``HEADLINE`` number between two
    aggregated strategies (``aggregate_seeds``), on the seeds both have, in ``entry``'s order:
    ``seeds``, ``per_seed``, their ``mean`` (= the difference of the means on those seeds) and
    sample ``std`` (``None`` for one seed). ``None`` when they share no seed or the number is
    ``None`` (an empty frequency group)."""

    def values(aggregated):
        if "by_seed" in aggregated:
            return dict(zip(aggregated["seeds"], aggregated["by_seed"][key], strict=True))
        return {seed: headline(m)[key] for seed, m in zip(aggregated["seeds"], aggregated["per_seed"], strict=True)}

    mine, theirs = values(entry), values(reference)
    seeds = [seed for seed in entry["seeds"] if seed in theirs]
    if not seeds or any(mine[s] is None or theirs[s] is None for s in seeds):
        return None
    differences = [float(mine[s] - theirs[s]) for s in seeds]
    return {
        "seeds": seeds,
        "per_seed": differences,
        "mean": float(np.mean(differences)),
        "std": float(np.std(differences, ddof=1)) if len(differences) > 1 else None,
    }


# ---------------------------------------------------------------- confusion matrices of any size


def confusion_entries(cells: np.ndarray, counts: np.ndarray, num_classes: int) -> dict:
    """The confusion-matrix entries of metrics.json from ``counts`` of the cells ``cells`` (each
    ``true * C + predicted``; a cell may repeat, its counts add up): up to ``PER_CLASS_LIMIT``
    classes the dense ``confusion_matrix`` and ``confusion_matrix_normalized``, above it the sparse
    ``confusion_matrix`` alone (see the module docstring)."""
    if num_classes <= PER_CLASS_LIMIT:
        dense = np.bincount(cells, weights=counts, minlength=num_classes**2).astype(np.int64)
        dense = dense.reshape(num_classes, num_classes)
        return {"confusion_matrix": dense.tolist(), "confusion_matrix_normalized": row_normalize(dense).tolist()}
    unique, inverse = np.unique(cells, return_inverse=True)
    sums = np.bincount(inverse.reshape(-1), weights=counts).astype(np.int64)
    return {
        "confusion_matrix": {
            "shape": [num_classes, num_classes],
            "true": (unique // num_classes).tolist(),
            "predicted": (unique % num_classes).tolist(),
            "count": sums.tolist(),
        }
    }


def confusion_cells(metrics: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(cells, counts)`` of the non-zero cells of a metrics dict's ``confusion_matrix``, dense or
    sparse (each cell ``true * C + predicted``)."""
    matrix = metrics["confusion_matrix"]
    if isinstance(matrix, dict):
        num_classes = matrix["shape"][1]
        cells = np.asarray(matrix["true"], np.int64) * num_classes + np.asarray(matrix["predicted"], np.int64)
        return cells, np.asarray(matrix["count"], np.int64)
    dense = np.asarray(matrix, np.int64).reshape(-1)
    cells = np.flatnonzero(dense)
    return cells, dense[cells]
