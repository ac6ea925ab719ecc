"""longtail.mixing: mixup and CutMix by their formulas, their draws fixed by (seed, epoch, rank), and
stage-1 training that mixes (and averages its weights) really doing so."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longtail.config import TrainConfig
from longtail.mixing import MIXINGS, cutmix, mixing_generator, mixup
from longtail.runs import CHECKPOINT_FILE, torch_load


def _batch() -> torch.Tensor:
    return torch.randn(6, 3, 16, 20, generator=torch.Generator().manual_seed(1))


def test_mixup_is_lam_x_plus_one_minus_lam_x_of_the_partner():
    inputs = _batch()
    mixed = mixup(inputs, 0.4, mixing_generator(0, 0, 0))
    assert 0 < mixed.lam < 1 and sorted(mixed.partner.tolist()) == list(range(6))
    assert torch.allclose(mixed.inputs, mixed.lam * inputs + (1 - mixed.lam) * inputs[mixed.partner])
    again = mixup(inputs, 0.4, mixing_generator(0, 0, 0))
    assert again.lam == mixed.lam and torch.equal(again.partner, mixed.partner)
    other = [mixup(inputs, 0.4, mixing_generator(*key)).lam for key in ((1, 0, 0), (0, 1, 0), (0, 0, 1))]
    assert mixed.lam not in other


def test_cutmix_pastes_one_box_of_the_partner_and_lam_is_the_share_of_the_own_pixels():
    inputs = _batch()
    for seed in range(20):
        mixed = cutmix(inputs, 1.0, mixing_generator(seed, 0, 0))
        box = (mixed.inputs != inputs).any(dim=1).any(dim=0)  # (H, W): the pixels pasted in (the same box for all)
        assert torch.equal(mixed.inputs[..., box], inputs[mixed.partner][..., box])
        assert torch.equal(mixed.inputs[..., ~box], inputs[..., ~box])
        assert mixed.lam == pytest.approx(1 - box.float().mean().item())
        rows, cols = torch.nonzero(box, as_tuple=True)
        if len(rows):  # one axis-aligned rectangle
            assert box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    assert any(cutmix(inputs, 1.0, mixing_generator(seed, 0, 0)).lam < 0.9 for seed in range(20))


def test_the_loss_of_a_mixed_batch_is_lam_times_own_plus_one_minus_lam_times_partner():
    logits, targets = torch.randn(6, 4, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1, 2, 3, 0, 1])
    for name, mix in MIXINGS.items():
        mixed = mix(_batch(), 1.0, mixing_generator(3, 0, 0))
        expected = mixed.lam * F.cross_entropy(logits, targets) + (1 - mixed.lam) * F.cross_entropy(
            logits, targets[mixed.partner]
        )
        assert torch.allclose(mixed.loss(F.cross_entropy, logits, targets), expected), name


@pytest.mark.parametrize("options", [{"mixup": 0.2}, {"cutmix": 1.0}, {"random_resized_crop": 0.35}])
def test_mixing_or_resized_crops_change_the_training_and_a_run_with_them_resumes_exactly(tiny_npz, tmp_path, options):
    """Stage 1 with mixing (or random-resized crops) trains other weights than without; the draws
    follow (seed, epoch), so a run stopped after its first epoch and resumed ends with the weights of
    an uninterrupted run."""
    from longtail.train import train

    base = dict(
        data=str(tiny_npz),
        weights="none",
        image_size=32,
        epochs=2,
        batch_size=16,
        val_per_class=1,
        imbalance=1.0,
        deterministic=True,
        test_size="train",
    )
    runs = {}
    for name, settings in (("plain", {}), ("mixed", options)):
        train(TrainConfig(**base, **settings), tmp_path / name, cache_dir=tmp_path / "cache", figures=False)
        runs[name] = torch_load(tmp_path / name / "model.pt")
    assert any(not torch.equal(runs["plain"][key], runs["mixed"][key]) for key in runs["plain"])
    once = TrainConfig(**{**base, "epochs": 1}, **options)
    train(once, tmp_path / "resumed", cache_dir=tmp_path / "cache", figures=False, evaluate=False)
    # the first epoch's checkpoint, resumed into the two-epoch run (a constant lr: more epochs resume)
    train(
        TrainConfig(**base, **options), tmp_path / "resumed", resume=True, cache_dir=tmp_path / "cache", figures=False
    )
    resumed = torch_load(tmp_path / "resumed" / "model.pt")
    assert all(torch.equal(resumed[key], runs["mixed"][key]) for key in resumed)


def test_a_run_with_a_weight_average_saves_the_average_not_the_last_steps_weights(tiny_npz, tmp_path):
    from longtail.train import train

    config = TrainConfig(
        data=str(tiny_npz),
        weights="none",
        image_size=32,
        epochs=1,
        batch_size=16,
        val_per_class=1,
        imbalance=1.0,
        ema_decay=0.5,
        test_size="train",
    )
    train(config, tmp_path / "run", cache_dir=tmp_path / "cache", figures=False)
    saved = torch_load(tmp_path / "run" / "model.pt")
    checkpoint = torch_load(tmp_path / "run" / CHECKPOINT_FILE)
    averaged = {key.removeprefix("module."): value for key, value in checkpoint["ema"].items() if key != "n_averaged"}
    assert all(torch.equal(saved[key], averaged[key]) for key in saved)
    trained = [key for key in saved if saved[key].is_floating_point() and key.endswith("weight")]
    assert any(not torch.equal(saved[key], checkpoint["model"][key]) for key in trained)
    assert int(checkpoint["ema"]["n_averaged"]) == 4  # 60 - 10 validation images, batches of 16
    assert np.isfinite([float(v.float().abs().sum()) for v in saved.values()]).all()
