"""predict.py on structure files: the same numbers as the training evaluation, symmetric, and strict on bad input."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest
import torch

from schnetqm9.data import batch as batching
from schnetqm9.data import geometry, splits
from schnetqm9.data.targets import STANDARD, TARGETS
from schnetqm9.inference import predictions as predict
from schnetqm9.model import checkpoint as ckpt_io
from schnetqm9.model import shipped
from schnetqm9.model.evaluation import batched_outputs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint: Path) -> Path:
    return tiny_checkpoint


def atoms_of(qm9, i: int) -> ase.Atoms:
    d = qm9[i]
    return ase.Atoms(numbers=d.z.numpy(), positions=d.pos.double().numpy())


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "predict.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_same_prediction_as_training_evaluation(checkpoint: Path, qm9, tmp_path: Path) -> None:
    ckpt = torch.load(checkpoint, weights_only=True)
    test = ckpt["split"]["test"][:5]
    expected = batched_outputs(ckpt_io.build_model(ckpt), batching.Batcher(qm9), test, 64)[:, 0].numpy()
    files = []
    for k, i in enumerate(test.tolist()):
        ase.io.write(tmp_path / f"m{k}.xyz", atoms_of(qm9, i))
        files.append(str(tmp_path / f"m{k}.xyz"))
    rows = predict.main(["--checkpoint", str(checkpoint), "--device", "cpu", *files])
    np.testing.assert_allclose([r["gap"] for r in rows], expected, rtol=1e-5, atol=1e-5)
    assert all(list(r) == ["file", "frame", "formula", "atoms", "gap", "note"] for r in rows)


def test_rotated_translated_copy_and_multiframe_file(checkpoint: Path, qm9, tmp_path: Path) -> None:
    a = atoms_of(qm9, 777)
    b = a.copy()
    b.rotate(73, (1, 2, 3), center="COM")
    b.translate((5.0, -3.0, 11.0))
    ase.io.write(tmp_path / "two.extxyz", [a, b, atoms_of(qm9, 5)])
    rows = predict.main(["--checkpoint", str(checkpoint), "--device", "cpu", "--csv", str(tmp_path / "out.csv"),
                         "--per-atom", "--output-dir", str(tmp_path / "res"), str(tmp_path / "two.extxyz")])
    assert [r["frame"] for r in rows] == [0, 1, 2]
    assert rows[0]["gap"] == pytest.approx(rows[1]["gap"], abs=1e-5)
    assert rows[0]["gap"] != pytest.approx(rows[2]["gap"], abs=1e-5)
    assert (tmp_path / "out.csv").read_text().count("\n") == 4
    assert sorted(p.name for p in (tmp_path / "res").glob("*.png")) == [
        f"atom_contributions_two_{k}.png" for k in range(3)]


def test_per_atom_contributions_sum_to_prediction(checkpoint: Path, qm9) -> None:
    model = ckpt_io.build_model(torch.load(checkpoint, weights_only=True))
    mols = [predict.Molecule("x", k, "", atoms_of(qm9, i).numbers, atoms_of(qm9, i).positions)
            for k, i in enumerate([3, 999, 5000])]
    preds, contributions = predict.predict_molecules(model, mols, torch.device("cpu"), batch_size=2)
    assert [c.shape for c in contributions] == [(len(m.z), 1) for m in mols]
    np.testing.assert_allclose([c.sum(0) for c in contributions], preds, rtol=1e-5)


def test_large_molecules_are_flagged(checkpoint: Path, qm9, tmp_path: Path) -> None:
    big = torch.nonzero(qm9.num_atoms == 29).flatten()[:2].tolist()
    a, b = atoms_of(qm9, big[0]), atoms_of(qm9, big[1])
    b.translate((30.0, 0, 0))
    ase.io.write(tmp_path / "big.xyz", a + b)
    rows = predict.main(["--checkpoint", str(checkpoint), "--device", "cpu", str(tmp_path / "big.xyz")])
    assert rows[0]["atoms"] == 58
    assert "2 fragments farther apart than the cutoff (5 A)" in rows[0]["note"]
    heavy = int((a.numbers > 1).sum() + (b.numbers > 1).sum())
    limit = torch.load(checkpoint, weights_only=True)["max_heavy_atoms"]
    assert f"{heavy} heavy atoms, more than any training molecule ({limit})" in rows[0]["note"]


@pytest.mark.slow
def test_bad_input(checkpoint: Path, qm9, tmp_path: Path) -> None:
    ase.io.write(tmp_path / "ok.xyz", atoms_of(qm9, 10))
    (tmp_path / "broken.xyz").write_text("3\ncomment\nC 0 0 0\nH 1 0\n")
    ase.io.write(tmp_path / "silane.xyz", ase.Atoms("SiH4", positions=np.eye(5, 3) * 1.5))
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    torch.save({"state_dict": {}}, tmp_path / "foreign.pth")
    ck = ["--checkpoint", str(checkpoint), "--csv", "out.csv"]
    cases = [
        (ck + ["missing.xyz"], "missing.xyz: no such file"),
        (ck + ["ok.xyz", "broken.xyz"], "broken.xyz: cannot read it as a structure"),
        (ck + ["silane.xyz"], "silane.xyz (frame 0): element Si was never seen in training"),
        (["--checkpoint", "notes.pth", "ok.xyz"], "not a readable PyTorch checkpoint"),
        (["--checkpoint", "truncated.pth", "ok.xyz"], "not a readable PyTorch checkpoint"),
        (["--checkpoint", "foreign.pth", "ok.xyz"], "not a checkpoint of this project"),
    ]
    for args, message in cases:
        (tmp_path / "out.csv").unlink(missing_ok=True)
        proc = run(args, tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and message in lines[0], (args, proc.stderr)
        if "--csv" in args:  # a failed input gets its row, the reason in its note; a bad checkpoint writes nothing
            table = list(csv.DictReader((tmp_path / "out.csv").open()))
            assert table[-1]["note"] == "failed: " + lines[0].removeprefix("error: ")
        else:
            assert not (tmp_path / "out.csv").exists()
    proc = run(ck + ["ok.xyz", "broken.xyz"], tmp_path)  # the good input is still predicted, printed and written
    assert proc.returncode == 1 and proc.stdout.splitlines()[2].startswith("ok.xyz ")
    good, bad = csv.DictReader((tmp_path / "out.csv").open())
    assert good["file"] == "ok.xyz" and float(good["gap"]) > 0 and good["note"] == ""
    assert bad["file"] == "broken.xyz" and bad["frame"] == "" and bad["gap"] == ""
    assert bad["note"].startswith("failed: broken.xyz: cannot read it as a structure")


@pytest.mark.slow
def test_non_finite_coordinates_are_refused_naming_file_frame_and_atom(checkpoint: Path, qm9,
                                                                       tmp_path: Path) -> None:
    good, bad = atoms_of(qm9, 10), atoms_of(qm9, 11)
    for value in (np.nan, np.inf):
        pos = bad.get_positions()
        pos[3, 1] = value
        bad.set_positions(pos)
        ase.io.write(tmp_path / "traj.extxyz", [good, bad])
        proc = run(["--checkpoint", str(checkpoint), "--csv", "out.csv", "traj.extxyz"], tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1, proc.stderr
        assert "traj.extxyz: frame 1, atom 3" in lines[0] and "finite" in lines[0]
        first, second = csv.DictReader((tmp_path / "out.csv").open())  # the good frame keeps its row
        assert (first["frame"], first["note"], second["frame"]) == ("0", "", "1") and "finite" in second["note"]


def test_atoms_closer_than_half_an_angstrom_are_flagged(checkpoint: Path, qm9, tmp_path: Path) -> None:
    a = atoms_of(qm9, 20)
    pos = a.get_positions()
    pos[4] = pos[2] + np.array([0.3, 0.0, 0.0])
    broken = a.copy()
    broken.set_positions(pos)
    ase.io.write(tmp_path / "two.extxyz", [a, broken])
    rows = predict.main(["--checkpoint", str(checkpoint), "--device", "cpu", str(tmp_path / "two.extxyz")])
    assert rows[0]["note"] == ""
    assert "atoms 2 and 4 only 0.30 A apart" in rows[1]["note"] and "broken geometry" in rows[1]["note"]
    assert geometry.closest_pair(np.array([[0.0, 0, 0], [2.0, 0, 0], [0.0, 1.2, 0]]))[:2] == (0, 2)


def qm9_figure(ckpt: dict, qm9) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(QM9 test molecules [M], what the model's first output is measured against there [M], the MAE the file
    records): a QM9 model's own column on its test split; a surface model's (the U0 potential's) QM9 U0 - ZPVE at
    the standard test minima, as potential/ship.py recorded it."""
    from schnetqm9.potential import surface

    if ckpt_io.data_source(ckpt) == "QM9":
        test = ckpt["split"]["test"]
        return test, qm9.y[test, ckpt["targets"][0]["column"]], ckpt_io.test_mae(ckpt)[ckpt["targets"][0]["name"]]
    recorded = ckpt["metrics"]["qm9_minima"]
    test = splits.standard_split()["test"]
    assert recorded["compared_with"] == "U0 - ZPVE" and recorded["molecules"] == len(test) == 10_831
    return test, surface.qm9_minimum_energies(qm9)[test], recorded["mae"]


