"""Predict QM9 properties for your own molecules with a trained checkpoint, optionally atom by atom.

    python predict.py mol1.xyz traj.extxyz ligand.sdf          # all twelve properties, shipped all-target model
    python predict.py --target mu mol1.xyz                      # one of them
    python predict.py --target gap mol1.xyz                     # the shipped dedicated gap model (also U0)
    python predict.py --checkpoint checkpoints/best_model_all.pth mol1.xyz   # every property of your model
    python predict.py --checkpoint checkpoints/best_model.pth mol1.xyz
    python predict.py --checkpoint checkpoints/best_model_lite.pth --per-atom --csv out.csv water.xyz

Structures are read with ASE (ase.io.read), so XYZ, extended XYZ, SDF/MOL, PDB, CIF and every other format ASE
reads work; a file with several frames gives one row per frame, with a column per property. The checkpoint carries
the architecture, targets, units and normalisation. Coordinates must be in Angstrom (ASE's unit).
"""
from __future__ import annotations

import csv
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import checkpoint
import plots
from cli import Parser, UserError, resolve_device
from qm9_data import MAX_ATOMS, atomic_write
from targets import STANDARD, target_name

REPO = Path(__file__).resolve().parent
SHIPPED = {name: REPO / "models" / f"schnet_qm9_{name}.pth" for name in ("all", "gap", "U0")}
DEDICATED = ("gap", "U0")  # targets with a model of their own; the others come from the all-target model
MIN_DISTANCE = 0.5  # Angstrom; closer atoms mean a broken geometry (QM9's shortest bonds, O-H and N-H, are ~1 A)


@dataclass
class Molecule:
    file: str
    frame: int
    formula: str
    z: np.ndarray  # [n] atomic numbers
    pos: np.ndarray  # [n, 3] Angstrom


def read_structures(paths: list[str], allowed: set[int]) -> list[Molecule]:
    """Every frame of every file, checked against the elements the model was trained on."""
    import ase.io
    from ase.data import chemical_symbols

    molecules = []
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"{path}: no such file")
        try:
            frames = ase.io.read(path, index=":")
        except Exception as err:  # ASE raises many types; its message often names the line
            detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"{path}: cannot read it as a structure ({detail})") from None
        if not frames:
            raise UserError(f"{path}: no structure in the file")
        for k, atoms in enumerate(frames):
            z = atoms.get_atomic_numbers()
            if len(z) == 0:
                raise UserError(f"{path}: frame {k} has no atoms")
            unknown = sorted(set(z.tolist()) - allowed)
            if unknown:
                names = ", ".join(chemical_symbols[u] for u in unknown)
                seen = ", ".join(chemical_symbols[a] for a in sorted(allowed))
                raise UserError(f"{path}: element {names} (frame {k}) was never seen in training; "
                                f"this model knows {seen}")
            pos = atoms.get_positions()
            bad = np.flatnonzero(~np.isfinite(pos).all(axis=1))
            if len(bad):
                raise UserError(f"{path}: frame {k}, atom {bad[0]} ({chemical_symbols[z[bad[0]]]}) has coordinates "
                                f"{pos[bad[0]].tolist()}: every coordinate must be a finite number in Angstrom")
            molecules.append(Molecule(path, k, atoms.get_chemical_formula(), z, pos))
    return molecules


@torch.no_grad()
def predict_molecules(model: torch.nn.Module, molecules: list[Molecule], device: torch.device,
                      batch_size: int = 256) -> tuple[np.ndarray, list[np.ndarray]]:
    """Predictions [M, K] and per-atom contributions (one [n_m, K] array per molecule), in batches."""
    model.eval()
    preds, contributions = [], []
    for start in range(0, len(molecules), batch_size):
        chunk = molecules[start:start + batch_size]
        z = torch.from_numpy(np.concatenate([m.z for m in chunk])).long().to(device)
        pos = torch.from_numpy(np.concatenate([m.pos for m in chunk])).float().to(device)
        counts = torch.tensor([len(m.z) for m in chunk], device=device)
        batch = torch.repeat_interleave(torch.arange(len(chunk), device=device), counts)
        a = model.atom_contributions(z, pos, batch)  # [N, K]
        per_mol = torch.zeros(len(chunk), a.size(1), dtype=a.dtype, device=device).index_add_(0, batch, a)
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


