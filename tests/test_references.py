"""The references refit (training/references.py): a per-element constant is found exactly, kept only where it
validates better; each epoch is validated and saved as it would be with refitted references; what a finished run
writes and tests is the refitted model."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas
import pytest
import torch
from conftest import TINY

from schnetqm9.data import batch as batching
from schnetqm9.data import splits
from schnetqm9.model import checkpoint, shipped
from schnetqm9.model.evaluation import batched_outputs
from schnetqm9.training import references

REPO = Path(__file__).resolve().parents[1]
U0 = 7  # QM9's column
OFFSET = {1: 0.03, 6: 0.05, 8: -0.02}  # eV per atom of H, C, O


def shipped_u0(qm9) -> tuple[torch.nn.Module, batching.Batcher, torch.Tensor, torch.Tensor]:
    model = checkpoint.build_model(checkpoint.load(shipped.path("U0")))
    split = splits.standard_split()
    return model, batching.Batcher(qm9), split["train"][:1500], split["val"][:400]


def outputs_of(model, batcher, mols):
    return batched_outputs(model, batcher, mols, 256)


def test_refit_finds_a_per_element_offset_given_to_the_references_and_removes_it(qm9) -> None:
    """The shipped U0 model with H, C and O's references shifted: the least-squares refit on training molecules
    returns minus the shifts, and the validation MAE comes back to the unshifted model's."""
    model, batcher, train, val = shipped_u0(qm9)
    mae = float((outputs_of(model, batcher, val)[:, 0] - qm9.y[val, U0]).abs().mean())
    for z, shift in OFFSET.items():
        model.atomref[z, 0] += shift
    record = references.refit(model, lambda m, mols: outputs_of(m, batcher, mols), batcher, [U0], train, val,
                              ["U0"], [0])
    r = record["targets"]["U0"]
    assert record["fitted_on"] == len(train) and r["kept"]
    for z, symbol in ((1, "H"), (6, "C"), (8, "O")):
        assert r["correction_per_atom"][symbol] == pytest.approx(-OFFSET[z], abs=2e-3)
    assert r["val_mae_before"] > 5 * mae
    assert r["val_mae_after"] == pytest.approx(mae, rel=0.05)
    after = float((outputs_of(model, batcher, val)[:, 0] - qm9.y[val, U0]).abs().mean())
    assert after == pytest.approx(r["val_mae_after"], rel=1e-6)  # the model itself was changed


def test_the_validation_refit_sees_each_epoch_as_it_would_be_saved(qm9) -> None:
    """ValidationRefit on the shipped U0 model with shifted references: its validation outputs are exactly those of
    the model with its correction added to the atomref, and the correction undoes the shift."""
    model, batcher, train, val = shipped_u0(qm9)
    clean = outputs_of(model, batcher, val)
    for z, shift in OFFSET.items():
        model.atomref[z, 0] += shift
    refit = references.ValidationRefit(batcher, [U0], train, val, [0])
    pred, delta = refit(lambda mols: outputs_of(model, batcher, mols), outputs_of(model, batcher, val))
    for z, shift in OFFSET.items():
        assert float(delta[z, 0]) == pytest.approx(-shift, abs=2e-3)
    assert (pred - clean).abs().max() < 0.01  # eV: the unshifted model's outputs, to the fit's noise
    model.atomref += delta
    assert torch.allclose(outputs_of(model, batcher, val), pred, atol=5e-3)  # float32 ulps at 10^4 eV


