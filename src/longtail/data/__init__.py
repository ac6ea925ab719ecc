"""Data: CIFAR-style arrays from any source, long-tailed subsets, validation and test splits,
batch augmentation.

A dataset is one uint8 array (N, H, W, 3): in memory, or for a list source a memory-mapped store on
disk read batch by batch (data larger than memory); augmentation and resizing work on whole batches
of tensors (as in airbench), never image by image in Python.

- ``longtail.data.images``: image files, listed and decoded at the store size (shared with predict);
- ``longtail.data.store``: the memory-mapped image store, written once, read batch by batch;
- ``longtail.data.sources``: ``.npz``, torchvision CIFAR roots, image folders and tarballs, the
  decode cache and the sources' fingerprints;
- ``longtail.data.lists``: list-file sources (ImageNet-LT, Places-LT, iNaturalist 2018 lists);
- ``longtail.data.splits``: long-tail counts, the training/validation/test ``Split`` and its index file;
- ``longtail.data.transforms``: batch crop (padded or random-resized), flip, resize and normalisation;
- ``longtail.data.dataset``: a run's ``Dataset`` (arrays, split, normalisation) and ``load_dataset``.

The public names of all seven are importable from ``longtail.data`` itself.
"""

from longtail.data.dataset import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Dataset,
    load_dataset,
    load_source,
    normalisation,
)
from longtail.data.images import (
    DEFAULT_STORE_SIZES,
    SHOWN_BAD_FILES,
    decode_image,
    decode_images,
    decoded_chunks,
    default_store_size,
    image_files,
    listed,
    parallel_map,
    progress_bar,
)
from longtail.data.lists import ListFiles, load_list_source
from longtail.data.sources import (
    ARRAY_KEYS,
    CIFAR10_CLASSES,
    TORCHVISION_ROOTS,
    Arrays,
    cache_directory,
    check_test_split,
    data_path,
    default_cache_dir,
    load_arrays,
    sha256_file,
)
from longtail.data.splits import (
    INDEX_FORMAT_VERSION,
    TEST_SPLIT_ENTROPY,
    Split,
    long_tail_counts,
    long_tail_split,
    select_long_tail,
)
from longtail.data.store import STORE_FORMAT_VERSION, StoredImages, image_rows, open_store
from longtail.data.transforms import batches, random_crop_boxes, random_crop_flip, resized_crops, to_model_input

__all__ = [
    "ARRAY_KEYS",
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DEFAULT_STORE_SIZES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INDEX_FORMAT_VERSION",
    "SHOWN_BAD_FILES",
    "STORE_FORMAT_VERSION",
    "TEST_SPLIT_ENTROPY",
    "TORCHVISION_ROOTS",
    "Arrays",
    "Dataset",
    "ListFiles",
    "Split",
    "StoredImages",
    "batches",
    "cache_directory",
    "check_test_split",
    "data_path",
    "decode_image",
    "decode_images",
    "decoded_chunks",
    "default_cache_dir",
    "default_store_size",
    "image_files",
    "image_rows",
    "listed",
    "load_arrays",
    "load_dataset",
    "load_list_source",
    "load_source",
    "open_store",
    "long_tail_counts",
    "long_tail_split",
    "normalisation",
    "parallel_map",
    "progress_bar",
    "random_crop_boxes",
    "random_crop_flip",
    "resized_crops",
    "select_long_tail",
    "sha256_file",
    "to_model_input",
]
