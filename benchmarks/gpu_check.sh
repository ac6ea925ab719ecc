#!/usr/bin/env bash
# GPU check for a 10-minute slot on one CUDA GPU (any model), run from the repository root:
#
#   bash benchmarks/gpu_check.sh [DATA] [WEIGHTS]
#
# DATA and WEIGHTS default to the first of these that exists: shared/… inside the repository (a
# device machine receives the repository, with shared/ when the checkout has one), then ../shared/…
# beside it. DATA: cifar10.npz, else the 19 MB lossy JPEG copy (its accuracies are not CIFAR-10
# results); with neither, a random CIFAR-shaped .npz is made (throughput only: accuracies mean
# nothing). WEIGHTS: the shared TF-Hub B0, else `none` (random initialisation; throughput only).
# No virtual environment is assumed: the system python must have torch, torchvision and
# longtail's other dependencies; longtail itself comes from src/ via PYTHONPATH. Every step has
# its own timeout so one slow step cannot eat the slot. Logs go to stdout (and $OUT if set).
set -u
first_existing() { for path in "$@"; do [ -e "$path" ] && { echo "$path"; return; }; done; }
PYTHON=${PYTHON:-python3}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
export LONGTAIL_CACHE="$SCRATCH/cache"
LOG=${OUT:+$OUT/gpu_check.log}
[ -n "$LOG" ] && exec > >(tee "$LOG") 2>&1
DATA=${1:-$(first_existing shared/data/cifar10.npz shared/data/cifar10_jpeg_q75.tar.gz \
    ../shared/data/cifar10.npz ../shared/data/cifar10_jpeg_q75.tar.gz)}
WEIGHTS=${2:-$(first_existing shared/weights/efficientnet_b0_imagenet_tfhub.pth \
    ../shared/weights/efficientnet_b0_imagenet_tfhub.pth)}
WEIGHTS=${WEIGHTS:-none}
if [ -z "$DATA" ]; then
    DATA="$SCRATCH/random-cifar.npz"
    echo "no CIFAR-10 found: using random images ($DATA); throughput only, accuracies mean nothing"
    "$PYTHON" -c "import numpy as np, sys; r = np.random.default_rng(0); np.savez(sys.argv[1], \
x_train=r.integers(0, 256, (50000, 32, 32, 3), dtype=np.uint8), y_train=np.repeat(np.arange(10), 5000), \
x_test=r.integers(0, 256, (10000, 32, 32, 3), dtype=np.uint8), y_test=np.repeat(np.arange(10), 1000))" "$DATA"
fi
echo "data: $DATA, weights: $WEIGHTS"

step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

step "hardware"
nvidia-smi || echo "nvidia-smi failed"
"$PYTHON" - <<'EOF' || { echo "python cannot import torch/torchvision; stopping"; exit 1; }
import importlib, torch, torchvision
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, cuda {torch.version.cuda}, "
      f"available {torch.cuda.is_available()}, {torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'}")
for name in ("numpy", "sklearn", "matplotlib", "tqdm", "tensorboard", "PIL"):
    try:
        importlib.import_module(name)
    except ImportError:
        print(f"missing module: {name} (longtail train needs it)")
EOF
ls -la "$DATA" || { echo "data missing; pass it as the first argument"; exit 1; }

step "throughput, 224 px, batch 256, eager"
timeout 150 "$PYTHON" benchmarks/throughput.py --data "$DATA" --weights "$WEIGHTS" \
    --image-size 224 --batch-size 256 --device cuda || echo "exit status $?"

step "throughput, 224 px, batch 256, torch.compile"
timeout 210 "$PYTHON" benchmarks/throughput.py --data "$DATA" --weights "$WEIGHTS" \
    --image-size 224 --batch-size 256 --device cuda --compile || echo "exit status $?"

step "slice of the seed preset: longtail train, 224 px, 1 epoch (study batch 128)"
timeout 180 "$PYTHON" -m longtail train --data "$DATA" --weights "$WEIGHTS" --image-size 224 --epochs 1 \
    --device cuda --out "$SCRATCH/seed-slice" || echo "exit status $? (124: timed out)"
"$PYTHON" - "$SCRATCH/seed-slice/run.json" <<'EOF' || echo "no run.json: training did not finish an epoch"
import json, sys
run = json.load(open(sys.argv[1]))
for record in run.get("history", []):
    print(f"epoch {record['epoch']}: {record['images_per_second']:.0f} img/s, {record['seconds']:.1f} s, "
          f"val acc {record.get('val_accuracy', float('nan')):.4f}")
print("status", run.get("status"), "| 30-epoch estimate (training only):",
      f"{30 * run['history'][-1]['seconds'] / 60:.1f} min" if run.get("history") else "-")
EOF
step "done"
