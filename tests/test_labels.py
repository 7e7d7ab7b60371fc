"""Labels at QM9's level of theory and at GFN2-xTB (schnetqm9/potential/qm.py, labelling.py, displace.py): the
forces are the energy's gradient, QM9's minima are minima of the PySCF surface, a killed run resumes without
losing or repeating a label, and bad molecules are refused and never written."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms

from schnetqm9.data.targets import TARGETS
from schnetqm9.potential import displace
from schnetqm9.potential.qm import METHODS, LabelError, check_molecule, compute

REPO = Path(__file__).resolve().parents[1]
WATER = (np.array([8, 1, 1]), np.array([[0.0, 0.0, 0.12], [0.0, 0.76, -0.47], [0.0, -0.76, -0.47]]))


@pytest.mark.parametrize("method", ["gfn2", "b3lyp"])
def test_forces_are_minus_the_energy_gradient(method: str) -> None:
    """F = -dE/dr: one coordinate by central differences of the method's own energy."""
    z, pos = WATER
    label = compute(z, pos, METHODS[method])
    h = 1e-3  # Angstrom
    plus, minus = pos.copy(), pos.copy()
    plus[1, 1] += h
    minus[1, 1] -= h
    numeric = -(compute(z, plus, METHODS[method]).energy - compute(z, minus, METHODS[method]).energy) / (2 * h)
    assert label.forces.shape == (3, 3)
    assert abs(label.forces[1, 1] - numeric) < 2e-3  # eV/A
    np.testing.assert_allclose(label.forces.sum(0), 0.0, atol=2e-3)  # no net force on a free molecule


def test_qm9_minimum_is_a_minimum_of_the_pyscf_surface(qm9) -> None:
    """QM9's water (gdb_3) at B3LYP/6-31G(2df,p): small forces, an energy near QM9's U0 - ZPVE, and Cartesian d and
    f shells (a larger basis than the spherical ones: 6 d and 10 f functions for 5 and 7) give a lower energy."""
    d = qm9[2]
    assert d.name == "gdb_3"
    z, pos = d.z.numpy(), d.pos.double().numpy()
    spherical, cartesian = compute(z, pos, METHODS["b3lyp"]), compute(z, pos, METHODS["b3lyp-cart"])
    assert np.linalg.norm(spherical.forces, axis=1).max() < 0.05  # eV/A
    e_qm9 = float(d.y[0, TARGETS["U0"].column] - d.y[0, TARGETS["zpve"].column])
    assert abs(spherical.energy - e_qm9) < 0.2  # eV: the same method; Gaussian's basis convention differs
    assert cartesian.energy < spherical.energy  # the variational principle


def test_odd_electrons_need_a_spin() -> None:
    z = np.array([6, 1, 1, 1])  # CH3, 9 electrons
    assert "unpaired" in check_molecule(z, 0, 0, METHODS["gfn2"])
    assert check_molecule(z, 0, 1, METHODS["gfn2"]) is None
    assert "beyond" in check_molecule(np.array([92, 1]), 0, 1, METHODS["b3lyp"])
    with pytest.raises(LabelError):
        compute(z, np.zeros((4, 3)) + np.arange(4)[:, None], METHODS["gfn2"])


def _frames(tmp_path: Path) -> Path:
    z, pos = WATER
    frames = [Atoms(numbers=z, positions=pos + 0.02 * k) for k in range(3)]
    frames[1].positions[1] += [0.0, 0.03, 0.0]
    frames[2].positions[2] += [0.0, -0.04, 0.0]
    radical = Atoms("CH3", positions=[[0, 0, 0], [1.08, 0, 0], [-0.54, 0.93, 0], [-0.54, -0.93, 0]])
    for i, a in enumerate(frames + [radical]):
        a.info["name"] = f"m{i}"
    path = tmp_path / "in.extxyz"
    ase.io.write(path, frames + [radical], format="extxyz")
    return path


def _label(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "schnetqm9.potential.labelling", *args], cwd=cwd,
                          capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


