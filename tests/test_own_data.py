"""Your own labelled structures (structure_file.py) and fine-tuning (transfer.py): the same flat tensors and
training loop as QM9, strict on bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ase
import ase.db
import ase.io
import numpy as np
import pytest
import torch
from ase.calculators.singlepoint import SinglePointCalculator

from schnet_model import FULL_CONFIG, SchNet
from schnetqm9.cli import UserError
from schnetqm9.data import batch as batching
from schnetqm9.data import qm9 as qm9_data
from schnetqm9.data import splits, structure_file, targets
from schnetqm9.inference import predictions as predict
from schnetqm9.model import checkpoint as ckpt_io
from schnetqm9.model import shipped, transfer
from schnetqm9.model.evaluation import batched_outputs


def molecules(qm9, indices: list[int], energy: bool = True) -> list[ase.Atoms]:
    """QM9 molecules as ASE Atoms with the gap in the comment line (info) and U0 as the calculator's energy."""
    out = []
    for i in indices:
        d = qm9[i]
        atoms = ase.Atoms(numbers=d.z.numpy(), positions=d.pos.double().numpy())
        atoms.info["gap"] = float(d.y[0, 4])
        atoms.info["name"] = f"gdb_{i + 1}"  # a string label: not a target
        if energy:
            atoms.calc = SinglePointCalculator(atoms, energy=float(d.y[0, 7]))
        out.append(atoms)
    return out


def test_extended_xyz_gives_qm9s_flat_tensors_and_labels(qm9, tmp_path) -> None:
    idx = [0, 5, 100, 2000]
    ase.io.write(tmp_path / "mols.extxyz", molecules(qm9, idx))
    data = structure_file.LabelledStructures(tmp_path / "mols.extxyz", ["energy", "gap"], progress=False)
    assert len(data) == 4 and data.keys == ["energy", "gap"]
    torch.testing.assert_close(data.num_atoms, qm9.num_atoms[idx])
    torch.testing.assert_close(data.z, torch.cat([qm9[i].z for i in idx]))
    torch.testing.assert_close(data.pos, torch.cat([qm9[i].pos for i in idx]))
    torch.testing.assert_close(data.y, qm9.y[idx][:, [7, 4]])


def test_a_gzipped_file_reads_as_its_plain_twin_without_seeking_in_the_stream(qm9, tmp_path, monkeypatch) -> None:
    """mols.extxyz.gz gives the same structures and labels as mols.extxyz, and never seeks in the gzip stream (each
    seek rereads it from the start: ASE's reader seeks once per frame, which made large files quadratic)."""
    import gzip

    idx = [0, 5, 100, 2000]
    ase.io.write(tmp_path / "mols.extxyz", molecules(qm9, idx))
    with open(tmp_path / "mols.extxyz", "rb") as plain, gzip.open(tmp_path / "mols.extxyz.gz", "wb") as packed:
        packed.write(plain.read())

    def no_seek(*args, **kwargs):
        raise AssertionError("seek in a gzip stream")

    monkeypatch.setattr(gzip.GzipFile, "seek", no_seek)
    a = structure_file.LabelledStructures(tmp_path / "mols.extxyz", ["energy", "gap"], progress=False)
    b = structure_file.LabelledStructures(tmp_path / "mols.extxyz.gz", ["energy", "gap"], progress=False)
    for name in ("num_atoms", "z", "pos", "y"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name))


def test_ase_database_key_value_pairs_and_energies(qm9, tmp_path) -> None:
    with ase.db.connect(tmp_path / "mols.db") as db:
        for atoms in molecules(qm9, [3, 4, 5]):
            db.write(atoms, homo=-7.5 + atoms.get_global_number_of_atoms())
    data = structure_file.LabelledStructures(tmp_path / "mols.db", ["homo", "energy"], progress=False)
    torch.testing.assert_close(data.y[:, 0], -7.5 + qm9.num_atoms[[3, 4, 5]].float())
    torch.testing.assert_close(data.y[:, 1], qm9.y[[3, 4, 5], 7])


