#!/usr/bin/env bash
# Round-3 candidates (issue 30): seed 0's stage 1 at the cpu preset plus the options given, then the
# Modified CE head at the stage-1 test size; chosen by validation accuracy.
# Usage: bash results/round3-candidates-cpu/run.sh NAME [train options...]   (from the repo root)
# e.g.   bash results/round3-candidates-cpu/run.sh la --strategy logit-adjusted
set -euo pipefail
name=$1; shift
out=runs/round3/$name
mkdir -p "$out"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
resume=()
[ -f "$out/baseline/checkpoint.pt" ] && resume=(--resume)
/usr/bin/time -v -o "$out/train.time" .venv/bin/longtail train --data ../shared/data/cifar10.npz \
    --weights ../shared/weights/efficientnet_b0_imagenet_tfhub.pth --seed 0 \
    --image-size 128 --epochs 8 --freeze-blocks 4 --lr-schedule cosine "$@" "${resume[@]}" \
    --out "$out/baseline"
/usr/bin/time -v -o "$out/decouple.time" .venv/bin/longtail decouple "$out/baseline" \
    --loss modified-ce --feature-size stage1 --seed 0 --out "$out/decoupled-modified-ce" --overwrite
