"""Models: torchvision's EfficientNet-B0 with a C-way head, weight loading, BatchNorm handling.

Weights (``--weights``):
- ``imagenet``: torchvision's official ``IMAGENET1K_V1`` (downloaded once into torch's cache
  when online; offline, a clear error says to pass a file instead).
- ``none``: random initialisation.
- a path: a state dict in torchvision's key layout, loaded with ``weights_only=True`` and a
  strict key check; its sha256 is recorded. An ImageNet (1000-class) head is replaced by a
  fresh C-way head; a C-way head is kept.

Folded BatchNorm: some converted checkpoints (such as ``../shared/weights``'s TF-Hub B0)
merged every BatchNorm into the preceding convolution, leaving BN layers that are identities
plus offsets (running_mean 0, running_var 1 - eps, weight 1). In train mode such a BN would
normalise with batch statistics and destroy the pretrained function. ``--bn`` chooses what to
do (see ``BN_MODES``).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import EfficientNet, EfficientNet_B0_Weights, efficientnet_b0

from longtail.choices import BN_MODES
from longtail.errors import LongtailError

FEATURE_DIM = 1280
FOLDED_BN_DEFAULT = "frozen"


class CosineLinear(nn.Module):
    """Cosine classifier ``z_c = <x / |x|, w_c / |w_c|>`` (the LDAM paper's ``NormedLinear``)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()


def make_head(num_classes: int, cosine: bool = False) -> nn.Module:
    """A fresh classifier on the 1280-d pooled features."""
    return CosineLinear(FEATURE_DIM, num_classes) if cosine else nn.Linear(FEATURE_DIM, num_classes)


@dataclass(frozen=True)
class WeightsInfo:
    """Where the model's starting weights came from."""

    name: str  # "imagenet", "none" or the file path
    sha256: str | None  # of the weights file (None for "none")
    pretrained: bool
    bn_folded: bool
    url: str | None = None  # where torchvision downloaded "imagenet" from


def _load_state_dict_file(path: Path) -> tuple[dict, str]:
    try:
        if not path.is_file():
            raise LongtailError(
                f"weights file {path} does not exist; pass --weights imagenet, none or an existing .pth"
            )
        payload = path.read_bytes()
    except OSError as error:  # e.g. PermissionError
        raise LongtailError(f"weights file {path} cannot be read ({error.strerror}); check its permissions") from error
    if not payload:
        raise LongtailError(f"weights file {path} is empty (0 bytes); re-copy it or pass --weights imagenet")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        first_line = next(iter(str(error).splitlines()), "")[:200]
        raise LongtailError(
            f"{path}: not a loadable weights file ({type(error).__name__}: {first_line}); "
            "it may be truncated, re-copy it"
        ) from error
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a longtail checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LongtailError(f"{path}: expected a state dict of tensors (torchvision efficientnet_b0 layout)")
    return state, _sha256(payload)


def _sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _check_keys(state: dict, model: nn.Module, path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:

        def show(keys):
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        parts = [
            f"{label} {len(keys)}: {show(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
            if keys
        ]
        raise LongtailError(
            f"{path}: not an EfficientNet-B0 state dict ({'; '.join(parts)}); pass weights for "
            "torchvision's efficientnet_b0"
        )


def is_bn_folded(model: nn.Module, atol: float = 1e-6) -> bool:
    """True when every BatchNorm is an identity plus offset (BN folded into the convolutions)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    return bool(norms) and all(
        torch.allclose(m.running_mean, torch.zeros_like(m.running_mean), atol=atol, rtol=0)
        and torch.allclose(m.running_var + m.eps, torch.ones_like(m.running_var), atol=atol, rtol=0)
        and torch.allclose(m.weight, torch.ones_like(m.weight), atol=atol, rtol=0)
        for m in norms
    )


def build_model(
    num_classes: int, weights: str = "imagenet", cosine_head: bool = False
) -> tuple[nn.Module, WeightsInfo]:
    """EfficientNet-B0 with a ``num_classes``-way head, starting from ``weights``, as a
    ``Float32HeadEfficientNet`` (``with_float32_head``)."""
    if weights == "none":
        model = efficientnet_b0(num_classes=num_classes)
        info = WeightsInfo("none", None, pretrained=False, bn_folded=False)
    elif weights == "imagenet":
        try:
            model = efficientnet_b0(weights=EfficientNet_B0_Weights.IMAGENET1K_V1)
        except (OSError, RuntimeError) as error:
            raise LongtailError(
                f"could not download torchvision's ImageNet weights ({error}); offline, pass a file: "
                "--weights ../shared/weights/efficientnet_b0_imagenet_tfhub.pth"
            ) from error
        url = EfficientNet_B0_Weights.IMAGENET1K_V1.url
        downloaded = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        info = WeightsInfo("imagenet", _sha256(downloaded.read_bytes()), pretrained=True, bn_folded=False, url=url)
        model.classifier[1] = nn.Linear(FEATURE_DIM, num_classes)
    else:
        path = Path(weights).expanduser()
        state, digest = _load_state_dict_file(path)
        head_classes = state.get("classifier.1.weight", torch.empty(0, 0)).shape[0]
        model = efficientnet_b0(num_classes=head_classes or 1000)
        _check_keys(state, model, path)
        model.load_state_dict(state, strict=True)
        if head_classes != num_classes:
            model.classifier[1] = nn.Linear(FEATURE_DIM, num_classes)
        info = WeightsInfo(str(path), digest, pretrained=True, bn_folded=is_bn_folded(model))
    if cosine_head:
        model.classifier[1] = make_head(num_classes, cosine=True)
    return with_float32_head(model), info


def resolve_bn_mode(mode: str, info: WeightsInfo) -> str:
    if mode not in BN_MODES:
        raise LongtailError(f"unknown --bn '{mode}': choose one of {', '.join(BN_MODES)}")
    if mode == "auto":
        return FOLDED_BN_DEFAULT if info.bn_folded else "train"
    return mode


@torch.no_grad()
def reestimate_bn_statistics(model: nn.Module, inputs: Iterable[torch.Tensor]) -> None:
    """Give every BatchNorm real statistics without changing the eval-mode function.

    Per BN layer, with ``mu``/``var`` the observed per-channel mean/variance of its input (one
    eval-mode pass, so every layer sees the inputs the pretrained function produces):
    ``running_mean = mu``, ``running_var = var``, ``weight = sqrt(var + eps) * s`` and
    ``bias = b + s * mu``, where ``s = weight / sqrt(running_var + eps)`` and
    ``b = bias - s * running_mean`` are the old affine map. Eval-mode output is unchanged,
    and train-mode normalisation now matches it (up to batch noise).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    sums = {m: [0.0, 0.0, 0] for m in norms}

    def record(module, args):
        x = args[0].double()
        acc = sums[module]
        acc[0] = acc[0] + x.sum(dim=(0, 2, 3))
        acc[1] = acc[1] + (x * x).sum(dim=(0, 2, 3))
        acc[2] += x.numel() // x.shape[1]

    hooks = [m.register_forward_pre_hook(record) for m in norms]
    was_training = model.training
    model.eval()
    try:
        for batch in inputs:
            model(batch)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    for m in norms:
        total, total_sq, n = sums[m]
        mean = total / n
        var = (total_sq / n - mean * mean).clamp_min(0)
        scale = m.weight.double() / torch.sqrt(m.running_var.double() + m.eps)
        shift = m.bias.double() - scale * m.running_mean.double()
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        m.weight.copy_(torch.sqrt(var + m.eps) * scale)
        m.bias.copy_(shift + scale * mean)


def freeze_blocks(model: nn.Module, count: int) -> None:
    """``features[0:count]`` of B0 keep their weights exactly: no gradient, so autograd does not
    run through them and an optimizer given the trainable parameters holds no state for them
    (``set_train_mode`` keeps them in eval mode: BatchNorm statistics and stochastic depth fixed)."""
    for parameter in model.features[:count].parameters():
        parameter.requires_grad_(False)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def set_train_mode(model: nn.Module, bn_mode: str, frozen_blocks: int = 0) -> None:
    """``model.train()``, except that BatchNorm stays in eval mode when ``bn_mode`` is "frozen",
    and the first ``frozen_blocks`` blocks of B0's features (``freeze_blocks``) stay in eval mode
    whole. ``model`` may be wrapped (DDP, ``torch.compile``)."""
    model.train()
    for module in model.modules():
        if bn_mode == "frozen" and isinstance(module, nn.BatchNorm2d):
            module.eval()
        if frozen_blocks and isinstance(module, EfficientNet):
            module.features[:frozen_blocks].eval()


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The 1280-d global-average-pooled backbone features (what the classifier sees), pooled in
    float32 with autocast off even when the backbone ran under bf16 autocast."""
    features = model.features(x)
    with torch.autocast(features.device.type, enabled=False):
        return torch.flatten(model.avgpool(features.float()), 1)


class Float32HeadEfficientNet(EfficientNet):
    """torchvision's EfficientNet whose pooling and classifier run in float32 with autocast off:
    under bf16 autocast (the GPU path) only the backbone runs in bf16, so the logits (and LDAM's
    cosine logits, scaled by 30) are not rounded to bf16 and CPU and GPU mean the same thing.
    Same modules and state dict as torchvision's; only ``forward`` differs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = pooled_features(self, x)
        with torch.autocast(pooled.device.type, enabled=False):
            return self.classifier(pooled)


def with_float32_head(model: EfficientNet) -> Float32HeadEfficientNet:
    """``model`` itself, its class changed in place to ``Float32HeadEfficientNet`` (a subclass with
    no state of its own: only ``forward`` differs). torchvision's builders and weight loading make
    an ``EfficientNet``; re-classing the built network keeps them instead of rebuilding it."""
    model.__class__ = Float32HeadEfficientNet
    return model


def head_of(model: nn.Module) -> nn.Module:
    """The final linear (or cosine) layer; ``classifier[0]`` is dropout."""
    return model.classifier[1]


HEAD_PREFIX = "classifier.1."  # where ``head_of`` sits in the model's state dict


def head_from_state_dict(state: dict, num_classes: int, cosine: bool = False) -> nn.Module:
    """The classifier (``head_of``) of a model's state dict, in eval mode, without building the model."""
    head = make_head(num_classes, cosine)
    head.load_state_dict(
        {key.removeprefix(HEAD_PREFIX): value for key, value in state.items() if key.startswith(HEAD_PREFIX)}
    )
    return head.eval()