def test_a_refit_that_validates_worse_is_not_kept(qm9) -> None:
    """Training labels that carry a constant per carbon atom which the validation molecules do not: the refit
    finds it, validation gets worse, and the references are left exactly as they were."""
    model, batcher, train, val = shipped_u0(qm9)
    y = qm9.y.clone()
    carbons = torch.zeros(len(qm9), dtype=y.dtype).index_add_(0, batching.molecule_of_atoms(qm9.num_atoms),
                                                              (qm9.z == 6).to(y.dtype))
    y[train, U0] += 0.1 * carbons[train]
    biased = batching.Batcher(SimpleNamespace(z=qm9.z, pos=qm9.pos, y=y, ptr=qm9.ptr, num_atoms=qm9.num_atoms))
    before = model.atomref.clone()
    record = references.refit(model, lambda m, mols: outputs_of(m, biased, mols), biased, [U0], train, val,
                              ["U0"], [0])
    r = record["targets"]["U0"]
    assert r["correction_per_atom"]["C"] == pytest.approx(0.1, abs=3e-3)
    assert r["val_mae_after"] > r["val_mae_before"] and not r["kept"]
    assert torch.equal(model.atomref, before)


@pytest.mark.slow
def test_a_finished_run_and_the_command_write_the_refitted_model_they_tested(qm9, tmp_path: Path) -> None:
    """train_lite.py on U0 refits at its end and tests what it wrote; without the step, the command does the same
    to the finished file afterwards, with the test figures before and after, and refuses to refit twice or a model
    with nothing read out as a sum."""
    def lite(*flags: str) -> Path:
        out = tmp_path / "_".join(flags or ("default",))
        subprocess.run([sys.executable, "train_lite.py", "--target", "U0", *TINY, *flags, "--output-dir",
                        str(out / "results"), "--checkpoint-dir", str(out), "--data-dir", str(REPO / "data")],
                       cwd=REPO, check=True, capture_output=True)
        return out

    def recomputed(ckpt: dict) -> float:
        test = ckpt["split"]["test"]
        pred = batched_outputs(checkpoint.build_model(ckpt), batching.Batcher(qm9), test, 64)[:, 0]
        return float((pred - qm9.y[test, U0]).abs().mean())

    run = lite()
    ckpt = torch.load(run / "best_model_lite.pth", weights_only=True)
    record = ckpt["metrics"]["references_refit"]["targets"]["U0"]
    assert set(record) == {"val_mae_before", "val_mae_after", "kept", "correction_per_atom"}
    history = pandas.read_csv(run / "results" / "history_lite.csv")
    best = history[history.epoch == ckpt["epoch"]].iloc[0]
    assert "unrefitted_val_mae_U0" in history  # each epoch validated with references refitted, and saved so:
    validated = best["val_mae_U0"] if ckpt["weights"] == "average" else best["val_mae_raw_U0"]
    assert record["val_mae_before"] == pytest.approx(validated, rel=1e-3)
    assert recomputed(ckpt) == pytest.approx(ckpt["metrics"]["test"]["U0"]["mae"], rel=1e-5)
    written = json.loads((run / "results" / "metrics_lite.json").read_text())
    assert written["references_refit"]["targets"]["U0"] == record

    plain = lite("--no-refit-references") / "best_model_lite.pth"
    assert "references_refit" not in torch.load(plain, weights_only=True)["metrics"]
    cmd = [sys.executable, "-m", "schnetqm9.training.references", "--data-dir", str(REPO / "data")]
    proc = subprocess.run(cmd + [str(plain), str(tmp_path / "refit.pth")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    refit = torch.load(tmp_path / "refit.pth", weights_only=True)
    assert refit["metrics"]["test_before_refit"]["U0"]["mae"] == pytest.approx(recomputed(
        torch.load(plain, weights_only=True)), rel=1e-5)
    assert recomputed(refit) == pytest.approx(refit["metrics"]["test"]["U0"]["mae"], rel=1e-5)
    assert refit["metrics"]["references_refit"]["command"].startswith("python -m schnetqm9.training.references")
    for source, message in ((tmp_path / "refit.pth", "refitted already"),
                            (shipped.path("gap"), "no target read out as a sum")):
        proc = subprocess.run(cmd + [str(source), str(tmp_path / "again.pth")], cwd=REPO, capture_output=True,
                              text=True)
        assert proc.returncode == 1 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "again.pth").exists()
