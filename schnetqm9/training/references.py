"""The last fitting step of a run: each sum-read-out target's per-element references, refitted on the training
molecules to what the trained network leaves over.

A target read out as a sum predicts y(m) = sum_i [a(h_i) + e_{z_i}] with references e [100] per element (QM9's
free-atom energies for U0, U, H, G; a least-squares fit for a file's labels; the model's `atomref` buffer). The
network learns the rest, and so also a part of each element's constant: a part that drifts with the weights from
epoch to epoch (the best weights of a 120-epoch U0 run in bfloat16 were off by +4.5 meV per H atom and -6.3 per C,
a tenth of their test error; docs/TRAINING.md). With the network fixed, the best constants are a linear
least-squares problem,

.. math::
    \\delta = \\arg\\min_d \\sum_{m \\in \\mathrm{train}} \\Big(y_m - \\hat y_m - \\sum_Z n_{mZ} d_Z\\Big)^2,
    \\qquad e \\leftarrow e + \\delta

(n_mZ: atoms of element Z in molecule m; data/targets.fit_atomref on the residuals y - y_hat). It is solved twice:

- at every validation (`ValidationRefit`), on a fixed sample of 5,000 training molecules, so that each epoch is
  validated, chosen as the best and saved with the references it would ship with: the drifting constant no longer
  decides which epoch wins;
- once after training (`refit`), on all training molecules, kept per target only where the validation MAE falls
  (the same choice the best epoch was made by).

The model stays PyG's SchNet, its atomref changed.

    python -m schnetqm9.training.references models/schnet_qm9_U0.pth refit.pth   # a model trained before this step

`train.py` does both in every run with a target read out as a sum (`--no-refit-references` leaves them out).
"""
from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from schnet_model import SchNet
from schnetqm9.cli import Parser, UserError
from schnetqm9.data import sources, targets
from schnetqm9.data.batch import Batcher
from schnetqm9.data.qm9 import SYMBOLS
from schnetqm9.model import checkpoint
from schnetqm9.model.evaluation import batched_outputs
from schnetqm9.training import report

Outputs = Callable[[SchNet, Tensor], Tensor]  # (model, molecules [M]) -> outputs [M, K]


def sum_outputs(targets: list[dict]) -> list[int]:
    """The outputs (a checkpoint's or a run's `targets`) read out as a sum of atom contributions: the ones with
    per-element references."""
    return [k for k, t in enumerate(targets) if t["output"] == "add"]


def corrections(pred: Tensor, true: Tensor, z: Tensor, batch: Tensor, outputs: list[int]) -> Tensor:
    """delta [100, K]: per output k in `outputs`, the least-squares per-element constants of the residuals
    true - pred ([M, K] each, of the molecules whose atoms are z [N], batch [N]); zero for the other outputs and
    for elements absent from the molecules."""
    delta = torch.zeros(100, pred.size(1))
    for k in outputs:
        delta[:, k] = targets.fit_atomref(z.cpu(), batch.cpu(), (true[:, k] - pred[:, k]).double())[:, 0]
    return delta


def element_counts(z: Tensor, batch: Tensor, num_molecules: int) -> Tensor:
    """n [M, 100]: atoms of each element in each molecule (atoms z [N], their molecule batch [N])."""
    n = torch.zeros(num_molecules, 100)
    n.index_put_((batch.cpu(), z.cpu()), torch.ones(len(z)), accumulate=True)
    return n


class ValidationRefit:
    """The references refitted at each validation, on the first `SAMPLE` training molecules (a random sample: the
    split is a seeded permutation). Called with a model's validation outputs, returns them as they would be with
    the refitted references, and the correction [100, K] to add to its atomref. Costs one forward pass over the
    sample per validated model."""
    SAMPLE = 5000

    def __init__(self, batcher: Batcher, columns: list[int], train: Tensor, val: Tensor, outputs: list[int]) -> None:
        self.fit, self.outputs = train[:self.SAMPLE], outputs
        b = batcher(self.fit)
        self.z, self.batch = b.z.cpu(), b.batch.cpu()
        self.y = b.y.cpu()[:, torch.tensor(columns)]  # [S, K]
        v = batcher(val)
        self.val_counts = element_counts(v.z, v.batch, len(val))  # [M_val, 100]

    def __call__(self, outputs_of: Callable[[Tensor], Tensor], pred_val: Tensor) -> tuple[Tensor, Tensor]:
        """outputs_of: molecules [S] -> the model's outputs [S, K]; pred_val [M_val, K] -> (the validation outputs
        with the refitted references [M_val, K], the correction delta [100, K])."""
        delta = corrections(outputs_of(self.fit), self.y, self.z, self.batch, self.outputs)
        return pred_val + self.val_counts @ delta, delta


