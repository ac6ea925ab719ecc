"""Test priors: the class distribution a classifier will meet where it is deployed, its metrics
under that distribution, and its logits adjusted to it.

Every test set longtail evaluates on is what it is (CIFAR-10's is balanced). A classifier deployed
to a world with class prior ``pi`` meets each class ``c`` with probability ``pi_c`` and recalls it as
often as it does on the test set, so its expected confusion matrix there is the row-normalised test
confusion matrix with row ``c`` weighted by ``pi_c``: ``E = diag(pi) R``. Accuracy under ``pi`` is
``trace(E) = sum_c pi_c recall_c``; precision, recall and F1 per class, their macro and weighted
means (weighted by ``pi``) and the many/medium/few accuracies (``sum_{c in g} pi_c recall_c /
sum_{c in g} pi_c``) follow from ``E`` (``metrics_under_prior``). No test image is dropped or
drawn again: the figures are exact expectations, and under ``uniform`` on a balanced test set they
are the plain metrics.

Priors by name (``parse_prior``), in the family of Zhang et al. (NeurIPS 2022, "Self-Supervised
Aggregation of Diverse Experts for Test-Agnostic Long-Tailed Recognition"), which evaluates
forward-N, uniform and backward-N for N = 2, 5, 10, 25, 50:
- ``uniform``: ``1 / C`` (a balanced test set);
- ``train``: the training split's class frequencies;
- ``forward-N``: ``pi_c ∝ N ** (-r_c / (C - 1))``, ``r_c`` the class's rank by training count (0 =
  most frequent, ties by class index): a long tail of imbalance N in the training order;
- ``backward-N``: the same with ``r_c`` replaced by ``C - 1 - r_c``: the tail become the head;
- the path of a text file of C non-negative per-class weights (whitespace-separated; normalised).

Adjusting logits to a known target prior (Menon et al., ICLR 2021, "Long-tail learning via logit
adjustment"): a classifier whose softmax is calibrated to the prior ``pi_own`` serves a world with
prior ``pi_target`` best (Bayes) with the logits ``z + log pi_target - log pi_own``.
``choose_adjustment`` shifts them by ``tau (log pi_target - log pi_own)`` with ``tau`` chosen on the
validation split re-weighted to the target prior; ``tau = 0`` (no shift) is in the grid and wins
every tie, so a shift is taken only where it helps there. ``pi_own`` is a ``Calibration``: the
prior a (weighted, logit-adjusted) cross-entropy calibrates a classifier to
(``cross_entropy_calibration``, ``logit_adjusted``); each head type's reading is in
``longtail.stage2.calibration`` (a stage-1 classifier and a stage-2 head).

Torch-free (numpy), so the command line checks every prior before it imports torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longtail.errors import LongtailError
from longtail.metrics import confusion_cells
from longtail.selection import best_on_validation

UNIFORM, TRAIN = "uniform", "train"
FAMILIES = ("forward", "backward")  # forward-N, backward-N
_FAMILY_NAME = re.compile(r"^(forward|backward)-(.*)$")
# What `longtail reproduce` (and train, decouple and evaluate when --test-priors is not given)
# evaluates: the training prior, and SADE's test distributions.
DEFAULT_TEST_PRIORS_TEXT = "train,uniform," + ",".join(
    f"{family}-{n}" for family in FAMILIES for n in (2, 5, 10, 25, 50)
)
# The temperatures of an adjustment to a target prior: 0 (none) to 2 in steps of 0.1; 1 is the
# Bayes-optimal shift when the head's own prior is read right.
TARGET_TAU_GRID = tuple(round(0.1 * i, 1) for i in range(21))
_KNOWN = "uniform, train, forward-N, backward-N (N >= 1, e.g. forward-50) or the path of a file of per-class weights"


@dataclass(frozen=True)
class Prior:
    """A test prior as named on the command line. ``name`` is its key in ``metrics.json``
    (``forward-50``; a weights file's path as given); ``imbalance`` the N of forward-N and
    backward-N; ``weights`` a file's weights as read (normalised by ``probabilities``)."""

    name: str
    kind: str  # uniform, train, forward, backward or file
    imbalance: float | None = None
    weights: tuple[float, ...] | None = None

    def probabilities(self, train_counts: Sequence[int]) -> np.ndarray:
        """``pi`` for a run with these training counts (class order), summing to 1."""
        counts = np.asarray(train_counts, dtype=float)
        classes = len(counts)
        if self.kind == "file":
            check_classes([self], classes, "test prior")
            weights = np.asarray(self.weights, dtype=float)
        elif self.kind == UNIFORM:
            weights = np.ones(classes)
        elif self.kind == TRAIN:
            weights = counts
        else:
            rank = np.empty(classes)
            rank[np.argsort(-counts, kind="stable")] = np.arange(classes)  # 0: the most frequent
            if self.kind == "backward":
                rank = classes - 1 - rank
            weights = self.imbalance ** (-rank / max(classes - 1, 1))
        return weights / weights.sum()


def named_prior(text: str) -> Prior | None:
    """The prior ``text`` names (``uniform``, ``train``, ``forward-N``, ``backward-N``), or None
    when it names none of them (it may be a file's path). Reads no file."""
    if text in (UNIFORM, TRAIN):
        return Prior(text, text)
    match = _FAMILY_NAME.match(text)
    if match is None:
        return None
    family, number = match.groups()
    try:
        imbalance = float(number)
    except ValueError:
        imbalance = math.nan
    if not math.isfinite(imbalance) or imbalance < 1:
        raise LongtailError(
            f"'{text}': the N of {family}-N must be a number >= 1 (the imbalance factor), got '{number}'"
        )
    return Prior(f"{family}-{imbalance:g}", family, imbalance=imbalance)


def _read_weights(path: Path, option: str) -> tuple[float, ...]:
    try:
        words = path.read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError) as error:
        raise LongtailError(f"{option} {path}: cannot be read as a text file of class weights ({error})") from None
    weights = []
    for word in words:
        try:
            weights.append(float(word))
        except ValueError:
            raise LongtailError(f"{option} {path}: '{word}' is not a number; give one weight per class") from None
    if not weights:
        raise LongtailError(f"{option} {path}: the file holds no weights; give one non-negative weight per class")
    if not all(math.isfinite(w) for w in weights):
        raise LongtailError(f"{option} {path}: every weight must be a finite number")
    negative = [f"class {c}: {w:g}" for c, w in enumerate(weights) if w < 0]
    if negative:
        raise LongtailError(f"{option} {path}: weights must be non-negative ({', '.join(negative)})")
    if sum(weights) == 0:
        raise LongtailError(f"{option} {path}: every weight is 0; give some class a positive weight")
    return tuple(weights)


