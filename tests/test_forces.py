"""Force labels: read from structure files, fitted by the force term, validated and tested; and the training file
of a potential on QM9's own surface (potential/surface.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest
import torch
from ase.calculators.singlepoint import SinglePointCalculator

from schnet_model import SchNet
from schnetqm9.data import batch as batching
from schnetqm9.data import splits, structure_file
from schnetqm9.data.targets import TARGETS
from schnetqm9.potential import losses as potential
from schnetqm9.potential import surface

REPO = Path(__file__).resolve().parents[1]
LABELS = REPO / "labels"


def bond_energy(z: torch.Tensor, pos: torch.Tensor, ref: torch.Tensor, k: float = 20.0) -> torch.Tensor:
    """A harmonic surface with its minimum at `ref` [n, 3]: sum over pairs closer than 1.7 A there of
    k/2 (d - d_ref)^2 (eV, k in eV/A^2); a label source with exact forces."""
    i, j = torch.triu_indices(len(z), len(z), 1)
    d_ref = (ref[i] - ref[j]).norm(dim=-1)
    bonded = d_ref < 1.7
    d = (pos[i] - pos[j]).norm(dim=-1)
    return 0.5 * k * ((d - d_ref)[bonded]).square().sum()


def displaced_frames(qm9, molecules: range, noise: float = 0.05, seed: int = 0) -> list[ase.Atoms]:
    """QM9 molecules displaced by Gaussian noise, labelled with `bond_energy` about their QM9 geometry."""
    g = torch.Generator().manual_seed(seed)
    frames = []
    for i in molecules:
        d = qm9[i]
        ref = d.pos.double()
        pos = (ref + noise * torch.randn(ref.shape, generator=g, dtype=torch.float64)).requires_grad_(True)
        energy = bond_energy(d.z, pos, ref)
        (grad,) = torch.autograd.grad(energy, pos)
        atoms = ase.Atoms(numbers=d.z.numpy(), positions=pos.detach().numpy())
        atoms.calc = SinglePointCalculator(atoms, energy=float(energy.detach()), forces=-grad.numpy())
        frames.append(atoms)
    return frames


def test_forces_are_read_per_atom_and_missing_ones_are_nan(qm9, tmp_path) -> None:
    frames = displaced_frames(qm9, range(3))
    bare = ase.Atoms(numbers=frames[1].numbers, positions=frames[1].positions)  # no calculator: no forces
    bare.info["energy"] = 1.0
    ase.io.write(tmp_path / "f.extxyz", [frames[0], bare, frames[2]])
    data = structure_file.LabelledStructures(tmp_path / "f.extxyz", ["energy"], progress=False)
    n0, n1 = len(frames[0]), len(frames[1])
    assert data.forces.shape == (len(data.z), 3)
    np.testing.assert_allclose(data.forces[:n0].numpy(), frames[0].get_forces(), atol=1e-6)
    assert data.forces[n0:n0 + n1].isnan().all() and not data.forces[n0 + n1:].isnan().any()
    b = batching.Batcher(data)(torch.tensor([2]))
    np.testing.assert_allclose(b.forces.numpy(), frames[2].get_forces(), atol=1e-6)
    ase.io.write(tmp_path / "none.extxyz", [bare])
    assert structure_file.LabelledStructures(tmp_path / "none.extxyz", ["energy"], progress=False).forces is None


def tiny_model() -> SchNet:
    torch.manual_seed(0)
    return SchNet(hidden_channels=32, num_filters=32, num_interactions=2, num_gaussians=16, cutoff=5.0,
                  atomref=torch.zeros(100, 1))


def test_force_term_vanishes_on_the_models_own_forces_and_skips_unlabelled_atoms(qm9) -> None:
    model = tiny_model()
    b = batching.Batcher(qm9)(torch.arange(4))
    pos = b.pos.detach().requires_grad_(True)
    energy = model(b.z, pos, b.batch)[:, 0]
    own = potential.forces(energy, pos).detach()
    terms = potential.PotentialLoss(0, 1.0, force_weight=1.0, prior_weight=0.0, noise=0.05, seed=0)
    assert float(terms(model, b.z, pos, b.batch, energy, 0, own).detach()) < 1e-10
    # the term is the mean over labelled atoms: unlabelled (NaN) atoms change nothing
    wrong = own + 1.0
    half = wrong.clone()
    half[::2] = float("nan")
    expected = 3.0  # |(1, 1, 1)|^2 on every labelled atom
    assert float(terms(model, b.z, pos, b.batch, energy, 0, wrong).detach()) == pytest.approx(expected, rel=1e-5)
    assert float(terms(model, b.z, pos, b.batch, energy, 0, half).detach()) == pytest.approx(expected, rel=1e-5)
    sums = potential.force_error_sums(model, batching.Batcher(qm9), torch.arange(4), 0)
    assert potential.force_metrics(sums)["atoms"] == len(b.z)  # QM9: zero labels on every atom


def test_training_on_force_labels_learns_the_forces_of_the_surface(qm9, tmp_path) -> None:
    """Fit the harmonic bond surface of 24 displaced molecules from energies alone and from energies plus forces:
    the forces teach the surface's slope, the energies alone do not (12 molecules held out)."""
    frames = displaced_frames(qm9, range(36))
    ase.io.write(tmp_path / "h.extxyz", frames)
    data = structure_file.LabelledStructures(tmp_path / "h.extxyz", ["energy"], progress=False)
    batcher = batching.Batcher(data)
    train, test = torch.arange(24), torch.arange(24, 36)
    errors = {}
    for weight in (0.0, 1.0):
        model = tiny_model()
        optimizer = torch.optim.Adam(model.parameters(), 3e-3)
        terms = potential.PotentialLoss(0, 1.0, force_weight=weight, prior_weight=0.0, noise=0.05, seed=0)
        for step in range(150):
            b = batcher(train[torch.randperm(24, generator=torch.Generator().manual_seed(step))[:8]])
            pos = b.pos.detach().requires_grad_(True)
            energy = model(b.z, pos, b.batch)[:, 0]
            loss = (energy - b.y[:, 0]).square().mean()
            if weight:
                loss = loss + terms(model, b.z, pos, b.batch, energy, step, b.forces)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        errors[weight] = potential.force_metrics(potential.force_error_sums(model, batcher, test, 0))["mae"]
    assert errors[1.0] < 0.6 * errors[0.0], errors


