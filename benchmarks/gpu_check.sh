#!/usr/bin/env bash
# GPU check for a 10-minute slot on one H100, run from the repository root:
#
#   bash benchmarks/gpu_check.sh [DATA] [WEIGHTS]
#
# DATA defaults to ../shared/data/cifar10_jpeg_q75.tar.gz (the 19 MB lossy copy: uploads are
# limited to 64 MiB, so its accuracies are not CIFAR-10 results), WEIGHTS to the shared TF-Hub B0.
# No virtual environment is assumed: the system python must have torch, torchvision and
# longtail's other dependencies; longtail itself comes from src/ via PYTHONPATH. Every step has
# its own timeout so one slow step cannot eat the slot. Logs go to stdout (and $OUT if set).
set -u
DATA=${1:-../shared/data/cifar10_jpeg_q75.tar.gz}
WEIGHTS=${2:-../shared/weights/efficientnet_b0_imagenet_tfhub.pth}
PYTHON=${PYTHON:-python3}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
export LONGTAIL_CACHE="$SCRATCH/cache"
LOG=${OUT:+$OUT/gpu_check.log}
[ -n "$LOG" ] && exec > >(tee "$LOG") 2>&1

step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

step "hardware"
nvidia-smi || echo "nvidia-smi failed"
"$PYTHON" - <<'EOF' || { echo "python cannot import torch/torchvision; stopping"; exit 1; }
import importlib, torch, torchvision
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, cuda {torch.version.cuda}, "
      f"available {torch.cuda.is_available()}, {torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'}")
for name in ("numpy", "sklearn", "matplotlib", "tqdm", "tensorboard", "PIL", "yaml"):
    try:
        importlib.import_module(name)
    except ImportError:
        print(f"missing module: {name} (longtail train needs it)")
EOF
ls -la "$DATA" "$WEIGHTS" || { echo "data or weights missing; pass them as arguments"; exit 1; }

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
