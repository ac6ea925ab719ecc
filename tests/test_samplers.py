"""longtail.samplers: epoch orders, class balance, determinism, distributed shares."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from longtail.errors import LongtailError
from longtail.samplers import epoch_generator, epoch_order, inverse_frequency_sample_weights

CIFAR10_LT_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.fixture(scope="module")
def lt_labels() -> np.ndarray:
    """Labels with the CIFAR-10-LT IF=100 counts, shuffled (12,406 of them)."""
    labels = np.repeat(np.arange(10), CIFAR10_LT_100)
    return np.random.default_rng(0).permutation(labels)


def test_class_balanced_draws_every_class_equally_often(lt_labels):
    drawn = Counter()
    for epoch in range(20):
        order = epoch_order("class-balanced", lt_labels, seed=0, epoch=epoch)
        assert len(order) == len(lt_labels)
        drawn.update(lt_labels[order.numpy()].tolist())
    total = sum(drawn.values())
    assert total == 20 * len(lt_labels)
    for c in range(10):
        assert abs(drawn[c] / total - 0.1) < 0.01, (c, drawn[c] / total)  # within 10 % of 1/10


def test_instance_order_is_a_permutation_and_keeps_the_imbalance(lt_labels):
    order = epoch_order("instance", lt_labels, seed=0, epoch=0)
    assert order.dtype == torch.long
    assert sorted(order.tolist()) == list(range(len(lt_labels)))
    assert order.tolist() != list(range(len(lt_labels)))
    assert np.bincount(lt_labels[order.numpy()], minlength=10).tolist() == CIFAR10_LT_100


@pytest.mark.parametrize("sampler", ["instance", "class-balanced"])
def test_order_is_a_function_of_seed_and_epoch(lt_labels, sampler):
    first = epoch_order(sampler, lt_labels, seed=1, epoch=2)
    assert torch.equal(first, epoch_order(sampler, lt_labels, seed=1, epoch=2))
    assert not torch.equal(first, epoch_order(sampler, lt_labels, seed=1, epoch=3))
    assert not torch.equal(first, epoch_order(sampler, lt_labels, seed=2, epoch=2))


def test_global_torch_rng_does_not_matter(lt_labels):
    torch.manual_seed(0)
    first = epoch_order("class-balanced", lt_labels, seed=4, epoch=0)
    torch.manual_seed(123)
    torch.rand(10)
    assert torch.equal(first, epoch_order("class-balanced", lt_labels, seed=4, epoch=0))


def test_epoch_generators_are_distinct_streams():
    draws = {
        (seed, epoch, stream): torch.randint(0, 2**31, (4,), generator=epoch_generator(seed, epoch, stream)).tolist()
        for seed in range(3)
        for epoch in range(3)
        for stream in range(3)
    }
    assert len({tuple(v) for v in draws.values()}) == len(draws)


@pytest.mark.parametrize("sampler", ["instance", "class-balanced"])
@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_shares_partition_the_global_order(lt_labels, sampler, world_size):
    labels = lt_labels[:1001]  # not a multiple of the world size
    full = epoch_order(sampler, labels, seed=5, epoch=1)
    shares = [epoch_order(sampler, labels, seed=5, epoch=1, rank=r, world_size=world_size) for r in range(world_size)]
    assert sum(len(s) for s in shares) == len(full)
    assert max(len(s) for s in shares) - min(len(s) for s in shares) <= 1
    # Interleaving the shares gives back the global order position by position, so the shares
    # are disjoint as positions and their multiset union is the global order's.
    rebuilt = torch.empty_like(full)
    for rank, share in enumerate(shares):
        rebuilt[rank::world_size] = share
    assert torch.equal(rebuilt, full)
    assert sorted(torch.cat(shares).tolist()) == sorted(full.tolist())
    if sampler == "instance":
        sets = [set(s.tolist()) for s in shares]
        assert all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1 :])


def test_inverse_frequency_weights():
    weights = inverse_frequency_sample_weights([2, 0, 2, 1, 0, 2])
    assert weights.dtype == torch.double
    assert weights.tolist() == pytest.approx([1 / 3, 1 / 2, 1 / 3, 1.0, 1 / 2, 1 / 3], abs=1e-15)
    per_class = Counter()
    for label, weight in zip([2, 0, 2, 1, 0, 2], weights.tolist(), strict=True):
        per_class[label] += weight
    assert all(total == pytest.approx(1.0) for total in per_class.values())  # each class weighs 1 in all


def test_inverse_frequency_weights_accept_numpy_and_tensors():
    expected = [0.5, 0.5, 1.0]
    assert inverse_frequency_sample_weights(np.array([3, 3, 7])).tolist() == expected
    assert inverse_frequency_sample_weights(torch.tensor([3, 3, 7])).tolist() == expected


def test_unknown_sampler_raises(lt_labels):
    with pytest.raises(LongtailError, match="square-root"):
        epoch_order("square-root", lt_labels, seed=0, epoch=0)
