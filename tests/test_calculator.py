"""The ASE calculator: forces are the exact derivative of its energy, they turn with the molecule, it works with
ase.optimize and ase.md, and it refuses what it cannot compute."""
from __future__ import annotations

from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest
import torch
from ase import units
from ase.md.verlet import VelocityVerlet

from schnetqm9.cli import UserError
from schnetqm9.inference import predictions as predict
from schnetqm9.model import shipped
from schnetqm9.potential.calculator import SchNetCalculator, aligned_rmsd, relax
from schnetqm9.potential.nve import thermalise

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def calc() -> SchNetCalculator:
    return SchNetCalculator(shipped.path("U0"))  # the U0 model: the tests below check it is its prediction


def molecule(qm9, i: int) -> ase.Atoms:
    d = qm9[i]
    return ase.Atoms(numbers=d.z.numpy(), positions=d.pos.double().numpy())


def test_energy_is_the_shipped_models_u0_prediction(calc: SchNetCalculator, qm9) -> None:
    from schnetqm9.model import checkpoint

    ckpt = checkpoint.load(shipped.path("U0"))
    model = checkpoint.build_model(ckpt)
    d = qm9[123]
    atoms = molecule(qm9, 123)
    atoms.calc = calc
    with torch.no_grad():
        expected = float(model(d.z, d.pos)[0, 0])  # float32, as the model was tested
    assert atoms.get_potential_energy() == pytest.approx(expected, abs=2e-3)
    assert abs(atoms.get_potential_energy() - float(qm9.y[123, 7])) < 0.5  # a trained U0 model, in eV


def test_the_default_surface_is_the_shipped_potential_not_the_u0_model() -> None:
    """SchNetCalculator() is for forces, relaxations and MD: the U0 potential, whose forces at QM9's minima are small
    (the U0 model's are ~3 eV/A there: a surface with holes)."""
    assert SchNetCalculator().checkpoint_path == shipped.path("U0_potential") == shipped.path(shipped.POTENTIAL)


def test_forces_are_minus_the_finite_difference_gradient(calc: SchNetCalculator, qm9) -> None:
    atoms = molecule(qm9, 2000)
    atoms.rattle(0.02, seed=1)  # away from the training geometry: forces of all sizes
    atoms.calc = calc
    forces = atoms.get_forces()
    h = 1e-4
    for i, k in [(0, 0), (1, 2), (len(atoms) - 1, 1)]:
        pos = atoms.get_positions()
        plus, minus = atoms.copy(), atoms.copy()
        p, m = pos.copy(), pos.copy()
        p[i, k] += h
        m[i, k] -= h
        plus.set_positions(p)
        minus.set_positions(m)
        plus.calc = minus.calc = calc
        numeric = -(plus.get_potential_energy() - minus.get_potential_energy()) / (2 * h)
        assert forces[i, k] == pytest.approx(numeric, rel=1e-5, abs=1e-6)


def test_energy_invariant_and_forces_rotate_with_the_molecule(calc: SchNetCalculator, qm9) -> None:
    atoms = molecule(qm9, 3000)
    atoms.calc = calc
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    turned = atoms.copy()
    turned.rotate(117, (1, -2, 0.5), center="COM")
    turned.translate((3.0, -1.0, 7.0))
    turned.calc = calc
    rotation = ase.Atoms(positions=np.eye(3))
    rotation.rotate(117, (1, -2, 0.5), center=(0, 0, 0))
    assert turned.get_potential_energy() == pytest.approx(e, abs=1e-8)
    np.testing.assert_allclose(turned.get_forces(), f @ rotation.positions, atol=1e-8)
    assert np.abs(f.sum(0)).max() < 1e-8  # no net force: the energy does not depend on where the molecule is


def test_bfgs_lowers_the_energy_and_md_runs(calc: SchNetCalculator, qm9) -> None:
    atoms = molecule(qm9, 4000)
    atoms.rattle(0.05, seed=2)
    atoms.calc = calc
    e0 = atoms.get_potential_energy()
    pos, steps, _ = relax(atoms.numbers, atoms.get_positions(), calc, fmax=0.05, steps=20)
    relaxed = atoms.copy()
    relaxed.set_positions(pos)
    relaxed.calc = calc
    assert steps > 0 and relaxed.get_potential_energy() < e0
    thermalise(relaxed, 300.0, seed=0)
    assert np.abs(relaxed.get_momenta().sum(0)).max() < 1e-10
    etot0 = relaxed.get_total_energy()
    VelocityVerlet(relaxed, 0.1 * units.fs).run(10)  # a tiny step: the energy is conserved to O(dt^2)
    assert abs(relaxed.get_total_energy() - etot0) < 5e-3


def test_aligned_rmsd_ignores_rotation_and_translation() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 3))
    b = ase.Atoms(positions=a)
    b.rotate(40, (0, 1, 1), center=(0, 0, 0))
    b.translate((1.0, 2.0, 3.0))
    assert aligned_rmsd(a, b.positions) < 1e-10
    shifted = a.copy()
    shifted[0] += (0.7, 0.0, 0.0)
    assert 0.1 < aligned_rmsd(a, shifted) < 0.7 / np.sqrt(7) + 1e-9  # alignment can only lower it


