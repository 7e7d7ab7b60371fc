"""What does potential_check.py's relaxation test ask of a surface? The same test (BFGS, fmax 0.01 eV/A, from the
DFT geometry displaced by 0.05 A Gaussian noise per coordinate, the same seeds) run on harmonic surfaces whose
minimum lies exactly at, or a known residual force away from, the DFT geometry: the protocol's own ceiling, and the
residual force and stiffness a learned surface needs to pass it.

    python -m experiments.potential.harmonic_check --molecules 100

Each surface is built on MMFF94's internal normal modes at the DFT geometry x_0 (v_k, lambda_k: potential.mmff_modes;
MMFF's frequencies there are within a median 4 % of DFT's, POTENTIAL.md), with q_k = v_k . (x - x_0):

.. math::
    E(x) = \\sum_k \\tfrac12\\, s\\, c_k\\, q_k^2 - f_k\\, q_k, \\qquad c_k = \\max(|\\lambda_k|, \\lambda_0),
    \\qquad F(x) = -\\sum_k (s\\, c_k q_k - f_k)\\, v_k

s scales the stiffness (1: MMFF's; the shipped potential has 0.34-0.53 of it, mode_check.py) and f_k is a residual
force along each mode at x_0 with a seeded random sign: its minimum is q_k = f_k / (s c_k) away along mode k, which
is what a learned surface's error does (mode_check.py). Both are set per band of MMFF's curvature (mode_check's
BANDS), one value for every band or one each: the last surfaces take the shipped potential's own profile from
mode_check.py (its model / MMFF curvature and RMS residual force per mode, band by band). Rigid motions cost
nothing, and the RMSD is taken after alignment, as in potential_check.py.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from tqdm import tqdm

from experiments.potential.mode_check import BANDS
from schnetqm9.data import qm9 as qm9_data
from schnetqm9.potential import calculator as ase_calculator
from schnetqm9.potential import check as potential_check
from schnetqm9.potential import losses as potential

# measured profiles per band (mode_check.py, 30 molecules): model / MMFF curvature, and RMS residual force per mode
# at x_0 in eV/A; e: the 4-epoch potential (shipped until 2026-12-03), g: the 12-epoch one (shipped since)
E_STIFFNESS, E_FORCE = (0.34, 0.38, 0.48, 0.53), (0.027, 0.041, 0.089, 0.142)
G_STIFFNESS, G_FORCE = (0.07, 0.46, 0.41, 0.37), (0.012, 0.026, 0.058, 0.105)


def profile(stiffness: tuple, force: tuple) -> tuple:
    """A measured profile as three surfaces: as measured, without the two soft bands' residuals, without the two
    stiff bands'."""
    return (stiffness, force), (stiffness, (0.0, 0.0) + force[2:]), (stiffness, force[:2] + (0.0, 0.0))


SURFACES = (  # (stiffness scale s, residual force f per mode in eV/A): one for all of BANDS, or one per band
    (1.0, 0.0), (0.4, 0.0), (1.0, 0.002), (1.0, 0.005), (1.0, 0.01), (1.0, 0.02), (1.0, 0.05),
    (0.4, 0.005), (0.4, 0.01), (0.4, 0.02), (0.4, 0.05),
    *profile(E_STIFFNESS, E_FORCE), *profile(G_STIFFNESS, G_FORCE))


def per_mode(value: float | tuple, lam: np.ndarray) -> np.ndarray:
    """A surface's s or f [m] for modes of MMFF curvature lam [m]: the one value, or each band's (BANDS)."""
    if np.isscalar(value):
        return np.full(len(lam), float(value))
    return np.select([(lam >= lo) & (lam < hi) for lo, hi in BANDS], value)


def label(value: float | tuple) -> str:
    return f"{value:.3f}" if np.isscalar(value) else "/".join(f"{v:g}" for v in value)