def resolve_checkpoint(path: str | None, target: str | None) -> Path:
    """--checkpoint as given, else the shipped model for --target: the dedicated one for gap and U0, the
    all-target one for every other target and when --target is not given."""
    if path is not None:
        return Path(path)
    if target not in (None, "all", *STANDARD):
        raise UserError(f"no shipped model predicts {target} (they cover {', '.join(STANDARD)}): train one with "
                        f"train.py --target {target} and pass --checkpoint")
    shipped = SHIPPED[target if target in DEDICATED else "all"]
    if not shipped.is_file():
        raise UserError(f"the shipped model {shipped} is missing: restore it with git "
                        "(git checkout -- models), or pass --checkpoint")
    return shipped


def select(ckpt: dict, path: Path, target: str | None) -> list[int]:
    """The checkpoint's outputs to report: all of them, or the one --target names (refused if it has none)."""
    names = checkpoint.target_names(ckpt)
    if target in (None, "all") or names == [target]:
        if target == "all" and len(names) == 1:
            raise UserError(f"{path} predicts only {names[0]}: drop --target all, or name --target {names[0]}")
        return list(range(len(names)))
    if target not in names:
        raise UserError(f"{path} predicts {', '.join(names)}, not {target}: drop --target or --checkpoint")
    return [names.index(target)]


def describe(path: Path, ckpt: dict) -> str:
    """One line on which model predicts: file, targets, and the test MAE it recorded."""
    units = {t["name"]: t["unit"] for t in ckpt["targets"]}
    maes = checkpoint.test_mae(ckpt)
    n = len(ckpt["split"]["test"]) if "split" in ckpt else 0
    data = ckpt.get("data", "QM9")
    where = f"on {n:,} " + ("QM9 molecules" if data == "QM9" else f"structures of {Path(data).name}")
    if len(units) == 1:
        (name, unit), = units.items()
        what = (f"{name} in {unit}" if unit else name) + (
            f", test MAE {maes[name]:.4g} {unit}".rstrip() + f" {where}" if maes else "")
    else:
        what = f"{len(units)} targets" + (f", test MAE {where}: " + ", ".join(
            f"{k} {v:#.3g} {units[k]}".rstrip() for k, v in maes.items()) if maes else "")
    return f"model: {os.path.relpath(path)} (SchNet, {what})"