def test_refuses_non_energy_outputs_periodic_cells_and_unknown_elements(calc: SchNetCalculator,
                                                                         tmp_path: Path) -> None:
    with pytest.raises(UserError, match="gap .*is not an energy in eV read out as a sum"):
        SchNetCalculator(REPO / "models" / "schnet_qm9_gap.pth")
    with pytest.raises(UserError, match="predicts .*not U0_atom"):
        SchNetCalculator(REPO / "models" / "schnet_qm9_all.pth", target="U0_atom")
    assert SchNetCalculator(REPO / "models" / "schnet_qm9_all.pth").output == 7  # U0 of the twelve
    periodic = ase.Atoms("CH4", positions=np.eye(5, 3), cell=[10, 10, 10], pbc=True)
    periodic.calc = calc
    with pytest.raises(UserError, match="periodic cells are not supported"):
        periodic.get_potential_energy()
    silane = ase.Atoms("SiH4", positions=np.eye(5, 3) * 1.5)
    silane.calc = calc
    with pytest.raises(UserError, match=r"atomic numbers \[14\] were never seen"):
        silane.get_potential_energy()


def test_energy_precision_is_float64(calc: SchNetCalculator, qm9) -> None:
    """A displacement of 1e-6 A changes the energy smoothly (float32 would round ~1e4 eV to ~1e-3 eV steps)."""
    atoms = molecule(qm9, 500)
    atoms.calc = calc
    e0 = atoms.get_potential_energy()
    f = atoms.get_forces()
    moved = atoms.copy()
    moved.positions[0] += (1e-6, 0.0, 0.0)
    moved.calc = calc
    assert moved.get_potential_energy() - e0 == pytest.approx(-f[0, 0] * 1e-6, rel=1e-3, abs=1e-9)
    assert calc.model.atomref.dtype == torch.float64


@pytest.mark.slow
def test_predict_relax_predicts_at_the_relaxed_geometry(calc: SchNetCalculator, qm9, tmp_path: Path) -> None:
    atoms = molecule(qm9, 4000)
    atoms.rattle(0.05, seed=3)
    ase.io.write(tmp_path / "m.xyz", atoms)
    atoms = ase.io.read(tmp_path / "m.xyz")  # the coordinates as the file holds them
    rows = predict.main(["--device", "cpu", "--target", "U0", "--relax", "--relax-fmax", "0.05",
                         str(tmp_path / "m.xyz")])
    surface = SchNetCalculator(shipped.path(shipped.POTENTIAL))  # --relax relaxes on it, predicts with the U0 model
    pos, _, converged = relax(atoms.numbers, atoms.get_positions(), surface, fmax=0.05)
    relaxed = atoms.copy()
    relaxed.set_positions(pos)
    relaxed.calc = calc
    # predict's model runs in float32, whose spacing at 1e4 eV is 1 meV: a few of them summed over the atoms
    assert converged and rows[0]["U0"] == pytest.approx(relaxed.get_potential_energy(), abs=5e-3)
    assert rows[0]["relax_rmsd"] == pytest.approx(aligned_rmsd(atoms.get_positions(), pos), abs=1e-6)
    rows = predict.main(["--device", "cpu", "--target", "U0", "--relax", "--relax-steps", "2", str(tmp_path / "m.xyz")])
    assert "relaxation not converged in 2 steps (fmax 0.01 eV/A)" in rows[0]["note"]


@pytest.mark.slow
def test_potential_check_measures_and_writes_each_goal(tmp_path: Path) -> None:
    import json

    from schnetqm9.potential import check as potential_check

    summary = potential_check.main(["--molecules", "2", "--output", str(tmp_path / "pc.json")])  # the potential
    written = json.loads((tmp_path / "pc.json").read_text())
    assert written["summary"] == summary and len(written["molecules"]) == 2
    assert set(written["goals"]) == {"max_force_median", "relax_rmsd", "min_distance", "md_drift_mev", "u0_mae"}
    recorded = torch.load(shipped.path("U0_potential"), weights_only=True)["metrics"]
    expected = recorded["qm9_minima"]["mae"] if "qm9_minima" in recorded else recorded["test_mae"]
    assert summary["u0_test_mae"] == pytest.approx(expected, rel=1e-4)  # the figure the shipped file records
    for row in written["molecules"]:
        assert row["max_force"] > 0 and row["relax_rmsd"] >= 0 and row["md_drift_mev"] >= 0


def test_shipped_potential_is_far_flatter_than_the_u0_model_at_the_dft_minima(calc: SchNetCalculator, qm9) -> None:
    """QM9's geometries are DFT minima (zero force): the potential, trained on that, puts a median largest atomic
    force on 20 test molecules at most a third of the U0 model's there, and below 0.5 eV/A."""
    from schnetqm9.data import splits

    potential = SchNetCalculator(shipped.path("U0_potential"))
    worst = {"U0": [], "potential": []}
    for i in splits.standard_split()["test"][:20].tolist():
        for name, c in (("U0", calc), ("potential", potential)):
            atoms = molecule(qm9, i)
            atoms.calc = c
            worst[name].append(float(np.linalg.norm(atoms.get_forces(), axis=1).max()))
    u0, pot = np.median(worst["U0"]), np.median(worst["potential"])
    assert pot < u0 / 3 and pot < 0.5, (u0, pot)
