#!/bin/bash
# Strategies beyond the study, and the class-balanced stage-2 sampler, on the recorded cpu-preset stage 1.
cd /work/main
export LONGTAIL_CACHE=/work/main/.cache
S1=runs/cpu-full/seed0/baseline
L=".venv/bin/longtail decouple $S1"
for loss in crt ldam inverse-frequency-ce; do $L --loss $loss --out runs/extras-cpu/decoupled-$loss --overwrite; done
for method in tau-norm lws post-hoc-la; do $L --method $method --out runs/extras-cpu/$method --overwrite; done
for loss in balanced-softmax class-balanced modified-ce; do $L --loss $loss --sampler class-balanced --out runs/extras-cpu/sampler-cb-$loss --overwrite; done
$L --loss ce --out runs/extras-cpu/decoupled-ce --overwrite
