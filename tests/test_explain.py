"""Attributions (explain.py, predict.py --explain) and the attention readout: the sanity checks an expert asks for
(completeness, invariance, dependence on the weights, contributions that add up) and the readout's definition."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest
import torch

from schnet_model import SchNet
from schnetqm9.inference import explain
from schnetqm9.inference import predictions as predict
from schnetqm9.model import checkpoint, shipped

REPO = Path(__file__).resolve().parents[1]


def shipped_model(name: str) -> SchNet:
    return checkpoint.build_model(checkpoint.load(shipped.path(name)))


def molecule(qm9, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = qm9[i]
    return d.z, d.pos


def rotated(pos: torch.Tensor) -> torch.Tensor:
    angle = torch.tensor(1.1)
    c, s = torch.cos(angle), torch.sin(angle)
    rot = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return pos @ rot.T + torch.tensor([4.0, -2.0, 7.5])


@pytest.mark.parametrize("name", ["gap", "U0"])
def test_integrated_gradients_are_complete_within_one_percent(name: str, qm9) -> None:
    model = shipped_model(name)
    z, pos = molecule(qm9, 1096)
    ig = explain.integrated_gradients(model, z, pos)
    with torch.no_grad():
        assert ig.prediction == pytest.approx(float(model(z, pos)[0, 0]), rel=1e-6)  # float32 sums
    assert ig.completeness_error <= 0.01
    assert ig.values.sum() == pytest.approx(ig.prediction - ig.baseline_prediction, rel=0.01)
    assert ig.values.shape == (len(z),) and np.all(np.isfinite(ig.values))


def test_attributions_are_invariant_to_rotation_and_translation(qm9) -> None:
    model = shipped_model("gap")
    z, pos = molecule(qm9, 2500)
    a, b = explain.integrated_gradients(model, z, pos), explain.integrated_gradients(model, z, rotated(pos))
    np.testing.assert_allclose(a.values, b.values, atol=2e-4)
    np.testing.assert_allclose(explain.saliency(model, z, pos), explain.saliency(model, z, rotated(pos)), atol=2e-4)


def test_attributions_change_when_the_weights_are_randomised(qm9) -> None:
    """Adebayo et al. 2018: an attribution that survives randomising the model explains the input, not the model."""
    model = shipped_model("gap")
    z, pos = molecule(qm9, 1096)
    trained = explain.integrated_gradients(model, z, pos).values, explain.saliency(model, z, pos)
    torch.manual_seed(0)
    for module in (model.atom_embedding, *model.interactions, model.lin1, model.lin2):
        module.reset_parameters()
    random = explain.integrated_gradients(model, z, pos).values, explain.saliency(model, z, pos)
    for a, b in zip(trained, random):
        rank_a, rank_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
        assert abs(np.corrcoef(rank_a, rank_b)[0, 1]) < 0.9  # not the same ordering of the atoms
        assert np.abs(a - b).max() > 0.1 * np.abs(a).max()


def test_predict_explain_table_csv_and_picture(qm9, tmp_path: Path) -> None:
    """For the sum-readout U0 model the contributions add up to the prediction predict.py prints; the integrated
    gradients add up to prediction - baseline; one CSV row per atom with the issue's column names; one picture."""
    z, pos = molecule(qm9, 1096)
    ase.io.write(tmp_path / "m.xyz", ase.Atoms(numbers=z.numpy(), positions=pos.double().numpy()))
    (row,) = predict.main(["--device", "cpu", "--target", "U0", str(tmp_path / "m.xyz")])
    atoms = predict.main(["--device", "cpu", "--target", "U0", "--explain", "--csv", str(tmp_path / "e.csv"),
                          "--output-dir", str(tmp_path / "res"), str(tmp_path / "m.xyz")])
    table = list(csv.DictReader((tmp_path / "e.csv").open()))
    assert len(atoms) == len(table) == len(z)
    assert list(table[0]) == ["file", "frame", "formula", "atom", "element", "integrated_gradient", "saliency",
                              "contribution", "note"]  # note: empty, or why an input failed
    assert sum(float(r["contribution"]) for r in table) == pytest.approx(row["U0"], abs=5e-3)
    ig = explain.integrated_gradients(shipped_model("U0"), z, pos)
    assert sum(float(r["integrated_gradient"]) for r in table) == pytest.approx(
        ig.prediction - ig.baseline_prediction, rel=0.01)
    assert [p.name for p in (tmp_path / "res").glob("*.png")] == ["explain_m.png"]


@pytest.mark.slow
def test_explain_needs_one_output(tmp_path: Path, qm9) -> None:
    z, pos = molecule(qm9, 5)
    ase.io.write(tmp_path / "m.xyz", ase.Atoms(numbers=z.numpy(), positions=pos.double().numpy()))
    with pytest.raises(SystemExit, match="--explain attributes one output .* has 12: name it with --target"):
        predict.main(["--device", "cpu", "--explain", str(tmp_path / "m.xyz")])


