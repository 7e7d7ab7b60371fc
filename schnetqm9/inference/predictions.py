"""Predict QM9 properties for your own molecules with a trained checkpoint, optionally atom by atom.

    python predict.py mol1.xyz traj.extxyz ligand.sdf          # all twelve properties, shipped all-target model
    python predict.py --smiles CCO c1ccccc1O                   # from SMILES (RDKit geometries, inference/smiles.py)
    python predict.py mols.smi --csv out.csv                   # a .smi file: a SMILES per line, a name optional
    python predict.py --target mu mol1.xyz                      # one of them
    python predict.py --target gap mol1.xyz                     # the shipped dedicated gap model (also U0, homo, lumo)
    python predict.py --checkpoint checkpoints/best_model_all.pth mol1.xyz   # every property of your model
    python predict.py --checkpoint checkpoints/best_model_lite.pth --per-atom --csv out.csv water.xyz

Structures are read with ASE (ase.io.read), so XYZ, extended XYZ, SDF/MOL, PDB, CIF and every other format ASE
reads work; a file with several frames gives one row per frame, with a column per property. A .smi file (a SMILES
per line, a name after it optional) and --smiles give structures from RDKit. The checkpoint carries the
architecture, targets, units and normalisation. Coordinates must be in Angstrom (ASE's unit). The note column
says when a structure lies outside what the model was trained on (inference/domain.py).
"""
from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path

import numpy as np
import torch

from schnetqm9 import plots
from schnetqm9.cli import Parser, UserError, one_line, resolve_device
from schnetqm9.data.batch import molecule_of_atoms
from schnetqm9.data.targets import STANDARD, target_name
from schnetqm9.files import atomic_write
from schnetqm9.inference import domain
from schnetqm9.inference.molecules import Failure, Molecule, read_inputs
from schnetqm9.model import checkpoint, precision, shipped


@torch.no_grad()
def predict_molecules(model: torch.nn.Module, molecules: list[Molecule], device: torch.device,
                      batch_size: int = 256, mixed: str = "fp32") -> tuple[np.ndarray, list[np.ndarray]]:
    """Predictions [M, K] and per-atom contributions (one [n_m, K] array per molecule), in batches, with the
    linear layers in `mixed` precision (model/precision.py)."""
    model.eval()
    preds, contributions = [np.zeros((0, len(model.readouts)), dtype=np.float32)], []
    for start in range(0, len(molecules), batch_size):
        chunk = molecules[start:start + batch_size]
        z = torch.from_numpy(np.concatenate([m.z for m in chunk])).long().to(device)
        pos = torch.from_numpy(np.concatenate([m.pos for m in chunk])).float().to(device)
        counts = torch.tensor([len(m.z) for m in chunk], device=device)
        batch = molecule_of_atoms(counts)  # [N]
        with precision.autocast(device, mixed):
            a = model.atom_contributions(z, pos, batch)  # [N, K], float32
        per_mol = torch.zeros(len(chunk), a.size(1), dtype=a.dtype, device=device).index_add_(0, batch, a)
        preds.append(per_mol.cpu().numpy())
        contributions.extend(t.cpu().numpy() for t in a.split(counts.tolist()))
    return np.concatenate(preds), contributions


def resolve_checkpoint(path: str | None, target: str | None) -> Path:
    """--checkpoint as given, else the shipped model for --target: the dedicated one where there is one
    (shipped.dedicated()), the all-target one for every other target and when --target is not given."""
    if path is not None:
        return Path(path)
    if target not in (None, "all", *STANDARD):
        raise UserError(f"no shipped model predicts {target} (they cover {', '.join(STANDARD)}): train one with "
                        f"train.py --target {target} and pass --checkpoint")
    default = shipped.for_target(target)
    if not default.is_file():
        raise UserError(f"the shipped model {default} is missing: restore it with git "
                        "(git checkout -- models), or pass --checkpoint")
    return default


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
    units = {name: checkpoint.output_spec(ckpt, k)["unit"] for k, name in enumerate(checkpoint.target_names(ckpt))}
    maes = checkpoint.test_mae(ckpt)
    n, data = checkpoint.test_size(ckpt), checkpoint.data_source(ckpt)
    where = f"on {n:,} " + ("QM9 molecules" if data == "QM9" else f"structures of {Path(data).name}")
    if len(units) == 1:
        (name, unit), = units.items()
        what = (f"{name} in {unit}" if unit else name) + (
            f", test MAE {maes[name]:.4g} {unit}".rstrip() + f" {where}" if maes else "")
    else:
        what = f"{len(units)} targets" + (f", test MAE {where}: " + ", ".join(
            f"{k} {v:#.3g} {units[k]}".rstrip() for k, v in maes.items()) if maes else "")
    return f"model: {os.path.relpath(path)} (SchNet, {what})"