@pytest.mark.parametrize("name", ["gap", *(pytest.param(n, marks=pytest.mark.slow)
                                           for n in ("U0", "homo", "lumo", "all"))])
def test_shipped_model_reproduces_its_recorded_test_mae(name: str, qm9) -> None:
    """models/schnet_qm9_<name>.pth: a weights-only checkpoint that records how it was made, and gives its
    recorded test MAE of every target again on its recorded test split (the standard 110,000 / 10,000 / 10,831)."""
    budget = 24 * 60  # minutes: hours on a CPU, not the paper's GPU days (the longest, U0, resumed over sessions)
    path = shipped.path(name)
    raw = torch.load(path, weights_only=True)
    assert path.stat().st_size < 8e6 and "optimizer" not in raw and raw["subset_size"] is None
    assert [len(raw["split"][k]) for k in ("train", "val", "test")] == [110_000, 10_000, 10_831]
    torch.testing.assert_close(raw["split"]["test"], splits.split_indices(len(qm9), None, seed=raw["seed"])["test"])
    assert raw["command"].startswith(f"python train.py --target {name}")
    assert raw["epochs_done"] > 0 and 0 < raw["minutes"] <= budget
    ckpt = ckpt_io.load(path)
    names = ckpt_io.target_names(ckpt)
    assert names == (STANDARD if name == "all" else [name])
    assert all(t["unit"] == TARGETS[t["name"]].unit for t in ckpt["targets"])
    recorded = ckpt_io.test_mae(ckpt)
    assert list(recorded) == names
    test = ckpt["split"]["test"]
    pred = batched_outputs(ckpt_io.build_model(ckpt), batching.Batcher(qm9), test, 512)  # [M, K]
    true = qm9.y[test][:, [t["column"] for t in ckpt["targets"]]]
    mae = (pred.double() - true.double()).abs().mean(0)
    assert mae.tolist() == pytest.approx(list(recorded.values()), rel=1e-4)


