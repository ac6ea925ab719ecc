"""longtail: long-tailed image classification (CIFAR-10-LT, EfficientNet-B0) done properly."""

__version__ = "0.1.0"