def relax_all(molecules: list[Molecule], path: str | None, fmax: float,
              steps: int) -> tuple[list[Molecule], list[Failure]]:
    """Relaxes each molecule in place on the surface of the energy model at `path` (default: the shipped potential;
    potential/calculator.py), records how far it moved (`relax_rmsd`, aligned RMSD to its input geometry) and notes
    a relaxation that did not converge; returns (the relaxed molecules, a Failure for each that could not be)."""
    from tqdm.auto import tqdm

    from schnetqm9.potential import calculator as ase_calculator

    calc = ase_calculator.SchNetCalculator(path or shipped.path(shipped.POTENTIAL))
    relaxed, failed = [], []
    for m in tqdm(molecules, desc="Relaxing", unit="mol", disable=None if len(molecules) > 1 else True):
        try:
            pos, taken, converged = ase_calculator.relax(m.z, m.pos, calc, fmax, steps)
        except Exception as err:  # a periodic cell, a surface that gives no finite force, ...
            failed.append(Failure.of(m, f"{m.file} frame {m.frame}: relaxation failed ({one_line(err)})"))
            continue
        m.relax_rmsd = ase_calculator.aligned_rmsd(m.pos, pos) if len(m.z) > 1 else 0.0
        m.pos = pos
        if not converged:
            m.notes.append(f"relaxation not converged in {taken} steps (fmax {fmax:g} eV/A)")
        relaxed.append(m)
    return relaxed, failed


