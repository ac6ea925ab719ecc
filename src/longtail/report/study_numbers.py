"""The study's own data: the numbers it reported, which the report sets beside ours (the comparison
table's "Study top-1", the "Study-reported numbers" table, the diamonds of the summary chart)."""

# Numbers the study reported (fractions); strategies or metrics not listed were not reported.
STUDY_REPORTED: dict[str, dict[str, float]] = {
    "baseline": {"accuracy": 0.8415},
    "reweight": {"accuracy": 0.8582, "weighted_f1": 0.8584},
    "decoupled-modified-ce": {"accuracy": 0.9378},
}
