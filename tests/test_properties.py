"""Property tests (hypothesis): long-tailed selection on synthetic labels, metrics against scikit-learn."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_recall_fscore_support

from longtail.data import Arrays, long_tail_counts, long_tail_split, select_long_tail
from longtail.metrics import classification_metrics

SETTINGS = settings(max_examples=30, deadline=None)


@st.composite
def long_tail_problems(draw):
    num_classes = draw(st.integers(2, 6))
    sizes = draw(st.lists(st.integers(2, 40), min_size=num_classes, max_size=num_classes))
    order_seed = draw(st.integers(0, 2**32 - 1))
    labels = np.random.default_rng(order_seed).permutation(np.repeat(np.arange(num_classes), sizes))
    imbalance = draw(st.one_of(st.integers(1, 200).map(float), st.floats(1.0, 500.0)))
    profile = draw(st.sampled_from(["exp", "step"]))
    val = draw(st.integers(0, min(sizes) - 1))
    max_per_class = draw(st.one_of(st.none(), st.integers(1, min(sizes))))
    seed = draw(st.integers(0, 2**31 - 1))
    return labels, num_classes, imbalance, profile, val, max_per_class, seed


@SETTINGS
@given(long_tail_problems())
def test_selection_follows_the_profile_and_never_overlaps(problem):
    labels, num_classes, imbalance, profile, val, max_per_class, seed = problem
    split = select_long_tail(labels, num_classes, imbalance, profile, seed, val, max_per_class)
    sizes = np.bincount(labels, minlength=num_classes)
    n_max = int(sizes.min()) if max_per_class is None else max_per_class
    profile_counts = long_tail_counts(n_max, num_classes, imbalance, profile)
    assert split.profile_counts == profile_counts
    # The validation split takes `val` images per class; training keeps the profile's count
    # unless that would need images the validation split took.
    expected = [min(profile_counts[c], int(sizes[c]) - val) for c in range(num_classes)]
    assert split.train_counts == expected
    assert np.bincount(labels[split.train], minlength=num_classes).tolist() == expected
    assert np.bincount(labels[split.val], minlength=num_classes).tolist() == [val] * num_classes
    # Indices are distinct positions into these (training) labels only.
    for part in (split.train, split.val):
        assert len(np.unique(part)) == len(part)
        assert part.min(initial=0) >= 0 and part.max(initial=0) < len(labels)
    assert not np.intersect1d(split.train, split.val).size
    # Counts never increase towards the tail (the profile is monotone).
    assert all(a >= b for a, b in zip(profile_counts, profile_counts[1:], strict=False))


@SETTINGS
@given(long_tail_problems())
def test_selection_is_deterministic(problem):
    labels, num_classes, imbalance, profile, val, max_per_class, seed = problem
    first = select_long_tail(labels, num_classes, imbalance, profile, seed, val, max_per_class)
    again = select_long_tail(labels.copy(), num_classes, imbalance, profile, seed, val, max_per_class)
    assert np.array_equal(first.train, again.train) and np.array_equal(first.val, again.val)


@SETTINGS
@given(long_tail_problems(), st.integers(1, 30))
def test_split_never_touches_the_test_set(problem, test_size):
    """The index file holds positions into the training arrays only, and the test split
    (whatever its size or labels) changes nothing about it."""
    labels, num_classes, imbalance, profile, val, max_per_class, seed = problem
    rng = np.random.default_rng(test_size)

    def arrays(y_test):
        return Arrays(
            x_train=np.zeros((len(labels), 1, 1, 3), np.uint8),
            y_train=labels.astype(np.int64),
            x_test=np.zeros((len(y_test), 1, 1, 3), np.uint8),
            y_test=y_test,
            class_names=tuple(map(str, range(num_classes))),
            fingerprint="f" * 64,
            source="synthetic",
        )

    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two:
        a = long_tail_split(
            arrays(rng.integers(0, num_classes, test_size)), imbalance, profile, seed, val, max_per_class, Path(one)
        )
        b = long_tail_split(arrays(np.zeros(1, np.int64)), imbalance, profile, seed, val, max_per_class, Path(two))
        record = json.loads(a.index_file.read_text())
        other = json.loads(b.index_file.read_text())
    assert record == other
    assert max(record["train"] + record["val"]) < len(labels)
    assert len(record["train"]) == sum(record["train_counts"])


@st.composite
def predictions(draw):
    num_classes = draw(st.integers(2, 8))
    n = draw(st.integers(1, 60))
    y_true = draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n))
    y_pred = draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n))
    counts = draw(st.lists(st.integers(1, 5000), min_size=num_classes, max_size=num_classes))
    return np.array(y_true), np.array(y_pred), counts


@SETTINGS
@given(predictions())
def test_metrics_agree_with_sklearn(case):
    y_true, y_pred, counts = case
    labels = list(range(len(counts)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns when y_pred has classes y_true lacks
        m = classification_metrics(y_true, y_pred, [f"c{i}" for i in labels], counts)
        balanced = balanced_accuracy_score(y_true, y_pred)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    np.testing.assert_allclose(m["per_class"]["precision"], precision, atol=1e-12)
    np.testing.assert_allclose(m["per_class"]["recall"], recall, atol=1e-12)
    np.testing.assert_allclose(m["per_class"]["f1"], f1, atol=1e-12)
    assert m["per_class"]["support"] == support.tolist()
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average, zero_division=0)
        np.testing.assert_allclose([m[average]["precision"], m[average]["recall"], m[average]["f1"]], [p, r, f])
    assert m["accuracy"] == accuracy_score(y_true, y_pred) == np.mean(y_true == y_pred)
    assert m["balanced_accuracy"] == balanced
    # Independently of sklearn: balanced accuracy is the mean recall over classes present in y_true.
    mean_recall = np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)])
    assert abs(m["balanced_accuracy"] - mean_recall) < 1e-12
    cm = np.zeros((len(labels), len(labels)), int)
    np.add.at(cm, (y_true, y_pred), 1)
    assert m["confusion_matrix"] == cm.tolist()
    assert np.diag(cm).sum() / len(y_true) == m["accuracy"]