def refit(model: SchNet, outputs_of: Outputs, batcher: Batcher, columns: list[int], train: Tensor, val: Tensor,
          names: list[str], outputs: list[int]) -> dict:
    """Refits the references of `outputs` on the molecules `train` [M] and keeps, per output, the new ones where
    the validation MAE on `val` falls. Changes model.atomref in place; returns the record: per target the
    validation MAE before and after, whether it was kept, and the correction per atom of each element (in the
    target's unit)."""
    y = batcher.y.cpu()[:, torch.tensor(columns)]  # [M_all, K]
    b = batcher(train)
    delta = corrections(outputs_of(model, train), y[train], b.z, b.batch, outputs)
    true_val = y[val]
    before = report.regression_metrics(outputs_of(model, val), true_val, names)
    original = model.atomref.clone()
    model.atomref += delta.to(model.atomref)
    after = report.regression_metrics(outputs_of(model, val), true_val, names)
    record = {}
    for k in outputs:
        kept = after[names[k]]["mae"] < before[names[k]]["mae"]
        if not kept:
            model.atomref[:, k] = original[:, k]
        present = delta[:, k].nonzero().flatten().tolist()
        record[names[k]] = dict(val_mae_before=before[names[k]]["mae"], val_mae_after=after[names[k]]["mae"],
                                kept=kept, correction_per_atom={SYMBOLS.get(z, str(z)): float(delta[z, k])
                                                                for z in present})
    return dict(fitted_on=len(train), targets=record)


def print_record(record: dict, units: dict[str, str]) -> None:
    for name, r in record["targets"].items():
        shift = ", ".join(f"{e} {v:+.3g}" for e, v in r["correction_per_atom"].items())
        print(f"references of {name} refitted on {record['fitted_on']:,} training molecules (per atom, {units[name]}: "
              f"{shift}): validation MAE {r['val_mae_before']:.5g} -> {r['val_mae_after']:.5g} {units[name]}, "
              + ("kept" if r["kept"] else "not kept"))


def refit_checkpoint(ckpt: dict, data: sources.Source, command: str) -> tuple[Tensor, dict, dict]:
    """A model's references refitted on its own training split, its test metrics measured before and after:
    returns (the new atomref [100, K], its metrics with 'test' and 'test_before_refit' replacing the recorded test
    figures, the record)."""
    outputs = sum_outputs(ckpt["targets"])
    if not outputs:
        raise UserError("the model has no target read out as a sum (U0, U, H, G, an extensive label): nothing to "
                        "refit")
    if "optimizer" in ckpt:
        raise UserError("give a model (models/*.pth, or a run's best_model*.pth), not a resume state")
    if "references_refit" in ckpt.get("metrics", {}):
        raise UserError("its references have been refitted already: refit the model it was made from")
    model = checkpoint.build_model(ckpt)
    batcher = Batcher(data)
    split = {k: torch.as_tensor(v) for k, v in ckpt["split"].items()}
    columns, names = [t["column"] for t in ckpt["targets"]], checkpoint.target_names(ckpt)

    def outputs_of(m: SchNet, mols: Tensor) -> Tensor:
        return batched_outputs(m, batcher, mols, 256)

    def tested() -> dict:
        test = report.regression_metrics(outputs_of(model, split["test"]), data.y[split["test"]][:, columns], names)
        return {t["name"]: {**test[t["name"]], "unit": t["unit"]} for t in ckpt["targets"]}

    before = tested()
    record = refit(model, outputs_of, batcher, columns, split["train"], split["val"], names, outputs)
    kept = {k: v for k, v in ckpt.get("metrics", {}).items() if not k.startswith("test")}  # either layout's
    metrics = {**kept, "test": tested(), "test_before_refit": before,
               "references_refit": {**record, "command": command}}
    return model.atomref.detach().clone(), metrics, record


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="a model: models/*.pth, or a run's best_model*.pth")
    p.add_argument("dest", type=Path, help="the model written, with refitted references and its test metrics")
    p.add_argument("--data-dir", default="data", help="QM9 cache folder")
    args = p.parse_args(argv)
    command = "python -m schnetqm9.training.references " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        ckpt = checkpoint.load(args.source)
        source = checkpoint.data_source(ckpt)
        data, _ = sources.open_data(None if source == "QM9" else source, checkpoint.target_names(ckpt),
                                    data_dir=args.data_dir)
        atomref, metrics, record = refit_checkpoint(ckpt, data, command)
    except UserError as err:
        sys.exit(f"error: {err}")
    print_record(record, {t["name"]: t["unit"] for t in ckpt["targets"]})
    raw = torch.load(args.source, map_location="cpu", weights_only=True)  # as written, without load()'s additions
    raw["state_dict"]["atomref"] = atomref.reshape(raw["state_dict"]["atomref"].shape)
    raw["metrics"] = metrics
    checkpoint.save(raw, args.dest)
    for name in record["targets"]:
        before, after = metrics["test_before_refit"][name], metrics["test"][name]
        print(f"test {name}: MAE {before['mae']:.5g} -> {after['mae']:.5g} {after['unit']}")
    print(f"wrote {os.path.relpath(args.dest)}")


if __name__ == "__main__":
    main()
