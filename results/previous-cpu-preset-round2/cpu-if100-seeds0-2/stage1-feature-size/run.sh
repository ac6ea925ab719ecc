#!/bin/bash
# The study's five fixed stage-2 heads refitted at the stage-1 test size (--feature-size stage1) on
# each seed's recorded baseline stage 1 (runs/study-r2 = the study's --out); the features at that
# size were already cached by the study, so this only fits and tests heads.
for s in 0 1 2; do for loss in modified-ce balanced-softmax focal class-balanced cb-focal; do
  OMP_NUM_THREADS=1 .venv/bin/longtail decouple runs/study-r2/seed$s/baseline --loss $loss \
      --feature-size stage1 --seed $s --out runs/stage1-size/seed$s/$loss
done; done
