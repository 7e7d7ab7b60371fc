"""A wall where atoms meet: the ZBL screened nuclear repulsion, switched off below QM9's shortest interatomic distance.

A SchNet trained on QM9 has never seen two atoms closer than QM9's shortest bond (SHORTEST_QM9, an O-H
bond), and its energy there is whatever the filters extrapolate to: relaxations on the shipped U0 model end with
atoms on top of each other (docs/POTENTIAL.md). Potentials trained on data add a fixed pair repulsion for this
(the ZBL term of NequIP, Allegro and MACE). The Ziegler-Biersack-Littmark universal potential of two nuclei of
charges Z_i, Z_j at distance r is

.. math::
    E_{ij}(r) = \\frac{k_e Z_i Z_j}{r}\\,\\phi(r/a_{ij}), \\qquad a_{ij} = \\frac{0.46850\\,\\text{A}}
    {Z_i^{0.23} + Z_j^{0.23}}, \\qquad \\phi(x) = \\sum_{k=1}^4 c_k e^{-d_k x}

(k_e = e^2 / 4 pi eps_0 = 14.399645 eV A), the Coulomb repulsion of the nuclei screened by their electrons. Here
it is multiplied by a switch s(r) that is 1 below R_ON, 0 above R_OFF and twice continuously differentiable
(s = 1 - 10t^3 + 15t^4 - 6t^5, t = (r - R_ON) / (R_OFF - R_ON)), with R_OFF below every distance in QM9: it adds
exactly nothing at any QM9 geometry, so a model's QM9 predictions do not change, and forces stay continuous for
molecular dynamics. Added to the model's energy by the ASE calculator (potential/calculator.py); the energy model
itself stays PyG's SchNet.
"""
from __future__ import annotations

import torch
from torch import Tensor

from schnetqm9.model import graph

COULOMB = 14.399645  # e^2 / (4 pi eps_0), eV Angstrom
SCREENING = 0.46850  # 0.8854 Bohr radii, Angstrom
PHI_C = (0.18175, 0.50986, 0.28022, 0.02817)
PHI_D = (3.19980, 0.94229, 0.40290, 0.20162)
SHORTEST_QM9 = 0.9586  # Angstrom: the shortest interatomic distance in all 130,831 QM9 geometries (tests)
R_ON, R_OFF = 0.6, 0.9  # Angstrom: full ZBL below R_ON, none above R_OFF < SHORTEST_QM9


def zbl_pair(zi: Tensor, zj: Tensor, r: Tensor) -> Tensor:
    """E_ij(r) in eV, unswitched, for pairs of atomic numbers zi, zj [P] at distances r [P] (Angstrom)."""
    zi, zj = zi.to(r.dtype), zj.to(r.dtype)
    x = r * (zi.pow(0.23) + zj.pow(0.23)) / SCREENING
    phi = sum(c * torch.exp(-d * x) for c, d in zip(PHI_C, PHI_D))
    return COULOMB * zi * zj / r * phi


def switch(r: Tensor) -> Tensor:
    """s(r) [P]: 1 for r <= R_ON, 0 for r >= R_OFF, a quintic with zero first and second derivatives at both ends."""
    t = ((r - R_ON) / (R_OFF - R_ON)).clamp(0.0, 1.0)
    return 1 - t**3 * (10 - 15 * t + 6 * t**2)


def energy(z: Tensor, pos: Tensor, batch: Tensor | None = None) -> Tensor:
    """The switched ZBL energy [B] (eV) of each molecule: z [N] atomic numbers, pos [N, 3] Angstrom (may require
    grad: the forces are its autograd derivative), batch [N] the molecule of each atom, sorted (None: one)."""
    if batch is None:
        batch = torch.zeros(len(z), dtype=torch.long, device=z.device)
    out = pos.new_zeros(int(batch.max()) + 1 if len(batch) else 0)
    j, i = graph.radius_graph(pos.detach(), R_OFF, batch)
    keep = i < j  # each unordered pair once
    i, j = i[keep], j[keep]
    r = (pos[i] - pos[j]).norm(dim=-1)
    return out.index_add(0, batch[i], zbl_pair(z[i], z[j], r) * switch(r))
