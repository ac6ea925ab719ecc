#!/usr/bin/env bash
# usage: run_x.sh NAME [longtail train args...]  (seed 0 baseline, 1 thread)
set -u
name=$1; shift
cd /work/exp-tree
export LONGTAIL_CACHE=/work/exp/cache OMP_NUM_THREADS=${THREADS:-1} PYTHONPATH=/work/exp-tree/src
/work/main/.venv/bin/longtail train --data ../shared/data/cifar10.npz --weights ../shared/weights/efficientnet_b0_imagenet_tfhub.pth \
  --seed ${SEED:-0} --out /work/exp/$name "$@" > /work/exp/$name.log 2>&1
/work/main/.venv/bin/python benchmarks/resolution.py /work/exp/$name ${RES_ARGS:-} > /work/exp/$name.resolution.log 2>&1
echo done >> /work/exp/$name.log
