"""The study's own data: the numbers it reported, which the report sets beside ours (the comparison
table's "Study top-1", the "Study-reported numbers" table, the diamonds of the summary chart) when
ours were measured on the study's data, CIFAR-10 (its classes, in its label order): beside CIFAR-100-LT
or a user's own data they would compare unlike with unlike."""

from collections.abc import Mapping

from longtail.choices import CIFAR10_CLASSES

# Numbers the study reported (fractions); strategies or metrics not listed were not reported.
STUDY_REPORTED: dict[str, dict[str, float]] = {
    "baseline": {"accuracy": 0.8415},
    "reweight": {"accuracy": 0.8582, "weighted_f1": 0.8584},
    "decoupled-modified-ce": {"accuracy": 0.9378},
}


def study_reported(strategies: Mapping[str, dict]) -> dict[str, dict[str, float]]:
    """``STUDY_REPORTED`` for strategies measured on CIFAR-10, nothing for any other data."""
    names = [list(entry["class_names"]) for entry in strategies.values()]
    return STUDY_REPORTED if names and all(n == list(CIFAR10_CLASSES) for n in names) else {}
