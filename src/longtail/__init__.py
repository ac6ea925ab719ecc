"""longtail: long-tailed image classification (CIFAR-10-LT, EfficientNet-B0) done properly.

``longtail.predict(run, paths, ...)`` classifies image files with a finished run
(``longtail.prediction.predict``); it is imported on first use, so ``import longtail`` stays
free of torch.
"""

__version__ = "0.1.0"
__all__ = ["predict"]


def __getattr__(name: str):
    if name == "predict":
        from longtail.prediction import predict

        return predict
    raise AttributeError(f"module 'longtail' has no attribute {name!r}")