def parse_prior(text: str, option: str = "--test-priors") -> Prior:
    """One prior by name or weights file; a bad one is an error naming ``option``."""
    text = text.strip()
    if not text:
        raise LongtailError(f"{option}: an empty prior name; give {_KNOWN}")
    try:
        prior = named_prior(text)
    except LongtailError as error:
        raise LongtailError(f"{option} {error}") from None
    if prior is not None:
        return prior
    path = Path(text)
    if not path.is_file():
        raise LongtailError(f"{option}: unknown prior '{text}' (no such name or file): give {_KNOWN}")
    return Prior(text, "file", weights=_read_weights(path, option))


def parse_test_priors(text: str) -> tuple[Prior, ...]:
    """The command line's ``--test-priors NAME,...``: each prior once."""
    priors = tuple(parse_prior(part) for part in text.split(","))
    names = [prior.name for prior in priors]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise LongtailError(f"--test-priors lists {', '.join(twice)} twice; give each prior once")
    return priors


def parse_target_prior(text: str) -> Prior:
    """The command line's ``--target-prior NAME``: a prior with no class at 0, since the shift
    takes its logarithm."""
    prior = parse_prior(text, "--target-prior")
    if prior.weights is not None and min(prior.weights) == 0:
        zero = [str(c) for c, w in enumerate(prior.weights) if w == 0]
        raise LongtailError(
            f"--target-prior {text}: class(es) {', '.join(zero)} have weight 0, and a logit adjustment takes the "
            "logarithm of the prior; give every class a positive weight"
        )
    return prior


