#!/bin/bash
# "Weight decay 0.9999" readings at the cpu preset (64 px, 8 epochs, seed 0). The cb-beta
# reading is the baseline of the recorded study (runs/cpu-full/seed0/baseline).
cd /work/main
export LONGTAIL_CACHE=/work/main/.cache
for reading in l2 adamw ema; do
  start=$(date +%s)
  .venv/bin/longtail train --data ../shared/data/cifar10.npz \
    --weights ../shared/weights/efficientnet_b0_imagenet_tfhub.pth \
    --imbalance 100 --image-size 64 --epochs 8 --seed 0 --decay-reading $reading \
    --out runs/ablation-cpu/decay-$reading --resume > runs/ablation-cpu/decay-$reading.log 2>&1
  echo "$reading rc=$? $(( $(date +%s) - start )) s"
done
