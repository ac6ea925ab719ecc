"""``longtail.priors``: metrics under a test prior and logits adjusted to a target prior.

- The re-weighting equals a hand computation from a small confusion matrix, and under ``uniform``
  on a balanced test set it gives the plain metrics.
- The resampled check: an actual long-tailed subset of a balanced test set, drawn with a fixed
  seed, measures the accuracy the re-weighting predicts, within sampling error.
- The priors by name, and the adjustment's choice of tau (0 unless a shift helps on validation).
- On real data (a short stage 1 on a small CIFAR-10 subset): a Modified CE head adjusted to the
  training prior scores at least as well under it as the same head unadjusted, and ``evaluate``
  and ``predict`` apply the recorded adjustment as ``decouple`` did.
(Each bad prior refused on the command line: tests/test_bad_inputs.py.)
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from PIL import Image

from longtail import priors
from longtail.config import Stage2Config
from longtail.decouple import decouple, evaluate_decoupled
from longtail.errors import LongtailError
from longtail.metrics import classification_metrics
from longtail.prediction import predict
from longtail.priors import parse_prior, parse_target_prior, parse_test_priors
from longtail.runs import RUN_FILE, atomic_write_json, read_json
from longtail.study import Stage2Group, check_existing_runs

COUNTS = [4950, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # CIFAR-10-LT, IF = 100
NAMES = tuple(f"class{c}" for c in range(10))


def _predictions(per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A balanced test set's labels and predictions that are right more often for frequent classes."""
    rng = np.random.default_rng(seed)
    y_true = np.repeat(np.arange(10), per_class)
    hit_rate = np.linspace(0.97, 0.45, 10)[y_true]
    y_pred = np.where(rng.random(len(y_true)) < hit_rate, y_true, rng.integers(0, 10, len(y_true)))
    return y_true, y_pred


# ---------------------------------------------------------------- the re-weighting


def test_the_reweighting_equals_a_hand_computation():
    # Rows: true class; recall profile R = counts / row total.
    counts = [[8, 2, 0], [1, 3, 1], [0, 1, 4]]
    normalized = [[0.8, 0.2, 0.0], [0.2, 0.6, 0.2], [0.0, 0.2, 0.8]]
    metrics = {
        "confusion_matrix": counts,
        "confusion_matrix_normalized": normalized,
        "group_classes": {"many": [0, 1], "medium": [], "few": [2]},
        "train_counts": [50, 30, 20],
    }
    under = priors.metrics_under_prior(metrics, [0.5, 0.3, 0.2])
    # E = diag(pi) R = [[.4, .1, 0], [.06, .18, .06], [0, .04, .16]]; column sums .46, .32, .22.
    precision = [0.4 / 0.46, 0.18 / 0.32, 0.16 / 0.22]
    recall = [0.8, 0.6, 0.8]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall, strict=True)]
    assert under["accuracy"] == pytest.approx(0.4 + 0.18 + 0.16)
    assert under["macro"]["precision"] == pytest.approx(sum(precision) / 3)
    assert under["macro"]["recall"] == pytest.approx(sum(recall) / 3)
    assert under["macro"]["f1"] == pytest.approx(sum(f1) / 3)
    assert under["weighted"]["precision"] == pytest.approx(0.5 * precision[0] + 0.3 * precision[1] + 0.2 * precision[2])
    assert under["weighted"]["recall"] == pytest.approx(under["accuracy"])  # sum_c pi_c recall_c
    assert under["weighted"]["f1"] == pytest.approx(0.5 * f1[0] + 0.3 * f1[1] + 0.2 * f1[2])
    # A group's accuracy: its classes' hits over their weight; an empty group has none.
    assert under["groups"] == {"many": pytest.approx((0.4 + 0.18) / 0.8), "medium": None, "few": pytest.approx(0.8)}
    assert under["prior"] == [0.5, 0.3, 0.2]
    # The train prior of metrics.json's train counts: 0.5, 0.3, 0.2 again.
    (train_prior,) = priors.metrics_under_priors(metrics, [parse_prior("train")]).values()
    assert train_prior["prior"] == pytest.approx(under["prior"])
    assert train_prior["accuracy"] == pytest.approx(under["accuracy"])
    assert train_prior["weighted"] == pytest.approx(under["weighted"])


