#!/usr/bin/env bash
# Candidates for the cpu preset (issue: accuracy per CPU-minute, round 2): the baseline stage 1 of
# seed 0 at each setting, then the Modified CE head on it; chosen by validation accuracy.
# Usage: bash results/candidates-cpu/run.sh NAME IMAGE_SIZE FREEZE_BLOCKS EPOCHS   (from the repo root)
set -euo pipefail
name=$1 size=$2 freeze=$3 epochs=$4
out=runs/candidates/$name
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
/usr/bin/time -v .venv/bin/longtail train --data ../shared/data/cifar10.npz \
    --weights ../shared/weights/efficientnet_b0_imagenet_tfhub.pth --imbalance 100 --seed 0 \
    --image-size "$size" --epochs "$epochs" --lr-schedule cosine --freeze-blocks "$freeze" \
    --out "$out/baseline" --resume 2> "$out.train.time" || { tail -5 "$out.train.time"; exit 1; }
/usr/bin/time -v .venv/bin/longtail decouple "$out/baseline" --loss modified-ce \
    --out "$out/decoupled-modified-ce" --overwrite 2> "$out.decouple.time"