def test_the_cache_is_used_until_the_file_changes(qm9, tmp_path, monkeypatch) -> None:
    path = tmp_path / "mols.extxyz"
    ase.io.write(path, molecules(qm9, [1, 2, 3]))
    structure_file.load_tensors(path, progress=False)
    assert structure_file.cache_path(path).is_file()

    def no_parse(*args, **kwargs):
        raise AssertionError("parsed again")

    with monkeypatch.context() as m:
        m.setattr(structure_file, "parse", no_parse)
        assert structure_file.load_tensors(path, progress=False)["ptr"].tolist()[-1] == int(qm9.num_atoms[1:4].sum())
    ase.io.write(path, molecules(qm9, [1, 2, 3, 4]))
    os.utime(path, ns=(1, 1))  # even a file rewritten within the same clock tick has a new fingerprint
    assert len(structure_file.load_tensors(path, progress=False)["ptr"]) == 5


def test_bad_files_and_labels_are_named(qm9, tmp_path) -> None:
    mols = molecules(qm9, list(range(12)))
    ase.io.write(tmp_path / "ok.extxyz", mols)
    partial = [a.copy() for a in mols]
    for k, a in enumerate(partial):
        a.info = {"gap": a.info["gap"]} if k != 7 else {}
    ase.io.write(tmp_path / "missing.extxyz", partial)
    nan = [a.copy() for a in mols]
    nan[2].info["gap"] = float("nan")
    ase.io.write(tmp_path / "nan.extxyz", nan)
    periodic = [a.copy() for a in mols]
    periodic[3].cell, periodic[3].pbc = np.eye(3) * 20, True
    ase.io.write(tmp_path / "periodic.extxyz", periodic)
    ghost = [a.copy() for a in mols]
    ghost[1].numbers[0] = 0
    ase.io.write(tmp_path / "ghost.extxyz", ghost)
    (tmp_path / "text.xyz").write_text("this is not\na structure file\n")
    cases = [
        ("ok.extxyz", ["dipole"], "no structure in", "has a numeric label 'dipole': the labels are energy, gap"),
        ("missing.extxyz", ["gap"], "label 'gap' is missing, NaN or infinite on 1 of 12", "first on structure 7"),
        ("nan.extxyz", ["gap"], "label 'gap' is missing, NaN or infinite on 1 of 12", "first on structure 2"),
        ("periodic.extxyz", ["gap"], "structure 3 is periodic", "periodic cells are not supported yet"),
        ("ghost.extxyz", ["gap"], "structure 1 has an atom with atomic number 0", "elements 1-99"),
        ("text.xyz", ["gap"], "text.xyz: ASE cannot read it as structures", ""),
        ("absent.xyz", ["gap"], "no file at", "absent.xyz"),
    ]
    for name, keys, first, second in cases:
        with pytest.raises(UserError) as err:
            structure_file.LabelledStructures(tmp_path / name, keys, progress=False)
        message = str(err.value)
        assert first in message and second in message and "\n" not in message, message


def test_fitted_references_recover_per_element_constants(qm9) -> None:
    """Labels that are exactly a sum of per-element constants are fitted exactly; for QM9's U0 (spread ~1,000 eV)
    the fit leaves a residual, the part the network must learn, smaller than a subtraction of the free-atom
    energies does (the fit also absorbs each element's mean share of the atomisation energy)."""
    idx = torch.arange(0, 130_000, 13)
    b = batching.Batcher(qm9)(idx)
    consts = torch.zeros(100)
    consts[[1, 6, 7, 8, 9]] = torch.tensor([-1.5, -20.0, 7.0, 3.25, -0.5])
    y = torch.zeros(len(idx), dtype=torch.float64).index_add_(0, b.batch, consts[b.z].double())
    fitted = targets.fit_atomref(b.z, b.batch, y)
    torch.testing.assert_close(fitted[:, 0], consts, atol=1e-4, rtol=0)
    u0 = targets.fit_atomref(b.z, b.batch, b.y[:, 7])[:, 0]
    free = targets.atomref("U0")[:, 0]

    def residual(ref: torch.Tensor) -> torch.Tensor:
        per_atom = ref[b.z].double()
        return b.y[:, 7].double() - torch.zeros(len(idx), dtype=torch.float64).index_add_(0, b.batch, per_atom)

    assert residual(u0).std() < 0.5 * residual(free).std()  # measured: 1.1 against 10.3 eV
    assert residual(u0).std() < 0.01 * b.y[:, 7].std()


