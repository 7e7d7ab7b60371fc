"""Harmonic frequencies from a surface's Hessian: a harmonic diatomic gives the textbook wavenumber, the model's
Hessian is the derivative of its forces and turns with the molecule, and MMFF94 lands near QM9's frequencies."""
from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.data import atomic_masses
from scipy.spatial.transform import Rotation

from schnetqm9.model import shipped
from schnetqm9.potential import frequencies
from schnetqm9.potential.calculator import SchNetCalculator


def test_a_harmonic_bond_vibrates_at_sqrt_k_over_the_reduced_mass() -> None:
    """CO with E = k/2 (r - r0)^2: one internal mode, nu = sqrt(k / mu) / (2 pi c); translations and rotations
    (which carry zero curvature here) are projected out, not reported."""
    k, z = 118.0, np.array([6, 8])  # eV/A^2
    pos = np.array([[0.0, 0.0, 0.0], [0.3, -0.4, 1.0]])
    u = (pos[1] - pos[0]) / np.linalg.norm(pos[1] - pos[0])
    block = k * np.outer(u, u)
    hessian = np.block([[block, -block], [-block, block]])
    mu = np.prod(atomic_masses[z]) / atomic_masses[z].sum()
    nu = frequencies.wavenumbers(hessian, z, pos)
    assert nu.shape == (1,)  # 3n - 5 for a linear molecule
    assert nu[0] == pytest.approx(frequencies.WAVENUMBER * np.sqrt(k / mu), rel=1e-9)
    assert nu[0] == pytest.approx(2170, rel=0.01)  # CO's harmonic wavenumber, for this force constant
    assert frequencies.zpve(nu) == pytest.approx(frequencies.HC / 2 * nu[0])


@pytest.fixture(scope="module")
def potential() -> SchNetCalculator:
    return SchNetCalculator(shipped.path(shipped.POTENTIAL))


def test_the_model_hessian_is_the_derivative_of_its_forces_and_turns_with_the_molecule(potential, qm9) -> None:
    d = qm9[40]
    z, pos = d.z.numpy(), d.pos.double().numpy()
    hessian = frequencies.model_hessian(potential, z, pos)
    atoms, h = Atoms(numbers=z, positions=pos), 1e-4
    atoms.calc = potential
    column = []
    for k in (0, 4, 3 * len(z) - 1):  # a few columns by central differences of the forces
        shifted = []
        for sign in (1, -1):
            x = pos.copy().ravel()
            x[k] += sign * h
            atoms.positions = x.reshape(-1, 3)
            shifted.append(-atoms.get_forces().ravel())
        column.append((shifted[0] - shifted[1]) / (2 * h))
    np.testing.assert_allclose(np.array(column).T, hessian[:, [0, 4, 3 * len(z) - 1]], atol=1e-4)
    turned = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).apply(pos) + [1.0, 2.0, -3.0]
    np.testing.assert_allclose(frequencies.wavenumbers(frequencies.model_hessian(potential, z, turned), z, turned),
                               frequencies.wavenumbers(hessian, z, pos), atol=1e-3)


def test_mmff94_is_near_qm9s_frequencies_and_the_measure_reports_it(qm9) -> None:
    """MMFF94, a force field fitted to vibrations, lands within a few per cent of QM9's B3LYP wavenumbers at its
    geometries; the ZPVE from QM9's own harmonic wavenumbers is near QM9's zpve column (same method, anharmonic
    corrections aside)."""
    rows = frequencies.measure("mmff", qm9, frequencies.checked_molecules(3, 0))
    s = frequencies.summarise(rows)
    assert s["molecules"] == 3 and s["median_rel_error"] < 0.08
    for r in rows:
        assert len(r["nu"]) == len(r["nu_qm9"]) and r["nu_qm9"] == sorted(r["nu_qm9"])
        assert r["zpve_qm9_harmonic"] == pytest.approx(r["zpve_qm9"], rel=0.02)

