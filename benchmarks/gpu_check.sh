#!/usr/bin/env bash
# The speed checks of issue 28 on one CUDA GPU (any model), run from the repository root:
#
#   bash benchmarks/gpu_check.sh [DATA] [WEIGHTS]
#
# 1. `throughput.py --image-size 224 --batch-size 128`: longtail's training step against the bare
#    ceiling at the `seed` preset's shape (the target: `train_vs_ceiling` >= 0.95);
# 2. `first_step.py`: a process's first training step and its steady steps under the old cuDNN policy
#    (autotuning everywhere) and longtail's (`longtail.cudnn`), with no autotuning at all, with a lower
#    benchmark_limit and with --compile (its compile time counted), each in a process of its own,
#    with the inference a study does after training (FIRST_STEP_VARIANTS picks them, default all).
# DATA and WEIGHTS default to the first of these that exists: shared/… inside the repository (a
# device machine receives the repository, with shared/ when the checkout has one), then ../shared/…
# beside it. DATA: cifar10.npz, else the 19 MB lossy JPEG copy; with neither, a random CIFAR-shaped
# .npz is made (throughput only: its speed does not depend on the images). WEIGHTS: the shared TF-Hub
# B0, else `none` (first_step.py then freezes BatchNorm as the folded weights have it). No
# virtual environment is assumed: the system python must have torch, torchvision and longtail's other
# dependencies; longtail itself comes from src/ via PYTHONPATH. Every step has its own timeout
# (THROUGHPUT_SECONDS, FIRST_STEP_SECONDS per variant) so one slow step cannot eat the slot. Logs go
# to stdout and, with OUT set, to $OUT/gpu_check.log; each step's JSON line to $OUT/<step>.json.
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
keep_json() { [ -n "${OUT:-}" ] && tail -n 1 "$SCRATCH/$1.out" >"$OUT/$1.json"; true; }

step "hardware"
nvidia-smi || echo "nvidia-smi failed"
"$PYTHON" - <<'EOF' || { echo "python cannot import torch/torchvision; stopping"; exit 1; }
import importlib, torch, torchvision
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, cuda {torch.version.cuda}, "
      f"available {torch.cuda.is_available()}, {torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'}")
for name in ("numpy", "sklearn", "matplotlib", "tqdm", "tensorboard", "PIL", "jinja2"):
    try:
        importlib.import_module(name)
    except ImportError:
        print(f"missing module: {name} (longtail needs it)")
EOF
ls -la "$DATA" || { echo "data missing; pass it as the first argument"; exit 1; }

step "throughput, 224 px, batch 128, eager (train_vs_ceiling: the target is >= 0.95)"
timeout "${THROUGHPUT_SECONDS:-150}" "$PYTHON" benchmarks/throughput.py --data "$DATA" --weights "$WEIGHTS" \
    --image-size 224 --batch-size 128 --device cuda | tee "$SCRATCH/throughput.out" || echo "exit status $?"
keep_json throughput

step "first step and steady steps per cuDNN policy, and --compile (each variant its own process)"
BN=auto
[ "$WEIGHTS" = none ] && BN=frozen
read -r -a VARIANTS <<<"${FIRST_STEP_VARIANTS:-new heuristic limit compile old}"
"$PYTHON" benchmarks/first_step.py --device cuda --weights "$WEIGHTS" --bn "$BN" --image-size 224 --batch-size 128 \
    --variants "${VARIANTS[@]}" --timeout "${FIRST_STEP_SECONDS:-240}" | tee "$SCRATCH/first_step.out" ||
    echo "exit status $?"
keep_json first_step
step "done"