def test_the_prior_around_a_labelled_geometry_starts_from_its_forces(qm9) -> None:
    """The curvature term on a structure file: at x' = x + delta its target is F*(x) + F_MMFF(x') - F_MMFF(x);
    labels that are all zero give QM9's term; atoms without labels (NaN) get no target."""
    torch.manual_seed(0)
    model = SchNet(hidden_channels=16, num_filters=16, num_interactions=1, num_gaussians=10, cutoff=5.0).double()
    b = batching.Batcher(qm9)(torch.arange(3))
    pos = b.pos.double().requires_grad_(True)
    energy = model(b.z, pos, b.batch)[:, 0]
    terms = potential.PotentialLoss(0, 1.0, force_weight=0.0, prior_weight=1.0, noise=0.05, seed=0)
    plain = float(terms(model, b.z, pos, b.batch, energy, 7).detach())
    assert float(terms(model, b.z, pos, b.batch, energy, 7, torch.zeros_like(pos)).detach()) == pytest.approx(plain)
    labels = torch.randn(pos.shape, generator=torch.Generator().manual_seed(1), dtype=pos.dtype)
    labels[:2] = float("nan")  # two atoms of the first molecule without labels
    got = float(terms(model, b.z, pos, b.batch, energy, 7, labels).detach())
    # the definition, step by step
    spans = potential.molecule_spans(b.batch)
    displaced = (pos.detach() + terms.displacement(pos, [], spans, 7, b.batch)[0]).requires_grad_(True)
    f = potential.forces(model(b.z, displaced, b.batch)[:, 0], displaced)
    x = pos.detach().numpy()
    shift, typed = potential.prior_targets(potential.batch_typed(b.z.numpy(), x, spans), x, spans,
                                           displaced.detach().numpy())
    keep = torch.from_numpy(typed) & ~labels.isnan().any(-1)
    expected = (f - torch.from_numpy(shift) - labels.nan_to_num()).square().sum(-1)[keep].mean()
    assert got == pytest.approx(float(expected.detach()), rel=1e-9)
    assert got != pytest.approx(plain, rel=1e-3)