def main(argv: list[str] | None = None) -> list[dict]:
    p = Parser(description=__doc__.split("\n\n")[0] + " Formats: anything ase.io.read reads "
               "(XYZ, extended XYZ, SDF/MOL, PDB, CIF, ...).")
    p.add_argument("files", nargs="+", help="structure files (Angstrom); multi-frame files give one row per frame")
    p.add_argument("--target", help="one property to report (mu, alpha, homo, lumo, gap, r2, zpve, U0, U, H, G, "
                   "cv), or all (the default: every output). Without --checkpoint, gap and U0 come from their "
                   "dedicated shipped models (models/schnet_qm9_gap.pth, _U0.pth), everything else from the "
                   "shipped all-target model (models/schnet_qm9_all.pth)")
    p.add_argument("--checkpoint", help="a checkpoint written by train.py (default: the shipped model for --target)")
    p.add_argument("--csv", type=Path, help="also write the table to this CSV file, one column per property "
                   "named by its target (mu, alpha, ..., cv), in the units of the printed header")
    p.add_argument("--per-atom", action="store_true",
                   help="print each atom's contribution and draw results/atom_contributions_<name>.png")
    p.add_argument("--output-dir", type=Path, default=Path("results"), help="where --per-atom pictures go")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--batch-size", type=int, default=256, help="molecules per forward pass")
    args = p.parse_args(argv)
    try:
        if args.batch_size <= 0:
            raise UserError(f"--batch-size must be positive, got {args.batch_size}")
        device = resolve_device(args.device)
        if args.target not in (None, "all"):
            try:
                args.target = target_name(args.target)
            except ValueError as err:
                raise UserError(str(err)) from None
        path = resolve_checkpoint(args.checkpoint, args.target)
        ckpt = checkpoint.load(path)
        shown = select(ckpt, path, args.target)
        model = checkpoint.build_model(ckpt, device)
        molecules = read_structures(args.files, set(ckpt.get("elements", [1, 6, 7, 8, 9])))
        preds, contributions = predict_molecules(model, molecules, device, args.batch_size)
    except UserError as err:
        sys.exit(f"error: {err}")

    names = [ckpt["targets"][k]["name"] for k in shown]
    units = [ckpt["targets"][k]["unit"] for k in shown]
    rows = [dict(file=m.file, frame=m.frame, formula=m.formula, atoms=len(m.z),
                 **{n: float(v[k]) for n, k in zip(names, shown)}, note=note(m)) for m, v in zip(molecules, preds)]
    print(describe(path, ckpt))
    width = max(len(r["file"]) for r in rows)
    headers = [plots.quantity(n, u) for n, u in zip(names, units)]
    widths = [max(12, len(h)) for h in headers]
    print(f"{'file':<{width}}  frame  {'formula':<12} atoms  "
          + "  ".join(f"{h:>{w}}" for h, w in zip(headers, widths)) + "  note")
    for r in rows:
        print(f"{r['file']:<{width}}  {r['frame']:>5}  {r['formula']:<12} {r['atoms']:>5}  "
              + "  ".join(f"{r[n]:>{w}.5f}" for n, w in zip(names, widths)) + f"  {r['note']}")
    if args.per_atom:
        draw_contributions(model, molecules, contributions, shown, names, units, args.output_dir)
    if args.csv:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        with atomic_write(args.csv) as tmp:
            tmp.write_text(buf.getvalue())
    return rows


def draw_contributions(model: torch.nn.Module, molecules: list[Molecule], contributions: list[np.ndarray],
                       shown: list[int], names: list[str], units: list[str], out_dir: Path) -> None:
    """Each atom's term of each shown output, printed, and a picture per molecule and output."""
    from ase.data import chemical_symbols

    atomref = model.atomref.cpu().numpy()  # [100, K]
    for m, c in zip(molecules, contributions):
        print(f"\n{m.file} frame {m.frame} ({m.formula}), per atom:")
        print("  atom   " + "".join(f"  {plots.quantity(n, u):>16}" for n, u in zip(names, units)))
        for i, zi in enumerate(m.z):
            print(f"  {i:3d}  {chemical_symbols[zi]:<2}" + "".join(f"  {c[i, k]:>16.5f}" for k in shown))
        print("  sum    " + "".join(f"  {c[:, k].sum():>16.5f}" for k in shown))
        stem = f"{Path(m.file).stem}" + (f"_{m.frame}" if sum(x.file == m.file for x in molecules) > 1 else "")
        for k, name, unit in zip(shown, names, units):
            has_ref = bool(np.any(atomref[:, k]))
            values = c[:, k] - atomref[m.z, k] if has_ref else c[:, k]
            label = f"{name} contribution" + (" minus free atom energy" if has_ref else "")
            title = f"{m.formula} ({Path(m.file).name}, frame {m.frame})" + (
                "" if has_ref else f": {c[:, k].sum():.4g} {unit} in total")
            suffix = "" if len(shown) == 1 else f"_{name}"
            plots.plot_contributions(m.z, m.pos, values, label, unit, title,
                                     out_dir / f"atom_contributions_{stem}{suffix}.png")


if __name__ == "__main__":
    main()
