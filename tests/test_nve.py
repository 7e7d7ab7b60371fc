"""The NVE check of a potential (schnetqm9/potential/nve.py): energy kept on a smooth surface, bonds found and
broken bonds seen."""
from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.lj import LennardJones

from schnetqm9.model import shipped
from schnetqm9.potential import nve
from schnetqm9.potential.calculator import SchNetCalculator


@pytest.fixture(scope="module")
def potential() -> SchNetCalculator:
    return SchNetCalculator(shipped.path(shipped.POTENTIAL))


def test_nve_keeps_a_smooth_surfaces_energy_and_sees_a_bond_break(potential) -> None:
    """The NVE check: on the potential, 20 fs keep the total energy (kinetic + potential) to a few meV and every
    bond of methane (four C-H, no H-H); on a purely repulsive surface the atoms fly apart and it says so."""
    methane = molecule("CH4")
    assert sorted(map(tuple, nve.bonds(methane).tolist())) == [(0, 1), (0, 2), (0, 3), (0, 4)]
    traj = nve.run(methane, potential, fs=20.0, seed=1)
    np.testing.assert_allclose(traj.total, traj.potential + traj.kinetic)
    assert len(traj.t_fs) == 41 and traj.drift < 0.01 and traj.broken == 0
    assert traj.kinetic[0] > 0  # thermal velocities at 300 K
    apart = nve.run(methane, LennardJones(sigma=2.0, epsilon=1.0, rc=6.0), fs=20.0, seed=1)
    assert apart.broken == 4 and apart.stretch.min() > nve.BROKEN
