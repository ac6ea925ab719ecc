"""Where the shared files are: ``../shared`` beside the checkout holds the real CIFAR-10 and the
pretrained EfficientNet-B0 weights. Their one definition: the benchmarks take them as their
defaults, and the tests (``benchmarks/`` is on their path: ``pythonpath`` in pyproject.toml) train
and skip on them."""

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
CIFAR10_NPZ = SHARED / "data" / "cifar10.npz"
WEIGHTS = SHARED / "weights" / "efficientnet_b0_imagenet_tfhub.pth"
