"""CIFAR-100 works where CIFAR-10 does: a torchvision CIFAR-100 root, written here in the real
format (the pickled ``train``, ``test`` and ``meta`` files of ``cifar-100-python/``, with
``fine_labels`` and ``fine_label_names``), loads with its 100 classes, and ``--groups shots``
gives the literature's many/medium/few groups of CIFAR-100-LT.

The root holds CIFAR-100-LT at imbalance 100 as a ready long-tailed set (500 down to 5 random
images per class, 10,847 in all, 33 MB) and two test images per class. torchvision md5-checks
the files against the real CIFAR-100's checksums, which files written here cannot match: the
test sets torchvision's expected checksums to those of its own files, so the real loading path
(integrity check included) runs unchanged.
"""

from __future__ import annotations

import hashlib
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import CIFAR100

from longtail import cli
from longtail.data import load_arrays, long_tail_counts, select_long_tail
from longtail.errors import LongtailError
from longtail.metrics import classification_metrics, frequency_groups

CIFAR100_LT_100 = long_tail_counts(500, 100, 100)  # 500, 477, ..., 5
FINE_NAMES = [f"fine{i:02d}" for i in range(100)]
# The literature's groups of CIFAR-100-LT at IF = 100 (Kang et al. 2020; Menon et al. 2021).
LITERATURE = {"many": list(range(35)), "medium": list(range(35, 70)), "few": list(range(70, 100))}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> tuple[Path, dict]:
    """The root and what its files hold: {split: (data (N, 3072), fine labels)}."""
    root = tmp_path_factory.mktemp("cifar100")
    folder = root / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    written = {}
    for split, counts in (("train", CIFAR100_LT_100), ("test", [2] * 100)):
        labels = rng.permutation(np.repeat(np.arange(100), counts))  # the real files are shuffled
        pixels = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)  # rows: 1024 red, green, blue
        entry = {
            "filenames": [f"image_{i}.png" for i in range(len(labels))],
            "batch_label": f"{split}ing batch 1 of 1",
            "fine_labels": labels.tolist(),
            "coarse_labels": (labels // 5).tolist(),
            "data": pixels,
        }
        (folder / split).write_bytes(pickle.dumps(entry, protocol=2))
        written[split] = (pixels, labels)
    meta = {"fine_label_names": FINE_NAMES, "coarse_label_names": [f"coarse{i:02d}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root, written


@pytest.fixture
def verified(root, monkeypatch) -> Path:
    """The root, with torchvision expecting the checksums of its files."""
    path, _ = root
    folder = path / "cifar-100-python"
    monkeypatch.setattr(CIFAR100, "train_list", [["train", _md5(folder / "train")]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", _md5(folder / "test")]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": _md5(folder / "meta")})
    return path


def test_the_root_loads_with_100_classes_and_the_real_pixel_layout(verified, root, cache_dir):
    _, written = root
    arrays = load_arrays(verified, cache_dir)
    assert arrays.num_classes == 100 and arrays.class_names == tuple(FINE_NAMES)
    for split in ("train", "test"):
        pixels, labels = written[split]
        x, y = getattr(arrays, f"x_{split}"), getattr(arrays, f"y_{split}")
        assert x.shape == (len(labels), 32, 32, 3) and x.dtype == np.uint8
        assert np.array_equal(y, labels)
        assert np.array_equal(x[7], pixels[7].reshape(3, 32, 32).transpose(1, 2, 0))  # channel planes -> HWC
    assert np.bincount(arrays.y_train, minlength=100).tolist() == CIFAR100_LT_100


def test_data_with_groups_shots_gives_the_literatures_groups(verified, cache_dir, capsys):
    code = cli.main(
        ["data", "--data", str(verified), "--imbalance", "natural", "--val-per-class", "0", "--groups", "shots"]
    )
    out = capsys.readouterr().out
    assert code == 0
    rows = [line.split() for line in out.splitlines() if line[:3].strip().isdigit()]
    assert [int(row[0]) for row in rows] == list(range(100))
    assert [int(row[3]) for row in rows] == CIFAR100_LT_100  # every training image kept
    groups = {name: [int(row[0]) for row in rows if row[-1] == name] for name in LITERATURE}
    assert groups == LITERATURE
    assert f"total {sum(CIFAR100_LT_100)}" in " ".join(out.split())
    assert "imbalance factor of the training counts: 100.0 (500 / 5)" in out

    metrics = classification_metrics(np.arange(100), np.arange(100), FINE_NAMES, CIFAR100_LT_100, "shots")
    assert metrics["grouping"] == "shots" and metrics["group_classes"] == LITERATURE
    assert metrics["groups"] == {"many": 1.0, "medium": 1.0, "few": 1.0}


def test_a_root_that_fails_its_check_offline_is_one_error(root, cache_dir, monkeypatch):
    # The written files do not match the real CIFAR-100's md5: torchvision tries to download it.
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    path, _ = root
    with pytest.raises(LongtailError, match="no verified CIFAR100") as caught:
        load_arrays(path, cache_dir)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_balanced_cifar100_at_imbalance_100_gives_cifar100_lt_and_its_groups():
    # What a real (balanced, 500 per class) CIFAR-100 root or .npz becomes with --imbalance 100.
    labels = np.repeat(np.arange(100), 500)
    split = select_long_tail(labels, 100, 100, "exp", seed=0, val_per_class=0)
    assert split.train_counts == CIFAR100_LT_100
    assert CIFAR100_LT_100[0] == 500 and CIFAR100_LT_100[-1] == 5 and sum(CIFAR100_LT_100) == 10847
    assert frequency_groups(split.train_counts, "shots") == LITERATURE
    # With the default 50 validation images per class only the classes above 450 change.
    with_val = select_long_tail(labels, 100, 100, "exp", seed=0, val_per_class=50)
    assert with_val.train_counts == [min(n, 450) for n in CIFAR100_LT_100]
    assert frequency_groups(with_val.train_counts, "shots") == LITERATURE


def test_an_npz_with_100_classes_names_them_by_index(tmp_path, cache_dir):
    rng = np.random.default_rng(1)
    path = tmp_path / "hundred.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8),
        y_train=np.repeat(np.arange(100), 3),
        x_test=rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8),
        y_test=np.arange(100),
    )
    arrays = load_arrays(path, cache_dir)
    assert arrays.num_classes == 100 and arrays.class_names[:2] == ("class_0", "class_1")
