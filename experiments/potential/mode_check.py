"""Where does a learned minimum miss DFT's, mode by mode? For each of the first M molecules of potential_check.py's
sample: the displacement from the DFT geometry to the model's minimum (BFGS from the DFT geometry itself) and the
model's residual force there, resolved into MMFF94's normal modes at the DFT geometry, band by band of stiffness.

    OMP_NUM_THREADS=1 python -m experiments.potential.mode_check --checkpoint models/schnet_qm9_U0_potential.pth --molecules 30

MMFF94's Hessian H (central differences of its forces, h = 1e-3 A) is taken on the 3n - 6 internal coordinates,
the complement Q [3n, 3n - 6] of the rigid translations and rotations: Q^T H Q = U diag(lambda) U^T, modes
v_k = Q u_k with curvatures lambda_k (eV/A^2; potential.mmff_modes; MMFF's curvature is within a median 4 % of
DFT's at these geometries, POTENTIAL.md). With d [3n] the aligned displacement to the model's minimum and F [3n]
the model's force at the DFT geometry, per band B of modes:

.. math::
    \\mathrm{share}_B = \\frac{\\sum_{k \\in B} (v_k \\cdot d)^2}{\\sum_k (v_k \\cdot d)^2}, \\qquad
    f_B = \\sqrt{\\frac{1}{|B|} \\sum_{k \\in B} (v_k \\cdot F)^2}, \\qquad
    \\rho_k = \\frac{v_k^T H_{\\mathrm{model}} v_k}{\\lambda_k}

(pooled over molecules for the share; medians for f and rho). A minimum within a distance r of DFT's needs
|v_k . F| <~ c_k r along every mode, c_k the model's curvature there: the band's median curvature times 0.05 A is
the residual force the relaxation goal asks of it (printed as "force needed").
"""
import argparse
import json
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import minimize_rotation_and_translation

from experiments.potential.saddle_check import hessian
from schnetqm9.data import qm9 as qm9_data
from schnetqm9.model import shipped
from schnetqm9.potential import calculator as ase_calculator
from schnetqm9.potential import check as potential_check
from schnetqm9.potential import losses as potential

BANDS = ((-np.inf, 0.1), (0.1, 1.0), (1.0, 10.0), (10.0, np.inf))  # eV/A^2; the first holds MMFF's negative ones
NAMES = ("< 0.1 (torsions, rotors)", "0.1 - 1 (bends, soft torsions)", "1 - 10 (bends)", ">= 10 (stretches)")
RELAX_GOAL = 0.05  # A, potential_check.GOALS["relax_rmsd"]


def aligned_displacement(reference: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """pos [n, 3] moved onto reference by the best rotation and translation, minus reference: [3n] (A)."""
    ref, moved = Atoms(positions=reference), Atoms(positions=pos)
    minimize_rotation_and_translation(ref, moved)
    return (moved.positions - ref.positions).ravel()


def check_molecule(z: np.ndarray, dft: np.ndarray, calc) -> dict | None:
    typed = potential.mmff_typed(z, dft)
    if typed is None:
        return None
    lam, V = potential.mmff_modes(typed, dft)
    atoms = Atoms(numbers=z, positions=dft, calculator=calc)
    force = atoms.get_forces().ravel()
    curvature = np.einsum("ik,ij,jk->k", V, hessian(atoms), V)  # v_k^T H_model v_k
    relaxed, steps, _ = ase_calculator.relax(z, dft, calc)
    d, f = V.T @ aligned_displacement(dft, relaxed), V.T @ force  # mode coordinates
    bands = []
    for lo, hi in BANDS:
        k = (lam >= lo) & (lam < hi)
        bands.append(dict(modes=int(k.sum()), d2=float((d[k] ** 2).sum()),
                          force_rms=float(np.sqrt(np.mean(f[k] ** 2))) if k.any() else None,
                          mmff_curvature=float(np.median(lam[k])) if k.any() else None,
                          model_curvature=float(np.median(curvature[k])) if k.any() else None,
                          ratio=float(np.median(curvature[k] / lam[k])) if k.any() else None))
    return dict(atoms=len(z), rmsd=float(np.sqrt((d ** 2).sum() / len(z))), steps=steps, bands=bands)


def summarise(rows: list[dict]) -> list[dict]:
    total = sum(b["d2"] for r in rows for b in r["bands"])
    out = []
    for j, name in enumerate(NAMES):
        bs = [r["bands"][j] for r in rows if r["bands"][j]["modes"]]

        def median(key: str) -> float:
            return float(np.median([b[key] for b in bs]))

        out.append(dict(band=name, modes_median=float(np.median([r["bands"][j]["modes"] for r in rows])),
                        share=sum(b["d2"] for b in bs) / total, force_rms_median=median("force_rms"),
                        mmff_curvature_median=median("mmff_curvature"), model_curvature_median=median(
                            "model_curvature"), ratio_median=median("ratio"),
                        force_needed=abs(median("model_curvature")) * RELAX_GOAL))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=shipped.path("U0_potential"), help="an energy checkpoint")
    p.add_argument("--molecules", type=int, default=30, help="molecules, from potential_check.py's sample")
    p.add_argument("--output", type=Path, help="also write the per-molecule numbers and the summary (JSON)")
    args = p.parse_args()
    if args.molecules <= 0:
        p.error(f"--molecules must be positive, got {args.molecules}")
    calc = ase_calculator.SchNetCalculator(args.checkpoint)
    qm9 = qm9_data.QM9("data")
    rows = []
    for i in potential_check.sample(args.molecules, 0):
        d = qm9[i]
        row = check_molecule(d.z.numpy(), d.pos.double().numpy(), calc)
        if row is None:
            print(f"molecule {i:6d}: MMFF94 cannot type it, left out", flush=True)
            continue
        rows.append(dict(index=i, **row))
        print(f"molecule {i:6d} ({row['atoms']} atoms): moved {row['rmsd']:.3f} A; share of it by band "
              + " / ".join(f"{b['d2'] / max(row['rmsd'] ** 2 * row['atoms'], 1e-30):.2f}" for b in row["bands"]),
              flush=True)
    summary = summarise(rows)
    print(f"{args.checkpoint}: {len(rows)} molecules, relaxation from DFT moves a median "
          f"{np.median([r['rmsd'] for r in rows]):.3f} A (internal coordinates)")
    print(f"{'MMFF94 band (eV/A^2)':32s} {'modes':>5s} {'share of d^2':>12s} {'|F| per mode':>12s} "
          f"{'MMFF curv.':>10s} {'model curv.':>11s} {'model/MMFF':>10s} {'force needed':>12s}")
    for s in summary:
        print(f"{s['band']:32s} {s['modes_median']:5.0f} {s['share']:12.2f} {s['force_rms_median']:12.3f} "
              f"{s['mmff_curvature_median']:10.3f} {s['model_curvature_median']:11.3f} {s['ratio_median']:10.2f} "
              f"{s['force_needed']:12.4f}")
    if args.output:
        args.output.write_text(json.dumps(dict(checkpoint=str(args.checkpoint), summary=summary, molecules=rows),
                                          indent=1))


if __name__ == "__main__":
    main()
