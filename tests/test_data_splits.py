"""longtail.data.splits: long-tail counts, subsets on real CIFAR-10 labels, index files, natural imbalance,
held-out splits."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from longtail import data
from longtail.data import (
    Arrays,
    long_tail_counts,
    long_tail_split,
    select_long_tail,
    splits,
)
from longtail.errors import LongtailError

CIFAR10_LT_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def exact_exp_counts(n_max: int, num_classes: int, imbalance: int) -> list[int]:
    """floor(n_max * IF ** (-i / (C - 1))) in exact integer arithmetic.

    n <= n_max * IF ** (-i / (C - 1))  <=>  n ** (C - 1) * IF ** i <= n_max ** (C - 1)  (all integers),
    so the count is the largest n with that property: no floating point anywhere.
    """
    k = num_classes - 1
    counts = []
    for i in range(num_classes):
        n = int(n_max * imbalance ** (-i / k))  # a start near the answer; corrected exactly below
        while n > 0 and n**k * imbalance**i > n_max**k:
            n -= 1
        while (n + 1) ** k * imbalance**i <= n_max**k:
            n += 1
        counts.append(n)
    return counts


# ---------------------------------------------------------------- long_tail_counts


def test_cifar10_lt_100_counts_are_the_published_ones():
    counts = long_tail_counts(5000, 10, 100)
    assert counts == CIFAR10_LT_100
    assert sum(counts) == 12406


@pytest.mark.parametrize(("imbalance", "total"), [(10, 20431), (50, 13996), (100, 12406), (200, 11203)])
def test_exp_counts_match_exact_integer_arithmetic(imbalance, total):
    counts = long_tail_counts(5000, 10, imbalance)
    assert counts == exact_exp_counts(5000, 10, imbalance)
    assert sum(counts) == total
    assert counts[0] == 5000 and counts[-1] == 5000 // imbalance


def test_exact_reference_agrees_with_plain_math_away_from_integers():
    # The integer reference itself, checked against math.floor where no product is an exact integer.
    for i in range(1, 9):
        assert exact_exp_counts(5000, 10, 100)[i] == math.floor(5000 * 100 ** (-i / 9))


def test_step_profile():
    assert long_tail_counts(5000, 10, 100, "step") == [5000] * 5 + [50] * 5
    assert long_tail_counts(5000, 10, 10, "step") == [5000] * 5 + [500] * 5
    assert long_tail_counts(300, 4, 7, "step") == [300, 300, 42, 42]


def test_imbalance_one_is_balanced():
    assert long_tail_counts(5000, 10, 1) == [5000] * 10


@pytest.mark.parametrize("imbalance", [0.5, 0.0, -3.0, float("nan")])
def test_imbalance_below_one_raises(imbalance):
    with pytest.raises(LongtailError, match="imbalance"):
        long_tail_counts(5000, 10, imbalance)


def test_unknown_profile_raises():
    with pytest.raises(LongtailError, match="linear"):
        long_tail_counts(5000, 10, 100, "linear")


# ---------------------------------------------------------------- select_long_tail on the real labels


@pytest.fixture(scope="module")
def cifar10_labels(cifar10_npz) -> np.ndarray:
    with np.load(cifar10_npz) as archive:
        return archive["y_train"]


def test_real_labels_without_validation_give_the_standard_counts(cifar10_labels):
    split = select_long_tail(cifar10_labels, 10, 100, "exp", seed=0, val_per_class=0)
    assert split.train_counts == CIFAR10_LT_100
    assert split.profile_counts == CIFAR10_LT_100
    assert np.bincount(cifar10_labels[split.train], minlength=10).tolist() == CIFAR10_LT_100
    assert len(split.val) == 0
    assert len(np.unique(split.train)) == len(split.train) == 12406


def test_real_labels_with_validation_only_change_the_head(cifar10_labels):
    split = select_long_tail(cifar10_labels, 10, 100, "exp", seed=0, val_per_class=50)
    assert split.train_counts == [4950, *CIFAR10_LT_100[1:]]
    assert np.bincount(cifar10_labels[split.train], minlength=10).tolist() == split.train_counts
    assert np.bincount(cifar10_labels[split.val], minlength=10).tolist() == [50] * 10
    assert not set(split.train.tolist()) & set(split.val.tolist())


def test_selection_is_deterministic_per_seed_and_differs_across_seeds(cifar10_labels):
    first = select_long_tail(cifar10_labels, 10, 100, "exp", seed=3, val_per_class=50)
    again = select_long_tail(cifar10_labels, 10, 100, "exp", seed=3, val_per_class=50)
    other = select_long_tail(cifar10_labels, 10, 100, "exp", seed=4, val_per_class=50)
    assert np.array_equal(first.train, again.train) and np.array_equal(first.val, again.val)
    assert not np.array_equal(first.train, other.train)
    assert not np.array_equal(first.val, other.val)
    assert first.train_counts == other.train_counts


def test_negative_validation_size_raises(cifar10_labels):
    with pytest.raises(LongtailError, match="--val-per-class"):
        select_long_tail(cifar10_labels, 10, 100, "exp", seed=0, val_per_class=-1)


def test_validation_that_takes_a_whole_class_raises():
    labels = np.repeat(np.arange(3), [8, 5, 9])
    expected = "--val-per-class 5 leaves no training images for class 1 'b' \\(5 images\\)"
    with pytest.raises(LongtailError, match=expected):
        select_long_tail(labels, 3, 2, "exp", seed=0, val_per_class=5, max_per_class=2, class_names=("a", "b", "c"))
    # Profile [5, 3, 2] (n_max = 5, IF 2), capped at size - 4 = [4, 1, 5].
    assert select_long_tail(labels, 3, 2, "exp", seed=0, val_per_class=4).train_counts == [4, 1, 2]


def test_max_per_class_sets_the_head_count():
    labels = np.repeat(np.arange(3), [50, 40, 60])
    split = select_long_tail(labels, 3, 4, "exp", seed=0, val_per_class=5, max_per_class=20)
    assert split.profile_counts == [20, 10, 5] and split.train_counts == [20, 10, 5]
    with pytest.raises(LongtailError, match="--max-per-class"):
        select_long_tail(labels, 3, 4, "exp", seed=0, val_per_class=5, max_per_class=41)


# ---------------------------------------------------------------- index files


def _synthetic_arrays(per_class: int = 30, num_classes: int = 10) -> Arrays:
    rng = np.random.default_rng(1)
    y_train = rng.permutation(np.repeat(np.arange(num_classes), per_class)).astype(np.int64)
    return Arrays(
        x_train=np.zeros((len(y_train), 2, 2, 3), np.uint8),
        y_train=y_train,
        x_test=np.zeros((num_classes, 2, 2, 3), np.uint8),
        y_test=np.arange(num_classes, dtype=np.int64),
        class_names=tuple(f"c{i}" for i in range(num_classes)),
        fingerprint="0123456789abcdef" * 4,
        source="synthetic",
    )


def test_index_file_is_versioned_and_checksummed(cache_dir):
    arrays = _synthetic_arrays()
    split = long_tail_split(arrays, 10, "exp", seed=2, val_per_class=3, cache_dir=cache_dir)
    path = split.index_file
    assert path is not None and path.is_file() and path.is_relative_to(cache_dir)
    record = json.loads(path.read_text())
    assert record["version"] == data.INDEX_FORMAT_VERSION
    assert record["source_sha256"] == arrays.fingerprint
    assert record["profile"] == "exp"
    assert record["imbalance"] == 10
    assert record["seed"] == 2
    assert record["val_per_class"] == 3
    assert record["train"] == split.train.tolist() and record["val"] == split.val.tolist()
    body = {k: v for k, v in record.items() if k != "checksum"}
    assert record["checksum"] == hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    direct = select_long_tail(arrays.y_train, 10, 10, "exp", 2, 3)
    assert np.array_equal(split.train, direct.train) and np.array_equal(split.val, direct.val)


def test_index_file_is_reused_not_rewritten(cache_dir, monkeypatch):
    arrays = _synthetic_arrays()
    first = long_tail_split(arrays, 10, "exp", seed=2, val_per_class=3, cache_dir=cache_dir)
    mtime, content = first.index_file.stat().st_mtime_ns, first.index_file.read_bytes()

    def no_second_draw(*args, **kwargs):
        raise AssertionError("the split was drawn again instead of read from the index file")

    monkeypatch.setattr(splits, "select_long_tail", no_second_draw)
    second = long_tail_split(arrays, 10, "exp", seed=2, val_per_class=3, cache_dir=cache_dir)
    assert np.array_equal(first.train, second.train) and np.array_equal(first.val, second.val)
    assert second.train_counts == first.train_counts and second.index_file == first.index_file
    assert first.index_file.stat().st_mtime_ns == mtime and first.index_file.read_bytes() == content


def test_tampered_index_file_raises_and_is_left_alone(cache_dir):
    arrays = _synthetic_arrays()
    path = long_tail_split(arrays, 10, "exp", seed=2, val_per_class=3, cache_dir=cache_dir).index_file
    record = json.loads(path.read_text())
    record["train"][0] = next(i for i in range(len(arrays.y_train)) if i not in record["train"])
    path.write_text(json.dumps(record))
    tampered = path.read_bytes()
    with pytest.raises(LongtailError, match="checksum") as caught:
        long_tail_split(arrays, 10, "exp", seed=2, val_per_class=3, cache_dir=cache_dir)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == tampered


def test_index_file_that_is_not_json_raises(cache_dir):
    arrays = _synthetic_arrays()
    path = long_tail_split(arrays, 10, "exp", seed=0, val_per_class=3, cache_dir=cache_dir).index_file
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(LongtailError, match="corrupted") as caught:
        long_tail_split(arrays, 10, "exp", seed=0, val_per_class=3, cache_dir=cache_dir)
    assert str(path) in str(caught.value)


# ---------------------------------------------------------------- natural imbalance, fractions, test split


def test_natural_imbalance_keeps_every_image_but_validation():
    labels = np.repeat(np.arange(4), [50, 20, 9, 4])
    split = select_long_tail(labels, 4, "natural", "exp", seed=0, val_per_class=2)
    assert split.profile_counts == [50, 20, 9, 4] and split.train_counts == [48, 18, 7, 2]
    fraction = select_long_tail(labels, 4, "natural", "exp", seed=0, val_per_class=0, val_fraction=0.1)
    assert np.bincount(labels[fraction.val], minlength=4).tolist() == [5, 2, 1, 1]  # round half up, at least 1
    assert fraction.train_counts == [45, 18, 8, 3]


def test_a_validation_split_that_empties_a_class_names_it():
    labels = np.repeat(np.arange(3), [10, 1, 6])
    with pytest.raises(
        LongtailError, match="--val-fraction 0.2 leaves no training images for class 1 'cat' \\(1 image\\)"
    ):
        select_long_tail(labels, 3, "natural", "exp", 0, 0, val_fraction=0.2, class_names=("ant", "cat", "dog"))
    with pytest.raises(LongtailError, match="class 1 'cat' \\(1 image\\), 2 'dog' \\(6 images\\)"):
        select_long_tail(labels, 3, "natural", "exp", 0, 6, class_names=("ant", "cat", "dog"))


def test_test_split_is_stratified_disjoint_and_the_same_for_every_run():
    labels = np.random.default_rng(5).permutation(np.repeat(np.arange(3), [60, 25, 7]))
    first = select_long_tail(labels, 3, "natural", "exp", seed=0, val_per_class=2, test_fraction=0.2)
    assert np.bincount(labels[first.test], minlength=3).tolist() == [12, 5, 1]
    parts = [set(first.train.tolist()), set(first.val.tolist()), set(first.test.tolist())]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(range(len(labels)))
    other = select_long_tail(labels, 3, 4, "step", seed=9, val_per_class=0, val_fraction=0.3, test_fraction=0.2)
    assert np.array_equal(first.test, other.test)  # another seed, imbalance and validation: the same test images
    assert not np.array_equal(first.val, select_long_tail(labels, 3, "natural", "exp", 1, 2, test_fraction=0.2).val)
    with pytest.raises(LongtailError, match="--test-fraction 0.95 leaves no training images for class 2 \\(7 images"):
        select_long_tail(labels, 3, "natural", "exp", 0, 0, test_fraction=0.95)


def test_split_without_new_settings_is_what_it_always_was(cifar10_labels):
    # The settings of the first index format give the same indices whatever was added since.
    split = select_long_tail(cifar10_labels, 10, 100, "exp", seed=0, val_per_class=50)
    assert split.test is None
    order = np.random.default_rng([0, 0]).permutation(np.flatnonzero(cifar10_labels == 0))
    assert np.array_equal(split.val[:50], np.sort(order[-50:]))


def test_index_file_records_the_test_split_and_gives_it_back(cache_dir):
    arrays = _synthetic_arrays()
    arrays = Arrays(**{**arrays.__dict__, "x_test": arrays.x_test[:0], "y_test": arrays.y_test[:0]})
    split = long_tail_split(
        arrays, "natural", seed=1, val_per_class=0, cache_dir=cache_dir, val_fraction=0.1, test_fraction=0.2
    )
    assert split.index_file.name == f"lt-{arrays.fingerprint[:16]}-natural-seed1-valf0.1-test0.2.json"
    record = json.loads(split.index_file.read_text())
    assert record["test"] == split.test.tolist() and record["test_fraction"] == 0.2 and record["imbalance"] == "natural"
    again = long_tail_split(
        arrays, "natural", seed=1, val_per_class=0, cache_dir=cache_dir, val_fraction=0.1, test_fraction=0.2
    )
    assert np.array_equal(again.test, split.test) and np.array_equal(again.train, split.train)
    with pytest.raises(LongtailError, match="no test split"):
        long_tail_split(arrays, "natural", seed=1, val_per_class=0, cache_dir=cache_dir)