DEFAULT_TEST_PRIORS = parse_test_priors(DEFAULT_TEST_PRIORS_TEXT)


def check_classes(priors: Sequence[Prior], num_classes: int, option: str) -> None:
    """A weights file must give one weight per class of the run."""
    for prior in priors:
        if prior.weights is not None and len(prior.weights) != num_classes:
            raise LongtailError(
                f"{option} {prior.name}: {len(prior.weights)} weights, but the run has {num_classes} classes; give "
                "one weight per class, in class order"
            )


# ---------------------------------------------------------------- metrics under a prior


def metrics_under_prior(metrics: dict, prior: np.ndarray) -> dict:
    """The expected metrics under the class prior ``prior`` of a classifier whose test metrics
    (``longtail.metrics.classification_metrics``) are ``metrics``: ``accuracy``, ``macro`` and
    ``weighted`` (by ``prior``) precision, recall and F1, ``groups`` (``null`` for a group with no
    class or no weight under the prior) and the ``prior`` itself. A class with no test image counts
    as never recalled, as in the plain metrics."""
    prior = np.asarray(prior, dtype=float)
    # From the non-zero cells of the confusion matrix, dense or sparse (above PER_CLASS_LIMIT classes):
    # each cell's share of its row (its true class's test images), weighted by that class's prior.
    cells, counts = confusion_cells(metrics)
    num_classes = len(prior)
    true, guessed = cells // num_classes, cells % num_classes
    fraction = counts / np.bincount(true, weights=counts, minlength=num_classes)[true]
    correct = true == guessed
    recall = np.bincount(true[correct], weights=fraction[correct], minlength=num_classes)
    hits = prior * recall
    predicted = np.bincount(guessed, weights=prior[true] * fraction, minlength=num_classes)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    scores = {"precision": precision, "recall": recall, "f1": f1}

    def group(members):
        weight = prior[members].sum() if members else 0.0
        return float(hits[members].sum() / weight) if weight > 0 else None

    return {
        "accuracy": float(hits.sum()),
        "macro": {key: float(values.mean()) for key, values in scores.items()},
        "weighted": {key: float(prior @ values) for key, values in scores.items()},
        "groups": {name: group(members) for name, members in metrics["group_classes"].items()},
        "prior": prior.tolist(),
    }


def metrics_under_priors(metrics: dict, priors: Sequence[Prior]) -> dict[str, dict]:
    """``metrics.json``'s ``under_prior``: ``{name: metrics_under_prior}`` for every prior, each for
    the run's training counts."""
    return {prior.name: metrics_under_prior(metrics, prior.probabilities(metrics["train_counts"])) for prior in priors}


def with_test_priors(metrics: dict, priors: Sequence[Prior]) -> dict:
    """A ``metrics.json`` with ``under_prior`` for ``priors`` (``metrics_under_priors``; replacing
    any it had), in its flip-TTA part too: from the confusion matrices it holds, so the metrics of
    any finished run can be given under any prior."""
    updated = {**metrics, "under_prior": metrics_under_priors(metrics, priors)}
    if "tta_flip" in metrics:
        updated["tta_flip"] = with_test_priors(metrics["tta_flip"], priors)
    return updated


def axis_order(names: Sequence[str]) -> list[str]:
    """The names among ``names`` on the forward-to-backward axis, in its order: forward-N from the
    largest N down, uniform, backward-N from the smallest N up (forward-1 and backward-1 are uniform
    too, and sit beside it)."""

    def position(name):
        prior = named_prior(name)
        if prior is None or prior.kind == TRAIN:
            return None
        if prior.kind == UNIFORM:
            return 0.0
        return math.log(prior.imbalance) * (1 if prior.kind == "backward" else -1)

    placed = [(position(name), name) for name in names]
    return [name for where, name in sorted((p for p in placed if p[0] is not None), key=lambda p: p[0])]


