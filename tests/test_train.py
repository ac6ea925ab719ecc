"""longtail.train's learning-rate schedule: the study's constant rate, and the cosine deviation
that warms up, then ends every run at the bottom of its cosine."""

from __future__ import annotations

import math

import pytest

from longtail.config import TrainConfig
from longtail.train import lr_factor


def test_constant_is_the_study_rate_throughout():
    factor = lr_factor(TrainConfig(epochs=3), steps_in_epoch=10)
    assert [factor(step) for step in range(30)] == [1.0] * 30


@pytest.mark.parametrize(("epochs", "steps_in_epoch"), [(8, 97), (3, 10), (1, 97), (1, 2), (2, 1)])
def test_cosine_warms_up_then_ends_at_exactly_zero_on_the_last_step(epochs, steps_in_epoch):
    factor = lr_factor(TrainConfig(epochs=epochs, lr_schedule="cosine"), steps_in_epoch)
    total = epochs * steps_in_epoch
    warmup = min(steps_in_epoch, (total - 1) // 2)
    values = [factor(step) for step in range(total)]
    assert values[:warmup] == [(step + 1) / warmup for step in range(warmup)]
    assert values[warmup] == 1.0  # the peak, where the cosine starts
    assert values[-1] == pytest.approx(0.0, abs=1e-15)
    assert all(a >= b for a, b in zip(values[warmup:], values[warmup + 1 :], strict=False))  # decays
    middle = warmup + (total - 1 - warmup) / 2
    if middle == int(middle):
        assert values[int(middle)] == pytest.approx(0.5)
    assert math.isclose(max(values), 1.0)


def test_one_epoch_of_cosine_is_not_all_warm_up():
    """The old schedule warmed up over the whole of a one-epoch run and ended at the peak."""
    factor = lr_factor(TrainConfig(epochs=1, lr_schedule="cosine"), steps_in_epoch=97)
    assert factor(47) == 1.0 and factor(48) == 1.0 and factor(96) == pytest.approx(0.0, abs=1e-15)
