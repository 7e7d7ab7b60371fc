"""Where the training data ends: the notes predict.py prints beside a prediction that should not be trusted.

QM9 is 130,831 neutral, closed-shell organic molecules of up to 9 heavy atoms (C, N, O, F) at their DFT minima. A
SchNet answers for anything made of the elements it knows, so the prediction itself never says when a structure
lies outside that. These checks do, each from the structure alone:

    single atom      QM9 has no free atoms
    close atoms      two atoms nearer than MIN_DISTANCE: a broken geometry (QM9's shortest bonds are ~1 A)
    fragments        parts farther apart than the cutoff: the model sees separate molecules and adds (or averages)
                     their values, and no part feels the others
    odd electrons    sum of atomic numbers minus the charge is odd: a radical; QM9 is closed-shell
    charge           a net charge (known from a SMILES): QM9 is neutral and the model cannot see a charge
    heavy atoms      more non-hydrogen atoms than any training molecule
"""
from __future__ import annotations

import numpy as np

from schnetqm9.data.geometry import closest_pair, fragments

MIN_DISTANCE = 0.5  # Angstrom


def notes(z: np.ndarray, pos: np.ndarray, cutoff: float, max_heavy_atoms: int | None,
          charge: int | None = None) -> list[str]:
    """Why a prediction for the structure (z [n], pos [n, 3] Angstrom) should not be trusted; [] when nothing says
    so. `max_heavy_atoms`: the most in any training molecule (None: unknown, not checked); `charge`: the net
    charge when known (a SMILES), else the structure is taken as neutral."""
    out = []
    if len(z) == 1:
        out.append("a single atom: QM9 has no free atoms")
    i, j, d = closest_pair(pos)
    if d < MIN_DISTANCE:
        out.append(f"atoms {i} and {j} only {d:.2f} A apart: broken geometry")
    parts = fragments(pos, cutoff)
    if parts > 1:
        out.append(f"{parts} fragments farther apart than the cutoff ({cutoff:g} A): seen as separate molecules")
    electrons = int(np.sum(z)) - (charge or 0)
    if electrons % 2:
        out.append(f"odd number of electrons ({electrons}{', if neutral' if charge is None else ''}): a radical; "
                   "QM9 is closed-shell")
    if charge:
        out.append(f"net charge {charge:+d}: QM9 is neutral, the model cannot see a charge")
    heavy = int(np.sum(z > 1))
    if max_heavy_atoms is not None and heavy > max_heavy_atoms:
        out.append(f"{heavy} heavy atoms, more than any training molecule ({max_heavy_atoms})")
    return out