# ---------------------------------------------------------------- adjusting logits to a target prior


@dataclass(frozen=True)
class Calibration:
    """The class prior a head's softmax is calibrated to (its own prior, summing to 1), and the
    reading of its training that gives it."""

    prior: tuple[float, ...]
    reading: str


def _normalised(weights) -> tuple[float, ...]:
    weights = np.asarray(weights, dtype=float)
    return tuple((weights / weights.sum()).tolist())


def cross_entropy_calibration(
    train_counts: Sequence[int], *, balanced_draw: bool, class_weights=None, weighting: str = ""
) -> Calibration:
    """The prior of a classifier trained by cross-entropy (or a loss read as it: focal's focusing
    and LDAM's margins are no prior shift) on samples drawn with the training prior (instance
    sampling) or uniformly (``balanced_draw``: class-balanced sampling), each sample's loss weighted
    by its class's ``class_weights`` (described by ``weighting``): the minimiser of the expected loss
    is the posterior under the draw's prior times the weights."""
    counts = np.asarray(train_counts, dtype=float)
    if balanced_draw:
        prior, reading = np.ones(len(counts)), "uniform: class-balanced sampling draws every class equally often"
    else:
        prior, reading = (
            counts,
            "the training prior: instance sampling draws the classes as the training split has them",
        )
    if class_weights is not None:
        prior = prior * np.asarray(class_weights, dtype=float)
        reading += f", times the loss's class weights ({weighting})"
    return Calibration(_normalised(prior), reading)


def logit_adjusted(calibration: Calibration, train_counts: Sequence[int], tau: float, where: str) -> Calibration:
    """The prior of logits offset by ``tau log pi_train``: trained so in the loss (logit-adjusted
    CE, whose minimiser makes ``z + tau log pi_train`` the posterior under ``calibration``; Balanced
    Softmax at tau = 1) or subtracted post hoc; either way ``calibration`` divided by
    ``pi_train ** tau``. ``where``: which of the two, for the reading."""
    if tau == 0:
        return calibration
    counts = np.asarray(train_counts, dtype=float)
    prior = np.asarray(calibration.prior) * (counts / counts.sum()) ** (-tau)
    reading = (
        f"{calibration.reading}, divided by the training prior to the power tau = {tau:g} (logit adjustment {where})"
    )
    return Calibration(_normalised(prior), reading)


def uniform_calibration(num_classes: int, reading: str) -> Calibration:
    return Calibration(_normalised(np.ones(num_classes)), reading)


def accuracy_under_prior(y_true: np.ndarray, y_pred: np.ndarray, prior: np.ndarray) -> float:
    """``sum_c prior_c recall_c`` of predictions (a class without a sample: never recalled)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes = len(prior)
    hits = np.bincount(y_true[y_true == y_pred], minlength=classes)
    support = np.bincount(y_true, minlength=classes)
    recall = np.divide(hits, support, out=np.zeros(classes), where=support > 0)
    return float(np.asarray(prior) @ recall)


def choose_adjustment(val_logits: np.ndarray, val_labels: np.ndarray, target: np.ndarray, own: np.ndarray) -> dict:
    """The shift ``tau (log target - log own)`` of a head's logits with ``tau`` from
    ``TARGET_TAU_GRID`` of the best validation accuracy under ``target``
    (``accuracy_under_prior``; ties: the smaller tau, so no shift unless it helps): ``prior``
    (the target), ``tau``, ``val_accuracy_by_tau`` and ``shift`` (add it to the logits)."""
    direction = np.log(np.asarray(target, dtype=float)) - np.log(np.asarray(own, dtype=float))
    scores = {
        tau: accuracy_under_prior(val_labels, (val_logits + tau * direction).argmax(1), target)
        for tau in TARGET_TAU_GRID
    }
    tau = best_on_validation(scores, tie_key=lambda t: t)
    return {
        "prior": np.asarray(target, dtype=float).tolist(),
        "tau": tau,
        "val_accuracy_by_tau": {str(t): score for t, score in scores.items()},
        "shift": (tau * direction).tolist(),
    }
