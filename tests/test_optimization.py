"""longtail.optimization: the learning-rate schedule (the study's constant rate, and the cosine deviation
that warms up, then ends every run at the bottom of its cosine), and the weight decay and weight average of stage 1."""

from __future__ import annotations

import math

import pytest
import torch

from longtail.config import TrainConfig
from longtail.optimization import lr_factor, make_optimizer, training_state


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


def _small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2)
    )


def test_weight_decay_shrinks_the_weights_by_lr_times_the_decay_on_a_zero_gradient_and_not_biases_or_bn():
    """AdamW's decoupled decay: on a zero gradient Adam's update is 0, so each step only shrinks the
    decayed weights, ``w <- w (1 - lr wd)``; biases and BatchNorm's affine parameters keep theirs."""
    for weight_decay in (0.0, 3.0):
        model = _small_model()
        optimizer = make_optimizer(TrainConfig(lr=0.01, weight_decay=weight_decay), model.parameters())
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        for _ in range(2):
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            optimizer.step()
        for name, p in model.named_parameters():
            factor = (1 - 0.01 * weight_decay) ** 2 if p.ndim > 1 else 1.0
            assert torch.allclose(p, before[name] * factor, rtol=1e-6, atol=0), name
        shrunk = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
        assert shrunk == ([] if weight_decay == 0 else ["0.weight", "3.weight"])


def test_the_weight_average_follows_its_formula_from_the_first_steps_weights():
    """``ema <- d ema + (1 - d) w`` after every step, starting at the first step's weights; the
    model evaluated and saved is the average (``train._evaluated_model``)."""
    from longtail.train import _evaluated_model

    model = _small_model()
    state = training_state(model, TrainConfig(ema_decay=0.75), steps_in_epoch=3)
    assert _evaluated_model(state) is state.ema.module
    weights = []
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(float(step + 1))
        weights.append([p.detach().clone() for p in model.parameters()])
        state.ema.update_parameters(model)
    for i, averaged in enumerate(state.ema.module.parameters()):
        expected = weights[0][i]
        for later in weights[1:]:
            expected = 0.75 * expected + 0.25 * later[i]
        assert torch.allclose(averaged, expected)
        assert not torch.allclose(averaged, weights[-1][i])
    assert training_state(_small_model(), TrainConfig(), 3).ema is None
    assert _evaluated_model(training_state(model, TrainConfig(), 3)) is model
