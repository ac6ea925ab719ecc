"""benchmarks/memory.py runs end to end at a tiny size (60 listed images at 32 px, two steps) and ends
with one JSON line carrying its measurements; the numbers at this size mean nothing. Its children
(``longtail data`` twice, the epoch, the speed check) are processes of their own, as the
measurement needs: about 15 s on one CPU thread."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "memory.py"


def test_the_memory_benchmark_measures_data_and_an_epoch(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("benchmark_memory", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
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
    assert result["cpu"] and result["date"]
    lists = (tmp_path / "work" / "tree" / "train.txt").read_text().splitlines()
    assert len(lists) == 60 and len({line.split()[0] for line in lists}) == 20
