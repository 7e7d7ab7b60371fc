"""Is the DFT geometry a minimum of the learned surface, or a saddle? For each of the first M molecules of
potential_check.py's sample: the model's Hessian at the DFT geometry and BFGS from that geometry itself (no noise).

    OMP_NUM_THREADS=1 python -m experiments.potential.saddle_check --checkpoint resume/pot/best_model_pot_a.pth --molecules 10

The Hessian is the central difference of the calculator's forces, H_kl = -(F_l(x + h e_k) - F_l(x - h e_k)) / 2h
with h = 1e-3 A, symmetrised, in eV/A^2; at a true minimum its 3N eigenvalues are >= 0 (six ~0: translations and
rotations). Printed per molecule: the eigenvalues below -0.05 eV/A^2 (how many, the lowest), and after the
relaxation the aligned RMSD to the DFT geometry over all atoms and over heavy atoms, and E(relaxed) - E(DFT).
"""
import argparse
from pathlib import Path

import numpy as np
from ase import Atoms

from schnetqm9.data import qm9 as qm9_data
from schnetqm9.model import shipped
from schnetqm9.potential import calculator as ase_calculator
from schnetqm9.potential import check as potential_check


def hessian(atoms: Atoms, h: float = 1e-3) -> np.ndarray:
    """The symmetrised finite-difference Hessian [3N, 3N] (eV/A^2) of atoms' calculator at atoms' positions."""
    x = atoms.get_positions().ravel()
    rows = []
    for k in range(x.size):
        f = []
        for sign in (1, -1):
            y = x.copy()
            y[k] += sign * h
            atoms.positions = y.reshape(-1, 3)
            f.append(atoms.get_forces().ravel())
        rows.append(-(f[0] - f[1]) / (2 * h))
    atoms.positions = x.reshape(-1, 3)
    H = np.array(rows)
    return 0.5 * (H + H.T)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=shipped.path("U0"), help="an energy checkpoint")
    p.add_argument("--molecules", type=int, default=10, help="molecules, from potential_check.py's sample")
    args = p.parse_args()
    if args.molecules <= 0:
        p.error(f"--molecules must be positive, got {args.molecules}")
    calc = ase_calculator.SchNetCalculator(args.checkpoint)
    qm9 = qm9_data.QM9("data")
    counts, drops, rmsds = [], [], []
    for i in potential_check.sample(args.molecules, 0):
        d = qm9[i]
        z, dft = d.z.numpy(), d.pos.double().numpy()
        atoms = Atoms(numbers=z, positions=dft, calculator=calc)
        e0 = atoms.get_potential_energy()
        ev = np.linalg.eigvalsh(hessian(atoms))
        neg = ev[ev < -0.05]
        pos, steps, _ = ase_calculator.relax(z, dft, calc)
        e1 = Atoms(numbers=z, positions=pos, calculator=calc).get_potential_energy()
        heavy = z > 1
        rmsd, rmsd_heavy = ase_calculator.aligned_rmsd(dft, pos), ase_calculator.aligned_rmsd(dft[heavy], pos[heavy])
        counts.append(len(neg))
        drops.append(e1 - e0)
        rmsds.append(rmsd)
        print(f"molecule {i:6d} ({len(z)} atoms): {len(neg):2d} eigenvalues < -0.05 eV/A^2 (lowest "
              f"{ev[0]:+.2f}); relaxed from DFT in {steps} steps: RMSD {rmsd:.3f} A (heavy atoms {rmsd_heavy:.3f}), "
              f"E - E(DFT) {e1 - e0:+.3f} eV", flush=True)
    print(f"{args.checkpoint}: median {np.median(counts):.0f} negative "
          f"eigenvalues, relaxation from DFT moves {np.median(rmsds):.3f} A and lowers E by {-np.median(drops):.3f} eV "
          f"(medians over {len(counts)} molecules)")


if __name__ == "__main__":
    main()