class Harmonic(Calculator):
    """The harmonic surface of the module docstring around x0 [n, 3] on modes V [3n, m] with stiffness c [m]
    (eV/A^2) and residual forces f [m] (eV/A)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, x0: np.ndarray, modes: np.ndarray, c: np.ndarray, f: np.ndarray):
        super().__init__()
        self.x0, self.modes, self.c, self.f = x0.ravel(), modes, c, f

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        q = self.modes.T @ (self.atoms.get_positions().ravel() - self.x0)
        self.results = dict(energy=float(0.5 * self.c @ q ** 2 - self.f @ q),
                            forces=(-(self.modes @ (self.c * q - self.f))).reshape(-1, 3))


def check_molecule(z: np.ndarray, dft: np.ndarray, noisy: np.ndarray, signs: np.ndarray) -> list[float] | None:
    """Aligned RMSD to DFT (A) after relaxing `noisy` [n, 3] on each of SURFACES, or None if MMFF cannot type it."""
    typed = potential.mmff_typed(z, dft)
    if typed is None:
        return None
    lam, V = potential.mmff_modes(typed, dft)
    c = np.maximum(np.abs(lam), potential.SOFTEST)
    out = []
    for s, f in SURFACES:
        calc = Harmonic(dft, V, per_mode(s, lam) * c, per_mode(f, lam) * signs[:len(lam)])
        pos, _, _ = ase_calculator.relax(z, noisy, calc)
        out.append(ase_calculator.aligned_rmsd(dft, pos))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--molecules", type=int, default=100, help="molecules, from potential_check.py's sample")
    p.add_argument("--output", type=Path, help="also write the per-molecule RMSDs and the summary (JSON)")
    args = p.parse_args()
    if args.molecules <= 0:
        p.error(f"--molecules must be positive, got {args.molecules}")
    qm9 = qm9_data.QM9("data")
    rows = []
    for i in tqdm(potential_check.sample(args.molecules, 0), desc="molecules", unit="mol"):
        d = qm9[i]
        z, dft = d.z.numpy(), d.pos.double().numpy()
        noisy = potential_check.noisy_start(dft, i, 0.05, 0)  # potential_check's defaults
        signs = np.random.default_rng(10_000_000 + i).choice([-1.0, 1.0], size=3 * len(z))
        r = check_molecule(z, dft, noisy, signs)
        if r is None:
            tqdm.write(f"molecule {i:6d}: MMFF94 cannot type it, left out")
            continue
        rows.append(dict(index=i, atoms=len(z), rmsd=r))
    rmsd = np.array([r["rmsd"] for r in rows])
    goal = potential_check.GOALS["relax_rmsd"]
    summary = [dict(stiffness=s, residual_force=f, rmsd_median=float(np.median(rmsd[:, j])),
                    rmsd_mean=float(rmsd[:, j].mean()), returned=float((rmsd[:, j] <= goal).mean()))
               for j, (s, f) in enumerate(SURFACES)]
    print(f"{len(rows)} QM9 test molecules, BFGS (fmax 0.01 eV/A) from DFT + 0.05 A noise on harmonic surfaces")
    print("per band of MMFF94 curvature " + ", ".join(f"[{lo:g}, {hi:g})" for lo, hi in BANDS) + " eV/A^2 where four")
    print(f"{'stiffness / MMFF':>20s} {'residual force (eV/A)':>24s} {'RMSD median (A)':>16s} {'mean':>7s} "
          f"{'within ' + str(goal) + ' A':>14s}")
    for s in summary:
        print(f"{label(s['stiffness']):>20s} {label(s['residual_force']):>24s} {s['rmsd_median']:16.3f} "
              f"{s['rmsd_mean']:7.3f} {100 * s['returned']:13.0f} %")
    if args.output:
        args.output.write_text(json.dumps(dict(surfaces=SURFACES, summary=summary, molecules=rows), indent=1))


if __name__ == "__main__":
    main()
