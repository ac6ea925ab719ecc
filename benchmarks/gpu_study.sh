#!/usr/bin/env bash
# The study's own recipe on one CUDA GPU: `longtail reproduce --preset seed --seeds 0` (ImageNet B0,
# 224 px, 30 epochs, constant lr 1e-4, batch 128, the test size chosen on validation), inside 10
# minutes on an H100/H200-class GPU (30 epochs of 12,356 images at 224 px are ~370k training images
# per stage-1 run, two runs). Run from the repository root:
#
#   bash benchmarks/gpu_study.sh OUT_DIR [extra reproduce options...]
#
# OUT_DIR receives the study (results.json, results.md, report.html, figures/, seed0/) and
# gpu_study.log (everything printed, with the hardware). DATA and WEIGHTS (environment) default to
# shared/... inside the repository, then ../shared/... beside it. No virtual environment is
# assumed: the system python needs torch, torchvision and longtail's other dependencies; longtail
# comes from src/ via PYTHONPATH. Without a CUDA device it stops, unless GPU_STUDY_DRY_RUN=1 (the
# tests' CPU dry run at tiny sizes, with extra options such as --epochs 1 --image-size 32). The
# study runs under `timeout` (GPU_STUDY_SECONDS, default 570): a study cut short resumes where it
# stopped when the script is run again with the same OUT_DIR.
set -u
if [ $# -lt 1 ]; then
    echo "usage: bash benchmarks/gpu_study.sh OUT_DIR [extra reproduce options...]" >&2
    exit 2
fi
OUT_DIR=$1
shift
first_existing() { for path in "$@"; do [ -e "$path" ] && { echo "$path"; return; }; done; }
PYTHON=${PYTHON:-python3}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
DATA=${DATA:-$(first_existing shared/data/cifar10.npz ../shared/data/cifar10.npz)}
WEIGHTS=${WEIGHTS:-$(first_existing shared/weights/efficientnet_b0_imagenet_tfhub.pth \
    ../shared/weights/efficientnet_b0_imagenet_tfhub.pth)}
[ -n "$DATA" ] || { echo "no cifar10.npz in shared/data or ../shared/data: set DATA=PATH" >&2; exit 2; }
[ -n "$WEIGHTS" ] || { echo "no B0 weights in shared/weights or ../shared/weights: set WEIGHTS=PATH" >&2; exit 2; }
mkdir -p "$OUT_DIR"
exec > >(tee -a "$OUT_DIR/gpu_study.log") 2>&1
echo "=== gpu_study $(date -u +%Y-%m-%dT%H:%M:%SZ): data $DATA, weights $WEIGHTS, out $OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi: none"
"$PYTHON" - <<'PY' || exit 1
import os, sys, torch
print(f"torch {torch.__version__}, cuda {torch.version.cuda}, available {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
if not torch.cuda.is_available() and os.environ.get("GPU_STUDY_DRY_RUN") != "1":
    sys.exit("no CUDA device: this script runs the study's 224-px recipe on a GPU (GPU_STUDY_DRY_RUN=1 for a CPU dry run)")
PY
export LONGTAIL_CACHE=${LONGTAIL_CACHE:-$OUT_DIR/cache}
started=$(date +%s)
timeout "${GPU_STUDY_SECONDS:-570}" "$PYTHON" -m longtail reproduce --preset seed --seeds 0 \
    --data "$DATA" --weights "$WEIGHTS" --out "$OUT_DIR" "$@"
status=$?
echo "=== reproduce exit status $status ($((($(date +%s) - started))) s wall; 124: cut short by the timeout, rerun to resume)"
exit $status
