"""The input size of the test metrics, chosen on the validation split.

With ``--test-size auto`` a finished stage-1 run is evaluated on its validation split at every size
of ``size_grid`` (the training size and up to three 16-px steps above it, none above 1.5x the
training size) and the best one is used for the test metrics and for every stage-2 feature; ties go
to the smaller size. Only validation accuracy enters the choice: ``choose_size`` sees a function
from size to validation accuracy, nothing else.

Why look above the training size at all: it was measured, not explained. Every test-size grid
recorded in ``results/`` (the 1.0x-1.75x grid before this one) peaks at or below 1.25x the training
size, 1.5x at 64 px, and testing above the training size added up to 6 points of validation and
test accuracy in the round-1 runs (RESULTS.md, "Where the CPU-minutes go"). Touvron et al.'s
explanation (NeurIPS 2019, "Fixing the train-test resolution discrepancy": random-*resized* crops
make objects look larger in training than at test) does not carry over to our pad-4 crops, which
keep the objects' scale; why the upsampled 32-px images test better somewhat larger is not
established. So the grid stays near the training size, where every recorded peak lies, and each size
costs one validation pass (issue 28).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from longtail.config import MAX_IMAGE_SIZE
from longtail.selection import best_on_validation

GRID_MAX_FACTOR = 1.5  # no size above 1.5x the training size
GRID_MAX_SIZES = 4  # the training size and at most three steps above it
GRID_STEP = 16  # px; EfficientNet-B0 pools globally, so any size works


def size_grid(train_size: int) -> list[int]:
    """The sizes tried: ``train_size``, ``train_size + 16``, ... at most ``GRID_MAX_SIZES`` of them,
    none above 1.5 x ``train_size`` (nor above the largest input size)."""
    top = min(MAX_IMAGE_SIZE, math.floor(GRID_MAX_FACTOR * train_size))
    return list(range(train_size, top + 1, GRID_STEP))[:GRID_MAX_SIZES]


def choose_size(val_accuracy: Callable[[int], float], sizes: Sequence[int]) -> tuple[int, dict[int, float]]:
    """``(best size, {size: validation accuracy})`` over ``sizes``; a tie goes to the smaller size."""
    scores = {size: float(val_accuracy(size)) for size in sorted(sizes)}
    return best_on_validation(scores, tie_key=lambda size: size), scores


def resolve_test_size(test_size: int | str, train_size: int) -> tuple[list[int], bool]:
    """``(sizes to evaluate on validation, whether to choose among them)`` for ``--test-size``."""
    if test_size == "auto":
        return size_grid(train_size), True
    return [train_size if test_size == "train" else int(test_size)], False
