"""Predict a QM9 property for your own molecules with a trained checkpoint, optionally atom by atom.

    python predict.py --checkpoint checkpoints/best_model.pth mol1.xyz traj.extxyz ligand.sdf
    python predict.py --checkpoint checkpoints/best_model_lite.pth --per-atom --csv out.csv water.xyz

Structures are read with ASE (ase.io.read), so XYZ, extended XYZ, SDF/MOL, PDB, CIF and every other format ASE
reads work; a file with several frames gives one row per frame. The checkpoint carries the architecture, target,
unit and normalisation. Coordinates must be in Angstrom (ASE's unit).
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import plots
import train
from qm9_data import MAX_ATOMS, atomic_write


@dataclass
class Molecule:
    file: str
    frame: int
    formula: str
    z: np.ndarray  # [n] atomic numbers
    pos: np.ndarray  # [n, 3] Angstrom


class InputError(Exception):
    """Bad input; reported as one line with a non-zero exit."""


def read_structures(paths: list[str], allowed: set[int]) -> list[Molecule]:
    """Every frame of every file, checked against the elements the model was trained on."""
    import ase.io
    from ase.data import chemical_symbols

    molecules = []
    for path in paths:
        if not Path(path).is_file():
            raise InputError(f"{path}: no such file")
        try:
            frames = ase.io.read(path, index=":")
        except Exception as err:  # ASE raises many types; its message often names the line
            detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(f"{path}: cannot read it as a structure ({detail})") from None
        if not frames:
            raise InputError(f"{path}: no structure in the file")
        for k, atoms in enumerate(frames):
            z = atoms.get_atomic_numbers()
            if len(z) == 0:
                raise InputError(f"{path}: frame {k} has no atoms")
            unknown = sorted(set(z.tolist()) - allowed)
            if unknown:
                names = ", ".join(chemical_symbols[u] for u in unknown)
                seen = ", ".join(chemical_symbols[a] for a in sorted(allowed))
                raise InputError(f"{path}: element {names} (frame {k}) was never seen in training; "
                                 f"this model knows {seen}")
            molecules.append(Molecule(path, k, atoms.get_chemical_formula(), z, atoms.get_positions()))
    return molecules


@torch.no_grad()
def predict_molecules(model: torch.nn.Module, molecules: list[Molecule], device: torch.device,
                      batch_size: int = 256) -> tuple[np.ndarray, list[np.ndarray]]:
    """Predictions [M] and per-atom contributions (one [n_m] array per molecule), in batches."""
    model.eval()
    preds, contributions = [], []
    for start in range(0, len(molecules), batch_size):
        chunk = molecules[start:start + batch_size]
        z = torch.from_numpy(np.concatenate([m.z for m in chunk])).long().to(device)
        pos = torch.from_numpy(np.concatenate([m.pos for m in chunk])).float().to(device)
        counts = torch.tensor([len(m.z) for m in chunk], device=device)
        batch = torch.repeat_interleave(torch.arange(len(chunk), device=device), counts)
        a = model.atom_contributions(z, pos, batch)  # [N]
        per_mol = torch.zeros(len(chunk), dtype=a.dtype, device=device).index_add_(0, batch, a)
        preds.append(per_mol.cpu().numpy())
        contributions.extend(t.cpu().numpy() for t in a.split(counts.tolist()))
    return np.concatenate(preds), contributions


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " Formats: anything ase.io.read reads "
                                "(XYZ, extended XYZ, SDF/MOL, PDB, CIF, ...).")
    p.add_argument("files", nargs="+", help="structure files (Angstrom); multi-frame files give one row per frame")
    p.add_argument("--checkpoint", default="checkpoints/best_model.pth", help="a checkpoint written by train.py")
    p.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    p.add_argument("--per-atom", action="store_true",
                   help="print each atom's contribution and draw results/atom_contributions_<name>.png")
    p.add_argument("--output-dir", type=Path, default=Path("results"), help="where --per-atom pictures go")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--batch-size", type=int, default=256, help="molecules per forward pass")
    args = p.parse_args(argv)
    try:
        if args.batch_size <= 0:
            raise InputError(f"--batch-size must be positive, got {args.batch_size}")
        device = train.resolve_device(args.device)
        ckpt = train.load_checkpoint(Path(args.checkpoint))
        model = train.model_from_checkpoint(ckpt, device)
        molecules = read_structures(args.files, set(ckpt.get("elements", [1, 6, 7, 8, 9])))
        preds, contributions = predict_molecules(model, molecules, device, args.batch_size)
    except (InputError, train.TrainingError) as err:
        sys.exit(f"error: {err}")

    target, unit = ckpt["target"], ckpt["unit"]
    rows = [dict(file=m.file, frame=m.frame, formula=m.formula, atoms=len(m.z), target=target,
                 prediction=float(v), unit=unit, note=f"outside QM9 (> {MAX_ATOMS} atoms)" if len(m.z) > MAX_ATOMS
                 else "") for m, v in zip(molecules, preds)]
    width = max(len(r["file"]) for r in rows)
    print(f"{'file':<{width}}  frame  {'formula':<12} atoms  {target + ' (' + unit + ')':>16}  note")
    for r in rows:
        print(f"{r['file']:<{width}}  {r['frame']:>5}  {r['formula']:<12} {r['atoms']:>5}  "
              f"{r['prediction']:>16.6g}  {r['note']}")
    if args.per_atom:
        from ase.data import chemical_symbols

        atomref = model.atomref[:, 0].cpu().numpy()
        has_ref = bool(np.any(atomref))
        for m, c in zip(molecules, contributions):
            print(f"\n{m.file} frame {m.frame} ({m.formula}), {target} per atom ({unit}):")
            for k, (zi, ci) in enumerate(zip(m.z, c)):
                print(f"  {k:3d}  {chemical_symbols[zi]:<2} {ci: .6g}")
            print(f"  sum  {c.sum(): .6g}")
            name = f"{Path(m.file).stem}" + (f"_{m.frame}" if sum(x.file == m.file for x in molecules) > 1 else "")
            shown = c - atomref[m.z] if has_ref else c
            label = f"{target} contribution" + (" minus free atom energy" if has_ref else "")
            title = f"{m.formula} ({Path(m.file).name}, frame {m.frame})" + (
                "" if has_ref else f": {c.sum():.4g} {unit} in total")
            plots.plot_contributions(m.z, m.pos, shown, label, unit, title,
                                     args.output_dir / f"atom_contributions_{name}.png")
    if args.csv:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        with atomic_write(args.csv) as tmp:
            tmp.write_text(buf.getvalue())
    return rows


if __name__ == "__main__":
    main()
