"""usage: smoke.py OUT key=value ...  (reproduce --preset smoke with overrides; prints the key numbers and wall time)"""
import json, sys, time
from pathlib import Path
from longtail.study import reproduce, cpu_name
out = Path(sys.argv[1])
overrides = {}
for item in sys.argv[2:]:
    k, v = item.split("=")
    overrides[k] = None if v == "None" else (int(v) if v.lstrip("-").isdigit() else v)
t = time.perf_counter()
r = reproduce(out, preset="smoke", seeds=(0,), data="../shared/data/cifar10.npz",
              weights="../shared/weights/efficientnet_b0_imagenet_tfhub.pth", cache_dir=Path("/work/exp/cache"),
              overrides=overrides)
wall = time.perf_counter() - t
s = r["strategies"]
print(json.dumps({"overrides": overrides, "wall_s": round(wall, 1), "cpu": cpu_name(),
  "test_size": r["runs"]["seed0/baseline"]["test_image_size"],
  **{n: {"acc": round(100*e["accuracy"], 2), "few": round(100*e["groups"]["few"], 2), "many": round(100*e["groups"]["many"], 2)} for n, e in s.items()}}))
