"""Is an energy model a usable potential? The checks of issue 15 on QM9 test molecules, measured the same way for
every model:

    python -m schnetqm9.potential.check                                   # the shipped U0 potential
    python -m schnetqm9.potential.check --checkpoint checkpoints/best_model_U0.pth --molecules 100
    python -m schnetqm9.potential.check --molecules 20 --relaxed results/relaxed.extxyz   # for relax_energy.py

QM9's geometries are DFT minima, so on a good potential:
    forces    the largest atomic force at the DFT geometry is ~0 (goal: median <= 0.1 eV/A);
    relax     BFGS from the DFT geometry displaced by Gaussian noise (0.05 A per coordinate, seeded) returns to it
              (goal: aligned RMSD <= 0.05 A, and no two atoms closer than 0.9 A);
    md        100 fs of NVE molecular dynamics at 300 K (velocity Verlet, 0.5 fs steps, Maxwell-Boltzmann start
              without net momentum or rotation) keeps the total energy (goal: max |E(t) - E(0)| <= 10 meV);
    accuracy  the U0 test MAE on the whole test split stays that of a good model (goal: <= 0.025 eV); for a
              model of QM9's electronic surface (trained on a potential/surface.py file, target 'energy'), its
              MAE against QM9's U0 - ZPVE (as an atomization energy), the same surface less the zero-point
              energy.
The molecules are the first M of a seeded permutation of the standard test split. Prints one table and writes the
per-molecule numbers and their summary to --output (JSON); --relaxed also writes each molecule's DFT geometry and
where the relaxation ended, as extended XYZ for the labeller (potential/relax_energy.py: their B3LYP energies).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
from ase import Atoms
from tqdm.auto import tqdm

from schnetqm9 import files
from schnetqm9.cli import Parser, UserError
from schnetqm9.data import batch as batching
from schnetqm9.data import qm9 as qm9_data
from schnetqm9.data import splits
from schnetqm9.data.geometry import closest_pair
from schnetqm9.model import checkpoint
from schnetqm9.model.evaluation import batched_outputs
from schnetqm9.potential import calculator as ase_calculator
from schnetqm9.potential import nve, relax_energy, surface
from schnetqm9.seeds import draw_seed

GOALS = dict(max_force_median=0.1, relax_rmsd=0.05, min_distance=0.9, md_drift_mev=10.0, u0_mae=0.025)


sample = splits.checked_molecules  # the molecules checked: the same for every model


def noisy_start(dft: np.ndarray, i: int, noise: float, seed: int) -> np.ndarray:
    """Molecule i's relaxation start: its DFT positions [n, 3] plus Gaussian noise of `noise` A per coordinate,
    seeded by (seed, i) so that every surface checked starts from the same geometry."""
    return dft + np.random.default_rng(draw_seed(seed, i)).normal(scale=noise, size=dft.shape)


def check_molecule(qm9: qm9_data.QM9, i: int, calc, noise: float, seed: int) -> tuple[dict, np.ndarray]:
    """Molecule i's checks, and where its relaxation ended [n, 3] (A)."""
    d = qm9[i]
    z, dft = d.z.numpy(), d.pos.double().numpy()
    atoms = Atoms(numbers=z, positions=dft)
    atoms.calc = calc
    max_force = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    pos, steps, converged = ase_calculator.relax(z, noisy_start(dft, i, noise, seed), calc)
    return dict(index=i, atoms=len(z), max_force=max_force, relax_rmsd=ase_calculator.aligned_rmsd(dft, pos),
                relax_min_distance=closest_pair(pos)[2], relax_steps=steps, relax_converged=converged,
                md_drift_mev=1000 * nve.run(atoms, calc, fs=100.0, seed=seed + i).drift), pos


def summarise(rows: list[dict], u0_mae: float) -> dict:
    f = np.array([r["max_force"] for r in rows])
    rmsd = np.array([r["relax_rmsd"] for r in rows])
    dmin = np.array([r["relax_min_distance"] for r in rows])
    drift = np.array([r["md_drift_mev"] for r in rows])
    back = (rmsd <= GOALS["relax_rmsd"]) & (dmin >= GOALS["min_distance"])
    return dict(molecules=len(rows), max_force_median=float(np.median(f)), max_force_p90=float(np.quantile(f, 0.9)),
                relax_rmsd_median=float(np.median(rmsd)), relax_rmsd_mean=float(rmsd.mean()),
                relax_returned=float(back.mean()), relax_min_distance_min=float(dmin.min()),
                relax_too_close=int((dmin < GOALS["min_distance"]).sum()),
                md_drift_median_mev=float(np.median(drift)), md_drift_max_mev=float(drift.max()),
                md_within_goal=float((drift <= GOALS["md_drift_mev"]).mean()), u0_test_mae=u0_mae)