def build_parser() -> Parser:
    p = Parser(description=__doc__.split("\n\n")[0] + " Formats: anything ase.io.read reads "
               "(XYZ, extended XYZ, SDF/MOL, PDB, CIF, ...), .smi files and --smiles. With several inputs, one "
               "that cannot be read, parsed, embedded, relaxed or explained gets one line on stderr, the others are "
               "still printed, --csv gets a row for it with the reason in its note column, and the exit status is 1.")
    p.add_argument("files", nargs="*", help="structure files (Angstrom; multi-frame files give one row per frame) "
                   "and .smi files (a SMILES per line, optionally a name after it)")
    p.add_argument("--smiles", nargs="+", default=[], metavar="SMILES",
                   help="molecules as SMILES: hydrogens added, 3D structure by RDKit's ETKDG embedding and MMFF94 "
                   "optimisation, seeded (the same SMILES always gives the same numbers)")
    p.add_argument("--target", help="one property to report (mu, alpha, homo, lumo, gap, r2, zpve, U0, U, H, G, "
                   "cv), or all (the default: every output). Without --checkpoint, "
                   + ", ".join(shipped.dedicated()) + " come from their dedicated shipped models "
                   "(models/schnet_qm9_<target>.pth), everything else from the shipped all-target model "
                   "(models/schnet_qm9_all.pth)")
    p.add_argument("--checkpoint", help="a checkpoint written by train.py (default: the shipped model for --target)")
    p.add_argument("--relax", action="store_true", help="first relax each structure (BFGS) with the energy and "
                   "forces of the shipped U0 potential (models/schnet_qm9_U0_potential.pth); adds the column "
                   "relax_rmsd (A moved). Its minima are not yet DFT's: how far it moves QM9's own geometries, and "
                   "what that costs, is in docs/PREDICTING.md")
    p.add_argument("--relax-checkpoint", help="the energy model --relax uses (default: "
                   "models/schnet_qm9_U0_potential.pth)")
    p.add_argument("--relax-fmax", type=float, default=0.01, help="--relax stops when every force is below this "
                   "(eV/A)")
    p.add_argument("--relax-steps", type=int, default=1000, help="--relax stops after this many BFGS steps")
    p.add_argument("--csv", type=Path, help="also write the table to this CSV file, one column per property "
                   "named by its target (mu, alpha, ..., cv), in the units of the printed header")
    p.add_argument("--per-atom", action="store_true",
                   help="print each atom's contribution and draw results/atom_contributions_<name>.png")
    p.add_argument("--explain", action="store_true", help="per atom, for one output (--target): integrated "
                   "gradients of the prediction with respect to the atom's input embedding from a zero-embedding "
                   "baseline (steps until they sum to prediction - baseline prediction within 1 %%), the saliency "
                   "|dy/dr_i|, the additive contribution and, with an attention readout, the attention weight "
                   "(inference/explain.py); printed, drawn as results/explain_<name>.png, and with --csv written one "
                   "row per atom instead of one per molecule")
    p.add_argument("--output-dir", type=Path, default=Path("results"), help="where --per-atom and --explain "
                   "pictures go")
    p.add_argument("--precision", choices=list(precision.CHOICES), default="auto",
                   help="bf16: the linear layers in bfloat16, faster on hardware that has it but less exact (how "
                   "much, per shipped model: docs/PERFORMANCE.md); auto: fp32")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--batch-size", type=int, default=256, help="molecules per forward pass")
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    """Predict for every input; print the table (and the per-atom tables and pictures asked for), one line on
    stderr for each input that failed; write --csv with a row for each success and each failure (its reason in
    the note column); exit 1 if any input failed."""
    args = build_parser().parse_args(argv)
    try:
        if not args.files and not args.smiles:
            raise UserError("give structure files, .smi files or --smiles")
        if args.batch_size <= 0 or args.relax_steps <= 0 or not args.relax_fmax > 0:
            raise UserError("--batch-size, --relax-steps and --relax-fmax must be positive")
        device = resolve_device(args.device)
        path, ckpt, shown = choose_model(args)
        model = checkpoint.build_model(ckpt, device)
        molecules, failures = read_inputs(args.files, args.smiles, checkpoint.elements(ckpt))
        if args.relax:
            molecules, failed = relax_all(molecules, args.relax_checkpoint, args.relax_fmax, args.relax_steps)
            failures += failed
        for m in molecules:  # of the geometry predicted from: the relaxed one with --relax
            m.notes = domain.notes(m.z, m.pos, model.cutoff, checkpoint.max_heavy_atoms(ckpt), m.charge) + m.notes
        mixed = precision.resolve(args.precision, device, checkpoint.target_names(ckpt), training=False)
        if warning := precision.emulation_warning(args.precision, device):
            print(warning, file=sys.stderr)
        preds, contributions = predict_molecules(model, molecules, device, args.batch_size, mixed)
    except UserError as err:
        sys.exit(f"error: {err}")
    names = [checkpoint.output_spec(ckpt, k)["name"] for k in shown]
    units = [checkpoint.output_spec(ckpt, k)["unit"] for k in shown]
    with_smiles = any(m.smiles for m in molecules) or any(f.smiles for f in failures)
    rows = [dict(file=m.file, frame=m.frame, formula=m.formula, atoms=len(m.z),
                 **(dict(smiles=m.smiles, name=m.name) if with_smiles else {}),
                 **({"relax_rmsd": m.relax_rmsd} if args.relax else {}),
                 **{n: float(v[k]) for n, k in zip(names, shown)}, note="; ".join(m.notes))
            for m, v in zip(molecules, preds)]
    if rows:
        print(describe(path, ckpt))
        print_table(rows, names, units, with_smiles, args.relax)
    if args.per_atom:
        draw_contributions(model, molecules, contributions, shown, names, units, args.output_dir)
    if args.explain:
        rows, failed = explain_molecules(model, molecules, contributions, shown[0], names[0], units[0],
                                         args.output_dir)
        failures += failed
    for f in failures:  # the good rows are printed above
        print(f"error: {f.message}", file=sys.stderr)
    if args.csv:
        write_csv(args.csv, rows, failures, with_smiles)
    if failures:
        sys.exit(1)
    return rows


def choose_model(args) -> tuple[Path, dict, list[int]]:
    """The checkpoint (--checkpoint, or the shipped model for --target), and which of its outputs to report."""
    if args.target not in (None, "all"):
        try:
            args.target = target_name(args.target)
        except ValueError as err:
            raise UserError(str(err)) from None
    path = resolve_checkpoint(args.checkpoint, args.target)
    ckpt = checkpoint.load(path)
    shown = select(ckpt, path, args.target)
    if args.explain and len(shown) != 1:
        raise UserError(f"--explain attributes one output and {path} has {len(shown)}: name it with --target")
    return path, ckpt, shown


def write_csv(path: Path, rows: list[dict], failures: list[Failure], with_smiles: bool) -> None:
    """The rows, then a row per failed input (file, frame, SMILES and name where known, the reason in `note`), in
    one atomic write."""
    failed = [dict(file=f.file, frame="" if f.frame is None else f.frame,
                   **(dict(smiles=f.smiles, name=f.name) if with_smiles else {}), note=f"failed: {f.message}")
              for f in failures]
    columns = list(rows[0]) if rows else ["file", "frame", *(["smiles", "name"] if with_smiles else []), "note"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows + failed)
    with atomic_write(path) as tmp:
        tmp.write_text(buf.getvalue())


