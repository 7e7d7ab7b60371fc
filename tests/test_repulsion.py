"""The ZBL wall: nothing at any QM9 geometry, the screened Coulomb repulsion of the nuclei where atoms meet, smooth
in between, onsets per element pair, and its forces in the ASE calculator exact."""
from __future__ import annotations

import math

import ase
import pytest
import torch

from schnetqm9.data import batch as batching
from schnetqm9.model import graph
from schnetqm9.potential import repulsion
from schnetqm9.potential.calculator import SchNetCalculator


def test_each_pairs_shortest_qm9_distance_is_beyond_its_switch(qm9) -> None:
    """Over all 130,831 molecules: each element pair's shortest distance is the table's SHORTEST, so every pair's
    onset OFF d_ij lies inside it and the wall adds exactly zero to every QM9 geometry (and to none of the training
    data)."""
    shortest: dict[tuple[int, int], float] = {}
    for chunk in torch.arange(len(qm9)).split(4096):
        b = batching.Batcher(qm9)(chunk)
        pos = b.pos.double()
        j, i = graph.radius_graph(pos, 3.0, b.batch)
        keep = i < j
        i, j = i[keep], j[keep]
        r = (pos[i] - pos[j]).norm(dim=-1)
        lo, hi = torch.minimum(b.z[i], b.z[j]), torch.maximum(b.z[i], b.z[j])
        for a, c in torch.stack([lo, hi], 1).unique(dim=0).tolist():
            here = float(r[(lo == a) & (hi == c)].min())
            shortest[a, c] = min(shortest.get((a, c), math.inf), here)
        assert float(repulsion.energy(b.z, pos, b.batch).abs().max()) == 0.0
    assert shortest.keys() == repulsion.SHORTEST.keys()  # all 15 pairs of H, C, N, O, F come within 3 A somewhere
    for pair, d in shortest.items():
        assert d == pytest.approx(repulsion.SHORTEST[pair], abs=1e-4), pair
        assert repulsion.OFF * float(repulsion.REFERENCE[pair]) < d


def test_reference_lengths_are_qm9s_or_a_bonds_whichever_is_shorter() -> None:
    """O-H keeps QM9's 0.9586 A; O-O and H-H, which QM9 never bonds (2.15 and 1.51 A at the least), get 1.2 times
    their covalent sums, so the wall stays out of real bonds from outside QM9: a peroxide's O-O (1.47 A), H2 (0.74 A);
    the table is symmetric."""
    d = repulsion.REFERENCE
    assert float(d[1, 8]) == pytest.approx(0.9586) and float(d[8, 1]) == float(d[1, 8])
    assert float(d[8, 8]) == pytest.approx(1.2 * 1.32, abs=0.01) and float(d[1, 1]) == pytest.approx(0.744, abs=0.01)
    for z, bond in ((8, 1.47), (1, 0.74)):
        pair = torch.tensor([[0.0, 0, 0], [bond, 0, 0]], dtype=torch.float64)
        assert float(repulsion.energy(torch.tensor([z, z]), pair)) == 0.0
    torch.testing.assert_close(d, d.T)


def test_screening_tends_to_bare_coulomb_and_decays() -> None:
    """phi(0) = 1 (the four weights sum to one): at r -> 0 the nuclei repel as bare charges, k_e Z_i Z_j / r."""
    assert sum(repulsion.PHI_C) == pytest.approx(1.0, abs=1e-4)
    z6, z1 = torch.tensor([6]), torch.tensor([1])
    r = torch.tensor([1e-5], dtype=torch.float64)
    assert float(repulsion.zbl_pair(z6, z1, r) * r) == pytest.approx(repulsion.COULOMB * 6, rel=1e-3)
    r = torch.linspace(0.05, 3.0, 200, dtype=torch.float64)
    e = repulsion.zbl_pair(z6.expand(200), z1.expand(200), r)
    assert bool((e.diff() < 0).all()) and float(e[-1] / (repulsion.COULOMB * 6 / 3.0)) < 0.01  # screened away


def test_switch_is_twice_continuously_differentiable() -> None:
    d = torch.full((5,), 1.2, dtype=torch.float64)
    on, off = repulsion.ON * 1.2, repulsion.OFF * 1.2
    r = torch.tensor([on, off, 0.3, 1.5, (on + off) / 2], dtype=torch.float64, requires_grad=True)
    s = repulsion.switch(r, d)
    (d1,) = torch.autograd.grad(s.sum(), r, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), r)
    assert s.detach().tolist()[:4] == pytest.approx([1.0, 0.0, 1.0, 0.0], abs=1e-12) and 0 < float(s[4].detach()) < 1
    assert d1[:4].abs().max() < 1e-12 and d2[:4].abs().max() < 1e-9 and float(d1[4].detach()) < 0


def test_energy_is_the_sum_over_close_pairs_per_molecule() -> None:
    """Two molecules in one batch: H2 at 0.3 A (inside the H-H onset: full ZBL), and a C-H pair at 0.75 A, in the
    C-H switch, beside an O far away from both."""
    z = torch.tensor([1, 1, 6, 1, 8])
    pos = torch.tensor([[0, 0, 0], [0.3, 0, 0], [0, 0, 0], [0.75, 0, 0], [0, 3, 0]], dtype=torch.float64)
    batch = torch.tensor([0, 0, 1, 1, 1])
    e = repulsion.energy(z, pos, batch)
    hh = repulsion.zbl_pair(torch.tensor([1]), torch.tensor([1]), torch.tensor([0.3], dtype=torch.float64))
    ch = repulsion.zbl_pair(torch.tensor([6]), torch.tensor([1]), torch.tensor([0.75], dtype=torch.float64))
    s = repulsion.switch(torch.tensor([0.75], dtype=torch.float64), repulsion.REFERENCE[6, 1].reshape(1))
    assert 0 < float(s) < 1
    torch.testing.assert_close(e, torch.cat([hh, ch * s]))
    assert float(e[1]) > 1.0  # eV: a C-H pair at 0.7 A costs more than any bond's energy gains there


def test_calculator_adds_the_wall_with_exact_forces() -> None:
    """A methane with one hydrogen pushed to 0.45 A of the carbon: the calculator's energy is the model's plus the
    wall's, its forces are still minus the finite-difference gradient, and they push the hydrogen out."""
    atoms = ase.Atoms("CH4", positions=[[0, 0, 0], [0.45, 0, 0], [-0.36, 1.03, 0], [-0.36, -0.51, 0.89],
                                        [-0.36, -0.51, -0.89]])
    with_wall, without = SchNetCalculator(), SchNetCalculator(repulsion=False)
    atoms.calc = without
    e_model = atoms.get_potential_energy()
    atoms.calc = with_wall
    z = torch.tensor(atoms.numbers)
    wall = float(repulsion.energy(z, torch.tensor(atoms.positions)))
    assert wall > 10 and atoms.get_potential_energy() == pytest.approx(e_model + wall, abs=1e-9)
    f = atoms.get_forces()
    assert f[1, 0] > 0  # the hydrogen is pushed away from the carbon along +x
    h = 1e-5
    for i, k in [(1, 0), (0, 0), (2, 1)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, k] += h
        minus.positions[i, k] -= h
        plus.calc = minus.calc = with_wall
        numeric = -(plus.get_potential_energy() - minus.get_potential_energy()) / (2 * h)
        assert f[i, k] == pytest.approx(numeric, rel=1e-5, abs=1e-5)