def print_summary(s: dict, path: Path) -> None:
    print(f"model: {os.path.relpath(path)}{'' if s['repulsion'] else ' without the ZBL wall'}, "
          f"{s['molecules']} QM9 test molecules")
    print(f"  largest atomic force at the DFT geometry: median {s['max_force_median']:.3f} eV/A, "
          f"90th percentile {s['max_force_p90']:.3f} (goal: median <= {GOALS['max_force_median']})")
    print(f"  relaxed from 0.05 A noise: RMSD to DFT median {s['relax_rmsd_median']:.3f} A, mean "
          f"{s['relax_rmsd_mean']:.3f}; back within {GOALS['relax_rmsd']} A with no pair < {GOALS['min_distance']} "
          f"A: {100 * s['relax_returned']:.0f} %; closest pair {s['relax_min_distance_min']:.2f} A, "
          f"{s['relax_too_close']} molecules with a pair < {GOALS['min_distance']} A")
    print(f"  NVE 100 fs at 300 K, 0.5 fs: |E(t) - E(0)| max median {s['md_drift_median_mev']:.1f} meV, worst "
          f"{s['md_drift_max_mev']:.1f}; within {GOALS['md_drift_mev']:g} meV: {100 * s['md_within_goal']:.0f} %")
    print(f"  {s['energy_compared_with']} test MAE (10,831 molecules): {s['u0_test_mae']:.4f} eV "
          f"(goal <= {GOALS['u0_mae']})")


def energy_mae(qm9: qm9_data.QM9, ckpt: dict, output: int, batch_size: int = 512) -> tuple[float, str]:
    """(MAE in eV of the energy output on the whole standard test split, what it is compared with): QM9's own
    column for a QM9 model, U0 - ZPVE for a model of potential/surface.py's file."""
    test = splits.standard_split()["test"]
    pred = batched_outputs(checkpoint.build_model(ckpt), batching.Batcher(qm9), test, batch_size)[:, output]
    if checkpoint.data_source(ckpt) == "QM9":
        spec = checkpoint.output_spec(ckpt, output)
        return float((pred.double() - qm9.y[test, spec["column"]].double()).abs().mean()), spec["name"]
    if checkpoint.output_spec(ckpt, output)["name"] != surface.KEY:
        raise UserError(f"the checkpoint was trained on {checkpoint.data_source(ckpt)}, not on QM9 or on a "
                        "potential/surface.py file: there is no QM9 column to measure its energies against")
    return float((pred.double() - surface.qm9_minimum_energies(qm9)[test]).abs().mean()), "U0 - ZPVE"


def main(argv: list[str] | None = None) -> dict:
    p = Parser(description=__doc__.split("\n\n")[0])
    ase_calculator.add_model_flags(p)
    p.add_argument("--molecules", type=int, default=100, help="QM9 test molecules checked")
    p.add_argument("--noise", type=float, default=0.05, help="displacement before relaxing, A per coordinate")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample, the displacements and the velocities")
    p.add_argument("--data-dir", default="data", help="QM9 cache folder")
    p.add_argument("--output", type=Path, default=Path("results/potential_check.json"), help="the JSON written")
    p.add_argument("--relaxed", type=Path, help="also write each molecule's DFT geometry and its relaxed one here "
                   "(extended XYZ), for the labeller and potential/relax_energy.py")
    args = p.parse_args(argv)
    try:
        if args.molecules <= 0 or not args.noise > 0:
            raise UserError("--molecules and --noise must be positive")
        calc = ase_calculator.from_flags(args)
        qm9 = qm9_data.QM9(args.data_dir)
        u0_mae, compared = energy_mae(qm9, checkpoint.load(args.checkpoint), calc.output)
        checked = [check_molecule(qm9, i, calc, args.noise, args.seed)
                   for i in tqdm(sample(args.molecules, args.seed), desc="Checking", unit="mol")]
    except UserError as err:
        sys.exit(f"error: {err}")
    rows = [row for row, _ in checked]
    if args.relaxed:
        ends = [(row["index"], pos) for row, pos in checked]
        relax_energy.write_pairs(args.relaxed, qm9, ends, relax_energy.surface_name(args.checkpoint))
        print(f"wrote {args.relaxed}: {len(checked)} DFT geometries and their relaxations")
    summary = {**summarise(rows, u0_mae), "energy_compared_with": compared, "repulsion": calc.repulsion}
    print_summary(summary, args.checkpoint)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_write(args.output) as tmp:
        tmp.write_text(json.dumps(dict(checkpoint=str(args.checkpoint), goals=GOALS, summary=summary, molecules=rows,
                                       args={k: str(v) for k, v in vars(args).items()}), indent=1))
    return summary


if __name__ == "__main__":
    main()
