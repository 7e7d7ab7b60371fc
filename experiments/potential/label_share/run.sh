#!/usr/bin/env bash
# Issue 34: does the shipped potential's recipe fit its own B3LYP labels better when they fill more of each epoch?
# The shipped run (docs/POTENTIAL.md "Shipped: the xTB start ...") saw the labels of c1c9979 at --repeat 10 beside
# 10,000 QM9 minima at zero force: a quarter of each epoch. This run is the same in every other respect (the same
# labels, start, prior, learning rate and 8 epochs, and the same steps: 13,381 training entries against 13,380)
# with the labels at --repeat 25 beside 4,910 minima (4,546 after the labelled molecules' own): 65 % of each epoch.
#   bash experiments/potential/label_share/run.sh data    # the training file, from the labels committed at c1c9979
#   bash experiments/potential/label_share/run.sh train [FLAGS]   # 8 epochs on one thread; add --resume to go on
set -euo pipefail
cd "$(dirname "$0")/../../.."
work=data/label_share
case ${1:?usage: run.sh data|train [FLAGS]} in
    data)
        mkdir -p "$work"
        for f in b3lyp_train b3lyp_train_before_size_fix b3lyp_test; do
            [ -f "$work/$f.extxyz.gz" ] || git show "c1c9979:labels/$f.extxyz.gz" > "$work/$f.extxyz.gz"
        done
        python -m schnetqm9.potential.surface "$work/b3lyp_train.extxyz.gz" "$work/b3lyp_train_before_size_fix.extxyz.gz" \
            --test "$work/b3lyp_test.extxyz.gz" --minima 4910 --repeat 25 --output "$work/surface.extxyz" ;;
    train)
        shift
        OMP_NUM_THREADS=1 python train.py --data "$work/surface.extxyz" --split "$work/surface.split.json" \
            --target energy --unit eV --force-weight 1 --prior-weight 5 --prior-noise 0.01 \
            --init-from experiments/potential/xtb_pretrain/best_model_xtb.pth --lr 3e-4 --epochs 8 --suffix _share \
            --checkpoint-dir resume/label_share --output-dir runs/label_share/results "$@" ;;
    *) echo "error: '$1' is not data or train" >&2; exit 2 ;;
esac
