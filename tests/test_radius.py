"""Interaction graphs: exact, molecule-local, and the same from every implementation (the C++ loop, the
pure-PyTorch definition, torch_cluster)."""
from __future__ import annotations

import pytest
import torch

from schnetqm9.data import batch as batching
from schnetqm9.data.batch import Batcher
from schnetqm9.data.qm9 import QM9
from schnetqm9.model import graph
from schnetqm9.model import kernels as cpu_kernels
from schnetqm9.model.graph import radius_graph


def brute_force(pos: torch.Tensor, r: float, batch: torch.Tensor) -> set[tuple[int, int]]:
    """Ordered pairs (j, i), j != i, same molecule, distance <= r, from the full distance matrix in float64."""
    d = torch.cdist(pos.double(), pos.double())
    same = batch[:, None] == batch[None, :]
    close = (d <= r) & same & ~torch.eye(len(pos), dtype=torch.bool)
    return {(int(j), int(i)) for j, i in close.nonzero().tolist()}


def edge_set(edge_index: torch.Tensor) -> set[tuple[int, int]]:
    pairs = {tuple(p) for p in edge_index.t().tolist()}
    assert len(pairs) == edge_index.size(1), "duplicate edges"
    return pairs


def both_directions(pairs: torch.Tensor) -> set[tuple[int, int]]:
    return edge_set(torch.cat([pairs, pairs.flip(0)], dim=1))


@pytest.fixture(scope="module")
def batches(qm9: QM9) -> list[batching.Batch]:
    g = torch.Generator().manual_seed(0)
    batcher = Batcher(qm9)
    return [batcher(torch.randint(len(qm9), (n,), generator=g)) for n in (1, 7, 64)]


@pytest.mark.parametrize("r", [1.2, 3.0, 5.0, 10.0])
def test_reference_pairs_are_exact(batches, r: float) -> None:
    for b in batches:
        pairs = cpu_kernels.radius_pairs_reference(b.pos, r, b.batch)
        assert bool((pairs[0] < pairs[1]).all())  # unordered, each pair once, no self loops
        assert torch.equal(b.batch[pairs[0]], b.batch[pairs[1]])  # no pair across molecules
        assert both_directions(pairs) == brute_force(b.pos, r, b.batch)


@pytest.mark.parametrize("r", [1.2, 5.0, 10.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_pairs_equal_the_reference(batches, r: float, dtype: torch.dtype) -> None:
    """Same pairs in the same order (molecule, then i, then j)."""
    if cpu_kernels.load() is None:
        pytest.skip("the C++ kernels did not build on this machine")
    for b in batches:
        pos = b.pos.to(dtype)
        expected = cpu_kernels.radius_pairs_reference(pos, r, b.batch)
        assert torch.equal(cpu_kernels.radius_pairs(pos, r, b.batch), expected)


def test_kernel_pairs_refuse_an_unsorted_batch() -> None:
    if cpu_kernels.load() is None:
        pytest.skip("the C++ kernels did not build on this machine")
    with pytest.raises(RuntimeError, match="sorted"):
        cpu_kernels.radius_pairs(torch.zeros(3, 3), 1.0, torch.tensor([0, 1, 0]))


def test_the_fallback_is_announced_once_and_torch_cluster_not_at_all(monkeypatch) -> None:
    """A user of the calculator or predict sees a warning only when the graphs come from the fallback."""
    import warnings

    pos = torch.tensor([[0.0, 0, 0], [1.0, 0, 0]])
    cases = [(None, 1)] + ([(graph._torch_cluster, 0)] if graph._torch_cluster is not None else [])
    for backend, expected in cases:
        monkeypatch.setattr(graph, "_torch_cluster", backend)
        monkeypatch.setattr(graph, "_backend_announced", False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                assert edge_set(radius_graph(pos, 1.5)) == {(0, 1), (1, 0)}
        assert sum("radius graphs" in str(w.message) for w in caught) == expected


@pytest.mark.parametrize("r", [1.2, 5.0, 10.0])
def test_torch_cluster_agrees(batches, r: float) -> None:
    pytest.importorskip("torch_cluster")
    assert graph.RADIUS_BACKEND == "torch_cluster"
    for b in batches:
        assert edge_set(radius_graph(b.pos, r, b.batch)) == brute_force(b.pos, r, b.batch)


def test_no_neighbour_is_dropped_in_the_largest_molecules(qm9: QM9) -> None:
    """A 10 Angstrom cutoff joins every pair in most QM9 molecules: 29 atoms -> 28 neighbours each, none capped."""
    big = torch.nonzero(qm9.num_atoms == 29).flatten()[:16]
    b = Batcher(qm9)(big)
    assert edge_set(radius_graph(b.pos, 10.0, b.batch)) == brute_force(b.pos, 10.0, b.batch)
    assert both_directions(cpu_kernels.radius_pairs(b.pos, 10.0, b.batch)) == brute_force(b.pos, 10.0, b.batch)


def test_single_molecule_without_batch() -> None:
    pos = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0]])
    assert edge_set(radius_graph(pos, 1.5)) == {(0, 1), (1, 0)}
    assert edge_set(cpu_kernels.radius_pairs(pos, 1.5)) == {(0, 1)}
    assert edge_set(cpu_kernels.radius_pairs(pos, 2.5)) == {(0, 1), (1, 2)}
