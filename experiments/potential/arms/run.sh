#!/usr/bin/env bash
# Issue 34's arms and learning curve, side by side on one schedule (2 epochs, cosine from 3e-4, MMFF94's prior),
# tested on the same held-out B3LYP frames:
#   b: the shipped potential fine-tuned on the B3LYP training frames;
#   c: the shipped potential pretrained on 9,435 GFN2-xTB frames (experiments/potential/xtb_pretrain, docs/POTENTIAL.md "Arm c"),
#      then the same fine-tune.
# Usage:
#   bash experiments/potential/arms/run.sh data [N]   the surface file (all labelled molecules, or N of them), once
#   bash experiments/potential/arms/run.sh b|c [N] [FLAGS]   one arm (one process; run several at once to share the
#       machine); FLAGS are passed on to train.py after the arm's own (the later wins), TAG=name names the variant
# With N, the labelled frames of N training molecules (surface.py --molecules: nested sets, the same validation
# molecules) are repeated so that they fill the same share of each epoch as all of them do: every point of the
# learning curve takes the same steps with the same mix of labelled frames and QM9 minima.
# The labels are copied once from the commit LABELS_AT (default HEAD) into data/arms/, so that the labeller appending
# to labels/ does not change the data mid-study: every file of the study is made from that copy.
set -euo pipefail
cd "$(dirname "$0")/../../.."
what=${1:?usage: run.sh data|b|c [N] [FLAGS]}
shift
n=
if [[ ${1:-} =~ ^[0-9]+$ ]]; then n=$1; shift; fi
work=data/arms
name=surface${n:+_$n}
mkdir -p "$work" runs/arms
if [ "$what" = data ]; then
    at=${LABELS_AT:-HEAD}
    for f in b3lyp_train b3lyp_train_before_size_fix b3lyp_test; do
        [ -f "$work/$f.extxyz.gz" ] || git show "$at:labels/$f.extxyz.gz" > "$work/$f.extxyz.gz"
    done
    build() {
        python -m schnetqm9.potential.surface "$work/b3lyp_train.extxyz.gz" \
            "$work/b3lyp_train_before_size_fix.extxyz.gz" --test "$work/b3lyp_test.extxyz.gz" --minima 10000 "$@"
    }
    if [ -z "$n" ]; then
        build --output "$work/surface.extxyz"
    else  # the repeat that gives the N molecules' frames the share all of them have at --repeat 10
        build --molecules "$n" --repeat 1 --output "$work/$name.extxyz" > /dev/null
        repeat=$(python - "$work/surface.extxyz" "$work/$name.extxyz" <<'PY'
import sys
from pathlib import Path

import ase.io

from schnetqm9.data import splits
from schnetqm9.potential import surface


def labelled(path: str) -> int:
    """Training entries of a surface file that are labelled frames, not QM9 minima."""
    source = [a.info["source"] for a in ase.io.read(path, ":")]
    train = splits.load_split(surface.split_path(Path(path)), None)["train"].tolist()
    return sum(source[i] != "qm9" for i in train)


print(max(1, round(labelled(sys.argv[1]) / labelled(sys.argv[2]))))
PY
)
        build --molecules "$n" --repeat "$repeat" --output "$work/$name.extxyz"
    fi
    exit 0
fi
case $what in
    b) init=(--init-from models/schnet_qm9_U0_potential.pth --init-output energy=U0) ;;
    c) init=(--init-from experiments/potential/xtb_pretrain/best_model_xtb.pth) ;;
    *) echo "error: '$what' is not data, b or c" >&2; exit 2 ;;
esac
run=${what}${n:+_$n}${TAG:+_$TAG}
python train.py --data "$work/$name.extxyz" --split "$work/$name.split.json" --target energy --unit eV \
    --force-weight 1 --prior-weight 1 "${init[@]}" --lr 3e-4 --epochs 2 --suffix "_arm_$run" \
    --checkpoint-dir "runs/arms/$run" --output-dir "runs/arms/$run/results" "$@"