def print_table(rows: list[dict], names: list[str], units: list[str], with_smiles: bool, relaxed: bool) -> None:
    """The rows, aligned, with each property's unit in its header."""
    width = max(len(r["file"]) for r in rows)
    headers = [plots.quantity(n, u) for n, u in zip(names, units)]
    widths = [max(12, len(h)) for h in headers]
    sw = max([len(r.get("smiles", "")) for r in rows] + [6])
    print(f"{'file':<{width}}  frame  {'formula':<12} atoms  " + (f"{'smiles':<{sw}}  " if with_smiles else "")
          + ("relax_rmsd (A)  " if relaxed else "")
          + "  ".join(f"{h:>{w}}" for h, w in zip(headers, widths)) + "  note")
    for r in rows:
        print(f"{r['file']:<{width}}  {r['frame']:>5}  {r['formula']:<12} {r['atoms']:>5}  "
              + (f"{r['smiles']:<{sw}}  " if with_smiles else "")
              + (f"{r['relax_rmsd']:>14.4f}  " if relaxed else "")
              + "  ".join(f"{r[n]:>{w}.5f}" for n, w in zip(names, widths)) + f"  {r['note']}")


def explain_molecules(model: torch.nn.Module, molecules: list[Molecule], contributions: list[np.ndarray], k: int,
                      name: str, unit: str, out_dir: Path) -> tuple[list[dict], list[Failure]]:
    """--explain: each molecule's per-atom attributions of output k, printed and drawn; (one row per atom, a
    Failure for each molecule whose attributions could not be computed or drawn)."""
    rows, failed = [], []
    model = model.cpu()
    for m, c in zip(molecules, contributions):
        try:
            rows += explain_molecule(model, m, c, k, name, unit, out_dir, sum(x.file == m.file for x in molecules))
        except Exception as err:  # one molecule's failure never costs the others their rows
            failed.append(Failure.of(m, f"{m.file} frame {m.frame}: explanation failed ({one_line(err)})"))
    return rows, failed


def explain_molecule(model: torch.nn.Module, m: Molecule, c: np.ndarray, k: int, name: str, unit: str,
                     out_dir: Path, frames_of_file: int) -> list[dict]:
    """One molecule's attributions of output k (contributions c [n, K]): printed, drawn, one row per atom."""
    from ase.data import chemical_symbols

    from schnetqm9.inference import explain

    att = model.attention_outputs.index(k) if k in getattr(model, "attention_outputs", []) else None
    z, pos = torch.from_numpy(m.z).long(), torch.from_numpy(m.pos).float()
    ig = explain.integrated_gradients(model, z, pos, k)
    kinds = dict(integrated_gradient=ig.values, saliency=explain.saliency(model, z, pos, k), contribution=c[:, k])
    if att is not None:
        with torch.no_grad():
            kinds["attention"] = model.attention_weights(z, pos)[:, att].numpy()
    units = dict(integrated_gradient=unit, saliency=f"{unit}/A" if unit else "per A", contribution=unit,
                 attention="")
    print(f"\n{m.file} frame {m.frame} ({m.formula}), {name}: integrated gradients from the zero-embedding "
          f"baseline ({ig.prediction:.5g} - {ig.baseline_prediction:.5g} {unit}), {ig.steps} steps, sum within "
          f"{100 * ig.completeness_error:.2g} %")
    print("  atom    " + "".join(f"{plots.quantity(kind, units[kind]):>26}" for kind in kinds))
    rows = []
    for i, zi in enumerate(m.z):
        print(f"  {i:3d}  {chemical_symbols[zi]:<2}" + "".join(f"{v[i]:>26.5f}" for v in kinds.values()))
        rows.append(dict(file=m.file, frame=m.frame, formula=m.formula, atom=i, element=chemical_symbols[zi],
                         **{kind: float(v[i]) for kind, v in kinds.items()}, note=""))
    stem = f"{Path(m.file).stem}" + (f"_{m.frame}" if frames_of_file > 1 else "")
    plots.plot_attributions(m.z, m.pos, [(kind, v, units[kind]) for kind, v in kinds.items()],
                            f"{m.formula} ({Path(m.file).name}, frame {m.frame}): {name} "
                            f"{ig.prediction:.4g} {unit}".rstrip(), out_dir / f"explain_{stem}.png")
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
