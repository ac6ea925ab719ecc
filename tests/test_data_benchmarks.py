"""The data benchmarks run end to end at tiny sizes and end with one JSON line carrying their
measurements; the numbers at these sizes mean nothing.

- benchmarks/memory.py: 60 listed images at 32 px, two steps; its children (``longtail data`` twice,
  the epoch, the speed check) are processes of their own, as the measurement needs: about 15 s on one
  CPU thread;
- benchmarks/decoding.py: three photo-sized JPEGs at one size.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_memory_benchmark_measures_data_and_an_epoch(tmp_path, capsys):
    module = _script("memory")
    argv = ["--images", "60", "--size", "32", "--classes", "5", "--distinct", "20", "--steps", "2"]
    argv += ["--batch-size", "8", "--threads", "1", "--rounds", "1", "--work", str(tmp_path / "work")]
    module.main(argv)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["images"], result["size"]) == (60, 32)
    assert result["store_bytes"] == (60 + 5 + 10) * 32 * 32 * 3  # train, val and test lists, one image after another
    for part in ("data_decode", "data_open", "epoch"):
        assert result[part]["peak_rss_mb"] > 0 and result[part]["seconds"] > 0, part
    assert result["epoch"]["store"] == "StoredImages" and result["epoch"]["steps"] == 2
    assert result["speed"]["store_images_per_s"] > 0 and result["speed"]["in_memory_images_per_s"] > 0
    assert result["speed"]["store_read_ms_per_batch"] > 0
    assert result["cpu"] and result["date"]
    lists = (tmp_path / "work" / "tree" / "train.txt").read_text().splitlines()
    assert len(lists) == 60 and len({line.split()[0] for line in lists}) == 20


def test_the_decoding_benchmark_times_both_decoders(capsys):
    _script("decoding").main(["--images", "3", "--sizes", "64", "--width", "200", "--height", "150"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["longtail_ms"]["64"] > 0 and result["torchvision_ms"]["64"] > 0
    assert result["photo"] == [200, 150] and result["cpu"] and result["date"]
