#!/usr/bin/env bash
# MaxNorm for the Modified CE head (issue 30), on the seed-0 baseline stage 1 of the quiet one-seed
# cpu study (runs/quiet-seed0, RESULTS.md "The hour on the AMD EPYC"), its features at the stage-1
# test size (160 px) already cached. The stage-1 record predates --random-resized-crop, so the run
# is read through a copy whose run.json carries that field as null (off, as it trained).
# Usage: bash results/round3-candidates-cpu/maxnorm/run.sh STAGE1_DIR   (from the repo root)
set -euo pipefail
stage1=$1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/longtail decouple "$stage1" --loss modified-ce --feature-size stage1 --out runs/maxnorm/free
for radius in 0.5 1.0 1.5; do
    .venv/bin/longtail decouple "$stage1" --loss modified-ce --feature-size stage1 --max-norm "$radius" \
        --out "runs/maxnorm/maxnorm$radius"
done
