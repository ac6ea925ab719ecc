"""The input size of the test metrics, chosen on the validation split.

Random-crop training at one size makes objects look larger than they do in test images of the
same size, so a network usually tests best somewhat above its training size (Touvron et al.,
NeurIPS 2019, "Fixing the train-test resolution discrepancy"). With ``--test-size auto`` a
finished stage-1 run is evaluated on its validation split at every size of ``size_grid``
(1.0x to 1.75x the training size, in steps of 16 px) and the best one is used for the test
metrics and for every stage-2 feature; ties go to the smaller size. Only validation accuracy
enters the choice: ``choose_size`` sees a function from size to validation accuracy, nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from longtail.config import MAX_IMAGE_SIZE
from longtail.selection import best_on_validation

GRID_MAX_FACTOR = 1.75
GRID_STEP = 16  # px; EfficientNet-B0 pools globally, so any size works, and 16-px steps keep the grid short


def size_grid(train_size: int) -> list[int]:
    """The sizes tried: ``train_size``, ``train_size + 16``, ... up to 1.75 x ``train_size``."""
    top = min(MAX_IMAGE_SIZE, math.floor(GRID_MAX_FACTOR * train_size))
    return list(range(train_size, top + 1, GRID_STEP))


def choose_size(val_accuracy: Callable[[int], float], sizes: Sequence[int]) -> tuple[int, dict[int, float]]:
    """``(best size, {size: validation accuracy})`` over ``sizes``; a tie goes to the smaller size."""
    scores = {size: float(val_accuracy(size)) for size in sorted(sizes)}
    return best_on_validation(scores, tie_key=lambda size: size), scores


def resolve_test_size(test_size: int | str, train_size: int) -> tuple[list[int], bool]:
    """``(sizes to evaluate on validation, whether to choose among them)`` for ``--test-size``."""
    if test_size == "auto":
        return size_grid(train_size), True
    return [train_size if test_size == "train" else int(test_size)], False
