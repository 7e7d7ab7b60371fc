#!/usr/bin/env bash
# Label the committed input geometries at B3LYP/6-31G(2df,p), the test and training sets in turns (30 test frames,
# then 60 training frames, and again), on one core. Resumable: run it again and it goes on where it stopped.
#   nohup bash labels/label.sh > runs/label.log 2>&1 &
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export OMP_NUM_THREADS=1
for step in $(seq 1 20); do
    $PY -m schnetqm9.potential.labelling labels/inputs/test.extxyz --method b3lyp \
        --output labels/b3lyp_test.extxyz.gz --limit $((step * 30))
    $PY -m schnetqm9.potential.labelling labels/inputs/train.extxyz --method b3lyp \
        --output labels/b3lyp_train.extxyz.gz --limit $((step * 60))
done
