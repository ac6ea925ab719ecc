"""longtail.models: EfficientNet-B0 construction, the real (BN-folded) weights file, BN handling."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from longtail import models
from longtail.data import IMAGENET_MEAN, IMAGENET_STD, to_model_input
from longtail.errors import LongtailError
from longtail.models import (
    CosineLinear,
    build_model,
    is_bn_folded,
    reestimate_bn_statistics,
    resolve_bn_mode,
    set_train_mode,
)


def _norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.fixture(scope="module")
def real_state(weights_file) -> dict:
    return torch.load(weights_file, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def cifar_inputs(cifar10_npz) -> torch.Tensor:
    """160 real CIFAR-10 test images as ImageNet-normalised 32-px model input."""
    with np.load(cifar10_npz) as archive:
        images = torch.from_numpy(archive["x_test"][:160])
    return to_model_input(images, 32, IMAGENET_MEAN, IMAGENET_STD)


# ---------------------------------------------------------------- construction


@pytest.mark.parametrize("size", [32, 64, 224])
def test_random_model_gives_logits_per_class(size):
    torch.manual_seed(0)
    model, info = build_model(10, "none")
    assert info.name == "none" and info.sha256 is None and not info.pretrained and not info.bn_folded
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_cosine_head_is_installed():
    model, _ = build_model(7, "none", cosine_head=True)
    assert isinstance(models.head_of(model), CosineLinear)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("cosine", [False, True])
def test_head_from_state_dict_is_the_models_classifier(cosine):
    torch.manual_seed(0)
    model, _ = build_model(7, "none", cosine_head=cosine)
    head = models.head_from_state_dict(model.state_dict(), 7, cosine)
    assert type(head) is type(models.head_of(model)) and not head.training
    features = torch.randn(3, models.FEATURE_DIM)
    with torch.no_grad():
        torch.testing.assert_close(head(features), models.head_of(model)(features), atol=0, rtol=0)


# ---------------------------------------------------------------- the real weights file


def test_real_weights_load_and_are_detected_as_folded(weights_file, real_state):
    model, info = build_model(10, str(weights_file))
    assert info.pretrained and info.bn_folded and is_bn_folded(model)
    assert info.sha256 == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    assert info.name == str(weights_file)
    assert models.head_of(model).out_features == 10
    own = model.state_dict()
    for key, value in real_state.items():
        if not key.startswith("classifier."):
            assert torch.equal(own[key], value), key
    assert resolve_bn_mode("auto", info) == "frozen"


def test_thousand_class_head_is_kept(weights_file, real_state):
    model, _ = build_model(1000, str(weights_file))
    assert torch.equal(models.head_of(model).weight, real_state["classifier.1.weight"])


def test_random_model_is_not_folded():
    model, info = build_model(10, "none")
    assert not is_bn_folded(model)  # fresh BN: running_var 1, so running_var + eps != 1
    assert resolve_bn_mode("auto", info) == "train"


def test_unknown_bn_mode_raises():
    _, info = build_model(10, "none")
    with pytest.raises(LongtailError, match="sometimes"):
        resolve_bn_mode("sometimes", info)


def test_renamed_key_is_reported(tmp_path, real_state):
    state = dict(real_state)
    state["features.0.0.renamed"] = state.pop("features.0.0.weight")
    path = tmp_path / "renamed.pth"
    torch.save(state, path)
    with pytest.raises(LongtailError) as caught:
        build_model(10, str(path))
    message = str(caught.value)
    assert str(path) in message
    assert "missing 1: features.0.0.weight" in message
    assert "unexpected 1: features.0.0.renamed" in message


def test_wrong_shape_is_reported(tmp_path, real_state):
    state = dict(real_state)
    state["features.1.0.block.0.0.weight"] = torch.zeros(3, 3)
    path = tmp_path / "shape.pth"
    torch.save(state, path)
    with pytest.raises(LongtailError, match="wrong shape 1: features.1.0.block.0.0.weight"):
        build_model(10, str(path))


def test_other_architecture_is_rejected(tmp_path):
    from torchvision.models import resnet18

    path = tmp_path / "resnet18.pth"
    torch.save(resnet18().state_dict(), path)
    with pytest.raises(LongtailError, match="not an EfficientNet-B0 state dict") as caught:
        build_model(10, str(path))
    message = str(caught.value)
    assert str(path) in message
    assert "missing" in message and "unexpected" in message and "bn1.bias" in message


def test_truncated_weights_file_raises(tmp_path, weights_file):
    path = tmp_path / "truncated.pth"
    with open(weights_file, "rb") as handle:
        path.write_bytes(handle.read(1 << 20))
    with pytest.raises(LongtailError, match="truncated") as caught:
        build_model(10, str(path))
    assert str(path) in str(caught.value)


def test_missing_weights_file_raises(tmp_path):
    with pytest.raises(LongtailError, match="does not exist"):
        build_model(10, str(tmp_path / "absent.pth"))


def test_unreadable_weights_file_raises(tmp_path, monkeypatch):
    # Tests run as root, where chmod 000 reads anyway: simulate the PermissionError instead.
    path = tmp_path / "locked.pth"
    path.write_bytes(b"x")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(LongtailError, match="cannot be read") as caught:
        build_model(10, str(path))
    assert str(path) in str(caught.value)


def test_non_tensor_payload_is_rejected(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(LongtailError, match="state dict"):
        build_model(10, str(path))


# ---------------------------------------------------------------- BatchNorm handling


def _bn_only_train(model: nn.Module) -> None:
    """Train mode for BatchNorm only (no dropout or stochastic depth noise)."""
    model.eval()
    for norm in _norms(model):
        norm.train()


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])


def test_reestimate_keeps_eval_function_and_fixes_train_mode(weights_file, cifar_inputs):
    model, _ = build_model(1000, str(weights_file))  # the ImageNet head: large, meaningful logits
    model.eval()
    probe, calibration = cifar_inputs[:32], cifar_inputs[32:]
    for norm in _norms(model):
        norm.momentum = 0.0  # train-mode probe passes must not move the running statistics
    with torch.no_grad():
        before = model(probe)
        _bn_only_train(model)
        train_before = model(probe)
        model.eval()
    assert _corr(before, train_before) < 0.6, "folded BN in train mode should wreck the function"
    reestimate_bn_statistics(model, torch.split(calibration, 64))
    assert not model.training, "reestimate must restore the mode it found"
    with torch.no_grad():
        after = model(probe)
        _bn_only_train(model)
        train_after = model(probe)
    assert (after - before).abs().max().item() < 1e-4
    assert not is_bn_folded(model)
    variances = torch.cat([norm.running_var for norm in _norms(model)])
    assert (variances - 1).abs().mean().item() > 0.1, "running_var should hold real statistics now"
    assert _corr(after, train_after) > 0.9


def test_reestimate_sets_observed_statistics_on_a_tiny_network():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(2)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([2.0, 0.5]))
        bn.bias.copy_(torch.tensor([1.0, -1.0]))
        bn.running_mean.copy_(torch.tensor([0.3, -0.2]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25]))
    net = nn.Sequential(nn.Conv2d(1, 2, 1), bn).eval()
    inputs = [torch.randn(8, 1, 4, 4) * 3 + 1 for _ in range(3)]
    with torch.no_grad():
        before = [net(x) for x in inputs]
        hidden = torch.cat([net[0](x) for x in inputs])
    reestimate_bn_statistics(net, inputs)
    expected_mean = hidden.mean(dim=(0, 2, 3))
    expected_var = hidden.var(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(bn.running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(bn.running_var, expected_var, rtol=1e-4)
    with torch.no_grad():
        for x, y in zip(inputs, before, strict=True):
            assert torch.allclose(net(x), y, atol=1e-5)
        net.train()
        together = net(torch.cat(inputs))  # batch statistics of all the calibration data
    assert torch.allclose(together, torch.cat(before), atol=1e-4)


@pytest.mark.parametrize("mode", ["frozen", "train", "reestimate"])
def test_set_train_mode(mode):
    model, _ = build_model(10, "none")
    model.eval()
    set_train_mode(model, mode)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.training == (mode != "frozen"), module
        else:
            assert module.training, type(module).__name__


def test_frozen_bn_keeps_running_statistics_during_a_forward_pass():
    model, _ = build_model(10, "none")
    set_train_mode(model, "frozen")
    stats = [norm.running_mean.clone() for norm in _norms(model)]
    model(torch.randn(2, 3, 32, 32) * 5 + 3)
    assert all(torch.equal(s, norm.running_mean) for s, norm in zip(stats, _norms(model), strict=True))


def test_cosine_linear_outputs_cosines():
    torch.manual_seed(0)
    head = CosineLinear(16, 5)
    x = torch.randn(64, 16) * 100
    out = head(x)
    assert out.shape == (64, 5)
    assert out.abs().max().item() <= 1 + 1e-6
    expected = torch.nn.functional.cosine_similarity(x[:, None, :], head.weight[None, :, :], dim=2)
    assert torch.allclose(out, expected, atol=1e-5)
    aligned = head(head.weight.detach() * 7)  # each class weight scores itself with cosine 1
    assert torch.allclose(aligned.diagonal(), torch.ones(5), atol=1e-5)


def test_imagenet_weights_record_the_downloaded_files_sha256_and_its_url(tmp_path, monkeypatch):
    """--weights imagenet: run.json's sha256 is the downloaded file's hash, the URL goes apart."""
    real_builder = models.efficientnet_b0
    url = models.EfficientNet_B0_Weights.IMAGENET1K_V1.url
    downloaded = tmp_path / "checkpoints" / Path(url).name

    def offline_download(weights=None, **kwargs):  # what torchvision does, minus the network
        downloaded.parent.mkdir(parents=True, exist_ok=True)
        downloaded.write_bytes(b"the weights torchvision downloaded")
        return real_builder(**kwargs)

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(models, "efficientnet_b0", offline_download)
    _, info = models.build_model(10, "imagenet")
    assert info.sha256 == hashlib.sha256(b"the weights torchvision downloaded").hexdigest()
    assert info.url == url and info.url != info.sha256


def test_frozen_blocks_get_no_gradient_no_optimizer_state_and_stay_in_eval_mode():
    model, _ = build_model(10, "none")
    models.freeze_blocks(model, 4)
    frozen = {id(p) for p in model.features[:4].parameters()}
    assert frozen and all(not p.requires_grad for p in model.features[:4].parameters())
    assert all(p.requires_grad for p in model.features[4:].parameters())
    assert not frozen & {id(p) for p in models.trainable_parameters(model)}
    wrapper = torch.nn.Sequential(model)  # as DDP or torch.compile wrap it
    models.set_train_mode(wrapper, "train", frozen_blocks=4)
    assert [block.training for block in model.features] == [False] * 4 + [True] * 5
    assert all(not m.training for block in model.features[:4] for m in block.modules())
    assert model.classifier.training
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    assert all(p.grad is None for p in model.features[:4].parameters())
    assert all(p.grad is not None for p in model.features[4:].parameters())
