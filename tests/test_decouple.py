"""Stage 2 (``longtail.stage2``): cached features train the same head as the frozen backbone,
and every stage-2 method does what its formula says on synthetic features.

(a) runs EfficientNet-B0 with the real pretrained weights (a randomly initialised B0's pooled
features are ~1e-14, too small to train a head on) on a few random uint8 images; (b) needs no
network at all:
features are Gaussians (or hand-placed points) and the stage-1 classifier is a given linear layer.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch
from torch import nn

from longtail import data as data_module
from longtail import knobs, stage2
from longtail.config import Stage2Config
from longtail.data import Arrays, Dataset, Split
from longtail.errors import LongtailError
from longtail.features import Features, extract_features
from longtail.losses import build_loss
from longtail.models import FEATURE_DIM, build_model, pooled_features
from longtail.runtime import Runtime
from shared_files import WEIGHTS

# ---------------------------------------------------------------- (a) cached features == frozen backbone


def test_head_on_cached_features_equals_head_through_frozen_backbone():
    torch.manual_seed(0)
    model, _ = build_model(4, str(WEIGHTS))
    model = model.to(memory_format=torch.channels_last).eval()
    mean, std, size = data_module.IMAGENET_MEAN, data_module.IMAGENET_STD, 32
    images = torch.randint(0, 256, (24, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0] * 12 + [1] * 6 + [2] * 4 + [3] * 2)
    counts = [12, 6, 4, 2]
    runtime = Runtime(torch.device("cpu"))

    started = time.perf_counter()
    cached = extract_features(model, images, size, mean, std, runtime)[None]  # (views=1, N, 1280)
    extract_seconds = time.perf_counter() - started
    assert cached.shape == (1, 24, FEATURE_DIM)

    def through_backbone(positions, views):
        assert int(views.max()) == 0  # no augmented views asked for
        with torch.no_grad():
            return pooled_features(model.eval(), data_module.to_model_input(images[positions], size, mean, std))

    common = dict(sampler="instance", epochs=3, batch_size=8, lr=1e-2, seed=0, views=0)
    heads, seconds = [], []
    for fetch in (lambda positions, views: cached[views, positions], through_backbone):
        torch.manual_seed(5)
        head = nn.Linear(FEATURE_DIM, 4)
        started = time.perf_counter()
        stage2.train_head(head, fetch, labels, build_loss("balanced-softmax", counts), **common)
        seconds.append(time.perf_counter() - started)
        heads.append(head)
    print(
        f"\nhead training, 3 epochs on 24 images: cached features {seconds[0]:.3f} s "
        f"(+ {extract_seconds:.3f} s one-off extraction), through the frozen backbone {seconds[1]:.3f} s"
    )
    cached_head, backbone_head = heads
    # Training moved the head (an untrained pair would be trivially equal).
    torch.manual_seed(5)
    assert not torch.allclose(cached_head.weight, nn.Linear(FEATURE_DIM, 4).weight, atol=1e-4)
    torch.testing.assert_close(cached_head.weight, backbone_head.weight, atol=1e-5, rtol=0)
    torch.testing.assert_close(cached_head.bias, backbone_head.bias, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- (b) stage-2 methods on synthetic features

COUNTS = [40, 20, 10, 5]


def _dataset(counts, val_labels) -> Dataset:
    """A ``Dataset`` whose arrays hold only labels (the images are never looked at in stage 2)."""
    y_train = np.concatenate([np.full(n, c) for c, n in enumerate(counts)] + [np.asarray(val_labels, int)])
    n_train = sum(counts)
    arrays = Arrays(
        x_train=np.zeros((len(y_train), 1, 1, 3), np.uint8),
        y_train=y_train.astype(np.int64),
        x_test=np.zeros((0, 1, 1, 3), np.uint8),
        y_test=np.zeros(0, np.int64),
        class_names=tuple(f"c{c}" for c in range(len(counts))),
        fingerprint="synthetic",
        source="synthetic",
    )
    split = Split(np.arange(n_train), np.arange(n_train, len(y_train)), list(counts), list(counts))
    return Dataset(arrays, split, data_module.CIFAR10_MEAN, data_module.CIFAR10_STD)


def _gaussian_problem(val_per_class: int = 10, seed: int = 0):
    """Class-conditional Gaussians in 1280-d, a long-tailed train set and a balanced val/test set."""
    generator = torch.Generator().manual_seed(seed)
    means = 0.03 * torch.randn(len(COUNTS), FEATURE_DIM, generator=generator)  # |mean| ~ 1: overlapping classes

    def draw(labels):
        labels = torch.as_tensor(labels)
        return means[labels] + torch.randn(len(labels), FEATURE_DIM, generator=generator)

    train_labels = np.concatenate([np.full(n, c) for c, n in enumerate(COUNTS)])
    val_labels = np.repeat(np.arange(len(COUNTS)), val_per_class)
    test_labels = np.repeat(np.arange(len(COUNTS)), 10)
    features = Features(draw(train_labels)[None], draw(val_labels), draw(test_labels))
    stage1 = nn.Linear(FEATURE_DIM, len(COUNTS))
    with torch.no_grad():
        stage1.weight.copy_(means + 0.05 * torch.randn(means.shape, generator=generator))
        stage1.bias.copy_(torch.tensor([0.5, 0.2, -0.1, -0.4]))
    return features, stage1, _dataset(COUNTS, val_labels)


def _logits(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return head.eval()(x)


def _fit(config, stage1, features, dataset, **kwargs):
    """One stage-2 head fitted alone: ``fit_stage2_heads`` with one config."""
    return stage2.fit_stage2_heads([config], stage1, features, dataset, **kwargs)[0]


def test_post_hoc_la_tau_0_keeps_and_tau_1_subtracts_the_log_prior():
    features, stage1, dataset = _gaussian_problem()
    x = features.test
    head, chosen = _fit(Stage2Config(method="post-hoc-la", tau=0.0), stage1, features, dataset)
    assert chosen == {"tau": 0.0}
    torch.testing.assert_close(_logits(head, x), _logits(stage1, x), atol=1e-6, rtol=0)

    head, _ = _fit(Stage2Config(method="post-hoc-la", tau=1.0), stage1, features, dataset)
    log_prior = torch.log(torch.tensor(COUNTS, dtype=torch.float32) / sum(COUNTS))
    torch.testing.assert_close(_logits(head, x), _logits(stage1, x) - log_prior, atol=1e-5, rtol=0)


def test_tau_norm_tau_0_keeps_the_weights_and_drops_the_bias():
    features, stage1, dataset = _gaussian_problem()
    head, chosen = _fit(Stage2Config(method="tau-norm", tau=0.0), stage1, features, dataset)
    assert chosen == {"tau": 0.0}
    torch.testing.assert_close(head.weight, stage1.weight, atol=0, rtol=0)
    assert torch.count_nonzero(head.bias) == 0  # Kang et al. drop the bias
    # With a bias-free stage-1 classifier, tau = 0 therefore predicts exactly what stage 1 did.
    with torch.no_grad():
        stage1.bias.zero_()
    head, _ = _fit(Stage2Config(method="tau-norm", tau=0.0), stage1, features, dataset)
    torch.testing.assert_close(_logits(head, features.test), _logits(stage1, features.test), atol=1e-6, rtol=0)
    # tau = 1: every class vector has unit norm.
    head, _ = _fit(Stage2Config(method="tau-norm", tau=1.0), stage1, features, dataset)
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(len(COUNTS)), atol=1e-6, rtol=0)


def test_lws_returns_a_linear_layer_with_the_learned_scales_folded_in():
    features, stage1, dataset = _gaussian_problem()
    config = Stage2Config(method="lws", epochs=5, batch_size=16, lr=1e-2)
    assert config.resolved_sampler == "class-balanced"
    head, chosen = _fit(config, stage1, features, dataset)
    assert type(head) is nn.Linear
    scales = torch.tensor(chosen["scales"])
    assert scales.shape == (len(COUNTS),)
    assert not torch.allclose(scales, torch.ones(len(COUNTS)))  # the scales were trained
    torch.testing.assert_close(head.weight, stage1.weight * scales[:, None], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(head.bias, stage1.bias * scales, atol=1e-6, rtol=1e-6)


def test_max_norm_bounds_every_class_row_and_a_tuned_grid_is_each_head_trained_alone():
    """MaxNorm projects each class's weight row back to the radius after every step: a head whose
    free rows all grow past it ends with every row inside it (and some on it), unlike the free
    head; the tau grid (heads trained side by side) holds the bound row by row, so the chosen
    head is the one trained alone at its tau."""
    features, stage1, dataset = _gaussian_problem(val_per_class=15)
    common = dict(loss="modified-ce", epochs=5, batch_size=32, lr=0.05)
    free, _ = _fit(Stage2Config(**common, tau=1.0), stage1, features, dataset)
    bound = 0.5 * float(free.weight.detach().norm(dim=1).min())
    held, _ = _fit(Stage2Config(**common, tau=1.0, max_norm=bound), stage1, features, dataset)
    norms = held.weight.detach().norm(dim=1)
    assert bool((norms <= bound * (1 + 1e-5)).all()) and float(norms.max()) >= 0.99 * bound
    assert not torch.allclose(held.weight, free.weight, atol=1e-3)
    tuned, chosen = _fit(Stage2Config(**common, max_norm=bound), stage1, features, dataset)
    assert bool((tuned.weight.detach().norm(dim=1) <= bound * (1 + 1e-5)).all())
    alone, _ = _fit(Stage2Config(**common, tau=chosen["tau"], max_norm=bound), stage1, features, dataset)
    torch.testing.assert_close(tuned.weight, alone.weight, atol=1e-5, rtol=0)


# Two classes, features on the first two axes; the stage-1 classifier reads them as logits with
# bias 2 log(prior). Post-hoc adjustment by tau leaves margin s + (2 - tau) log(pi_0 / pi_1)
# (s = x_0 - x_1), so the validation points at s = +-0.05 log(pi_0 / pi_1) are all right only at
# tau = 2.0 exactly: 1.9 or 2.1 misclassify one of the two groups. The test set is placed so
# that only tau = 0 gets it right: tuning on the test set would pick 0.
TWO_COUNTS = [100, 10]
LOG_RATIO = float(np.log(TWO_COUNTS[0] / TWO_COUNTS[1]))


def _points(margins) -> torch.Tensor:
    x = torch.zeros(len(margins), 8)
    x[:, 0] = torch.tensor(margins, dtype=torch.float32)
    return x


def _tuning_problem(with_val: bool = True):
    val_margins = [0.05 * LOG_RATIO] * 3 + [-0.05 * LOG_RATIO] * 3 + [3 * LOG_RATIO, -3 * LOG_RATIO]
    val_labels = [0, 0, 0, 1, 1, 1, 0, 1] if with_val else []
    test_margins = [-1.95 * LOG_RATIO] * 4 + [-3 * LOG_RATIO] * 4
    test_labels = [0] * 4 + [1] * 4
    features = Features(
        _points([0.0] * sum(TWO_COUNTS))[None],
        _points(val_margins if with_val else []),
        _points(test_margins),
    )
    stage1 = nn.Linear(8, 2)
    log_prior = torch.log(torch.tensor(TWO_COUNTS, dtype=torch.float32) / sum(TWO_COUNTS))
    with torch.no_grad():
        stage1.weight.zero_()
        stage1.weight[0, 0] = 1.0
        stage1.bias.copy_(2 * log_prior)
    return features, stage1, _dataset(TWO_COUNTS, val_labels), np.asarray(test_labels)


def test_post_hoc_tau_is_tuned_on_validation_accuracy_not_on_the_test_set():
    features, stage1, dataset, test_labels = _tuning_problem()
    head, chosen = _fit(Stage2Config(method="post-hoc-la"), stage1, features, dataset)
    assert chosen["tau"] == 2.0
    scores = chosen["val_accuracy_by_tau"]
    assert set(scores) == set(knobs.TAU_GRID_POST_HOC)
    assert scores[2.0] == 1.0
    assert all(score < 1.0 for tau, score in scores.items() if tau != 2.0)
    # The head returned is the one for the chosen tau.
    expected, _ = _fit(Stage2Config(method="post-hoc-la", tau=2.0), stage1, features, dataset)
    torch.testing.assert_close(head.bias, expected.bias, atol=0, rtol=0)
    # On the test set tau = 0 would have been best, and 2.0 gets the test's class 0 wrong.
    zero, _ = _fit(Stage2Config(method="post-hoc-la", tau=0.0), stage1, features, dataset)
    assert (_logits(zero, features.test).argmax(1).numpy() == test_labels).mean() == 1.0
    assert (_logits(head, features.test).argmax(1).numpy() == test_labels).mean() == 0.5


@pytest.mark.parametrize("method", ["post-hoc-la", "tau-norm"])
def test_tuning_without_a_validation_split_is_a_clear_error(method):
    features, stage1, dataset, _ = _tuning_problem(with_val=False)
    with pytest.raises(LongtailError, match="validation split"):
        _fit(Stage2Config(method=method), stage1, features, dataset)
    # A given tau needs no validation split.
    head, chosen = _fit(Stage2Config(method=method, tau=1.0), stage1, features, dataset)
    assert chosen == {"tau": 1.0}


def test_modified_ce_tunes_tau_over_the_trained_grid_and_records_it():
    features, stage1, dataset = _gaussian_problem(val_per_class=15)
    config = Stage2Config(method="retrain", loss="modified-ce", epochs=3, batch_size=32)
    head, chosen = _fit(config, stage1, features, dataset)
    assert chosen["loss"] == "logit-adjusted"
    scores = chosen["val_accuracy_by_tau"]
    assert list(scores) == list(knobs.TAU_GRID_TRAINED)
    val_labels = dataset.val_labels
    best = max(scores, key=lambda tau: (scores[tau], -abs(tau - 1.0)))
    assert chosen["tau"] == best
    assert (_logits(head, features.val).argmax(1).numpy() == val_labels).mean() == scores[best]
    # The head returned is the one trained with the recorded tau.
    fixed, fixed_chosen = _fit(
        Stage2Config(method="retrain", loss="modified-ce", epochs=3, batch_size=32, tau=best),
        stage1,
        features,
        dataset,
    )
    assert fixed_chosen == {"loss": "logit-adjusted", "tau": best}
    # Equal up to float rounding: the grid computes its heads in one matrix product (measured: 1e-8).
    torch.testing.assert_close(head.weight, fixed.weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(head.bias, fixed.bias, atol=1e-6, rtol=0)
    # The heads differ between taus: tuning chose among genuinely different candidates.
    other_tau = next(tau for tau in knobs.TAU_GRID_TRAINED if tau != best)
    other, _ = _fit(
        Stage2Config(method="retrain", loss="modified-ce", epochs=3, batch_size=32, tau=other_tau),
        stage1,
        features,
        dataset,
    )
    assert not torch.allclose(other.weight, fixed.weight, atol=1e-4)


def test_heads_fitted_together_equal_heads_fitted_one_by_one():
    features, stage1, dataset = _gaussian_problem(val_per_class=15)
    common = dict(method="retrain", epochs=3, batch_size=32)
    configs = [
        Stage2Config(loss="modified-ce", **common),  # a tau grid of its own inside the grid
        Stage2Config(loss="focal", gamma=2.0, **common),
        Stage2Config(loss="class-balanced", beta=0.99, **common),
        Stage2Config(loss="crt", **common),  # class-balanced sampling: other batches, another grid
        Stage2Config(loss="ldam", **common),  # a cosine head: alone
        Stage2Config(method="post-hoc-la"),
    ]
    together = stage2.fit_stage2_heads(configs, stage1, features, dataset)
    for config, (head, chosen) in zip(configs, together, strict=True):
        alone, alone_chosen = _fit(config, stage1, features, dataset)
        assert chosen == alone_chosen, config
        assert type(head) is type(alone)
        for name, tensor in alone.state_dict().items():
            torch.testing.assert_close(head.state_dict()[name], tensor, atol=1e-6, rtol=0, msg=str(config))
    # Different losses gave different heads (all equal would make the comparison above empty).
    weights = [head.weight for head, _ in together[:4]]
    assert all(not torch.allclose(a, b, atol=1e-4) for i, a in enumerate(weights) for b in weights[i + 1 :])


def test_class_balanced_beta_comes_from_the_stage1_decay_value_under_the_cb_beta_reading():
    from longtail.config import TrainConfig
    from longtail.losses import class_balanced_weights
    from longtail.strategies import class_balanced_beta, epoch_loss

    # --decay-value is the Class-Balanced beta under cb-beta (the default reading), and only there.
    assert class_balanced_beta(TrainConfig(decay_value=0.99)) == 0.99
    assert class_balanced_beta(TrainConfig(decay_reading="adamw", decay_value=0.01)) == 0.9999
    # Stage 2: a head that leaves beta to the stage-1 run is the head fitted with that beta.
    features, stage1, dataset = _gaussian_problem(val_per_class=5)
    common = dict(loss="class-balanced", epochs=2, batch_size=32)
    inherited, _ = _fit(Stage2Config(**common), stage1, features, dataset, default_beta=0.9)
    explicit, _ = _fit(Stage2Config(beta=0.9, **common), stage1, features, dataset)
    standard, _ = _fit(Stage2Config(beta=0.9999, **common), stage1, features, dataset)
    torch.testing.assert_close(inherited.weight, explicit.weight, atol=0, rtol=0)
    assert not torch.allclose(inherited.weight, standard.weight, atol=1e-5)
    # LDAM-DRW's deferred re-weighting uses the same beta.
    counts = [50, 10, 2]
    config = TrainConfig(strategy="ldam-drw", decay_value=0.9, epochs=10)
    logits, targets = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    reweighted = epoch_loss(config, counts, epoch=9)
    expected = build_loss("ldam", counts, weights=class_balanced_weights(counts, 0.9))
    torch.testing.assert_close(reweighted(logits, targets), expected(logits, targets))


# ---------------------------------------------------------------- knobs tuned on validation (--tune)

TUNED = [
    Stage2Config(loss="focal", tune=True),  # gamma over GAMMA_GRID
    Stage2Config(loss="class-balanced", tune=True),  # beta over BETA_GRID
    Stage2Config(loss="cb-focal", tune=True),  # both, over CB_FOCAL_GRID
    Stage2Config(loss="cb-focal", gamma=2.0, tune=True),  # beta only, gamma given
]


def test_tuning_grids_are_as_large_as_the_tau_grid_and_hold_the_fixed_settings():
    sizes = {len(stage2.tuning_grid(config)) for config in TUNED}
    assert sizes == {len(knobs.TAU_GRID_TRAINED), 16}  # 13 values per knob; CB-focal's two knobs: 4 x 4
    focal, balanced, both, beta_only = (stage2.tuning_grid(config) for config in TUNED)
    assert {"gamma": 1.0} in focal and {"beta": 0.9999} in balanced and {"beta": 0.9999, "gamma": 1.0} in both
    assert set(beta_only[0]) == {"beta"}
    # Balanced Softmax has no knob; the fixed rows tune nothing; Modified CE tunes tau unless given.
    assert stage2.tuning_grid(Stage2Config(loss="balanced-softmax")) == []
    assert stage2.tuning_grid(Stage2Config(loss="focal")) == []
    assert stage2.tuning_grid(Stage2Config(loss="modified-ce"))[0] == {"tau": 0.5}
    assert stage2.tuning_grid(Stage2Config(loss="modified-ce", tau=2.0)) == []


def _best_by_hand(scores: list[dict], fixed: dict) -> dict:
    """The documented rule, written out: best validation accuracy; ties to the setting closest to
    the fixed one (|gamma - 1| + |log10(1 - beta) - log10(1 - 0.9999)|), then the earlier."""

    def distance(point):
        return sum(
            abs(np.log10(1 - point[k]) - np.log10(1 - fixed[k])) if k == "beta" else abs(point[k] - fixed[k])
            for k in point
            if k != "val_accuracy"
        )

    best = scores[0]
    for point in scores[1:]:
        if (point["val_accuracy"], -distance(point)) > (best["val_accuracy"], -distance(best)):
            best = point
    return {k: v for k, v in best.items() if k != "val_accuracy"}


def test_tuned_heads_trained_side_by_side_equal_the_chosen_head_trained_alone():
    features, stage1, dataset = _gaussian_problem(val_per_class=15)
    common = dict(epochs=3, batch_size=32)
    configs = [dataclasses.replace(config, **common) for config in TUNED]
    configs.append(Stage2Config(loss="modified-ce", **common))  # all in one grid of heads
    together = stage2.fit_stage2_heads(configs, stage1, features, dataset)
    for config, (head, chosen) in zip(configs, together, strict=True):
        knobs = config.resolved().tuned_knobs
        assert chosen["tuned"] == list(knobs)
        picked = {knob: chosen[knob] for knob in knobs}
        if knobs != ("tau",):
            scores = chosen["val_accuracy_by_setting"]
            assert [{k: v for k, v in s.items() if k != "val_accuracy"} for s in scores] == stage2.tuning_grid(config)
            assert picked == _best_by_hand(scores, {"gamma": 1.0, "beta": 0.9999})
            val_labels = dataset.arrays.y_train[dataset.split.val]
            accuracy = (_logits(head, features.val).argmax(1).numpy() == val_labels).mean()
            assert accuracy == max(s["val_accuracy"] for s in scores)
        # The chosen head is the head trained alone with the chosen values given.
        alone, alone_chosen = _fit(dataclasses.replace(config, tune=False, **picked), stage1, features, dataset)
        assert {k: v for k, v in chosen.items() if k in alone_chosen} == alone_chosen
        torch.testing.assert_close(head.weight, alone.weight, atol=1e-6, rtol=0, msg=str(config))
        torch.testing.assert_close(head.bias, alone.bias, atol=1e-6, rtol=0, msg=str(config))


def test_every_setting_of_a_tuned_grid_is_the_head_trained_alone_with_it(monkeypatch):
    # Not only the chosen one: make validation pick each grid point in turn (a validation score
    # that is highest at that point), so each head of the grid is compared with its own head alone.
    features, stage1, dataset = _gaussian_problem(val_per_class=5)
    config = Stage2Config(loss="cb-focal", tune=True, epochs=2, batch_size=32)
    grid = stage2.tuning_grid(config)
    heads = {}
    real = stage2.choose_setting

    def pick(target):
        def fake(candidates, features, val_labels, fixed):
            _, scores = real(candidates, features, val_labels, fixed)
            return [point for point, _ in candidates].index(target), scores

        return fake

    for target in (grid[0], grid[5], grid[-1]):
        monkeypatch.setattr("longtail.stage2.fit.choose_setting", pick(target))
        heads[tuple(target.items())] = _fit(config, stage1, features, dataset)[0]
    monkeypatch.undo()
    for target, head in heads.items():
        alone, _ = _fit(dataclasses.replace(config, tune=False, **dict(target)), stage1, features, dataset)
        torch.testing.assert_close(head.weight, alone.weight, atol=1e-6, rtol=0, msg=str(target))
    assert not torch.allclose(*(head.weight for head in list(heads.values())[:2]), atol=1e-4)  # distinct heads


def test_every_choice_is_made_on_validation_alone_scrambling_the_test_set_changes_none():
    features, stage1, dataset = _gaussian_problem(val_per_class=15)
    common = dict(epochs=2, batch_size=32)
    configs = [dataclasses.replace(config, **common) for config in TUNED] + [
        Stage2Config(loss="modified-ce", **common),
        Stage2Config(method="post-hoc-la"),
        Stage2Config(method="tau-norm"),
    ]
    before = stage2.fit_stage2_heads(configs, stage1, features, dataset)
    generator = torch.Generator().manual_seed(9)
    scrambled = Features(
        features.train, features.val, torch.randn(features.test.shape, generator=generator) * 5, features.test_flip
    )
    arrays = dataset.arrays
    permuted = Dataset(
        dataclasses.replace(arrays, y_test=np.random.default_rng(3).permutation(arrays.y_test)),
        dataset.split,
        dataset.mean,
        dataset.std,
    )
    after = stage2.fit_stage2_heads(configs, stage1, scrambled, permuted)
    for (head, chosen), (head_after, chosen_after) in zip(before, after, strict=True):
        assert chosen_after == chosen
        torch.testing.assert_close(head_after.weight, head.weight, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (Stage2Config(loss="focal", tune=True), {"gamma": 1.0}),
        (Stage2Config(loss="class-balanced", tune=True), {"beta": 0.9999}),
        (Stage2Config(loss="cb-focal", tune=True), {"beta": 0.9999, "gamma": 1.0}),
        (Stage2Config(loss="modified-ce"), {"tau": 1.0}),
        (Stage2Config(method="post-hoc-la"), {"tau": 1.0}),
    ],
)
def test_ties_go_to_the_setting_closest_to_the_fixed_one(config, expected):
    # Every candidate scores the same on validation (identical heads): the fixed setting wins.
    features, stage1, dataset = _gaussian_problem(val_per_class=5)
    points = stage2.tuning_grid(config)
    best, scores = stage2.choose_setting(
        [(point, stage1) for point in points],
        features,
        dataset.arrays.y_train[dataset.split.val],
        {"tau": 1.0, "gamma": 1.0, "beta": 0.9999},
    )
    assert len(set(scores)) == 1 and points[best] == expected
    # With another fixed beta (a stage-1 --decay-value), ties go to the grid's beta nearest it.
    if "beta" in expected:
        best, _ = stage2.choose_setting(
            [(point, stage1) for point in points],
            features,
            dataset.arrays.y_train[dataset.split.val],
            {"tau": 1.0, "gamma": 1.0, "beta": 0.9993},
        )
        assert points[best]["beta"] == (0.9995 if len(points) == len(knobs.BETA_GRID) else 0.999)


def test_tuning_gamma_or_beta_without_a_validation_split_is_a_clear_error():
    features, stage1, dataset, _ = _tuning_problem(with_val=False)
    with pytest.raises(LongtailError, match="tuning gamma needs a validation split.*--gamma"):
        _fit(Stage2Config(loss="focal", tune=True, epochs=1), stage1, features, dataset)
