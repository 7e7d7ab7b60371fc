"""A wall where atoms meet: the ZBL screened nuclear repulsion, switched off well inside each element pair's shortest
distance in QM9.

A SchNet trained on QM9 has never seen two atoms closer than QM9's shortest distance of their pair (SHORTEST),
and its energy there is whatever the filters extrapolate to: relaxations on the shipped U0 model end with atoms
on top of each other (docs/POTENTIAL_MMFF.md). Potentials trained on data add a fixed pair repulsion for this
(the ZBL term of NequIP, Allegro and MACE). The Ziegler-Biersack-Littmark universal potential of two nuclei of
charges Z_i, Z_j at distance r is

.. math::
    E_{ij}(r) = \\frac{k_e Z_i Z_j}{r}\\,\\phi(r/a_{ij}), \\qquad a_{ij} = \\frac{0.46850\\,\\text{A}}
    {Z_i^{0.23} + Z_j^{0.23}}, \\qquad \\phi(x) = \\sum_{k=1}^4 c_k e^{-d_k x}

(k_e = e^2 / 4 pi eps_0 = 14.399645 eV A), the Coulomb repulsion of the nuclei screened by their electrons. Here
it is multiplied by a switch s_ij(r) that is 1 below ON d_ij, 0 above OFF d_ij and twice continuously
differentiable (s = 1 - 10t^3 + 15t^4 - 6t^5, t = (r - ON d_ij) / ((OFF - ON) d_ij)). The pair's reference length

.. math::
    d_{ij} = \\min\\big(d^{\\rm QM9}_{ij},\\; 1.2\\,(r^{\\rm cov}_i + r^{\\rm cov}_j)\\big)

is its shortest distance in all of QM9 (SHORTEST, measured by tests/test_repulsion.py), or, where that is shorter,
BONDED = 1.2 times the sum of ASE's covalent radii (Cordero et al. 2008), the usual rule for "still bonded": the
pairs QM9 never bonds (H-H, O-O, F-F, ...) would otherwise get a wall at non-bonded contact distances, across a
real bond of a molecule from outside QM9 (H2 0.74 A, a peroxide's O-O 1.47 A, F2 1.41 A, all beyond their
onsets). OFF = 0.8 < 1, so the wall adds exactly nothing at any QM9 geometry and a model's QM9 predictions do not
change; and it is zero at every labelled B3LYP frame of labels/ (300 K, 600 K and 0.05 A noise compress a bond to
0.86 d_ij at the least), where a single onset of 0.9 A for all pairs bent compressed O-H bonds (docs/POTENTIAL.md).
Forces stay continuous for molecular dynamics. Added to the model's energy by the ASE calculator
(potential/calculator.py); the energy model itself stays PyG's SchNet.
"""
from __future__ import annotations

import torch
from ase.data import covalent_radii
from torch import Tensor

from schnetqm9.model import graph

COULOMB = 14.399645  # e^2 / (4 pi eps_0), eV Angstrom
SCREENING = 0.46850  # 0.8854 Bohr radii, Angstrom
PHI_C = (0.18175, 0.50986, 0.28022, 0.02817)
PHI_D = (3.19980, 0.94229, 0.40290, 0.20162)
# Angstrom: each element pair's shortest distance in all 130,831 QM9 geometries (tests/test_repulsion.py)
SHORTEST = {(1, 1): 1.5134, (1, 6): 1.0609, (1, 7): 1.0022, (1, 8): 0.9586, (1, 9): 2.0553, (6, 6): 1.1974,
            (6, 7): 1.1517, (6, 8): 1.1726, (6, 9): 1.2970, (7, 7): 1.1722, (7, 8): 1.2101, (7, 9): 2.1806,
            (8, 8): 2.1510, (8, 9): 2.1360, (9, 9): 2.1487}
ON, OFF = 0.6, 0.8  # full ZBL below ON d_ij, none above OFF d_ij
BONDED = 1.2  # d_ij is at most this times the sum of the covalent radii


def reference_lengths() -> Tensor:
    """d_ij [Z, Z] (Angstrom, float64) for atomic numbers up to ASE's last: QM9's shortest distance of the pair, or
    BONDED times the sum of covalent radii where that is shorter or QM9 has no such pair."""
    r = torch.as_tensor(covalent_radii, dtype=torch.float64)
    d = BONDED * (r[:, None] + r[None, :])
    for (a, b), shortest in SHORTEST.items():
        d[a, b] = d[b, a] = min(shortest, float(d[a, b]))
    return d


REFERENCE = reference_lengths()


def zbl_pair(zi: Tensor, zj: Tensor, r: Tensor) -> Tensor:
    """E_ij(r) in eV, unswitched, for pairs of atomic numbers zi, zj [P] at distances r [P] (Angstrom)."""
    zi, zj = zi.to(r.dtype), zj.to(r.dtype)
    x = r * (zi.pow(0.23) + zj.pow(0.23)) / SCREENING
    phi = sum(c * torch.exp(-d * x) for c, d in zip(PHI_C, PHI_D))
    return COULOMB * zi * zj / r * phi


def switch(r: Tensor, d: Tensor) -> Tensor:
    """s(r) [P] for pairs at distances r [P] with reference lengths d [P]: 1 for r <= ON d, 0 for r >= OFF d, a
    quintic with zero first and second derivatives at both ends."""
    t = ((r - ON * d) / ((OFF - ON) * d)).clamp(0.0, 1.0)
    return 1 - t**3 * (10 - 15 * t + 6 * t**2)


def energy(z: Tensor, pos: Tensor, batch: Tensor | None = None) -> Tensor:
    """The switched ZBL energy [B] (eV) of each molecule: z [N] atomic numbers, pos [N, 3] Angstrom (may require
    grad: the forces are its autograd derivative), batch [N] the molecule of each atom, sorted (None: one)."""
    if batch is None:
        batch = torch.zeros(len(z), dtype=torch.long, device=z.device)
    out = pos.new_zeros(int(batch.max()) + 1 if len(batch) else 0)
    elements = z.unique().cpu()
    reach = float(OFF * REFERENCE[elements[:, None], elements[None, :]].max()) if len(z) else 0.0  # farthest onset
    j, i = graph.radius_graph(pos.detach(), reach, batch)
    keep = i < j  # each unordered pair once
    i, j = i[keep], j[keep]
    r = (pos[i] - pos[j]).norm(dim=-1)
    d = REFERENCE.to(pos.device, pos.dtype)[z[i], z[j]]
    return out.index_add(0, batch[i], zbl_pair(z[i], z[j], r) * switch(r, d))
