"""How much of the all-target model's error is a constant per element: for every target, the least-squares
per-element constants d [100] of its residuals on the training molecules,

    d = argmin_d sum_{m in train} (y_m - yhat_m - sum_Z n_mZ d_Z)^2,

applied to the test molecules. For the targets read out as a sum (alpha, zpve, U0, U, H, G, cv) this is the refit of
their references (schnetqm9/training/references.py); for the others (mu, homo, lumo, gap, r2) a constant per atom is
not part of their readout, and this measures whether one would pay (issue 35 named r2's). Nothing is written but
the printed table and, with --output, its JSON.

    OMP_NUM_THREADS=1 python -m experiments.multitask.element_constants models/schnet_qm9_all.pth \\
        --output experiments/multitask/element_constants.json
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from schnetqm9.cli import Parser
from schnetqm9.data import sources
from schnetqm9.data.batch import Batcher
from schnetqm9.model import checkpoint
from schnetqm9.model.evaluation import batched_outputs
from schnetqm9.training.references import corrections, element_counts


def main() -> None:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="a QM9 model (models/*.pth)")
    p.add_argument("--data-dir", default="data", help="QM9 cache folder")
    p.add_argument("--output", type=Path, default=None, help="JSON written with the table")
    args = p.parse_args()
    ckpt = checkpoint.load(args.model)
    names = checkpoint.target_names(ckpt)
    data, _ = sources.open_data(None, names, data_dir=args.data_dir)
    model, batcher = checkpoint.build_model(ckpt), Batcher(data)
    columns = torch.tensor([t["column"] for t in ckpt["targets"]])
    split = {k: torch.as_tensor(v) for k, v in ckpt["split"].items()}
    every = list(range(len(names)))
    pred, true, counts = {}, {}, {}
    for part in ("train", "test"):
        mols = split[part]
        pred[part] = batched_outputs(model, batcher, mols, 256)  # [M, K]
        true[part] = data.y[mols][:, columns].float()  # [M, K]
        b = batcher(mols)
        counts[part] = (b.z, b.batch)
    delta = corrections(pred["train"], true["train"], *counts["train"], every)  # [100, K]
    n_test = element_counts(*counts["test"], len(split["test"]))  # [M_test, 100]
    after = pred["test"] + n_test @ delta
    rows = {}
    for k, name in enumerate(names):
        before_mae = (pred["test"][:, k] - true["test"][:, k]).abs().mean().item()
        after_mae = (after[:, k] - true["test"][:, k]).abs().mean().item()
        rows[name] = dict(test_mae=before_mae, test_mae_with_constants=after_mae,
                          change=after_mae / before_mae - 1, unit=ckpt["targets"][k]["unit"])
        print(f"{name:>6}: test MAE {before_mae:.5g} -> {after_mae:.5g} {rows[name]['unit']} "
              f"({100 * rows[name]['change']:+.2f} %)")
    if args.output:
        args.output.write_text(json.dumps(dict(model=str(args.model), fitted_on=len(split["train"]),
                                               tested_on=len(split["test"]), targets=rows), indent=1) + "\n")


if __name__ == "__main__":
    main()
