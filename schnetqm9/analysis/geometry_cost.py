"""What a SMILES instead of the DFT geometry costs: predictions from RDKit geometries against those from QM9's own.

    python -m schnetqm9.analysis.geometry_cost --molecules 1000           # every target, RDKit geometries
    python -m schnetqm9.analysis.geometry_cost --molecules 1000 --relax   # the same, relaxed as predict.py --relax
    python -m schnetqm9.analysis.geometry_cost --molecules 100 --relax --start dft   # --relax on the DFT minima

For the first M of a seeded permutation of the standard test split (molecules no shipped model trained on), each
molecule's SMILES (qm9pack's column) becomes a structure exactly as `predict.py --smiles` makes it (inference/smiles.py:
ETKDG, MMFF94, seeded), optionally relaxed as `predict.py --relax` does (on the shipped U0 potential's surface).
Every shipped model then predicts from the DFT geometry and from the RDKit one, and the table gives, per target,
the MAE against QM9's DFT label of each, and their ratio (the goal with --relax: at most 1.5). SMILES that RDKit
cannot embed are counted and left out of both columns.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from schnetqm9 import files
from schnetqm9.cli import Parser, UserError
from schnetqm9.data import qm9 as qm9_data
from schnetqm9.data import splits
from schnetqm9.data.targets import TARGETS
from schnetqm9.inference import predictions as predict
from schnetqm9.inference.molecules import Molecule, from_smiles
from schnetqm9.model import checkpoint, shipped


def shipped_columns() -> list[tuple[str, Path]]:
    """(target, shipped model) for every target a shipped model predicts: the dedicated one where there is one."""
    names = checkpoint.target_names(checkpoint.load(shipped.path("all")))
    return [(n, shipped.for_target(n)) for n in names]


def predictions(molecules: list[Molecule], columns: list[tuple[str, Path]]) -> dict[str, np.ndarray]:
    """Each target's prediction [M] from its shipped model."""
    out, models = {}, {}
    for name, path in columns:
        if path not in models:
            ckpt = checkpoint.load(path)
            pred, _ = predict.predict_molecules(checkpoint.build_model(ckpt), molecules, torch.device("cpu"))
            models[path] = (checkpoint.target_names(ckpt), pred)
        names, pred = models[path]
        out[name] = pred[:, names.index(name)]
    return out


def main(argv: list[str] | None = None) -> dict:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--molecules", type=int, default=1000, help="QM9 test molecules")
    p.add_argument("--relax", action="store_true", help="relax the RDKit geometries first, as predict.py --relax does")
    p.add_argument("--start", choices=["smiles", "dft"], default="smiles", help="what the second column starts "
                   "from: the SMILES (an RDKit geometry) or, with --relax, the DFT geometry itself (what "
                   "predict.py --relax does to a DFT minimum)")
    p.add_argument("--relax-checkpoint", help="the energy model --relax uses (default: the shipped U0 potential)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample")
    p.add_argument("--data-dir", default="data", help="QM9 cache folder")
    p.add_argument("--output", type=Path, default=Path("results/geometry_cost.json"), help="the JSON written")
    args = p.parse_args(argv)
    relaxer = Path(args.relax_checkpoint or shipped.path(shipped.POTENTIAL))  # the surface --relax relaxes on
    try:
        if args.molecules <= 0:
            raise UserError("--molecules must be positive")
        qm9 = qm9_data.QM9(args.data_dir)
        smiles = qm9_data.read_smiles()
        test = splits.standard_split()["test"]
        chosen = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))[:args.molecules]]
        dft, second, kept, failed = [], [], [], []  # second: the RDKit (or relaxed DFT) geometry
        if args.start == "dft" and not args.relax:
            raise UserError("--start dft compares the DFT geometry with itself unless --relax moves it: add --relax")
        for i in tqdm(chosen.tolist(), desc="Embedding SMILES" if args.start == "smiles" else "Molecules", unit="mol"):
            d = qm9[i]
            if args.start == "dft":
                second.append(Molecule("qm9", i, "", d.z.numpy(), d.pos.double().numpy()))
            else:
                text = smiles[int(qm9.gdb[i])]
                try:
                    second.append(from_smiles(text, {1, 6, 7, 8, 9}, "qm9", i))
                except UserError:
                    failed.append(text)
                    continue
            dft.append(Molecule("qm9", i, "", d.z.numpy(), d.pos.double().numpy()))
            kept.append(i)
        moved = []
        if args.relax:  # a molecule whose relaxation fails leaves both columns, as one RDKit cannot embed
            relaxed, lost = predict.relax_all(second, str(relaxer), 0.01, 1000)
            ok = {id(m) for m in relaxed}
            keep = [j for j, m in enumerate(second) if id(m) in ok]
            failed += [f.message for f in lost]
            dft, second, kept = [dft[j] for j in keep], relaxed, [kept[j] for j in keep]
            moved = [m.relax_rmsd for m in relaxed]
        columns = shipped_columns()
        from_dft, from_second = predictions(dft, columns), predictions(second, columns)
    except UserError as err:
        sys.exit(f"error: {err}")
    rows = {}
    other = "RDKit geometry" if args.start == "smiles" else "DFT, relaxed"
    lost = f" ({len(failed)} of {len(chosen)} could not be embedded or relaxed)" if failed else ""
    print(f"{len(kept)} QM9 test molecules" + (" from SMILES" if args.start == "smiles" else "") + lost
          + (f", relaxed with {relaxer.name}" if args.relax else "")
          + ": MAE against DFT")
    print(f"{'target':<8} {'unit':<10} {'DFT geometry':>13} {other:>15} {'ratio':>6}")
    for name, _ in columns:
        true = qm9.y[kept, TARGETS[name].column].double().numpy()
        a, b = np.abs(from_dft[name] - true).mean(), np.abs(from_second[name] - true).mean()
        key = "mae_rdkit_geometry" if args.start == "smiles" else "mae_relaxed_dft_geometry"
        rows[name] = {"unit": TARGETS[name].unit, "mae_dft_geometry": float(a), key: float(b), "ratio": float(b / a)}
        print(f"{name:<8} {TARGETS[name].unit:<10} {a:>13.4f} {b:>15.4f} {b / a:>6.2f}")
    if moved:
        print(f"relaxation moved the {'RDKit' if args.start == 'smiles' else 'DFT'} geometries by "
              f"{np.median(moved):.3f} A RMSD (median)")
    result = dict(molecules=len(kept), failed=failed, relax=args.relax, start=args.start, seed=args.seed, targets=rows,
                  relax_rmsd_median=float(np.median(moved)) if moved else None,
                  relax_checkpoint=str(relaxer) if args.relax else None)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_write(args.output) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