def test_multiscale_noise_draws_one_scale_per_molecule_and_weights_it_back() -> None:
    """--prior-noise-min: each molecule's displacement has its own scale in [a, sigma], log-uniform, and its
    weight (sigma / scale)^2 makes every scale's expected squared displacement the same; a step's draw repeats."""
    n_mol, atoms = 400, 12
    batch = torch.arange(n_mol).repeat_interleave(atoms)
    pos = torch.zeros(len(batch), 3, dtype=torch.float64)
    spans = potential.molecule_spans(batch)
    terms = potential.PotentialLoss(0, 1.0, force_weight=0.0, prior_weight=1.0, noise=0.05, seed=0, noise_min=0.005)
    delta, weight = terms.displacement(pos, [], spans, 3, batch)
    again, _ = terms.displacement(pos, [], spans, 3, batch)
    assert torch.equal(delta, again)
    scale = (0.05 / weight.sqrt()).view(n_mol, atoms)  # the scale each atom's weight says
    assert (scale == scale[:, :1]).all() and scale.min() >= 0.005 - 1e-12 and scale.max() <= 0.05 + 1e-12
    logs = scale[:, 0].log()
    assert abs(float((logs.mean() - np.log(0.005 * 0.05) / 2) / (logs.std() / n_mol ** 0.5))) < 4  # log-uniform
    measured = delta.view(n_mol, atoms, 3).square().mean((1, 2)).sqrt()  # each molecule's displacement RMS
    assert float((measured / scale[:, 0]).median()) == pytest.approx(1.0, abs=0.1)
    scaled_back = (delta.square().sum(-1) * weight).mean()  # E[w |delta|^2] = 3 sigma^2 whatever the scales
    assert float(scaled_back) == pytest.approx(3 * 0.05**2, rel=0.1)
    single = potential.PotentialLoss(0, 1.0, force_weight=0.0, prior_weight=1.0, noise=0.05, seed=0)
    plain, ones = single.displacement(pos, [], spans, 3, batch)
    assert torch.equal(ones, torch.ones_like(ones)) and float(plain.std()) == pytest.approx(0.05, rel=0.05)


