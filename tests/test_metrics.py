"""longtail.metrics against values worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from longtail import report
from longtail.errors import LongtailError
from longtail.metrics import (
    HEADLINE,
    aggregate_seeds,
    classification_metrics,
    frequency_groups,
    headline,
    paired_differences,
)

CIFAR10_LT_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]

# 4 classes; class 3 is never predicted (precision 0 by the zero_division rule).
Y_TRUE = [0, 0, 0, 1, 1, 2, 3]
Y_PRED = [0, 0, 1, 1, 2, 2, 0]
NAMES = ["a", "b", "c", "d"]
COUNTS = [100, 50, 20, 5]
# Confusion matrix (rows true, columns predicted):
#   a: [2, 1, 0, 0]   b: [0, 1, 1, 0]   c: [0, 0, 1, 0]   d: [1, 0, 0, 0]
# Column totals 3, 2, 2, 0.
PRECISION = [2 / 3, 1 / 2, 1 / 2, 0.0]
RECALL = [2 / 3, 1 / 2, 1.0, 0.0]
F1 = [2 / 3, 1 / 2, 2 / 3, 0.0]  # 2PR/(P+R): c is 2*(1/2)/(3/2)
SUPPORT = [3, 2, 1, 1]


def approx_list(values):
    return pytest.approx(values, abs=1e-12)


@pytest.fixture
def metrics() -> dict:
    return classification_metrics(Y_TRUE, Y_PRED, NAMES, COUNTS)


def test_per_class(metrics):
    assert metrics["per_class"]["precision"] == approx_list(PRECISION)
    assert metrics["per_class"]["recall"] == approx_list(RECALL)
    assert metrics["per_class"]["f1"] == approx_list(F1)
    assert metrics["per_class"]["support"] == SUPPORT


def test_accuracy_and_balanced_accuracy(metrics):
    assert metrics["accuracy"] == pytest.approx(4 / 7, abs=1e-12)
    assert metrics["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1 + 0) / 4, abs=1e-12)  # 13/24


def test_macro_and_weighted_averages(metrics):
    assert metrics["macro"] == {
        "precision": pytest.approx(5 / 12, abs=1e-12),
        "recall": pytest.approx(13 / 24, abs=1e-12),
        "f1": pytest.approx(11 / 24, abs=1e-12),  # mean of per-class F1, not F1 of the means
    }
    assert metrics["weighted"] == {
        "precision": pytest.approx((3 * 2 / 3 + 2 * 1 / 2 + 1 * 1 / 2 + 0) / 7, abs=1e-12),  # 1/2
        "recall": pytest.approx(4 / 7, abs=1e-12),  # weighted recall is accuracy
        "f1": pytest.approx((3 * 2 / 3 + 2 * 1 / 2 + 1 * 2 / 3 + 0) / 7, abs=1e-12),  # 11/21
    }


def test_confusion_matrices(metrics):
    assert metrics["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [1, 0, 0, 0]]
    normalized = metrics["confusion_matrix_normalized"]
    expected = [[2 / 3, 1 / 3, 0, 0], [0, 1 / 2, 1 / 2, 0], [0, 0, 1, 0], [1, 0, 0, 0]]
    for row, want in zip(normalized, expected, strict=True):
        assert row == approx_list(want)


def test_groups_and_bookkeeping(metrics):
    # 4 classes: round(0.3 * 4) = 1 class at each edge.
    assert metrics["group_classes"] == {"many": [0], "medium": [1, 2], "few": [3]}
    assert metrics["groups"] == {
        "many": pytest.approx(2 / 3, abs=1e-12),
        "medium": pytest.approx((1 / 2 + 1) / 2, abs=1e-12),
        "few": pytest.approx(0.0, abs=1e-12),
    }
    assert metrics["class_names"] == NAMES and metrics["train_counts"] == COUNTS
    json.dumps(metrics)  # plain JSON types only


def test_class_absent_from_test_set_has_zero_row():
    m = classification_metrics([0, 0, 1], [0, 1, 1], ["a", "b", "c"], [10, 5, 1])
    assert m["confusion_matrix"][2] == [0, 0, 0]
    assert m["confusion_matrix_normalized"][2] == [0.0, 0.0, 0.0]
    assert m["per_class"]["support"] == [2, 1, 0]


def test_invalid_inputs_raise():
    with pytest.raises(LongtailError, match="equal-length"):
        classification_metrics([0, 1], [0], NAMES, COUNTS)
    with pytest.raises(LongtailError, match="equal-length"):
        classification_metrics([], [], NAMES, COUNTS)
    with pytest.raises(LongtailError, match="train counts"):
        classification_metrics([0, 1], [0, 1], NAMES, COUNTS[:3])


# ---------------------------------------------------------------- frequency groups


def test_cifar10_lt_groups():
    assert frequency_groups(CIFAR10_LT_100) == {"many": [0, 1, 2], "medium": [3, 4, 5, 6], "few": [7, 8, 9]}


def test_groups_follow_counts_not_class_index():
    assert frequency_groups(CIFAR10_LT_100[::-1]) == {"many": [7, 8, 9], "medium": [3, 4, 5, 6], "few": [0, 1, 2]}
    shuffled = [CIFAR10_LT_100[i] for i in (4, 0, 9, 2, 7, 5, 1, 8, 3, 6)]
    assert frequency_groups(shuffled) == {"many": [1, 3, 6], "medium": [0, 5, 8, 9], "few": [2, 4, 7]}


def test_group_accuracy_is_mean_recall_of_its_classes():
    rng = np.random.default_rng(0)
    y_true = np.repeat(np.arange(10), 30)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 10, 300))
    m = classification_metrics(y_true, y_pred, [str(i) for i in range(10)], CIFAR10_LT_100)
    recall = [float(np.mean(y_pred[y_true == c] == c)) for c in range(10)]
    assert m["per_class"]["recall"] == approx_list(recall)
    assert m["groups"]["many"] == pytest.approx(np.mean(recall[0:3]), abs=1e-12)
    assert m["groups"]["medium"] == pytest.approx(np.mean(recall[3:7]), abs=1e-12)
    assert m["groups"]["few"] == pytest.approx(np.mean(recall[7:10]), abs=1e-12)
    assert len({m["groups"]["many"], m["groups"]["medium"], m["groups"]["few"]}) == 3


def test_two_classes_leave_the_medium_group_empty_and_the_json_strict():
    y_true, y_pred = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    m = classification_metrics(y_true, y_pred, ["head", "tail"], [90, 10])
    assert m["group_classes"] == {"many": [0], "medium": [], "few": [1]}
    assert m["groups"] == {"many": 0.5, "medium": None, "few": 1.0}
    combined = aggregate_seeds([m, m], [0, 1])
    assert combined["groups"]["medium"] is None
    assert combined["mean"]["medium"] is None and combined["std"]["medium"] is None
    assert combined["mean"]["many"] == 0.5
    json.dumps(combined, allow_nan=False)  # null, never NaN
    row = report.comparison_rows({"baseline": combined})[0]
    header = report.comparison_header({"baseline": combined})
    assert row[header.index("Medium")] == "—"
    assert row[header.index("Many")] == "50.00 ± 0.00"


def test_shots_groups_use_the_literatures_thresholds():
    # many: more than 100 training images; medium: 20 to 100; few: fewer than 20.
    counts = [500, 101, 100, 20, 19, 1]
    assert frequency_groups(counts, "shots") == {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}
    assert frequency_groups(CIFAR10_LT_100, "shots") == {"many": list(range(8)), "medium": [8, 9], "few": []}
    with pytest.raises(LongtailError, match="grouping 'halves'"):
        frequency_groups(counts, "halves")


def test_metrics_record_their_grouping_and_keep_an_empty_group_null():
    m = classification_metrics([0, 1, 2], [0, 1, 1], ["a", "b", "c"], [400, 300, 200], "shots")
    assert m["grouping"] == "shots"
    assert m["group_classes"] == {"many": [0, 1, 2], "medium": [], "few": []}
    assert m["groups"] == {"many": pytest.approx(2 / 3), "medium": None, "few": None}
    assert classification_metrics(Y_TRUE, Y_PRED, NAMES, COUNTS)["grouping"] == "thirds"  # the default
    assert aggregate_seeds([m, m], [0, 1])["grouping"] == "shots"
    older = {k: v for k, v in classification_metrics(Y_TRUE, Y_PRED, NAMES, COUNTS).items() if k != "grouping"}
    assert aggregate_seeds([older], [0])["grouping"] == "thirds"  # metrics.json written before --groups
    json.dumps(m, allow_nan=False)


# ---------------------------------------------------------------- seeds


def test_aggregate_seeds_mean_std_and_summed_confusion():
    first = classification_metrics(Y_TRUE, Y_PRED, NAMES, COUNTS)
    second = classification_metrics(Y_TRUE, Y_TRUE, NAMES, COUNTS)  # perfect
    combined = aggregate_seeds([first, second], [0, 1])
    assert combined["seeds"] == [0, 1] and combined["per_seed"] == [first, second]
    assert combined["accuracy"] == pytest.approx((4 / 7 + 1) / 2, abs=1e-12)
    assert combined["mean"]["accuracy"] == pytest.approx((4 / 7 + 1) / 2, abs=1e-12)
    # The sample std (n - 1 = 1 in the denominator): |a - b| / sqrt(2) for two seeds, not |a - b| / 2.
    assert combined["std"]["accuracy"] == pytest.approx((1 - 4 / 7) / math.sqrt(2), abs=1e-12)
    assert combined["mean"]["macro_f1"] == pytest.approx((11 / 24 + 1) / 2, abs=1e-12)
    assert combined["std"]["few"] == pytest.approx(1 / math.sqrt(2), abs=1e-12)  # few: 0 and 1
    assert combined["by_seed"]["accuracy"] == pytest.approx([4 / 7, 1.0], abs=1e-12)
    assert combined["per_class"]["recall"] == approx_list([(r + 1) / 2 for r in RECALL])
    assert combined["confusion_matrix"] == [[5, 1, 0, 0], [0, 3, 1, 0], [0, 0, 2, 0], [1, 0, 0, 1]]
    assert combined["confusion_matrix_normalized"][0] == approx_list([5 / 6, 1 / 6, 0, 0])
    assert set(combined["mean"]) == set(HEADLINE) == set(combined["std"])
    json.dumps(combined)


def test_aggregate_one_seed_has_no_std():
    # One seed: the sample standard deviation is not defined, so it is null (never a 0 that would
    # read as "no spread measured"); the report shows the mean alone.
    single = classification_metrics(Y_TRUE, Y_PRED, NAMES, COUNTS)
    combined = aggregate_seeds([single], [7])
    assert combined["mean"] == pytest.approx(headline(single))
    assert all(v is None for v in combined["std"].values())
    assert combined["by_seed"]["accuracy"] == [single["accuracy"]]
    json.dumps(combined, allow_nan=False)
    row = report.comparison_rows({"baseline": combined})[0]
    header = report.comparison_header({"baseline": combined})
    assert row[header.index("Top-1 (mean ± std)")] == f"{100 * 4 / 7:.2f} (n=1)"


def _with_accuracies(accuracies: list[float]) -> list[dict]:
    """Metrics of one prediction per seed, with ``accuracy`` set by hand (the rest as computed)."""
    return [{**classification_metrics(Y_TRUE, Y_PRED, NAMES, COUNTS), "accuracy": a} for a in accuracies]


def test_sample_std_and_paired_differences_over_three_seeds():
    # The recorded cpu study's baseline and Reweight top-1 on seeds 0, 1, 2 (RESULTS.md).
    seeds = [0, 1, 2]
    baseline = aggregate_seeds(_with_accuracies([0.8195, 0.8122, 0.8236]), seeds)
    reweight = aggregate_seeds(_with_accuracies([0.8176, 0.8266, 0.8311]), seeds)
    mean = (0.8195 + 0.8122 + 0.8236) / 3
    by_hand = math.sqrt(sum((a - mean) ** 2 for a in (0.8195, 0.8122, 0.8236)) / (3 - 1))
    assert baseline["std"]["accuracy"] == pytest.approx(by_hand, abs=1e-12)  # 0.58 points; population: 0.47
    assert baseline["std"]["accuracy"] == pytest.approx(float(np.std([0.8195, 0.8122, 0.8236], ddof=1)))
    gain = paired_differences(reweight, baseline)
    assert gain["seeds"] == seeds
    assert [round(100 * d, 2) for d in gain["per_seed"]] == [-0.19, 1.44, 0.75]
    assert gain["mean"] == pytest.approx(reweight["mean"]["accuracy"] - baseline["mean"]["accuracy"], abs=1e-12)
    assert gain["std"] == pytest.approx(float(np.std(gain["per_seed"], ddof=1)), abs=1e-12)
    # Only the seeds both have, in the first one's order; without per-seed values, from per_seed.
    partial = aggregate_seeds(_with_accuracies([0.83, 0.81]), [2, 0])
    assert paired_differences(partial, baseline)["per_seed"] == pytest.approx([0.83 - 0.8236, 0.81 - 0.8195])
    older = {k: v for k, v in reweight.items() if k != "by_seed"}  # results.json written before by_seed
    assert paired_differences(older, baseline)["per_seed"] == pytest.approx(gain["per_seed"])
    assert paired_differences(aggregate_seeds(_with_accuracies([0.8]), [5]), baseline) is None
    one = paired_differences(aggregate_seeds(_with_accuracies([0.8]), [1]), baseline)
    assert one["per_seed"] == pytest.approx([0.8 - 0.8122]) and one["std"] is None
    # The report puts the paired differences beside the gain.
    rows = report.comparison_rows({"baseline": baseline, "reweight": reweight})
    header = report.comparison_header({"baseline": baseline, "reweight": reweight})
    assert rows[1][header.index("Δ vs baseline (points)")] == "+0.67"
    assert rows[1][header.index("Δ per seed (points)")] == "-0.19 / +1.44 / +0.75"
    assert rows[1][header.index("Top-1 (mean ± std)")] == f"{100 * reweight['mean']['accuracy']:.2f} ± " + (
        f"{100 * reweight['std']['accuracy']:.2f} (n=3)"
    )


def test_aggregate_needs_one_dict_per_seed():
    single = classification_metrics(Y_TRUE, Y_PRED, NAMES, COUNTS)
    with pytest.raises(LongtailError, match="one metrics dict per seed"):
        aggregate_seeds([single], [0, 1])
    with pytest.raises(LongtailError):
        aggregate_seeds([], [])
