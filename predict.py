"""Predict a QM9 property for your own molecules with a trained checkpoint, optionally atom by atom.

    python predict.py mol1.xyz traj.extxyz ligand.sdf          # the shipped full-QM9 gap model
    python predict.py --target U0 mol1.xyz                      # the shipped full-QM9 U0 model
    python predict.py --checkpoint checkpoints/best_model.pth mol1.xyz
    python predict.py --checkpoint checkpoints/best_model_lite.pth --per-atom --csv out.csv water.xyz

Structures are read with ASE (ase.io.read), so XYZ, extended XYZ, SDF/MOL, PDB, CIF and every other format ASE
reads work; a file with several frames gives one row per frame. The checkpoint carries the architecture, target,
unit and normalisation. Coordinates must be in Angstrom (ASE's unit).
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import plots
import train
from qm9_data import MAX_ATOMS, atomic_write

REPO = Path(__file__).resolve().parent
SHIPPED = {"gap": REPO / "models" / "schnet_qm9_gap.pth", "U0": REPO / "models" / "schnet_qm9_U0.pth"}
MIN_DISTANCE = 0.5  # Angstrom; closer atoms mean a broken geometry (QM9's shortest bonds, O-H and N-H, are ~1 A)


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
            pos = atoms.get_positions()
            bad = np.flatnonzero(~np.isfinite(pos).all(axis=1))
            if len(bad):
                raise InputError(f"{path}: frame {k}, atom {bad[0]} ({chemical_symbols[z[bad[0]]]}) has coordinates "
                                 f"{pos[bad[0]].tolist()}: every coordinate must be a finite number in Angstrom")
            molecules.append(Molecule(path, k, atoms.get_chemical_formula(), z, pos))
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


def closest_pair(pos: np.ndarray) -> tuple[int, int, float]:
    """The two closest atoms (i < j) of a structure [n, 3] and their distance in Angstrom; (-1, -1, inf) for n < 2.

    A k-d tree's nearest neighbours (scipy, which scikit-learn installs), O(n log n): a large PDB file would not
    fit an n x n distance matrix.
    """
    from scipy.spatial import cKDTree

    if len(pos) < 2:
        return -1, -1, float("inf")
    dist, nearest = cKDTree(pos).query(pos, k=2)  # [n, 2]: each atom itself, then its nearest neighbour
    i = int(np.argmin(dist[:, 1]))
    j = int(nearest[i, 1])
    return min(i, j), max(i, j), float(dist[i, 1])


def note(m: Molecule) -> str:
    """Why a prediction for this structure should not be trusted, or ''."""
    notes = []
    i, j, d = closest_pair(m.pos)
    if d < MIN_DISTANCE:
        notes.append(f"atoms {i} and {j} only {d:.2f} A apart: broken geometry")
    if len(m.z) > MAX_ATOMS:
        notes.append(f"outside QM9 (> {MAX_ATOMS} atoms)")
    return "; ".join(notes)


def resolve_checkpoint(checkpoint: str | None, target: str) -> Path:
    """--checkpoint as given, else the model shipped in models/ for --target."""
    if checkpoint is not None:
        return Path(checkpoint)
    if not SHIPPED[target].is_file():
        raise InputError(f"the shipped model {SHIPPED[target]} is missing: restore it with git "
                         "(git checkout -- models), or pass --checkpoint")
    return SHIPPED[target]


def describe(path: Path, ckpt: dict) -> str:
    """One line on which model predicts: file, target, and the test MAE it recorded."""
    test = ckpt.get("metrics", {}).get("test_mae")
    n = len(ckpt["split"]["test"]) if "split" in ckpt else 0
    return (f"model: {os.path.relpath(path)} (SchNet, {ckpt['target']} in {ckpt['unit']}"
            + ("" if test is None else f", test MAE {test:.4g} {ckpt['unit']} on {n:,} QM9 molecules") + ")")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " Formats: anything ase.io.read reads "
                                "(XYZ, extended XYZ, SDF/MOL, PDB, CIF, ...).")
    p.add_argument("files", nargs="+", help="structure files (Angstrom); multi-frame files give one row per frame")
    p.add_argument("--target", choices=sorted(SHIPPED),
                   help="which shipped model (models/schnet_qm9_<target>.pth) predicts when --checkpoint is not "
                        "given (default: gap); with --checkpoint, the target that checkpoint must have")
    p.add_argument("--checkpoint", help="a checkpoint written by train.py (default: the shipped model for --target)")
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
        path = resolve_checkpoint(args.checkpoint, args.target or "gap")
        ckpt = train.load_checkpoint(path)
        if args.target and ckpt["target"] != args.target:
            raise InputError(f"{path} predicts {ckpt['target']}, not {args.target}: drop --target or --checkpoint")
        model = train.model_from_checkpoint(ckpt, device)
        molecules = read_structures(args.files, set(ckpt.get("elements", [1, 6, 7, 8, 9])))
        preds, contributions = predict_molecules(model, molecules, device, args.batch_size)
    except (InputError, train.TrainingError) as err:
        sys.exit(f"error: {err}")

    target, unit = ckpt["target"], ckpt["unit"]
    rows = [dict(file=m.file, frame=m.frame, formula=m.formula, atoms=len(m.z), target=target,
                 prediction=float(v), unit=unit, note=note(m)) for m, v in zip(molecules, preds)]
    print(describe(path, ckpt))
    width = max(len(r["file"]) for r in rows)
    print(f"{'file':<{width}}  frame  {'formula':<12} atoms  {target + ' (' + unit + ')':>16}  note")
    for r in rows:
        print(f"{r['file']:<{width}}  {r['frame']:>5}  {r['formula']:<12} {r['atoms']:>5}  "
              f"{r['prediction']:>16.5f}  {r['note']}")
    if args.per_atom:
        from ase.data import chemical_symbols

        atomref = model.atomref[:, 0].cpu().numpy()
        has_ref = bool(np.any(atomref))
        for m, c in zip(molecules, contributions):
            print(f"\n{m.file} frame {m.frame} ({m.formula}), {target} per atom ({unit}):")
            for k, (zi, ci) in enumerate(zip(m.z, c)):
                print(f"  {k:3d}  {chemical_symbols[zi]:<2} {ci: .5f}")
            print(f"  sum  {c.sum(): .5f}")
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