REPO = Path(__file__).resolve().parents[1]


def train(args: list[str], tmp_path: Path, script: str = "train_lite.py") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, "--device", "cpu", "--tsne-samples", "10",
                           "--output-dir", str(tmp_path / "results"), "--checkpoint-dir", str(tmp_path / "ck"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def labelled_file(qm9, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("own") / "mols.extxyz"
    ase.io.write(path, molecules(qm9, list(range(120_000, 120_200))))  # QM9 test molecules of the shipped models
    return path


@pytest.mark.slow
def test_training_on_a_file_writes_what_a_qm9_run_writes_and_predict_reads_it(labelled_file: Path, tmp_path) -> None:
    proc = train(["--data", str(labelled_file), "--target", "energy,gap", "--unit", "eV", "--epochs", "2"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "160 train / 20 val / 20 test" in proc.stdout
    metrics = json.loads((tmp_path / "results" / "metrics_lite.json").read_text())
    assert metrics["data"] == str(labelled_file.resolve()) and metrics["targets"] == ["energy", "gap"]
    assert all(np.isfinite(metrics["test"][k]["mae"]) and metrics["test"][k]["unit"] == "eV" for k in ("energy", "gap"))
    for name in ("predictions_lite.png", "loss_curve_lite.png", "tsne_lite.png", "history_lite.csv", "split_lite.json"):
        assert (tmp_path / "results" / name).is_file()
    ckpt = ckpt_io.load(tmp_path / "ck" / "best_model_lite.pth")
    energy_ref = torch.tensor(ckpt["normalisation"]["atomref"][0])
    assert energy_ref[6] < -1000 and energy_ref[1] < -10  # fitted per-element references (C ~ -1030 eV)
    # predict.py on the checkpoint gives the training evaluation's numbers for the test structures
    test = ckpt["split"]["test"][:3].tolist()
    frames = ase.io.read(labelled_file, index=":")
    ase.io.write(tmp_path / "three.xyz", [frames[i] for i in test])
    rows = predict.main(["--checkpoint", str(tmp_path / "ck" / "best_model_lite.pth"), "--device", "cpu",
                         str(tmp_path / "three.xyz")])
    data = structure_file.LabelledStructures(labelled_file, ["energy", "gap"], progress=False)
    expected = batched_outputs(ckpt_io.build_model(ckpt), batching.Batcher(data), torch.tensor(test), 8)
    np.testing.assert_allclose([[r["energy"], r["gap"]] for r in rows], expected.numpy(), rtol=1e-5, atol=1e-3)


def test_init_from_copies_the_representation_and_matching_outputs(qm9) -> None:
    """Started from the shipped U0 model, a model for U0 (same name and unit) and a new label predicts exactly
    what the shipped model predicts for U0 before any training; the new label's output starts fresh; an element
    the checkpoint never saw keeps its fresh embedding row."""
    src = transfer.load_source(shipped.path("U0"), dict(FULL_CONFIG))
    new_targets = [dict(name="U0", unit="eV"), dict(name="homo", unit="Hartree")]
    matches = transfer.matching_outputs(src, new_targets)
    assert matches == {0: 0}
    norm = transfer.carry_normalisation(src, matches, dict(mean=[0.0, 0.0], std=[1.0, 1.0], loss_scale=[1.0, 1.0],
                                                           atomref=[None, None]))
    refs = torch.stack([torch.zeros(100) if r is None else torch.tensor(r) for r in norm["atomref"]], 1)
    torch.manual_seed(3)
    model = SchNet(**FULL_CONFIG, readout=["add", "add"], mean=norm["mean"], std=norm["std"], atomref=refs)
    fresh = model.atom_embedding.weight[16].clone()  # sulphur: not in QM9
    record = transfer.initialise(model, src, matches, "models/schnet_qm9_U0.pth")
    assert record["outputs_copied"] == ["U0"] and record["elements"] == [1, 6, 7, 8, 9]
    torch.testing.assert_close(model.atom_embedding.weight[16], fresh)
    idx = torch.arange(120_000, 120_064)
    batcher = batching.Batcher(qm9)
    ours = batched_outputs(model.eval(), batcher, idx, 64)
    theirs = batched_outputs(ckpt_io.build_model(src), batcher, idx, 64)[:, 0]
    torch.testing.assert_close(ours[:, 0], theirs, rtol=0, atol=1e-3)
    assert not torch.allclose(ours[:, 1], theirs, atol=1.0)



def test_a_renamed_output_starts_at_the_old_prediction_plus_a_constant_per_atom(qm9) -> None:
    """--init-output energy=U0: labels that are the shipped U0 model's prediction, less its free-atom references,
    plus a constant per element (as QM9's electronic energy is U0 less a nearly per-atom zero-point energy): the
    refitted references recover the constants, so the new model starts on the labels."""
    src = transfer.load_source(shipped.path("U0"), dict(FULL_CONFIG))
    new_targets = [dict(name="energy", unit="eV")]
    with pytest.raises(UserError, match="no output gap in eV"):
        transfer.matching_outputs(src, new_targets, {"energy": "gap"})
    with pytest.raises(UserError, match="NEW=OLD"):
        transfer.parse_renames("energy")
    matches = transfer.matching_outputs(src, new_targets, transfer.parse_renames("energy=U0"))
    assert matches == {0: 0}
    idx = torch.arange(2000, 2400)
    batcher = batching.Batcher(qm9)
    b = batcher(idx)
    old = ckpt_io.build_model(src)
    constant = torch.zeros(100, dtype=torch.float64)
    constant[[1, 6, 7, 8, 9]] = torch.tensor([-0.12, 0.35, 0.2, -0.4, 0.1], dtype=torch.float64)
    per_atom = lambda values: torch.zeros(len(idx), dtype=torch.float64).index_add_(0, b.batch, values[b.z])  # noqa: E731
    u0 = batched_outputs(old, batcher, idx, 512)[:, 0].double()
    y = (u0 - per_atom(old.atomref[:, 0].double()) + per_atom(constant))[:, None]  # [M, 1]
    norm = transfer.carry_normalisation(src, matches, dict(mean=[0.0], std=[1.0], loss_scale=[1.0], atomref=[None]))
    norm = transfer.refit_references(src, matches, lambda m: batched_outputs(m, batcher, idx, 512), y, b.z, b.batch,
                                     norm)
    present = b.z.unique()
    torch.testing.assert_close(torch.tensor(norm["atomref"][0], dtype=torch.float64)[present], constant[present],
                               rtol=0, atol=2e-3)
    model = SchNet(**FULL_CONFIG, readout=["add"], mean=norm["mean"], std=norm["std"],
                   atomref=torch.tensor(norm["atomref"][0])[:, None])
    transfer.initialise(model, src, matches, "models/schnet_qm9_U0.pth")
    start = batched_outputs(model.eval(), batcher, idx, 512)[:, 0].double()
    assert (start - y[:, 0]).abs().max() < 0.02  # eV: float32 sums of ~10^2 eV atom terms

@pytest.mark.slow
def test_fine_tuning_a_shipped_model_with_a_frozen_representation(labelled_file: Path, tmp_path) -> None:
    proc = train(["--data", str(labelled_file), "--target", "gap", "--unit", "eV", "--readout", "mean",
                  "--epochs", "1", "--init-from", str(shipped.path("U0")), "--freeze-representation"],
                 tmp_path, script="train.py")
    assert proc.returncode == 0, proc.stderr
    assert "started from" in proc.stdout and "frozen" in proc.stdout
    ckpt = ckpt_io.load(tmp_path / "ck" / "best_model.pth")
    assert ckpt["init_from"]["checkpoint"].endswith("schnet_qm9_U0.pth") and ckpt["init_from"]["outputs_copied"] == []
    src = ckpt_io.load(shipped.path("U0"))["state_dict"]
    for key, value in ckpt["state_dict"].items():
        if key.startswith("interactions."):
            torch.testing.assert_close(value, src[key])
    assert not torch.equal(ckpt["state_dict"]["lin2.weight"], src["lin2.weight"])


@pytest.mark.slow
def test_bad_runs_stop_with_one_line(labelled_file: Path, qm9, tmp_path) -> None:
    ase.io.write(tmp_path / "five.extxyz", molecules(qm9, list(range(5))))
    torch.save({"state_dict": {}}, tmp_path / "foreign.pth")
    base = ["--data", str(labelled_file), "--epochs", "1"]
    cases = [
        (["--data", str(tmp_path / "five.extxyz"), "--target", "energy"], "holds 5 structures: at least 10"),
        ([*base, "--target", "dipole"], "has a numeric label 'dipole': the labels are energy, gap"),
        ([*base, "--target", "all"], "with --data, --target names the label key(s)"),
        ([*base, "--target", "gap", "--init-from", str(tmp_path / "foreign.pth")], "not a checkpoint of this project"),
        ([*base, "--target", "gap", "--init-from", str(shipped.path("gap"))],
         "has another architecture than the flags ask for (hidden_channels 64, num_filters 64, num_interactions 2, "
         "num_gaussians 25, cutoff 5): start from it with --hidden-channels 128 --num-filters 128 "
         "--num-interactions 6 --num-gaussians 50 --cutoff 10"),
        ([*base, "--target", "gap", "--freeze-representation"], "give --init-from too"),
    ]
    for args, message in cases:
        proc = train(args, tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and message in lines[0], (args, proc.stderr)
        assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())


def test_learning_curve_points_share_validation_and_test_and_nest_their_training_sets(tmp_path) -> None:
    from schnetqm9.analysis import learning_curve

    standard = splits.standard_split()
    made = {}
    for n in (100, 300):
        learning_curve.write_split(n, tmp_path / f"{n}.json")
        made[n] = splits.load_split(tmp_path / f"{n}.json", qm9_data.NUM_MOLECULES)
    assert len(made[100]["train"]) == 100 and len(made[300]["train"]) == 300
    assert set(made[100]["train"].tolist()) < set(made[300]["train"].tolist()) < set(standard["train"].tolist())
    for n in (100, 300):
        torch.testing.assert_close(made[n]["val"], standard["val"][:1000])
        torch.testing.assert_close(made[n]["test"], standard["test"])  # the shipped models' test molecules
    assert [learning_curve.budget_epochs(n) for n in (100, 300, 1000, 3000, 10_000)] == [125, 50, 50, 32, 10]


def test_learning_curve_tables_print_both_arms_side_by_side(tmp_path) -> None:
    from schnetqm9.analysis import learning_curve

    header = "target,arm,train_size,lr,epochs,steps,best_epoch,val_mae,test_mae,unit,minutes,init_from\n"
    (tmp_path / "s.csv").write_text(header + "cv,scratch,100,0.003,125.0,500,9,0.5,0.40,cal/mol K,3.0,\n"
                                    "cv,scratch,300,0.003,50.0,500,9,0.4,0.30,cal/mol K,3.0,\n")
    (tmp_path / "f.csv").write_text(header + "cv,finetune,100,0.003,125.0,500,9,0.4,0.30,cal/mol K,3.0,m.pth\n")
    text = learning_curve.markdown([tmp_path / "s.csv", tmp_path / "f.csv"])
    assert "cv test MAE (cal/mol K):" in text
    assert "| 100 | 125 (500) | 0.4 | 0.3 | −25 % |" in text  # fine-tuned 25 % below scratch
    assert "| 300 | 50 (500) | 0.3 | not run |  |" in text


@pytest.mark.slow
def test_learning_curve_runs_a_point_and_writes_its_table(tmp_path: Path) -> None:
    """One point of a learning curve end to end: train.py on the first 100 training molecules, tested on the
    standard test split, one row in the table."""
    import csv

    table = tmp_path / "gap.csv"
    proc = subprocess.run([sys.executable, "-m", "schnetqm9.analysis.learning_curve", "--target", "gap", "--sizes",
                           "100", "--arms", "scratch", "--max-epochs", "1", "--out", str(tmp_path / "runs"), "--table",
                           str(table)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    row, = csv.DictReader(table.open())
    assert row["train_size"] == "100" and row["arm"] == "scratch" and row["epochs"] == "1.0"
    assert 0 < float(row["test_mae"]) < 5.0  # eV: one epoch on 100 molecules, against a spread of ~1.3 eV
