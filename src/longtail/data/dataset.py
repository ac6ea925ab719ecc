"""What every command sees of a run's data: the source's arrays, the run's split (from its index
file) and the input normalisation, as one ``Dataset``; ``Dataset.images`` gives the images of a split
as training and inference read them (batch by batch from a memory-mapped store).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from longtail.config import TrainConfig
from longtail.data.lists import ListFiles, load_list_source
from longtail.data.sources import Arrays, load_arrays
from longtail.data.splits import Split, long_tail_split
from longtail.data.store import StoredImages, image_rows

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@dataclass
class Dataset:
    """Arrays, the long-tailed split and the input normalisation of one run."""

    arrays: Arrays
    split: Split
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def images(self, split: str) -> torch.Tensor | StoredImages:
        """The images of the ``train``, ``val`` or ``test`` split as training and inference read them:
        a uint8 tensor (N, H, W, 3) for data in memory, and for a memory-mapped store the
        ``StoredImages`` that read each batch from it (the split is never copied whole)."""
        if split == "test" and self.split.test is None:
            return image_rows(self.arrays.x_test)
        rows = {"train": self.split.train, "val": self.split.val, "test": self.split.test}[split]
        return image_rows(self.arrays.x_train, rows)

    @property
    def train_labels(self) -> np.ndarray:
        return self.arrays.y_train[self.split.train]

    @property
    def val_images(self) -> np.ndarray:
        """The validation split's images as one array (a copy of them from a memory-mapped store:
        ``images("val")`` reads them batch by batch)."""
        return self.arrays.x_train[self.split.val]

    @property
    def val_labels(self) -> np.ndarray:
        return self.arrays.y_train[self.split.val]

    @property
    def test_images(self) -> np.ndarray:
        """The test split's images as one array: the source's own, or those held out of its training
        images (a copy of them from a memory-mapped store: ``images("test")`` reads them batch by batch)."""
        return self.arrays.x_test if self.split.test is None else self.arrays.x_train[self.split.test]

    @property
    def test_labels(self) -> np.ndarray:
        return self.arrays.y_test if self.split.test is None else self.arrays.y_train[self.split.test]


def normalisation(pretrained: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of the model input: ImageNet's for pretrained weights, CIFAR-10's otherwise."""
    if pretrained:
        return IMAGENET_MEAN, IMAGENET_STD
    return CIFAR10_MEAN, CIFAR10_STD


def load_source(config: TrainConfig, cache_dir: Path | None = None) -> Arrays:
    """The arrays of a run's data source, decoded as its config says (store size, unreadable
    images) and checked to have a test split or to hold one out (``--test-fraction``): the list
    source of ``--train-list`` under ``--data``, else the source ``--data`` is."""
    if config.train_list is not None:
        return load_list_source(
            config.data,
            ListFiles(config.train_list, config.val_list, config.test_list, config.class_names_file),
            cache_dir,
            store_size=config.store_size,
            skip_bad_images=config.skip_bad_images,
            test_fraction=config.test_fraction,
        )
    return load_arrays(
        config.data,
        cache_dir,
        store_size=config.store_size,
        skip_bad_images=config.skip_bad_images,
        test_fraction=config.test_fraction,
    )


def load_dataset(
    config: TrainConfig, pretrained: bool, cache_dir: Path | None = None, arrays: Arrays | None = None
) -> Dataset:
    """The arrays (loaded unless given), the run's split (from its index file) and its input
    normalisation: what every command sees of a run's data (data, train, evaluate, decouple)."""
    arrays = arrays or load_source(config, cache_dir)
    split = long_tail_split(
        arrays,
        config.imbalance,
        config.profile,
        config.seed,
        config.val_per_class,
        config.max_per_class,
        cache_dir,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
    )
    return Dataset(arrays, split, *normalisation(pretrained))
