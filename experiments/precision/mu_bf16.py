"""Why bfloat16 training learns the dipole (mu) slower than float32 in the all-target model: a probe.

Under `--precision bf16` the all-target model's first epochs match float32's on eleven targets and lag on mu by
~2x (docs/PERFORMANCE.md). The readout (schnet_model.SchNet._readout: charges q_i = a_i - mean_m(a), the dipole
|sum_i q_i (r_i - R)|) already runs in float32, and a bf16-trained state predicts the same mu in either precision,
so what differs is what the steps learn. The dipole's gradient reaches the atom features as
dL/da_i = (r_i - R) . u dL/d|mu| minus its per-molecule mean: signed, position-dependent, summing to zero over
each molecule, unlike a sum readout's equal share per atom, and bfloat16's 8-bit mantissa in the backward products
may round it away. This script trains with one more part of the network taken out of autocast, and otherwise is
`python train.py` with the flags given:

    --fp32-part lin1          the last atom-wise layer before the readout (hidden -> hidden/2)
    --fp32-part interactions  every interaction block (the filter networks and the atom-wise layers)

    OMP_NUM_THREADS=1 python -m experiments.precision.mu_bf16 --fp32-part lin1 -- --target all \\
        --task-weights balanced --epochs 40 --precision bf16 --suffix _mu_lin1 --checkpoint-dir runs/mu_lin1 \\
        --output-dir runs/mu_lin1/results

(stopped after the first epoch, whose validation mu against float32's and bf16's answers the question).
"""
from __future__ import annotations

import argparse
import sys

import torch

import schnet_model
from schnetqm9.training import loop


def in_fp32(forward):
    """`forward` run with autocast off and its floating inputs in float32."""
    def wrapped(*args, **kwargs):
        args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return forward(*args, **kwargs)
    return wrapped


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fp32-part", choices=["lin1", "interactions"], required=True,
                   help="the part of the network kept out of bfloat16 autocast")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="train.py's flags, after --")
    args = p.parse_args()
    original = schnet_model.SchNet.__init__

    def patched(self, *a, **kw):
        original(self, *a, **kw)
        parts = [self.lin1] if args.fp32_part == "lin1" else list(self.interactions)
        for part in parts:
            part.forward = in_fp32(part.forward)

    schnet_model.SchNet.__init__ = patched
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    sys.argv = ["train.py", *train_args]
    loop.main(train_args)


if __name__ == "__main__":
    main()