@pytest.mark.slow
def test_a_run_on_a_file_with_forces_validates_and_tests_them(qm9, tmp_path) -> None:
    ase.io.write(tmp_path / "h.extxyz", displaced_frames(qm9, range(60)))
    common = ["--data", str(tmp_path / "h.extxyz"), "--target", "energy", "--unit", "eV", "--epochs", "2",
              "--device", "cpu", "--tsne-samples", "10", "--output-dir", str(tmp_path / "r"), "--checkpoint-dir",
              str(tmp_path / "c")]
    proc = subprocess.run([sys.executable, "train_lite.py", *common, "--force-weight", "1", "--prior-weight", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "test forces (" in proc.stdout and "val MAE" in proc.stdout and "prior rms" in proc.stdout
    metrics = json.loads((tmp_path / "r" / "metrics_lite.json").read_text())
    test = json.loads((tmp_path / "r" / "split_lite.json").read_text())["test"]
    frames = ase.io.read(tmp_path / "h.extxyz", ":")
    assert metrics["test_forces"]["atoms"] == sum(len(frames[i]) for i in test)
    assert np.isfinite(metrics["test_forces"]["mae"])
    ase.io.write(tmp_path / "bare.extxyz", [ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]],
                                                      info={"energy": -1.0})] * 12)
    proc = subprocess.run([sys.executable, "train_lite.py", *common[2:], "--data", str(tmp_path / "bare.extxyz"),
                           "--force-weight", "1"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "need forces" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_split_may_repeat_training_structures_but_not_share_them(tmp_path) -> None:
    path = tmp_path / "s.json"
    splits.save_split(dict(train=torch.tensor([0, 0, 1]), val=torch.tensor([2]), test=torch.tensor([3])), path)
    assert splits.load_split(path, 4)["train"].tolist() == [0, 0, 1]
    splits.save_split(dict(train=torch.tensor([0, 1]), val=torch.tensor([1]), test=torch.tensor([3])), path)
    with pytest.raises(ValueError, match="overlap"):
        splits.load_split(path, 4)


def test_labelled_frames_sit_on_qm9s_surface_relative_to_their_minimum() -> None:
    minimum = ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    stretched = ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.80]])
    orphan = ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.70]])
    for atoms, gdb, kind, energy in ((minimum, 1, "minimum", -30.0), (stretched, 1, "t300", -29.9),
                                     (orphan, 2, "t300", -31.0)):
        atoms.info.update(gdb=gdb, kind=kind, label_name="b3lyp", label_key=f"{gdb}:{kind}")
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=np.ones((2, 3)))
    qm9_energy = {1: -4.5, 2: -7.0}  # by gdb number
    frames, left = surface.on_qm9_surface([minimum, stretched, orphan], qm9_energy)
    assert left == 1 and [f.kind for f in frames] == ["minimum", "t300"]  # gdb 2 has no labelled minimum
    assert frames[0].energy == pytest.approx(-4.5) and frames[1].energy == pytest.approx(-4.5 + 0.1)


@pytest.mark.slow
def test_the_surface_file_keeps_qm9s_split_and_trains_the_labelled_frames_more_often(qm9, tmp_path) -> None:
    out = tmp_path / "s.extxyz"
    surface.main([str(LABELS / "b3lyp_train.extxyz.gz"), "--test", str(LABELS / "b3lyp_test.extxyz.gz"),
                  "--minima", "40", "--val-minima", "10", "--repeat", "3", "--val-share", "0.2", "--output", str(out),
                  "--data-dir", str(REPO / "data")])
    split = splits.load_split(surface.split_path(out), None)
    data = structure_file.LabelledStructures(out, ["energy"], progress=False)
    frames = ase.io.read(out, ":")
    kind = np.array([f.info["source"] for f in frames])
    gdb = np.array([f.info["gdb"] for f in frames])
    standard = splits.standard_split()
    sides = {name: set(qm9.gdb[standard[name]].tolist()) for name in ("train", "val", "test")}
    assert set(gdb[split["test"]]) <= sides["test"] and set(gdb[split["train"]]) <= sides["train"]
    assert set(gdb[split["val"]]) <= sides["train"] | sides["val"]
    assert not set(gdb[split["val"]]) & set(gdb[split["train"]])  # a molecule validates or trains, not both
    counts = np.bincount(split["train"].numpy(), minlength=len(frames))
    assert set(counts[split["train"].numpy()][kind[split["train"]] != "qm9"]) == {3}
    assert set(counts[split["train"].numpy()][kind[split["train"]] == "qm9"]) == {1}
    # every minimum is QM9's own electronic atomization energy, U0_atom - ZPVE; QM9's get zero forces
    index = {int(g): i for i, g in enumerate(qm9.gdb.tolist())}
    expected = [float(qm9.y[index[g], TARGETS["U0_atom"].column] - qm9.y[index[g], TARGETS["zpve"].column])
                for g, f in zip(gdb, frames) if f.info["kind"] == "minimum"]
    got = data.y[[i for i, f in enumerate(frames) if f.info["kind"] == "minimum"], 0]
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4)
    assert data.forces[data.ptr[np.flatnonzero(kind == "qm9")[0]]].abs().sum() == 0