@pytest.mark.slow
def test_labelling_resumes_and_refuses_bad_frames(tmp_path: Path) -> None:
    inputs, out = _frames(tmp_path), tmp_path / "out.extxyz.gz"
    first = _label([str(inputs), "--method", "gfn2", "--output", str(out), "--limit", "2"], tmp_path)
    assert first.returncode == 0, first.stderr
    written = ase.io.read(out, index=":")
    assert sorted(a.info["label_key"] for a in written) == ["m0", "m1"]
    assert written[0].info["label_name"] == "gfn2" and "tblite" in written[0].info["label_version"]
    # a kill while the next frame was being written: half a gzip member at the end
    half = gzip.compress(b"3\nhalf a frame")[:20]
    with open(out, "ab") as f:
        f.write(half)
    second = _label([str(inputs), "--method", "gfn2", "--output", str(out)], tmp_path)
    assert second.returncode == 1  # the radical was refused
    assert "cutting off an incomplete frame" in second.stderr
    assert "skipped m3 (CH3)" in second.stderr and "unpaired" in second.stderr
    assert "2 already labelled" in second.stderr
    frames = ase.io.read(out, index=":")
    assert sorted(a.info["label_key"] for a in frames) == ["m0", "m1", "m2"]  # each once, the radical never
    for a in frames:
        assert a.get_forces().shape == (3, 3) and np.isfinite(a.get_potential_energy())
    skipped = [json.loads(line) for line in (tmp_path / "out.extxyz.gz.skipped.jsonl").read_text().splitlines()]
    assert [s["key"] for s in skipped] == ["m3"]
    third = _label([str(inputs), "--method", "gfn2", "--output", str(out)], tmp_path)
    assert third.returncode == 0 and "3 already labelled" in third.stderr and "1 skipped, 0 to label" in third.stderr


@pytest.mark.slow
def test_labelling_refuses_an_output_that_is_not_gzip(tmp_path: Path) -> None:
    proc = _label([str(_frames(tmp_path)), "--output", str(tmp_path / "out.extxyz")], tmp_path)
    assert proc.returncode != 0 and proc.stderr.strip().count("\n") == 0 and "extxyz.gz" in proc.stderr


def test_displaced_geometries(qm9) -> None:
    """A minimum is QM9's geometry itself; noise has the asked spread; thermal draws move the soft modes more."""
    d = qm9[100]
    z, pos = d.z.numpy(), d.pos.double().numpy()
    typed = displace.mmff_typed(z, pos)
    modes = displace.mmff_modes(typed, pos)
    rng = np.random.default_rng(0)
    assert np.array_equal(displace.draw(pos, modes, "minimum", 0.0, 0.5, rng), pos)
    noise = np.concatenate([displace.draw(pos, modes, "noise", 0.05, 0.5, rng) - pos for _ in range(50)])
    assert abs(noise.std() - 0.05) < 0.005
    lam, vec = modes
    steps = np.array([(displace.draw(pos, modes, "thermal", 300.0, 0.5, rng) - pos).ravel() @ vec
                      for _ in range(200)])  # [draws, modes]: amplitude along each mode
    expected = np.sqrt(displace.K_B * 300.0 / np.maximum(lam, 0.5))
    ratio = steps.std(0) / expected
    assert 0.8 < np.median(ratio) < 1.2
    assert steps.std(0)[0] > 3 * steps.std(0)[-1]  # the softest mode moves more than the stiffest


def test_heavy_atoms_are_counted_per_molecule(qm9) -> None:
    """The size filter of the training inputs: methane has one heavy atom, and every count equals the molecule's."""
    heavy = displace.heavy_atoms(qm9)
    assert heavy[0] == 1 and int(heavy.max()) == 9
    for i in (0, 2, 100, 57_000, 130_830):
        assert int(heavy[i]) == int((qm9[i].z > 1).sum())


def test_a_relabelled_frame_carries_only_the_new_methods_settings() -> None:
    """Relabelling a B3LYP file at GFN2-xTB (to compare the two methods frame by frame) keeps the input's own keys
    and none of B3LYP's settings: a GFN2-xTB label recorded with an exchange-correlation functional would lie."""
    import io
    from types import SimpleNamespace

    from schnetqm9.potential.labelling import frame_text

    atoms = Atoms(numbers=WATER[0], positions=WATER[1])
    atoms.info.update(name="gdb_3:0:t300", gdb=3, kind="t300", **METHODS["b3lyp"].settings(), label_key="gdb_3:0:t300")
    label = SimpleNamespace(energy=-137.9, forces=np.zeros((3, 3)), seconds=0.01, cycles=0)
    out = ase.io.read(io.StringIO(frame_text(atoms, label, METHODS["gfn2"], "gdb_3:0:t300")), format="extxyz")
    assert out.info["name"] == "gdb_3:0:t300" and out.info["kind"] == "t300" and out.info["label_name"] == "gfn2"
    assert {k for k in out.info if k.startswith("label_")} == set(METHODS["gfn2"].settings()) | {
        "label_key", "label_seconds", "label_cycles"}