@pytest.mark.slow
def test_shipped_potential_records_how_it_was_made_and_its_figure_at_qm9s_minima(qm9) -> None:
    """models/schnet_qm9_U0_potential.pth: weights only, trained with forces (its command says how), and its
    energy at the 10,831 QM9 test minima against U0 - ZPVE is the figure it records (potential/ship.py)."""
    path = shipped.path("U0_potential")
    raw = torch.load(path, weights_only=True)
    assert path.stat().st_size < 8e6 and "optimizer" not in raw
    assert raw["command"].startswith("python train.py") and "--force-weight" in raw["command"]
    assert raw["data"] == "QM9" or not Path(raw["data"]).is_absolute()  # no path of the machine it was made on
    ckpt = ckpt_io.load(path)
    test, truth, recorded = qm9_figure(ckpt, qm9)
    pred = batched_outputs(ckpt_io.build_model(ckpt), batching.Batcher(qm9), test, 512)[:, 0]
    assert float((pred.double() - truth.double()).abs().mean()) == pytest.approx(recorded, rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gap", "U0", "homo", "lumo", "U0_potential"])
def test_shipped_model_in_pygs_own_schnet_gives_its_recorded_test_mae(name: str, qm9) -> None:
    """The single-output shipped models, their weights copied into torch_geometric.nn.models.SchNet (to_pyg), give
    their recorded MAE on all 10,831 test molecules: the shipped numbers are PyG's SchNet's numbers."""
    ckpt = ckpt_io.load(shipped.path(name))
    reference = ckpt_io.build_model(ckpt).to_pyg().eval()
    assert type(reference).__module__ == "torch_geometric.nn.models.schnet"
    test, truth, recorded = qm9_figure(ckpt, qm9)
    batcher = batching.Batcher(qm9)
    with torch.no_grad():
        pred = torch.cat([reference(b.z, b.pos, b.batch)[:, 0] for b in map(batcher, test.split(512))])
    assert float((pred.double() - truth.double()).abs().mean()) == pytest.approx(recorded, rel=1e-4)


@pytest.mark.slow
def test_without_flags_the_shipped_all_target_model_prints_twelve_properties(qm9, tmp_path: Path) -> None:
    ase.io.write(tmp_path / "m.xyz", atoms_of(qm9, 100))
    proc = run(["--device", "cpu", "--csv", "out.csv", "m.xyz"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"model: {os.path.relpath(shipped.path('all'), tmp_path)} (SchNet, 12 targets" in proc.stdout
    header = proc.stdout.splitlines()[1]
    assert all(f"{n} ({TARGETS[n].unit})" in header for n in STANDARD)
    import csv

    row, = csv.DictReader((tmp_path / "out.csv").open())
    assert list(row) == ["file", "frame", "formula", "atoms", *STANDARD, "note"]
    maes = ckpt_io.test_mae(ckpt_io.load(shipped.path("all")))
    for n in STANDARD:  # a trained model: each property within 20 of its test MAEs of the DFT value
        assert abs(float(row[n]) - float(qm9.y[100, TARGETS[n].column])) < 20 * maes[n], n
    assert run(["--target", "all", "--device", "cpu", "m.xyz"], tmp_path).stdout == proc.stdout


@pytest.mark.slow
def test_without_checkpoint_the_shipped_model_for_the_target_predicts(qm9, tmp_path: Path) -> None:
    """gap, U0, homo and lumo come from their dedicated models, the other eight from the all-target model."""
    ase.io.write(tmp_path / "m.xyz", atoms_of(qm9, 100))
    assert shipped.dedicated() == ["gap", "U0", "homo", "lumo"]
    dedicated = [(t, t, f"{t} in eV") for t in ("gap", "U0", "homo", "lumo")]
    for target, model, what in (*dedicated, ("cv", "all", "12 targets")):
        proc = run(["--target", target, "--device", "cpu", "m.xyz"], tmp_path)
        assert proc.returncode == 0, proc.stderr
        shown = os.path.relpath(shipped.path(model), tmp_path)
        assert f"model: {shown} (SchNet, {what}" in proc.stdout
        assert f"{target} ({TARGETS[target].unit})" in proc.stdout.splitlines()[1]
        assert len(proc.stdout.splitlines()[1].split("(")) == 2  # one property column
    dft = float(qm9.y[100, 4])
    last_row = run(["--target", "gap", "--device", "cpu", "m.xyz"], tmp_path).stdout.strip().splitlines()[-1]
    shown = float(last_row.split()[4])
    assert abs(shown - dft) < 0.5  # a trained model, not a random one: within 0.5 eV of the DFT gap


@pytest.mark.slow
def test_target_and_checkpoint_must_agree(checkpoint: Path, qm9, tmp_path: Path) -> None:
    ase.io.write(tmp_path / "m.xyz", atoms_of(qm9, 100))
    proc = run(["--checkpoint", str(checkpoint), "--target", "U0", "m.xyz"], tmp_path)
    assert proc.returncode != 0 and "predicts gap, not U0" in proc.stderr.strip().splitlines()[0]
    proc = run(["--checkpoint", str(checkpoint), "--target", "all", "m.xyz"], tmp_path)
    assert proc.returncode != 0 and "predicts only gap" in proc.stderr.strip().splitlines()[0]


@pytest.fixture(scope="module")
def multi_checkpoint(tmp_path_factory, qm9) -> Path:
    """A lite model of all twelve targets (the physical dipole and spatial-extent outputs among them)."""
    tmp = tmp_path_factory.mktemp("multi")
    subprocess.run([sys.executable, "train_lite.py", "--target", "all", "--subset-size", "300", "--epochs", "1",
                    "--tsne-samples", "20", "--device", "cpu", "--output-dir", str(tmp / "results"),
                    "--checkpoint-dir", str(tmp), "--data-dir", str(REPO / "data")], cwd=REPO, check=True,
                   capture_output=True)
    return tmp / "best_model_lite.pth"


@pytest.mark.slow
def test_a_multi_target_checkpoint_prints_every_property(multi_checkpoint: Path, qm9, tmp_path: Path) -> None:
    """One row per structure, a column per property with its unit in the header; the CSV names the columns by
    target; the values are the model's outputs; --target picks one; --per-atom terms add up for every output."""
    ckpt = torch.load(multi_checkpoint, weights_only=True)
    test = ckpt["split"]["test"][:3]
    expected = batched_outputs(ckpt_io.build_model(ckpt), batching.Batcher(qm9), test, 64).numpy()  # [3, 12]
    for k, i in enumerate(test.tolist()):
        ase.io.write(tmp_path / f"m{k}.xyz", atoms_of(qm9, i))
    files = [f"m{k}.xyz" for k in range(3)]
    proc = run(["--checkpoint", str(multi_checkpoint), "--csv", "out.csv", *files], tmp_path)
    assert proc.returncode == 0, proc.stderr
    header = proc.stdout.splitlines()[1]
    for unit_header in ("mu (D)", "alpha (a0^3)", "gap (eV)", "r2 (a0^2)", "U0 (eV)", "cv (cal/mol K)"):
        assert unit_header in header
    import csv

    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    names = ["mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "cv"]
    assert list(rows[0]) == ["file", "frame", "formula", "atoms", *names, "note"]
    np.testing.assert_allclose([[float(r[n]) for n in names] for r in rows], expected, rtol=1e-5, atol=1e-4)
    one = predict.main(["--checkpoint", str(multi_checkpoint), "--target", "cv", "--device", "cpu",
                        str(tmp_path / "m0.xyz")])
    assert list(one[0]) == ["file", "frame", "formula", "atoms", "cv", "note"]
    model = ckpt_io.build_model(ckpt)
    mols = [predict.Molecule("x", 0, "", atoms_of(qm9, i).numbers, atoms_of(qm9, i).positions) for i in test.tolist()]
    preds, contributions = predict.predict_molecules(model, mols, torch.device("cpu"))
    np.testing.assert_allclose(np.stack([c.sum(0) for c in contributions]), preds, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_unknown_or_unshipped_target(qm9, tmp_path: Path) -> None:
    ase.io.write(tmp_path / "m.xyz", atoms_of(qm9, 100))
    proc = run(["--target", "bandgap", "m.xyz"], tmp_path)
    assert proc.returncode != 0 and "unknown QM9 target 'bandgap'" in proc.stderr.strip().splitlines()[0]
    proc = run(["--target", "U0_atom", "m.xyz"], tmp_path)
    assert proc.returncode != 0 and "no shipped model predicts U0_atom" in proc.stderr.strip().splitlines()[0]


def test_a_relaxation_or_explanation_that_fails_costs_only_its_own_row(qm9, tmp_path: Path, monkeypatch) -> None:
    """A periodic frame, a relaxation or an explanation fails molecule by molecule: the others are predicted and
    written, the failed one gets a row with the reason in its note, and the exit status says that one failed."""
    from schnetqm9.inference import explain
    from schnetqm9.potential import calculator

    periodic = atoms_of(qm9, 102)
    periodic.set_cell([20.0, 20.0, 20.0])
    periodic.set_pbc(True)
    ase.io.write(tmp_path / "mols.extxyz", [atoms_of(qm9, 100), atoms_of(qm9, 101), periodic])
    second = atoms_of(qm9, 101).get_positions()
    relax, attribute = calculator.relax, explain.integrated_gradients

    def relax_failing_for_the_second(z, pos, *args):
        if pos.shape == second.shape and np.allclose(pos, second):
            raise RuntimeError("the forces are not finite")
        return relax(z, pos, *args)

    def explain_failing_for_the_second(model, z, pos, output=0, **kw):
        if pos.shape == second.shape and np.allclose(pos.numpy(), second, atol=1e-5):
            raise RuntimeError("no gradient")
        return attribute(model, z, pos, output, **kw)

    monkeypatch.setattr(calculator, "relax", relax_failing_for_the_second)
    monkeypatch.setattr(explain, "integrated_gradients", explain_failing_for_the_second)
    monkeypatch.chdir(tmp_path)
    for flag, reason in (("--relax", "relaxation failed (the forces are not finite)"),
                         ("--explain", "explanation failed (no gradient)")):
        with pytest.raises(SystemExit) as stop:
            predict.main(["--device", "cpu", "--target", "gap", flag, "--relax-steps", "5", "--csv", "out.csv",
                          "--output-dir", str(tmp_path), "mols.extxyz"])
        assert stop.value.code == 1
        table = list(csv.DictReader((tmp_path / "out.csv").open()))
        assert {r["frame"] for r in table if r["note"] == "" or "relaxation not" in r["note"]} == {"0"}
        assert [(r["frame"], r["note"]) for r in table[-2:]] == [
            ("2", "failed: mols.extxyz: frame 2 is periodic: the model sees one molecule, not its images"),
            ("1", f"failed: mols.extxyz frame 1: {reason}")]