@pytest.mark.slow
def test_learning_curve_sets_are_nested_and_validate_on_the_same_molecules(qm9) -> None:
    """--molecules N trains on N labelled molecules: a smaller set is part of a larger one, the validation
    molecules are the same whatever N, and no molecule both trains and validates."""
    energies = surface.by_gdb(qm9, surface.qm9_minimum_energies(qm9))
    frames, _ = surface.on_qm9_surface(surface.read_labelled([str(LABELS / "b3lyp_train.extxyz.gz")]), energies)

    def molecules(n: int | None) -> tuple[set, set]:
        out, split = surface.build(qm9, frames, [], 0, 0, 0.2, 2, 0, n)
        return {out[i].gdb for i in split["train"]}, {out[i].gdb for i in split["val"]}

    (small, val_small), (middle, val_middle), (full, val_full) = molecules(3), molecules(10), molecules(None)
    assert len(small) == 3 and len(middle) == 10 and small < middle < full
    assert val_small == val_middle == val_full and val_full and not full & val_full
    assert len(full) + len(val_full) == len({f.gdb for f in frames})


def test_force_check_measures_the_error_the_labels_were_given(qm9, tmp_path) -> None:
    """Frames labelled with the shipped potential's own surface, shifted by a per-molecule energy offset and with
    one frame's forces off by a known amount: the check finds exactly that force error, and the offset (which the
    labelling method has against QM9) cancels in the energy rises."""
    from schnetqm9.model import shipped
    from schnetqm9.potential import calculator, force_check

    calc = calculator.SchNetCalculator(shipped.path(shipped.POTENTIAL))
    frames, g = [], np.random.default_rng(0)
    for i, offset in ((0, 5.0), (3, -3.0)):  # methane and acetylene: one and two heavy atoms
        d = qm9[i]
        for kind, noise in (("minimum", 0.0), ("n0.05", 0.05)):
            atoms = ase.Atoms(numbers=d.z.numpy(), positions=d.pos.double().numpy() + g.normal(0, noise, (len(d.z), 3)))
            atoms.calc = calc
            energy, forces = atoms.get_potential_energy() + offset, atoms.get_forces()
            if i == 3 and kind == "n0.05":
                forces = forces + 0.2  # every component off by 0.2 eV/A
            atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
            atoms.info.update(gdb=i + 1, kind=kind)
            frames.append(atoms)
    ase.io.write(tmp_path / "labels.extxyz", frames)
    s = force_check.main([str(tmp_path / "labels.extxyz"), "--output", str(tmp_path / "c.json"),
                          "--figure", str(tmp_path / "parity.png")])
    atoms_off, atoms_all = len(frames[3]), sum(len(f) for f in frames)
    assert s["force_mae"] == pytest.approx(0.2 * atoms_off / atoms_all, abs=1e-6)
    assert s["force_by_kind"]["minimum"]["force_mae"] < 1e-6
    assert s["force_by_heavy_atoms"][1]["force_mae"] < 1e-6
    assert s["force_by_heavy_atoms"][2]["force_mae"] == pytest.approx(0.2 / 2, abs=1e-6)  # one of its two frames
    assert s["rise_frames"] == 2 and s["rise_mae_mev"] < 1e-3
    assert (tmp_path / "parity.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="no energy or no forces"):
        bare = ase.Atoms(numbers=[6, 1], positions=[[0, 0, 0], [0, 0, 1.1]])
        ase.io.write(tmp_path / "bare.extxyz", bare)
        force_check.main([str(tmp_path / "bare.extxyz"), "--output", str(tmp_path / "b.json")])


def test_force_check_compares_two_methods_labels_of_the_same_frames(tmp_path) -> None:
    """--compare-labels: the other method's forces take the model's place, its energy offset cancels in the
    rises, and a frame it did not label is refused in one line."""
    from schnetqm9.potential import force_check

    g = np.random.default_rng(1)
    first, second = [], []
    for kind in ("minimum", "t300"):
        atoms = ase.Atoms("CH4", positions=g.normal(0, 1, (5, 3)))
        atoms.info.update(gdb=1, kind=kind, name=f"gdb_1:0:{kind}")
        forces, energy = g.normal(0, 1, (5, 3)), g.normal()
        for frames, shift, offset in ((first, 0.0, 0.0), (second, 0.1, 7.0)):
            a = atoms.copy()
            a.calc = SinglePointCalculator(a, energy=energy + offset, forces=forces + shift)
            frames.append(a)
    for name, frames in (("first", first), ("second", second), ("one", second[:1])):
        ase.io.write(tmp_path / f"{name}.extxyz", frames)
    s = force_check.main([str(tmp_path / "first.extxyz"), "--compare-labels", str(tmp_path / "second.extxyz"),
                          "--output", str(tmp_path / "c.json"), "--figure", str(tmp_path / "p.png")])
    assert s["force_mae"] == pytest.approx(0.1) and s["rise_mae_mev"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(SystemExit, match="no frame gdb_1:0:t300"):
        force_check.main([str(tmp_path / "first.extxyz"), "--compare-labels", str(tmp_path / "one.extxyz"),
                          "--output", str(tmp_path / "d.json")])


@pytest.mark.slow
def test_potential_check_measures_a_surface_model_against_u0_less_zpve(qm9) -> None:
    """check.py's accuracy line: a QM9 model against its own column; a model of surface.py's file (target
    'energy') against QM9's U0 - ZPVE as an atomization energy; any other file's model is refused."""
    from schnetqm9.cli import UserError
    from schnetqm9.model import checkpoint, shipped
    from schnetqm9.potential import check

    ckpt = checkpoint.load(shipped.path("U0"))
    mae, compared = check.energy_mae(qm9, ckpt, 0)
    assert compared == "U0" and mae == pytest.approx(checkpoint.test_mae(ckpt)["U0"], abs=1e-3)
    # the U0 model read as a surface model: it predicts total U0, so it misses U0 - ZPVE as an atomization energy
    # by its free-atom references plus the zero-point energy, molecule by molecule
    as_surface = {**ckpt, "data": "/elsewhere/b3lyp.extxyz", "targets": [{**ckpt["targets"][0], "name": surface.KEY}]}
    mae, compared = check.energy_mae(qm9, as_surface, 0)
    test = splits.standard_split()["test"]
    b = batching.Batcher(qm9)(test)
    refs = torch.zeros(len(test), dtype=torch.float64).index_add_(
        0, b.batch, checkpoint.build_model(ckpt).atomref[b.z, 0].double())
    offset = (refs + qm9.y[test, TARGETS["zpve"].column].double()).abs().mean()
    assert compared == "U0 - ZPVE" and mae == pytest.approx(float(offset), rel=1e-3)
    with pytest.raises(UserError, match="no QM9 column"):
        check.energy_mae(qm9, {**as_surface, "targets": [{**ckpt["targets"][0], "name": "gap"}]}, 0)


def test_relax_energy_measures_how_far_up_a_relaxation_stopped(qm9, tmp_path) -> None:
    """check.py --relaxed writes each DFT geometry beside its relaxation, named so the labeller resumes by name;
    on a harmonic surface about the DFT geometry (standing in for B3LYP) the rise is that surface's energy at the
    relaxed positions, 0 for a relaxation that ended on the minimum, and a molecule with one geometry labelled
    waits for the other."""
    from schnetqm9.potential import labelling, relax_energy

    g = np.random.default_rng(0)
    ends = {i: qm9[i].pos.double().numpy() + (0.0 if i == 5 else g.normal(0, 0.03, (len(qm9[i].z), 3)))
            for i in (5, 40, 77)}
    relax_energy.write_pairs(tmp_path / "relaxed.extxyz", qm9, list(ends.items()), "a surface")
    jobs = list(labelling.read_jobs([str(tmp_path / "relaxed.extxyz")], 0, 0))
    assert [j.key for j in jobs[:2]] == ["relax:5:minimum", "relax:5:relaxed:a surface"] and len(jobs) == 6
    labelled = []
    for job in jobs[:-1]:  # the last molecule's relaxed geometry is not labelled yet
        a, i = job.atoms, int(job.atoms.info["qm9_index"])
        e = float(bond_energy(qm9[i].z, torch.tensor(a.positions), qm9[i].pos.double()))
        a.calc = SinglePointCalculator(a, energy=e - 1000.0, forces=np.zeros((len(a), 3)))  # an offset cancels
        labelled.append(a)
    other = labelled[2].copy()  # molecule 40's relaxation on a second surface, ending on the minimum
    other.info.update(name="relax:40:relaxed:b", geometry="relaxed", relaxed_on="b")
    other.positions = qm9[40].pos.double().numpy()
    other.calc = SinglePointCalculator(other, energy=-1000.0, forces=np.zeros((len(other), 3)))
    ase.io.write(tmp_path / "labelled.extxyz", labelled + [other])
    both = relax_energy.energy_rises(ase.io.read(tmp_path / "labelled.extxyz", ":"))
    assert both["b"] == {40: pytest.approx(0.0, abs=1e-6)}  # the minimum's label is shared between surfaces
    rises = both["a surface"]
    expected = float(bond_energy(qm9[40].z, torch.tensor(ends[40]), qm9[40].pos.double()))
    assert list(rises) == [5, 40] and rises[5] == pytest.approx(0.0, abs=1e-6)
    assert rises[40] == pytest.approx(expected / relax_energy.KCAL_PER_MOL_TO_EV, rel=1e-6) and rises[40] > 0
    s = relax_energy.main([str(tmp_path / "labelled.extxyz"), "--output", str(tmp_path / "r.json")])["a surface"]
    assert s["molecules"] == 2 and s["median_kcal"] == pytest.approx(rises[40] / 2, rel=1e-6)
    (tmp_path / "m.pth").write_bytes(b"one model")
    first = relax_energy.surface_name(tmp_path / "m.pth")
    (tmp_path / "m.pth").write_bytes(b"another model, shipped at the same path")
    assert relax_energy.surface_name(tmp_path / "m.pth") != first  # not mistaken for the labelled one
    with pytest.raises(SystemExit, match="no molecule with both"):
        ase.io.write(tmp_path / "one.extxyz", labelled[:1])
        relax_energy.main([str(tmp_path / "one.extxyz")])


@pytest.mark.slow
def test_ship_records_a_surface_models_figure_at_qm9s_test_minima(qm9, tiny_checkpoint, tmp_path) -> None:
    """potential/ship.py: a surface model's file gains its MAE against U0 - ZPVE at the 10,831 standard test minima
    (the figure check.py measures), its data path relative to the repository; a QM9 model is refused."""
    from schnetqm9.model import checkpoint
    from schnetqm9.potential import check, ship

    raw = torch.load(tiny_checkpoint, weights_only=True)
    raw["targets"] = [{**raw["targets"][0], "name": surface.KEY}] if "targets" in raw else [
        dict(name=surface.KEY, unit="eV", column=0, output=raw["model_config"]["readout"])]
    raw["data"] = str(REPO / "data" / "arms" / "surface.extxyz")
    checkpoint.save(raw, tmp_path / "best_model_surface.pth")
    entry = ship.ship(tmp_path / "best_model_surface.pth", tmp_path / "shipped.pth", qm9)
    mae, compared = check.energy_mae(qm9, checkpoint.load(tmp_path / "best_model_surface.pth"), 0)
    assert entry == {"mae": mae, "compared_with": "U0 - ZPVE", "molecules": 10_831} and compared == "U0 - ZPVE"
    shipped_file = torch.load(tmp_path / "shipped.pth", weights_only=True)
    assert shipped_file["metrics"]["qm9_minima"] == entry and shipped_file["data"] == "data/arms/surface.extxyz"
    with pytest.raises(SystemExit, match="not a finished surface model"):
        ship.main([str(tiny_checkpoint), str(tmp_path / "no.pth")])
    assert not (tmp_path / "no.pth").exists()
