#!/usr/bin/env bash
# The study's own recipe on one CUDA GPU: `longtail reproduce --preset seed --seeds 0 --device cuda`
# (ImageNet B0, 224 px, 30 epochs, constant lr 1e-4, batch 128, the test size chosen on validation;
# issue 28's target: all seven rows in 300 s on an H100/H200-class GPU). Run from the repository root:
#
#   bash benchmarks/gpu_study.sh OUT_DIR [extra reproduce options...]
#
# OUT_DIR receives the study (results.json, results.md, report.html, figures/, seed0/, invocations/)
# and gpu_study.log (everything printed, with the hardware); results.json's environment has `gpu`
# and `study_wall_seconds` (every invocation into OUT_DIR summed). With GPU_STUDY_ARCHIVE=FILE.tar.gz
# the study is also packed into that one file without its .pt files (checkpoints, models, feature
# caches), its data cache and its log, small enough to bring back. DATA and WEIGHTS (environment) default to shared/... inside the
# repository, then ../shared/... beside it. No virtual environment is assumed: the system python needs
# torch, torchvision and longtail's other dependencies; longtail comes from src/ via PYTHONPATH.
# Without a CUDA device it stops, unless GPU_STUDY_DRY_RUN=1 (the tests' CPU dry run at tiny sizes,
# with `--device cpu` and extra options such as --epochs 1 --image-size 32). The study runs under
# `timeout` (GPU_STUDY_SECONDS, default 540): a study cut short resumes where it stopped when the
# script is run again with the same OUT_DIR, and its wall time adds up over the invocations.
#
# Getting the data to a device machine: each call sends the working tree (every tracked file, ~28 MB
# today) plus what it carries, 64 MiB in all, and the machine keeps what a call leaves outside the
# repository only while it stays warm (~30 s after a call). The whole cifar10.npz is 170 MB:
# ../shared/tools/gpu/pack.py puts the images one seed's study uses into two files, rebuilt there
# into an equivalent cifar10.npz (same splits; its checksum differs from the original's). Measured for
# seed 0: part_test.npz 31.2 MB (23.3 MB xz'd), part_train.npz 39.6 MB (28.6 MB xz'd), the weights
# 21.4 MB: three calls, each carrying at most 28.6 MB, back to back (the tests hold the tracked files
# to leave room for the largest: test_benchmarks.py). There, `unxz IN OUT` stands for Python's own
# `python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))'`
# (no xz binary assumed).
#   here, once:  python ../shared/tools/gpu/pack.py ../shared/data/cifar10.npz .gpu 0
#                xz -T2 .gpu/part_test.npz .gpu/part_train.npz
#                cp ../shared/weights/efficientnet_b0_imagenet_tfhub.pth .gpu/
#                echo /.gpu/ >>"$(git rev-parse --git-path info/exclude)"                    # never committed
#   call 1 (carry .gpu/efficientnet_b0_imagenet_tfhub.pth and .gpu/pack.py):
#                mkdir -p /root/gw && cp .gpu/efficientnet_b0_imagenet_tfhub.pth .gpu/pack.py /root/gw/
#   call 2, at once (carry .gpu/part_test.npz.xz):
#                unxz .gpu/part_test.npz.xz /root/gw/part_test.npz && ... (e.g. benchmarks/gpu_check.sh)
#   call 3, at once (carry .gpu/part_train.npz.xz):
#                unxz .gpu/part_train.npz.xz /root/gw/part_train.npz &&
#                python3 /root/gw/pack.py assemble /root/gw/part_test.npz /root/gw/part_train.npz /root/gw/cifar10.npz &&
#                DATA=/root/gw/cifar10.npz WEIGHTS=/root/gw/efficientnet_b0_imagenet_tfhub.pth \
#                GPU_STUDY_ARCHIVE=$OUT/study.tar.gz bash benchmarks/gpu_study.sh /root/gw/study; cp /root/gw/study/gpu_study.log $OUT/
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
DEVICE=cuda
[ "${GPU_STUDY_DRY_RUN:-}" = "1" ] && DEVICE=cpu  # the seed preset on a CPU only where --device cpu says so
mkdir -p "$OUT_DIR"
exec > >(tee -a "$OUT_DIR/gpu_study.log") 2>&1
echo "=== gpu_study $(date -u +%Y-%m-%dT%H:%M:%SZ): data $DATA, weights $WEIGHTS, out $OUT_DIR, device $DEVICE"
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
timeout "${GPU_STUDY_SECONDS:-540}" "$PYTHON" -m longtail reproduce --preset seed --seeds 0 --device "$DEVICE" \
    --data "$DATA" --weights "$WEIGHTS" --out "$OUT_DIR" "$@"
status=$?
echo "=== reproduce exit status $status ($((($(date +%s) - started))) s wall; 124: cut short by the timeout, rerun to resume)"
"$PYTHON" - "$OUT_DIR/results.json" <<'PY' || true
import json, sys
environment = json.load(open(sys.argv[1]))["environment"]
print("=== study_wall_seconds", environment["study_wall_seconds"], "| this invocation",
      environment["wall_seconds_this_invocation"], "| gpu", environment.get("gpu", "none"))
PY
if [ -n "${GPU_STUDY_ARCHIVE:-}" ]; then
    tar czf "$GPU_STUDY_ARCHIVE" --exclude='*.pt' --exclude=./cache --exclude=./gpu_study.log -C "$OUT_DIR" . &&
        echo "=== packed into $GPU_STUDY_ARCHIVE"
fi
exit $status