def test_uniform_equals_the_plain_metrics_on_a_balanced_test_set():
    y_true, y_pred = _predictions(100)
    metrics = priors.with_test_priors(classification_metrics(y_true, y_pred, NAMES, COUNTS), priors.DEFAULT_TEST_PRIORS)
    uniform = metrics["under_prior"]["uniform"]
    assert uniform["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-12)
    for part in ("macro", "weighted"):
        assert uniform[part] == pytest.approx(metrics[part], abs=1e-12), part
    assert uniform["groups"] == pytest.approx(metrics["groups"], abs=1e-12)
    assert uniform["prior"] == pytest.approx([0.1] * 10)
    # Every default prior is there; the training prior favours the well-recalled head classes.
    assert list(metrics["under_prior"]) == [prior.name for prior in priors.DEFAULT_TEST_PRIORS]
    assert (
        metrics["under_prior"]["train"]["accuracy"]
        > uniform["accuracy"]
        > metrics["under_prior"]["backward-50"]["accuracy"]
    )


def draw_test_subset(y_true: np.ndarray, prior: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """The indices of an actual long-tailed test subset: ``size`` images, the number of each class
    drawn from the multinomial of ``prior``, then that many of the class's test images drawn without
    replacement. Its accuracy is an unbiased estimate of ``sum_c prior_c recall_c``."""
    per_class = rng.multinomial(size, prior)
    return np.concatenate([rng.choice(np.flatnonzero(y_true == c), n, replace=False) for c, n in enumerate(per_class)])


@pytest.mark.parametrize("name", ["train", "forward-50", "forward-5", "backward-10", "backward-50"])
def test_an_actual_long_tailed_subset_measures_what_the_reweighting_predicts(name):
    y_true, y_pred = _predictions(1000)
    metrics = classification_metrics(y_true, y_pred, NAMES, COUNTS)
    prior = parse_prior(name).probabilities(COUNTS)
    expected = priors.metrics_under_prior(metrics, prior)
    rng = np.random.default_rng(2024)
    size = 2000
    subset = draw_test_subset(y_true, prior, size, rng)
    measured = classification_metrics(y_true[subset], y_pred[subset], NAMES, COUNTS)
    # One subset: within 3 standard errors (the with-replacement bound; without replacement is tighter).
    error = math.sqrt(expected["accuracy"] * (1 - expected["accuracy"]) / size)
    assert abs(measured["accuracy"] - expected["accuracy"]) < 3 * error, (measured["accuracy"], expected["accuracy"])
    for group, members in metrics["group_classes"].items():
        drawn = int(np.isin(y_true[subset], members).sum())
        hits = int(((y_true[subset] == y_pred[subset]) & np.isin(y_true[subset], members)).sum())
        if drawn >= 30:
            a = expected["groups"][group]
            assert abs(hits / drawn - a) < 4 * math.sqrt(a * (1 - a) / drawn), (group, hits / drawn, a)
    # Many subsets: their mean accuracy closes in on the re-weighted figure (3 errors of the mean).
    draws = [draw_test_subset(y_true, prior, size, rng) for _ in range(200)]
    mean = float(np.mean([(y_true[d] == y_pred[d]).mean() for d in draws]))
    assert abs(mean - expected["accuracy"]) < 3 * error / math.sqrt(len(draws)), (mean, expected["accuracy"])


# ---------------------------------------------------------------- priors by name


def test_priors_by_name():
    counts = [50, 500, 5, 50]  # ranks by count, ties by class index: class 1, 0, 3, 2
    assert parse_prior("uniform").probabilities(counts) == pytest.approx([0.25] * 4)
    assert parse_prior("train").probabilities(counts) == pytest.approx(np.array(counts) / 605)
    forward = 8.0 ** (-np.array([1, 0, 3, 2]) / 3)  # N ** (-r_c / (C - 1))
    assert parse_prior("forward-8").probabilities(counts) == pytest.approx(forward / forward.sum())
    backward = 8.0 ** (-np.array([2, 3, 0, 1]) / 3)  # r_c -> C - 1 - r_c
    assert parse_prior("backward-8").probabilities(counts) == pytest.approx(backward / backward.sum())
    largest, smallest = parse_prior("forward-8").probabilities(counts)[[1, 2]]
    assert largest / smallest == pytest.approx(8.0)  # the imbalance factor of the prior is N
    assert parse_prior("forward-1").probabilities(counts) == pytest.approx([0.25] * 4)
    assert parse_prior("forward-50.0").name == "forward-50" and parse_prior(" backward-2.5 ").name == "backward-2.5"
    assert priors.axis_order(["train", "backward-2", "uniform", "forward-2", "forward-50", "backward-50"]) == [
        "forward-50", "forward-2", "uniform", "backward-2", "backward-50",
    ]  # fmt: skip


def test_a_weights_file_is_normalised(tmp_path):
    path = tmp_path / "deploy.txt"
    path.write_text("1 1\n2\n0\n")
    prior = parse_prior(str(path))
    assert prior.name == str(path) and prior.probabilities([9, 9, 9, 9]) == pytest.approx([0.25, 0.25, 0.5, 0.0])
    assert [p.name for p in parse_test_priors(f"train,{path},forward-10")] == ["train", str(path), "forward-10"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sideways", "unknown prior 'sideways'"),
        ("forward-0.5", "must be a number >= 1"),
        ("backward-abc", "must be a number >= 1"),
        ("forward-nan", "must be a number >= 1"),
        ("train,,uniform", "empty prior name"),
        ("train,uniform,train", "lists train twice"),
    ],
)
def test_bad_prior_names(text, message):
    with pytest.raises(LongtailError, match=message) as caught:
        parse_test_priors(text)
    assert "--test-priors" in str(caught.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [("1 -2 3", "non-negative"), ("0 0 0", "every weight is 0"), ("1 x 3", "'x' is not a number"), ("", "no weights")],
)
def test_bad_weights_files(tmp_path, content, message):
    path = tmp_path / "weights.txt"
    path.write_text(content)
    with pytest.raises(LongtailError, match=message):
        parse_prior(str(path))
    with pytest.raises(LongtailError, match="3 weights, but the run has 4 classes"):
        priors.check_classes([parse_prior(str(_file(tmp_path, "1 2 3")))], 4, "--test-priors")


def _file(tmp_path, content: str):
    path = tmp_path / "ok.txt"
    path.write_text(content)
    return path


def test_a_target_prior_needs_every_class_above_zero(tmp_path):
    with pytest.raises(LongtailError, match="--target-prior .*class\\(es\\) 1 have weight 0"):
        parse_target_prior(str(_file(tmp_path, "1 0 2")))


# ---------------------------------------------------------------- the adjustment


def test_calibrations_of_the_losses():
    counts = [60, 30, 10]
    train = np.array(counts) / 100
    plain = priors.cross_entropy_calibration(counts, balanced_draw=False)
    assert plain.prior == pytest.approx(train)
    assert priors.cross_entropy_calibration(counts, balanced_draw=True).prior == pytest.approx([1 / 3] * 3)
    weighted = priors.cross_entropy_calibration(counts, balanced_draw=False, class_weights=1 / train, weighting="1/n")
    assert weighted.prior == pytest.approx([1 / 3] * 3)
    # Logit-adjusted at tau: pi ** (1 - tau); Balanced Softmax (tau = 1): uniform.
    adjusted = priors.logit_adjusted(plain, counts, 1.5, "in the loss").prior
    assert adjusted == pytest.approx(train**-0.5 / (train**-0.5).sum())
    assert priors.logit_adjusted(plain, counts, 1.0, "in the loss").prior == pytest.approx([1 / 3] * 3)


def test_tau_is_zero_unless_a_shift_helps_on_validation():
    labels = np.repeat(np.arange(3), 20)
    separated = 10.0 * np.eye(3)[labels]  # every shift up to tau = 2 keeps every prediction right
    chosen = priors.choose_adjustment(separated, labels, np.array([0.6, 0.3, 0.1]), np.full(3, 1 / 3))
    assert chosen["tau"] == 0.0 and chosen["shift"] == [0.0, 0.0, 0.0]
    assert set(chosen["val_accuracy_by_tau"]) == {str(t) for t in priors.TARGET_TAU_GRID}
    # A head calibrated to uniform that hesitates between class 0 and 2 gains from the shift to a
    # prior that favours class 0, and takes it.
    hesitant = np.where(np.arange(3) == labels[:, None], 1.0, 0.0) + np.array([0.0, 0.0, 0.9])
    hesitant[labels == 0] = [1.0, 0.0, 1.05]
    chosen = priors.choose_adjustment(hesitant, labels, np.array([0.6, 0.3, 0.1]), np.full(3, 1 / 3))
    assert (
        chosen["tau"] > 0 and chosen["val_accuracy_by_tau"][str(chosen["tau"])] > chosen["val_accuracy_by_tau"]["0.0"]
    )
    direction = np.log([0.6, 0.3, 0.1]) - np.log(1 / 3)
    assert chosen["shift"] == pytest.approx(chosen["tau"] * direction)


# ---------------------------------------------------------------- on real data


@pytest.fixture(scope="module")
def stage1(real_stage1, tmp_path_factory):
    """A real stage-1 baseline: pretrained B0, real CIFAR-10 images at imbalance 20 (100 down to 5
    per class), two short epochs at 32 px, tested at 32 px (about 10 s on one core); ``(a folder of
    this module's own for the heads, the run, the cache)``."""
    run, cache = real_stage1(120, 30, imbalance=20, max_per_class=100, val_per_class=20, test_size="train")
    return tmp_path_factory.mktemp("priors"), run, cache


def test_a_modified_ce_head_adjusted_to_the_train_prior_scores_at_least_as_well_under_it(stage1):
    root, run, cache = stage1
    config = Stage2Config(loss="modified-ce", feature_size="stage1")
    plain = decouple(run, config, root / "mce", cache_dir=cache, figures=False)
    target = parse_target_prior("train")
    served = decouple(run, config, root / "mce-train", cache_dir=cache, figures=False, target_prior=target)
    assert served["under_prior"]["train"]["accuracy"] >= plain["under_prior"]["train"]["accuracy"]
    record = read_json(root / "mce-train" / RUN_FILE)["target_prior"]
    assert record["name"] == "train" and record["tau"] in priors.TARGET_TAU_GRID
    # The adjustment moved the head (tau = 0 would pass the >= above unchanged): a shift was chosen
    # because it helped on validation, and it changed test predictions.
    assert record["tau"] > 0 and any(record["shift"])
    assert record["val_accuracy_by_tau"][str(record["tau"])] > record["val_accuracy_by_tau"]["0.0"]
    assert served["confusion_matrix"] != plain["confusion_matrix"]
    assert served["target_prior"] == {"name": "train", "tau": record["tau"]} and "target_prior" not in plain
    # The head's own prior: the training prior to the power 1 - tau of its loss (Modified CE).
    counts = np.asarray(served["train_counts"], dtype=float)
    tau = read_json(root / "mce" / RUN_FILE)["chosen"]["tau"]
    own = (counts / counts.sum()) ** (1 - tau)
    assert (
        record["own_prior"] == pytest.approx(own / own.sum())
        and "logit adjustment in the loss" in record["own_prior_reading"]
    )
    assert record["prior"] == pytest.approx(counts / counts.sum())
    # The same head before adjustment: the unadjusted metrics under the uniform prior are the plain run's.
    assert plain["under_prior"]["uniform"]["accuracy"] == pytest.approx(plain["accuracy"])
    # evaluate applies the recorded shift as decouple did.
    again = evaluate_decoupled(root / "mce-train", cache_dir=cache)
    assert again["accuracy"] == served["accuracy"] and again["under_prior"] == served["under_prior"]
    # predict --head of the adjusted head = predict --head of the plain one with --target-prior train.
    images = []
    with np.load(read_json(run / RUN_FILE)["config"]["data"]) as data:
        for index in range(0, 300, 37):
            path = root / "images" / f"{index}.png"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(data["x_test"][index]).save(path)
            images.append(path)
    recorded = predict(run, images, head=root / "mce-train")
    on_the_fly = predict(run, images, head=root / "mce", target_prior=target)
    assert recorded.target_prior == on_the_fly.target_prior
    assert np.allclose(recorded.probabilities, on_the_fly.probabilities, atol=1e-6)
    assert recorded.target_prior == record


def test_a_study_does_not_reuse_a_head_served_under_a_prior(tmp_path):
    stage1, config = tmp_path / "seed0" / "baseline", Stage2Config(loss="modified-ce", seed=0)
    record = {"kind": "decouple", "status": "running", "stage1": str(stage1.resolve())}
    record["config"] = dataclasses.asdict(config.resolved())
    atomic_write_json(tmp_path / "seed0" / "decoupled-modified-ce" / RUN_FILE, record)
    plan = [[Stage2Group(stage1, {"decoupled-modified-ce": config})]]
    check_existing_runs(plan, "data-sha", None)  # the study's own head: reused
    record["target_prior"] = {"name": "backward-10"}
    atomic_write_json(tmp_path / "seed0" / "decoupled-modified-ce" / RUN_FILE, record)
    with pytest.raises(LongtailError, match="target_prior: recorded 'backward-10', requested None"):
        check_existing_runs(plan, "data-sha", None)


def test_metrics_under_a_prior_read_the_sparse_confusion_matrix_above_100_classes():
    """Above PER_CLASS_LIMIT classes metrics.json keeps only the non-zero confusion cells: the
    re-weighting reads them and gives what the dense matrix gives."""
    from longtail.metrics import PER_CLASS_LIMIT, classification_metrics, row_normalize

    classes = PER_CLASS_LIMIT + 20
    rng = np.random.default_rng(7)
    y_true = np.repeat(np.arange(classes), 5)
    y_pred = np.where(rng.random(len(y_true)) < 0.6, y_true, rng.integers(0, classes, len(y_true)))
    counts = [int(n) for n in np.linspace(500, 5, classes)]
    metrics = classification_metrics(y_true, y_pred, [f"c{i}" for i in range(classes)], counts, "shots")
    assert isinstance(metrics["confusion_matrix"], dict)  # sparse
    prior = rng.random(classes)
    prior /= prior.sum()
    dense = np.zeros((classes, classes))
    np.add.at(dense, (y_true, y_pred), 1)
    expected = prior[:, None] * row_normalize(dense)
    under = priors.metrics_under_prior(metrics, prior)
    assert under["accuracy"] == pytest.approx(float(np.trace(expected)))
    recall = np.diag(row_normalize(dense))
    assert under["macro"]["recall"] == pytest.approx(float(recall.mean()))
    precision = np.divide(np.diag(expected), expected.sum(0), out=np.zeros(classes), where=expected.sum(0) > 0)
    assert under["macro"]["precision"] == pytest.approx(float(precision.mean()))
