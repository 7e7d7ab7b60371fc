"""Is a potential's well harmonic around QM9's minima, or flat-bottomed? The restoring force along one random
displacement, at fractions of it, against MMFF94's (whose curvature is within 4 % of QM9's B3LYP frequencies).

    OMP_NUM_THREADS=1 python -m experiments.potential.flat_bottom --checkpoint models/schnet_qm9_U0_potential.pth

For each of check.py's test molecules, delta is Gaussian noise of 0.05 A per coordinate (seeded) and, at each
fraction t of it, the restoring force per unit of displacement is

    k(t) = RMS[F(x_0 + t delta) - F(x_0)] / t        (eV/A per unit of delta)

A harmonic well gives the same k at every t (-H delta); a flat-bottomed one a small k at small t that grows to the
right value only near t = 1, the scale the training's prior displaces by. Printed: the median over molecules of
k(t) / k_MMFF(1).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from ase import Atoms

from schnetqm9.data import qm9 as qm9_data
from schnetqm9.data.splits import checked_molecules as sample
from schnetqm9.potential import losses
from schnetqm9.potential.calculator import SchNetCalculator

FRACTIONS = (0.01, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def restoring(calc: SchNetCalculator, z: np.ndarray, x0: np.ndarray, delta: np.ndarray) -> list[float]:
    """k(t) for every t of FRACTIONS (module docstring)."""
    atoms = Atoms(numbers=z, positions=x0)
    atoms.calc = calc
    f0 = atoms.get_forces()
    out = []
    for t in FRACTIONS:
        atoms.positions = x0 + t * delta
        out.append(float(np.sqrt(((atoms.get_forces() - f0) ** 2).mean()) / t))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=Path("models/schnet_qm9_U0_potential.pth"))
    p.add_argument("--molecules", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, help="the JSON written")
    args = p.parse_args()
    qm9 = qm9_data.QM9("data", progress=False)
    calc = SchNetCalculator(args.checkpoint)
    g = np.random.default_rng(args.seed)
    ratios = []
    for i in sample(args.molecules, args.seed):
        d = qm9[i]
        z, x0 = d.z.numpy(), d.pos.double().numpy()
        delta = g.normal(0, 0.05, x0.shape)
        typed = losses.mmff_typed(z, x0)
        if typed is None:
            continue
        mmff = np.sqrt(((losses.mmff_forces(typed, x0 + delta) - losses.mmff_forces(typed, x0)) ** 2).mean())
        ratios.append([k / mmff for k in restoring(calc, z, x0, delta)])
    median = np.median(ratios, axis=0)
    print(f"{args.checkpoint}: {len(ratios)} molecules; restoring force per unit displacement at t x (0.05 A noise), "
          "against MMFF94's at t = 1, median:")
    print("  " + "  ".join(f"t={t:g}: {m:.2f}" for t, m in zip(FRACTIONS, median)))
    if args.output:
        args.output.write_text(json.dumps(dict(checkpoint=str(args.checkpoint), fractions=FRACTIONS,
                                               median_ratio=median.tolist(), ratios=ratios), indent=1))


if __name__ == "__main__":
    main()
