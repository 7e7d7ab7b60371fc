"""Training U0 as a potential (potential.py, train.py --force-weight / --prior-weight): the MMFF94 prior is the
force field's own derivative and restores displaced geometries; the zero-force term drives the forces at the
training geometries down; bad flags are refused in one line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from schnet_model import SchNet
from schnetqm9.data import batch as batching
from schnetqm9.potential import losses as potential

REPO = Path(__file__).resolve().parents[1]


def test_mmff_forces_are_minus_the_gradient_of_mmff_energy(qm9) -> None:
    from rdkit.Chem import AllChem
    from rdkit.Geometry import Point3D

    d = qm9[321]
    z, pos = d.z.numpy(), d.pos.double().numpy()
    typed = potential.mmff_typed(z, pos)
    assert typed is not None
    moved = pos + np.random.default_rng(0).normal(scale=0.05, size=pos.shape)
    mol, props = typed

    def energy(x: np.ndarray) -> float:
        conf = mol.GetConformer()
        for a, row in enumerate(x.reshape(-1, 3).tolist()):
            conf.SetAtomPosition(a, Point3D(*row))
        return AllChem.MMFFGetMoleculeForceField(mol, props).CalcEnergy() * potential.KCAL_PER_MOL_TO_EV

    forces = potential.mmff_forces(typed, moved)
    again = potential.mmff_forces(typed, pos)  # another geometry in between: no state carried over
    assert np.abs(again).max() > 0
    np.testing.assert_array_equal(potential.mmff_forces(typed, moved), forces)
    h, x = 1e-5, moved.ravel()
    numeric = np.array([-(energy(x + h * e) - energy(x - h * e)) / (2 * h) for e in np.eye(x.size)])
    np.testing.assert_allclose(forces.ravel(), numeric, atol=1e-6)


def test_shifted_prior_vanishes_at_the_dft_geometry_and_restores_displacements(qm9) -> None:
    rng = np.random.default_rng(1)
    restoring = []
    for i in (5, 500, 5000, 50000):
        d = qm9[i]
        z, pos = d.z.numpy(), d.pos.double().numpy()
        np.testing.assert_allclose(potential.mmff_restoring_forces(z, pos, pos), 0.0, atol=1e-12)
        delta = rng.normal(scale=0.02, size=pos.shape)
        f = potential.mmff_restoring_forces(z, pos, pos + delta)
        restoring.append(float((f * delta).sum()))  # F . delta < 0: the force points back
    assert all(r < 0 for r in restoring)


def test_zero_force_term_drives_the_forces_at_the_geometries_down(qm9) -> None:
    torch.manual_seed(0)
    model = SchNet(hidden_channels=32, num_filters=32, num_interactions=2, num_gaussians=16, cutoff=5.0,
                   mean=-4.0, std=0.2, atomref=torch.zeros(100, 1))
    batcher = batching.Batcher(qm9)
    mols = torch.arange(8)
    b = batcher(mols)
    terms = potential.PotentialLoss(0, 1.0, force_weight=1.0, prior_weight=0.0, noise=0.05, seed=0)
    before = potential.max_force_median(model, batcher, mols, 0)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for step in range(60):
        pos = b.pos.detach().requires_grad_(True)
        loss = terms(model, b.z, pos, b.batch, model(b.z, pos, b.batch)[:, 0], step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = potential.max_force_median(model, batcher, mols, 0)
    assert after < 0.2 * before
    assert terms.take()["train_force_rms"] > 0 and terms.steps == 0


@pytest.mark.slow
def test_force_flags_need_qm9_u0(tmp_path: Path) -> None:
    for flags in (["--target", "gap", "--force-weight", "1"], ["--target", "U0", "--prior-weight", "-1"],
                  ["--target", "U0", "--prior-weight", "1", "--prior-noise", "0"], ["--target", "U0", "--precondition",
                  "1"], ["--target", "U0", "--force-weight", "1", "--precondition", "-1"],
                  ["--target", "U0", "--force-weight", "1", "--prior-thermal", "0.025"],
                  ["--target", "U0", "--prior-weight", "1", "--prior-noise-min", "0.1"]):
        proc = subprocess.run([sys.executable, "train_lite.py", *flags, "--output-dir", str(tmp_path),
                               "--checkpoint-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and "--prior" in lines[0], (flags, proc.stderr)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("weights", [("1", "0"), ("0", "1")])
def test_a_lite_u0_run_with_the_force_terms_writes_their_history(tmp_path: Path, weights) -> None:
    import csv

    subprocess.run([sys.executable, "train_lite.py", "--target", "U0", "--subset-size", "200", "--epochs", "1",
                    "--tsne-samples", "20", "--device", "cpu", "--force-weight", weights[0], "--prior-weight",
                    weights[1], "--output-dir", str(tmp_path), "--checkpoint-dir", str(tmp_path),
                    "--data-dir", str(REPO / "data")], cwd=REPO, check=True, capture_output=True)
    (row,) = csv.DictReader((tmp_path / "history_lite.csv").open())
    assert float(row["val_max_force_median"]) > 0
    assert (float(row["train_force_rms"]) > 0) == (weights[0] == "1")
    assert (float(row["train_prior_rms"]) > 0) == (weights[1] == "1")


def rigid_motions(pos: np.ndarray) -> np.ndarray:
    """The 3 translations and 3 infinitesimal rotations of positions pos [n, 3], as rows [6, 3n]."""
    c = pos - pos.mean(0)
    return np.array([np.tile(np.eye(3)[a], len(pos)) for a in range(3)]
                    + [np.cross(np.eye(3)[a], c).ravel() for a in range(3)])


def test_mmff_modes_are_internal_normal_modes_of_mmff94(qm9) -> None:
    """3n - 6 orthonormal modes free of rigid motions, along which MMFF94's restoring force (from a new force field
    each time: no reuse of RDKit's state) is the curvature times the displacement, F(x + e v) - F(x) = -e lambda v."""
    d = qm9[321]
    z, pos = d.z.numpy(), d.pos.double().numpy()
    typed = potential.mmff_typed(z, pos)
    lam, V = potential.mmff_modes(typed, pos)
    n = len(z)
    assert V.shape == (3 * n, 3 * n - 6) and np.all(np.diff(lam) >= 0)
    np.testing.assert_allclose(V.T @ V, np.eye(3 * n - 6), atol=1e-10)
    np.testing.assert_allclose(rigid_motions(pos) @ V, 0.0, atol=1e-9)
    eps = 1e-4
    for k in (0, len(lam) // 2, len(lam) - 1):  # the softest, a middle and the stiffest mode
        change = potential.mmff_forces(typed, pos + eps * V[:, k].reshape(-1, 3)) - potential.mmff_forces(typed, pos)
        np.testing.assert_allclose(change.ravel(), -eps * lam[k] * V[:, k], atol=2e-3 * eps * abs(lam).max())
    assert lam.max() > 10  # the C-H and C-C stretches: tens of eV/A^2


def test_preconditioner_weights_only_the_soft_modes_by_their_inverse_curvature(qm9) -> None:
    d = qm9[321]
    pos = d.pos.double().numpy()
    lam, V = potential.mmff_modes(potential.mmff_typed(d.z.numpy(), pos), pos)
    M = potential.preconditioner(lam, V, 1.0)
    np.testing.assert_allclose(M, M.T, atol=1e-12)
    w = np.maximum(1.0, 1.0 / np.maximum(np.abs(lam), potential.SOFTEST))
    np.testing.assert_allclose(M @ V, V * w, atol=1e-10)  # each mode scaled by its weight
    assert 1 < w.max() <= 1 / potential.SOFTEST and (w == 1).sum() > len(w) // 2  # the stiff majority untouched
    shift = np.tile([1.0, 0.0, 0.0], len(pos))
    np.testing.assert_allclose(M @ shift, shift, atol=1e-10)  # rigid motions: not modes, not weighted
    np.testing.assert_allclose(potential.preconditioner(lam, V, 1e-9), np.eye(len(M)), atol=1e-12)


def test_preconditioned_zero_force_term_is_the_squared_force_through_each_molecules_m(qm9) -> None:
    torch.manual_seed(0)
    model = SchNet(hidden_channels=32, num_filters=32, num_interactions=2, num_gaussians=16, cutoff=5.0,
                   mean=-4.0, std=0.2, atomref=torch.zeros(100, 1)).double()
    b = batching.Batcher(qm9)(torch.tensor([321, 7]))
    pos = b.pos.double().requires_grad_(True)
    energy = model(b.z, pos, b.batch)[:, 0]
    f = potential.forces(energy, pos).detach().numpy()  # the graph kept for the two losses below
    expected = []
    for a, e in potential.molecule_spans(b.batch):
        x = pos.detach().numpy()[a:e]
        M = potential.preconditioner(*potential.mmff_modes(potential.mmff_typed(b.z[a:e].numpy(), x), x), 1.0)
        expected.append((M @ f[a:e].ravel()) ** 2)
    value = float(potential.PotentialLoss(0, 2.0, 1.0, 0.0, 0.05, 0, stiffness=1.0)(
        model, b.z, pos, b.batch, energy, 0).detach())
    assert value == pytest.approx(np.concatenate(expected).sum() / len(f) / 4.0, rel=1e-9)
    plain = float(potential.PotentialLoss(0, 2.0, 1.0, 0.0, 0.05, 0)(model, b.z, pos, b.batch, energy, 0).detach())
    assert plain == pytest.approx((f ** 2).sum() / len(f) / 4.0, rel=1e-9) and value > plain


def test_thermal_displacements_hold_e_over_2_in_every_mode_and_reach_the_prior(qm9) -> None:
    """Each mode's coordinate has variance E / max(|lambda|, 0.1): mean harmonic energy E/2 per mode, the soft
    modes moving most; no rigid motion; and the prior term trains on them (finite, positive, the same each call)."""
    d = qm9[321]
    z, pos = d.z.numpy(), d.pos.double().numpy()
    lam, V = potential.mmff_modes(potential.mmff_typed(z, pos), pos)
    xi = np.random.default_rng(0).normal(size=(4000, len(lam)))
    q = np.array([V.T @ potential.thermal_displacement(lam, V, 0.025, x).ravel() for x in xi])  # [draws, m]
    expected = 0.025 / np.maximum(np.abs(lam), potential.SOFTEST)
    np.testing.assert_allclose(q.var(0), expected, rtol=0.12)
    stiff = lam > potential.SOFTEST
    assert 0.5 * (lam[stiff] * q[:, stiff] ** 2).mean() == pytest.approx(0.0125, rel=0.05)
    np.testing.assert_allclose(rigid_motions(pos) @ potential.thermal_displacement(lam, V, 0.025, xi[0]).ravel(), 0.0,
                               atol=1e-9)
    torch.manual_seed(0)
    model = SchNet(hidden_channels=32, num_filters=32, num_interactions=2, num_gaussians=16, cutoff=5.0,
                   mean=-4.0, std=0.2, atomref=torch.zeros(100, 1))
    b = batching.Batcher(qm9)(torch.tensor([321, 7]))
    terms = potential.PotentialLoss(0, 1.0, 0.0, 1.0, 0.05, 0, stiffness=1.0, thermal=0.025)
    values = []
    for _ in range(2):
        pos_t = b.pos.detach().requires_grad_(True)
        values.append(float(terms(model, b.z, pos_t, b.batch, model(b.z, pos_t, b.batch)[:, 0], step=3).detach()))
    assert np.isfinite(values[0]) and values[0] > 0 and values[0] == values[1]
    assert terms.take()["train_prior_rms"] > 0


def test_harmonic_calibration_surfaces_have_their_minimum_where_their_residual_forces_put_it(qm9) -> None:
    """experiments/potential/harmonic_check.py's surfaces: forces are minus the gradient of the energy, and BFGS (tight)
    from a noisy start ends at x_0 + sum_k (f_k / c_k) v_k, the DFT geometry itself when f = 0."""
    from experiments.potential import harmonic_check as harmonic
    from schnetqm9.potential import calculator as ase_calculator

    d = qm9[321]
    z, pos = d.z.numpy(), d.pos.double().numpy()
    lam, V = potential.mmff_modes(potential.mmff_typed(z, pos), pos)
    c = np.maximum(np.abs(lam), potential.SOFTEST)
    f = 0.01 * np.random.default_rng(0).choice([-1.0, 1.0], size=len(lam))
    noisy = pos + np.random.default_rng(1).normal(scale=0.05, size=pos.shape)
    from ase import Atoms

    atoms = Atoms(numbers=z, positions=noisy)
    atoms.calc = harmonic.Harmonic(pos, V, c, f)
    forces, x, h = atoms.get_forces().ravel(), noisy.ravel(), 1e-5

    def energy(y: np.ndarray) -> float:
        atoms.set_positions(y.reshape(-1, 3))
        return atoms.get_potential_energy()

    numeric = np.array([-(energy(x + h * e) - energy(x - h * e)) / (2 * h) for e in np.eye(x.size)[:12]])
    np.testing.assert_allclose(forces[:12], numeric, atol=1e-7)
    for residual in (f, 0 * f):
        minimum = pos + (V @ (residual / c)).reshape(-1, 3)
        relaxed, _, converged = ase_calculator.relax(z, noisy, harmonic.Harmonic(pos, V, c, residual), fmax=1e-5)
        assert converged and ase_calculator.aligned_rmsd(minimum, relaxed) < 1e-3  # fmax / SOFTEST: 1e-4 A
    assert ase_calculator.aligned_rmsd(pos, pos + (V @ (f / c)).reshape(-1, 3)) > 0.01  # the residual moves it
