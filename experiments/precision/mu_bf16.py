"""Why bfloat16 training learns the dipole (mu) slower than float32 in the all-target model: a probe.

Under `--precision bf16` the all-target model's first epochs matched float32's on ten targets and lagged on mu by
~2x and on r2 (docs/PERFORMANCE.md). The readout (schnet_model.SchNet._readout: charges q_i = a_i - mean_m(a),
the dipole |sum_i q_i (r_i - R)|) already runs in float32, and a bf16-trained state predicts the same mu in
either precision, so what differs is what the steps learn. The dipole's gradient reaches the atom features as
dL/da_i = (r_i - R) . u dL/d|mu| minus its per-molecule mean: signed, position-dependent, summing to zero over
each molecule, unlike a sum readout's equal share per atom, and bfloat16's 8-bit mantissa in the backward products
may round it away. This script trains with the last atom-wise layer before the readout (lin1, hidden -> hidden/2)
taken out of autocast, and otherwise is `python train.py` with the flags given (the checkpoint records this
script as its command):

    OMP_NUM_THREADS=1 python -m experiments.precision.mu_bf16 -- --target all \\
        --task-weights balanced --epochs 40 --precision bf16 --suffix _mu_lin1 --checkpoint-dir runs/mu_lin1 \\
        --output-dir runs/mu_lin1/results

(stopped after the first epoch: validation mu 0.257 D, against 0.246 in float32 and 0.470 in bf16 on the same
seed, 0.239 and 0.259 in bf16 on seeds 1 and 2: one bf16 run in three started slow on mu).
"""
from __future__ import annotations

import argparse

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
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="train.py's flags, after --")
    args = p.parse_args()
    original = schnet_model.SchNet.__init__

    def patched(self, *a, **kw):
        original(self, *a, **kw)
        self.lin1.forward = in_fp32(self.lin1.forward)

    schnet_model.SchNet.__init__ = patched
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    loop.main(train_args)


if __name__ == "__main__":
    main()
