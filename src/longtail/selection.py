"""Choosing on the validation split: the candidate with the best score, ties broken by a rule of
the caller's.

Every choice longtail makes on validation goes through ``best_on_validation``, each with its own
tie rule: the test size (``resolution.choose_size``: the smaller size), a tuned head's setting
(``stage2.tuning.choose_setting``: the setting closest to the fixed one, then the earlier in the
grid), a stage-2 head's feature size (``stage2.fit.fit_at_sizes``: the size nearest the stage-1
test size, then the smaller) and the temperature of an adjustment to a target prior
(``priors.choose_adjustment``: the smaller tau). Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, TypeVar

Candidate = TypeVar("Candidate", bound=Hashable)


def best_on_validation(scores: Mapping[Candidate, float], tie_key: Callable[[Candidate], Any]) -> Candidate:
    """The candidate of ``scores`` ({candidate: validation score}) with the highest score; among
    equal scores the one whose ``tie_key`` is the smallest, then the first in ``scores``' order."""
    return min(scores, key=lambda candidate: (-scores[candidate], tie_key(candidate)))
