"""Radius graphs: exact, molecule-local, and the same from torch_cluster and from the pure-PyTorch fallback."""
from __future__ import annotations

import pytest
import torch

import qm9_data
from qm9_data import Batcher, QM9, _radius_graph_pytorch, radius_graph


def brute_force(pos: torch.Tensor, r: float, batch: torch.Tensor) -> set[tuple[int, int]]:
    d = torch.cdist(pos.double(), pos.double())
    same = batch[:, None] == batch[None, :]
    close = (d <= r) & same & ~torch.eye(len(pos), dtype=torch.bool)
    return {(int(j), int(i)) for j, i in close.nonzero().tolist()}


def edge_set(edge_index: torch.Tensor) -> set[tuple[int, int]]:
    pairs = {tuple(p) for p in edge_index.t().tolist()}
    assert len(pairs) == edge_index.size(1), "duplicate edges"
    return pairs


@pytest.fixture(scope="module")
def batches(qm9: QM9) -> list[qm9_data.Batch]:
    g = torch.Generator().manual_seed(0)
    batcher = Batcher(qm9)
    return [batcher(torch.randint(len(qm9), (n,), generator=g)) for n in (1, 7, 64)]


@pytest.mark.parametrize("r", [1.2, 3.0, 5.0, 10.0])
def test_fallback_is_exact(batches, r: float) -> None:
    for b in batches:
        ei = _radius_graph_pytorch(b.pos, r, b.batch)
        assert edge_set(ei) == brute_force(b.pos, r, b.batch)
        assert bool((ei[0] != ei[1]).all())  # no self loops
        assert torch.equal(b.batch[ei[0]], b.batch[ei[1]])  # no edges across molecules


@pytest.mark.parametrize("r", [1.2, 5.0, 10.0])
def test_torch_cluster_agrees_with_fallback(batches, r: float) -> None:
    pytest.importorskip("torch_cluster")
    assert qm9_data.RADIUS_BACKEND == "torch_cluster"
    for b in batches:
        assert edge_set(radius_graph(b.pos, r, b.batch)) == edge_set(_radius_graph_pytorch(b.pos, r, b.batch))


def test_no_neighbour_is_dropped_in_the_largest_molecules(qm9: QM9) -> None:
    """A 10 Angstrom cutoff joins every pair in most QM9 molecules: 29 atoms -> 28 neighbours each, none capped."""
    big = torch.nonzero(qm9.num_atoms == 29).flatten()[:16]
    b = Batcher(qm9)(big)
    ei = radius_graph(b.pos, 10.0, b.batch)
    assert edge_set(ei) == brute_force(b.pos, 10.0, b.batch)


def test_single_molecule_without_batch() -> None:
    pos = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0]])
    assert edge_set(radius_graph(pos, 1.5)) == {(0, 1), (1, 0)}