def attention_model(seed: int = 0, readout: str | list[str] = "attention") -> SchNet:
    torch.manual_seed(seed)
    return SchNet(hidden_channels=32, num_filters=16, num_interactions=2, num_gaussians=10, cutoff=5.0,
                  readout=readout, mean=[5.0] * (1 if isinstance(readout, str) else len(readout)))


def test_attention_weights_are_a_softmax_per_molecule_and_define_the_readout(qm9) -> None:
    model = attention_model()
    torch.nn.init.normal_(model.attention[2].weight, std=1.0)  # far from uniform weights
    b = [qm9[i] for i in (3, 40, 700)]
    z, pos = torch.cat([d.z for d in b]), torch.cat([d.pos for d in b])
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor([len(d.z) for d in b]))
    with torch.no_grad():
        w = model.attention_weights(z, pos, batch)[:, 0]  # [N]
        sums = torch.zeros(3).index_add_(0, batch, w)
        torch.testing.assert_close(sums, torch.ones(3))
        assert bool((w > 0).all()) and float(w.max() - w.min()) > 0.05
        a = model.lin2(model._atom_features(z, pos, batch))[:, 0] * model.std + model.mean  # [N] atom outputs
        expected = torch.zeros(3).index_add_(0, batch, w * a)
        torch.testing.assert_close(model(z, pos, batch)[:, 0], expected)
        alone = model(b[1].z, b[1].pos)[0, 0]  # molecules in a batch do not see each other
        torch.testing.assert_close(model(z, pos, batch)[1, 0], alone)
        perm = torch.randperm(len(b[1].z))
        torch.testing.assert_close(model(b[1].z[perm], rotated(b[1].pos)[perm])[0, 0], alone, atol=1e-5, rtol=1e-5)


def test_attention_with_constant_logits_is_the_mean_readout(qm9) -> None:
    att, mean = attention_model(readout="attention"), attention_model(readout="mean")
    state = {k: v for k, v in att.state_dict().items() if not k.startswith("attention.")}
    mean.load_state_dict(state)
    torch.nn.init.zeros_(att.attention[2].weight)
    torch.nn.init.constant_(att.attention[2].bias, 0.3)  # the same logit for every atom: uniform weights
    d = qm9[77]
    with torch.no_grad():
        torch.testing.assert_close(att(d.z, d.pos), mean(d.z, d.pos))
        torch.testing.assert_close(att.atom_contributions(d.z, d.pos), mean.atom_contributions(d.z, d.pos))


@pytest.mark.slow
def test_a_lite_attention_run_trains_saves_and_explains(tmp_path: Path, qm9) -> None:
    import subprocess
    import sys

    subprocess.run([sys.executable, "train_lite.py", "--target", "gap,U0", "--readout", "attention",
                    "--subset-size", "300", "--epochs", "2", "--tsne-samples", "20", "--device", "cpu",
                    "--output-dir", str(tmp_path / "results"), "--checkpoint-dir", str(tmp_path),
                    "--data-dir", str(REPO / "data")], cwd=REPO, check=True, capture_output=True)
    ckpt = checkpoint.load(tmp_path / "best_model_lite.pth")
    assert [t["output"] for t in ckpt["targets"]] == ["attention", "add"]  # U0 is extensive: a sum
    model = checkpoint.build_model(ckpt)
    assert model.attention_outputs == [0]
    z, pos = molecule(qm9, int(ckpt["split"]["test"][0]))
    ase.io.write(tmp_path / "m.xyz", ase.Atoms(numbers=z.numpy(), positions=pos.double().numpy()))
    atoms = predict.main(["--device", "cpu", "--checkpoint", str(tmp_path / "best_model_lite.pth"), "--target",
                          "gap", "--explain", "--output-dir", str(tmp_path / "res"), str(tmp_path / "m.xyz")])
    assert sum(r["attention"] for r in atoms) == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        pred = float(model(z, pos)[0, 0])
    assert sum(r["contribution"] for r in atoms) == pytest.approx(pred, abs=1e-4)


def test_saliency_is_the_norm_of_the_position_gradient(qm9) -> None:
    model = shipped_model("gap").double()
    z, pos = molecule(qm9, 10)
    pos = pos.double()
    s = explain.saliency(model, z, pos)
    h = 1e-5
    for i in (0, len(z) - 1):
        grad = []
        for k in range(3):
            plus, minus = pos.clone(), pos.clone()
            plus[i, k] += h
            minus[i, k] -= h
            with torch.no_grad():
                grad.append(float(model(z, plus)[0, 0] - model(z, minus)[0, 0]) / (2 * h))
        assert s[i] == pytest.approx(math.hypot(*grad), rel=1e-5)
