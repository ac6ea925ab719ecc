"""The sentences around the report's tables, shared by the Markdown and HTML writers: the page's
title, what the numbers are, which strategy wins under which test prior, and the notes of the
deployment, tuned and flip-TTA tables."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from longtail.priors import axis_order
from longtail.report.tables import balanced_test, percent, prior_label, shared_priors


def study_title(results: dict) -> str:
    """The page's title: what was studied (the data's file or folder name and the imbalance)."""
    config = results.get("config", {})
    data = Path(str(config.get("data") or "")).name
    imbalance = config.get("imbalance", config.get("imbalance_factor"))
    if isinstance(imbalance, int | float):
        imbalance = f"imbalance factor {imbalance:g}"
    elif imbalance is not None:
        imbalance = f"{imbalance} imbalance"  # "natural"
    what = ", ".join(part for part in (data, imbalance) if part)
    return f"Long-tail study: results ({what})" if what else "Long-tail study: results"


def seed_note(strategies: Mapping[str, dict]) -> str:
    """Sentences saying what the table numbers are, and which columns a balanced test set merges."""
    counts = sorted({len(entry["seeds"]) for entry in strategies.values()})
    seeds = next(iter(strategies.values()))["seeds"]
    support = np.asarray(next(iter(strategies.values()))["per_class"]["support"], dtype=float)
    if balanced_test(strategies):
        test = (
            f"The test set is balanced ({support[0]:g} images per class), so balanced accuracy and weighted recall "
            "equal top-1 and macro F1 equals weighted F1: each appears once."
        )
    else:
        test = (
            f"The test set is imbalanced ({support.min():g} to {support.max():g} images per class), so balanced "
            "accuracy (mean per-class recall) and macro F1 (every class weighed equally) differ from top-1 and "
            "the weighted averages (classes weighed by their test images): all appear."
        )
    return (
        f"Values in %; mean ± sample standard deviation over seeds (n − 1 in the denominator; n = "
        f"{', '.join(map(str, counts))}; one seed has no standard deviation, so its mean stands alone). "
        "Δ is in percentage points versus our baseline's mean top-1; Δ per seed gives the paired differences "
        f"from the baseline of the same seed (seeds {', '.join(map(str, seeds))}). Tuned on validation: the "
        "same loss with its knob chosen on the validation split (table below). Many/Medium/Few: mean recall of "
        f"the classes in each frequency group. {test}"
    )


TUNED_NOTE = (
    "The study's rows keep the study's settings (fixed); beside each, the same loss with its knobs chosen on the "
    "balanced validation split alone, per seed, among a grid about as large as Modified CE's τ grid (13 values; "
    "16 for CB-focal's two knobs), ties going to the setting closest to the fixed one. The tuned heads train "
    "side by side with the fixed ones, on the same features, batches and learning rate, so the differences are "
    "paired per seed. Balanced Softmax has no knob: it is logit-adjusted CE at τ = 1, the untuned point of "
    "Modified CE's grid; Modified CE's own row is already tuned on validation."
)


def prior_verdict(strategies: Mapping[str, dict]) -> str:
    """Which strategy has the best mean top-1 under which test prior, in a sentence: the priors
    off the axis (the training prior, weight files) one by one, then the forward-to-backward axis
    in stretches with the same best strategy (strategies equal to 0.01 points tie and are named
    together); ``""`` when the results hold no test prior."""
    priors = shared_priors(strategies)
    if not priors:
        return ""

    def best(prior) -> tuple[tuple[str, ...], str]:
        shown = {name: percent(entry["under_prior"][prior]["accuracy"]) for name, entry in strategies.items()}
        top = max(strategies, key=lambda name: strategies[name]["under_prior"][prior]["accuracy"])
        return tuple(name for name in strategies if shown[name] == shown[top]), shown[top]

    def who(names: tuple[str, ...], numbers: str) -> str:
        if len(names) == 1:
            return f"{names[0]} ({numbers})"
        return f"{', '.join(names[:-1])} and {names[-1]} (tied, {numbers})"

    axis = axis_order(priors)
    parts = [f"under {prior_label(p)}, {who(best(p)[0], best(p)[1] + '%')}" for p in priors if p not in axis]
    stretches: list[list[str]] = []
    for prior in axis:
        if stretches and best(stretches[-1][-1])[0] == best(prior)[0]:
            stretches[-1].append(prior)
        else:
            stretches.append([prior])
    for stretch in stretches:
        (names, first), (_, last) = best(stretch[0]), best(stretch[-1])
        if len(stretch) == 1:
            parts.append(f"under {stretch[0]}, {who(names, first + '%')}")
        else:
            parts.append(f"from {stretch[0]} to {stretch[-1]}, {who(names, f'{first}% to {last}%')}")
    winners = {best(prior)[0] for prior in priors}
    seeds = len(next(iter(strategies.values()))["seeds"])
    mean = f"mean top-1 over {seeds} seed{'s' if seeds > 1 else ''}"
    if len(winners) == 1 and len(next(iter(winners))) == 1:
        (only,) = winners.pop()
        return f"{only} has the best {mean} under every test prior measured: " + "; ".join(parts) + "."
    return f"The best strategy depends on the prior it is deployed to ({mean}): " + "; ".join(parts) + "."


PRIOR_NOTE = (
    "Top-1 expected where the classes come with another prior than the test set's: each class's recall on the "
    "test set weighted by its probability under the prior (the confusion matrix re-weighted exactly; no test image "
    "is dropped or drawn again). Uniform is a balanced test set; the training prior is the training split's class "
    "frequencies; forward-N is a long tail of imbalance N in the training order and backward-N the same reversed, "
    "the tail classes becoming the most frequent (Zhang et al., NeurIPS 2022). Mean ± sample std over seeds."
)


TTA_NOTE = (
    "With flip test-time augmentation (the logits of each test image and its mirror averaged): rows of their "
    "own, never mixed into the table above; the same heads and temperatures, chosen without it."
)
