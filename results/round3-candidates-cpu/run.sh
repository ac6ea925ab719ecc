#!/usr/bin/env bash
# Round-3 candidates (issue 30): a seed's stage 1 at the cpu preset plus the options given, then the
# Modified CE head at the stage-1 test size; chosen by validation accuracy.
# Usage: [SEED=N] bash results/round3-candidates-cpu/run.sh NAME [train options...]   (from the repo root)
# e.g.   bash results/round3-candidates-cpu/run.sh la --strategy logit-adjusted   (seed 0 unless SEED is set)
set -euo pipefail
name=$1; shift
out=runs/round3/$name
mkdir -p "$out"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
seed=${SEED:-0}
resume=()
[ -f "$out/baseline/checkpoint.pt" ] && resume=(--resume)
/usr/bin/time -v -o "$out/train.time" .venv/bin/longtail train --data ../shared/data/cifar10.npz \
    --weights ../shared/weights/efficientnet_b0_imagenet_tfhub.pth --seed "$seed" \
    --image-size 128 --epochs 8 --freeze-blocks 4 --lr-schedule cosine "$@" "${resume[@]}" \
    --out "$out/baseline"
/usr/bin/time -v -o "$out/decouple.time" .venv/bin/longtail decouple "$out/baseline" \
    --loss modified-ce --feature-size stage1 --seed "$seed" --out "$out/decoupled-modified-ce" --overwrite
