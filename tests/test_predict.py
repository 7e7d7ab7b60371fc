"""predict.py on structure files: the same numbers as the training evaluation, symmetric, and strict on bad input."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest
import torch

import predict
import qm9_data
import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, qm9) -> Path:
    tmp = tmp_path_factory.mktemp("predict")
    subprocess.run([sys.executable, "train_lite.py", "--subset-size", "300", "--epochs", "1", "--tsne-samples", "20",
                    "--device", "cpu", "--output-dir", str(tmp / "results"), "--checkpoint-dir", str(tmp),
                    "--data-dir", str(REPO / "data")], cwd=REPO, check=True, capture_output=True)
    return tmp / "best_model_lite.pth"


def atoms_of(qm9, i: int) -> ase.Atoms:
    d = qm9[i]
    return ase.Atoms(numbers=d.z.numpy(), positions=d.pos.double().numpy())


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "predict.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_same_prediction_as_training_evaluation(checkpoint: Path, qm9, tmp_path: Path) -> None:
    ckpt = torch.load(checkpoint, weights_only=True)
    test = ckpt["split"]["test"][:5]
    expected = train.predict(train.model_from_checkpoint(ckpt), qm9_data.Batcher(qm9), test, 64).numpy()
    files = []
    for k, i in enumerate(test.tolist()):
        ase.io.write(tmp_path / f"m{k}.xyz", atoms_of(qm9, i))
        files.append(str(tmp_path / f"m{k}.xyz"))
    rows = predict.main(["--checkpoint", str(checkpoint), "--device", "cpu", *files])
    np.testing.assert_allclose([r["prediction"] for r in rows], expected, rtol=1e-5, atol=1e-5)
    assert all(r["target"] == "gap" and r["unit"] == "eV" for r in rows)


def test_rotated_translated_copy_and_multiframe_file(checkpoint: Path, qm9, tmp_path: Path) -> None:
    a = atoms_of(qm9, 777)
    b = a.copy()
    b.rotate(73, (1, 2, 3), center="COM")
    b.translate((5.0, -3.0, 11.0))
    ase.io.write(tmp_path / "two.extxyz", [a, b, atoms_of(qm9, 5)])
    rows = predict.main(["--checkpoint", str(checkpoint), "--device", "cpu", "--csv", str(tmp_path / "out.csv"),
                         "--per-atom", "--output-dir", str(tmp_path / "res"), str(tmp_path / "two.extxyz")])
    assert [r["frame"] for r in rows] == [0, 1, 2]
    assert rows[0]["prediction"] == pytest.approx(rows[1]["prediction"], abs=1e-5)
    assert rows[0]["prediction"] != pytest.approx(rows[2]["prediction"], abs=1e-5)
    assert (tmp_path / "out.csv").read_text().count("\n") == 4
    assert sorted(p.name for p in (tmp_path / "res").glob("*.png")) == [
        f"atom_contributions_two_{k}.png" for k in range(3)]


def test_per_atom_contributions_sum_to_prediction(checkpoint: Path, qm9) -> None:
    model = train.model_from_checkpoint(torch.load(checkpoint, weights_only=True))
    mols = [predict.Molecule("x", k, "", atoms_of(qm9, i).numbers, atoms_of(qm9, i).positions)
            for k, i in enumerate([3, 999, 5000])]
    preds, contributions = predict.predict_molecules(model, mols, torch.device("cpu"), batch_size=2)
    assert [len(c) for c in contributions] == [len(m.z) for m in mols]
    np.testing.assert_allclose([c.sum() for c in contributions], preds, rtol=1e-5)


def test_large_molecules_are_flagged(checkpoint: Path, qm9, tmp_path: Path) -> None:
    big = torch.nonzero(qm9.num_atoms == 29).flatten()[:2].tolist()
    a, b = atoms_of(qm9, big[0]), atoms_of(qm9, big[1])
    b.translate((30.0, 0, 0))
    ase.io.write(tmp_path / "big.xyz", a + b)
    rows = predict.main(["--checkpoint", str(checkpoint), "--device", "cpu", str(tmp_path / "big.xyz")])
    assert rows[0]["atoms"] == 58 and "outside QM9" in rows[0]["note"]


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
        (ck + ["silane.xyz"], "element Si (frame 0) was never seen in training"),
        (["--checkpoint", "notes.pth", "ok.xyz"], "not a readable PyTorch checkpoint"),
        (["--checkpoint", "truncated.pth", "ok.xyz"], "not a readable PyTorch checkpoint"),
        (["--checkpoint", "foreign.pth", "ok.xyz"], "not a checkpoint of this project"),
    ]
    for args, message in cases:
        proc = run(args, tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and message in lines[0], (args, proc.stderr)
        assert not (tmp_path / "out.csv").exists()
