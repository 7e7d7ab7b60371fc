"""SchNet: the same function as PyG's reference, symmetric as physics demands, and trainable."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qm9_data
from qm9_data import Batcher, QM9
from schnet_model import FULL_CONFIG, LITE_CONFIG, SchNet

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(hidden_channels=32, num_filters=24, num_interactions=3, num_gaussians=16, cutoff=5.0)


@pytest.fixture(scope="module")
def batch(qm9: QM9) -> qm9_data.Batch:
    g = torch.Generator().manual_seed(1)
    return Batcher(qm9)(torch.randint(len(qm9), (12,), generator=g))


def random_rotation(seed: int = 0) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


@pytest.mark.parametrize("readout", ["add", "mean"])
@pytest.mark.parametrize("normalised", [False, True])
def test_equals_pyg_reference(batch, readout: str, normalised: bool) -> None:
    torch.manual_seed(0)
    kwargs = dict(mean=-4.2, std=0.37, atomref=qm9_data.atomref("U0")) if normalised else {}
    ours = SchNet(**SMALL, readout=readout, **kwargs).double()
    ref = ours.to_pyg()
    assert type(ref).__module__ == "torch_geometric.nn.models.schnet"
    # random molecules: QM9 compositions with jittered positions, and a few made-up ones
    pos = batch.pos.double() + 0.3 * torch.randn(batch.pos.shape, dtype=torch.float64)
    z = batch.z
    out, expected = ours(z, pos, batch.batch), ref(z, pos, batch.batch)
    assert out.shape == expected.shape == (batch.num_graphs, 1)
    # float64: the one difference is ShiftedSoftplus's ln 2, which PyG rounds through float32 (2e-9)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_invariance(batch) -> None:
    torch.manual_seed(0)
    model = SchNet(**SMALL).double()
    pos = batch.pos.double()
    out = model(batch.z, pos, batch.batch)
    rotated = pos @ random_rotation().T + torch.tensor([3.0, -7.5, 12.25], dtype=torch.float64)
    torch.testing.assert_close(model(batch.z, rotated, batch.batch), out)
    perm = torch.randperm(len(pos), generator=torch.Generator().manual_seed(2))
    perm = perm[torch.argsort(batch.batch[perm], stable=True)]  # shuffle atoms within each molecule
    torch.testing.assert_close(model(batch.z[perm], pos[perm], batch.batch[perm]), out)
    # and the prediction does change when the geometry does (so the checks above can fail)
    bent = pos.clone()
    bent[0] += 0.5
    assert not torch.allclose(model(batch.z, bent, batch.batch), out)


def test_molecules_in_a_batch_do_not_see_each_other(qm9: QM9) -> None:
    torch.manual_seed(0)
    model = SchNet(**{**SMALL, "cutoff": 10.0}).double()
    batcher = Batcher(qm9)
    a, b = batcher(torch.tensor([100])), batcher(torch.tensor([2000]))
    both = batcher(torch.tensor([100, 2000]))
    # put the second molecule right on top of the first: still no interaction across molecules
    pos = both.pos.double()
    pos[both.batch == 1] -= pos[both.batch == 1].mean(0) - pos[both.batch == 0].mean(0)
    out = model(both.z, pos, both.batch)
    torch.testing.assert_close(out[0], model(a.z, a.pos.double())[0])
    torch.testing.assert_close(out[1], model(b.z, b.pos.double())[0])


@pytest.mark.parametrize("readout", ["add", "mean"])
def test_atom_contributions_and_embedding(batch, readout: str) -> None:
    torch.manual_seed(0)
    model = SchNet(**SMALL, readout=readout, mean=1.0, std=2.0, atomref=qm9_data.atomref("U")).double()
    pos = batch.pos.double()
    contributions = model.atom_contributions(batch.z, pos, batch.batch)
    assert contributions.shape == (len(batch.z),)
    summed = torch.zeros(batch.num_graphs, dtype=torch.float64).index_add_(0, batch.batch, contributions)
    torch.testing.assert_close(summed, model(batch.z, pos, batch.batch)[:, 0])
    emb = model.embedding(batch.z, pos, batch.batch)
    assert emb.shape == (batch.num_graphs, SMALL["hidden_channels"] // 2)


def test_every_parameter_gets_a_finite_nonzero_gradient(batch) -> None:
    torch.manual_seed(0)
    model = SchNet(**SMALL, mean=0.5, std=2.0)
    loss = model(batch.z, batch.pos, batch.batch).square().mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_overfits_eight_molecules(qm9: QM9) -> None:
    torch.manual_seed(0)
    b = Batcher(qm9)(torch.arange(1000, 1008))
    y = b.y[:, 4:5]  # gap, eV
    model = SchNet(**LITE_CONFIG, readout="mean", mean=float(y.mean()), std=float(y.std()))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        opt.zero_grad()
        loss = ((model(b.z, b.pos, b.batch) - y) / model.std).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 100, (losses[0], losses[-1])


def test_same_seed_same_parameters() -> None:
    torch.manual_seed(123)
    a = SchNet(**SMALL)
    torch.manual_seed(123)
    b = SchNet(**SMALL)
    torch.manual_seed(124)
    c = SchNet(**SMALL)
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q), name
    assert not all(torch.equal(p, r) for p, r in zip(a.parameters(), c.parameters()))


def test_reset_parameters_reaches_every_layer() -> None:
    torch.manual_seed(0)
    model = SchNet(**SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.reset_parameters()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    weights = {k for k, _ in model.named_parameters() if k.endswith("weight")}
    assert weights <= changed


def test_parameter_counts_match_readme() -> None:
    out = subprocess.run([sys.executable, str(REPO / "schnet_model.py")], capture_output=True, text=True,
                         check=True).stdout
    readme = (REPO / "README.md").read_text()
    for name, config in (("full", FULL_CONFIG), ("lite", LITE_CONFIG)):
        count = sum(p.numel() for p in SchNet(**config).parameters())
        assert re.search(rf"{name}\b.*\b{count:,}\b", out), out
        assert f"{count:,}" in readme, f"README lacks the {name} parameter count {count:,}"
    assert "SchNet(" in repr(SchNet(**SMALL)) and "num_interactions=3" in repr(SchNet(**SMALL))
