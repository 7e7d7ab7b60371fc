"""SchNet: the same function as PyG's reference, symmetric as physics demands, and trainable."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from schnet_model import FULL_CONFIG, LITE_CONFIG, SchNet
from schnetqm9.data import batch as batching
from schnetqm9.data import targets
from schnetqm9.data.batch import Batcher
from schnetqm9.data.qm9 import QM9

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(hidden_channels=32, num_filters=24, num_interactions=3, num_gaussians=16, cutoff=5.0)


@pytest.fixture(scope="module")
def batch(qm9: QM9) -> batching.Batch:
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
    kwargs = dict(mean=-4.2, std=0.37, atomref=targets.atomref("U0")) if normalised else {}
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
    model = SchNet(**SMALL, readout=readout, mean=1.0, std=2.0, atomref=targets.atomref("U")).double()
    pos = batch.pos.double()
    contributions = model.atom_contributions(batch.z, pos, batch.batch)
    assert contributions.shape == (len(batch.z), 1)
    summed = torch.zeros(batch.num_graphs, 1, dtype=torch.float64).index_add_(0, batch.batch, contributions)
    torch.testing.assert_close(summed, model(batch.z, pos, batch.batch))
    emb = model.embedding(batch.z, pos, batch.batch)
    assert emb.shape == (batch.num_graphs, SMALL["hidden_channels"] // 2)


ALL_OUTPUTS = ["dipole", "add", "mean", "spatial_extent"]


def test_physical_outputs_are_invariant_and_add_up(batch) -> None:
    """The dipole and spatial-extent outputs: invariant to rotation, translation and atom order; their atom terms
    sum to the prediction; the dipole is the norm of a sum of neutral charges times positions."""
    torch.manual_seed(0)
    model = SchNet(**SMALL, readout=ALL_OUTPUTS, mean=[0.0, 1.0, -2.0, 3.0], std=[1.0, 2.0, 0.5, 1.5]).double()
    pos = batch.pos.double()
    out = model(batch.z, pos, batch.batch)
    assert out.shape == (batch.num_graphs, 4) and bool((out[:, 0] >= 0).all())
    moved = pos @ random_rotation(3).T + torch.tensor([-40.0, 2.5, 9.0], dtype=torch.float64)
    torch.testing.assert_close(model(batch.z, moved, batch.batch), out)
    perm = torch.randperm(len(pos), generator=torch.Generator().manual_seed(4))
    perm = perm[torch.argsort(batch.batch[perm], stable=True)]
    torch.testing.assert_close(model(batch.z[perm], pos[perm], batch.batch[perm]), out)
    terms = model.atom_contributions(batch.z, pos, batch.batch)
    summed = torch.zeros_like(out).index_add_(0, batch.batch, terms)
    torch.testing.assert_close(summed, out)
    # the dipole from its definition: charges a_i - mean_i a_i about any origin, here the raw coordinates
    a = model.lin2(model._atom_features(batch.z, pos, batch.batch))[:, 0] * model.std[0] + model.mean[0]
    n = torch.bincount(batch.batch).double()
    q = a - (torch.zeros(batch.num_graphs, dtype=torch.float64).index_add_(0, batch.batch, a) / n)[batch.batch]
    mu = torch.zeros(batch.num_graphs, 3, dtype=torch.float64).index_add_(0, batch.batch, q[:, None] * pos)
    torch.testing.assert_close(out[:, 0], mu.norm(dim=1))
    # r2 from its definition: atom-wise values times squared distances from the centre of mass (ASE's masses)
    from ase.data import atomic_masses

    a3 = model.lin2(model._atom_features(batch.z, pos, batch.batch))[:, 3] * model.std[3] + model.mean[3]
    m = torch.tensor(atomic_masses, dtype=torch.float64)[batch.z]
    mass = torch.zeros(batch.num_graphs, dtype=torch.float64).index_add_(0, batch.batch, m)
    com = torch.zeros(batch.num_graphs, 3, dtype=torch.float64).index_add_(0, batch.batch, m[:, None] * pos)
    d2 = (pos - (com / mass[:, None])[batch.batch]).square().sum(1)
    r2 = torch.zeros(batch.num_graphs, dtype=torch.float64).index_add_(0, batch.batch, a3 * d2)
    torch.testing.assert_close(out[:, 3], r2)


def test_outputs_share_one_representation(batch) -> None:
    """A multi-output model's k-th output is the single-output model whose last layer is row k of its last layer."""
    torch.manual_seed(0)
    multi = SchNet(**SMALL, readout=["mean", "add"], mean=[1.0, -3.0], std=[2.0, 0.5],
                   atomref=torch.cat([torch.zeros(100, 1), targets.atomref("U0")], 1)).double()
    single = SchNet(**SMALL, readout="add", mean=-3.0, std=0.5, atomref=targets.atomref("U0")).double()
    state = multi.state_dict()
    state.update({"lin2.weight": state["lin2.weight"][1:], "lin2.bias": state["lin2.bias"][1:],
                  "mean": state["mean"][1:], "std": state["std"][1:], "atomref": state["atomref"][:, 1:]})
    single.load_state_dict(state)
    pos = batch.pos.double()
    torch.testing.assert_close(multi(batch.z, pos, batch.batch)[:, 1:], single(batch.z, pos, batch.batch))


def test_dipole_of_a_single_atom_is_zero_with_finite_gradients() -> None:
    torch.manual_seed(0)
    model = SchNet(**SMALL, readout=["dipole", "spatial_extent"])
    pos = torch.tensor([[0.1, 0.2, 0.3]], requires_grad=True)
    out = model(torch.tensor([6]), pos)
    assert out[0, 0].item() == 0.0
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


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
