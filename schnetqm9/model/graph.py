"""The interaction graph: every ordered pair of atoms of the same molecule within the cutoff."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from schnetqm9.model import kernels as cpu_kernels

try:
    import torch_cluster as _torch_cluster
except Exception:  # not installed, or built against another torch
    _torch_cluster = None

RADIUS_BACKEND = "torch_cluster" if _torch_cluster is not None else "pytorch"
_backend_announced = False


def radius_graph(pos: Tensor, r: float, batch: Tensor | None = None) -> Tensor:
    """All ordered pairs (j, i) of distinct atoms in the same molecule with |pos_i - pos_j| <= r.

    The directed graph PyTorch Geometric's SchNet expects (bench.py's reference, tests). Uses torch_cluster when
    it imports, with its neighbour cap set to the largest molecule so that none is dropped; otherwise both
    directions of `radius_pairs`.

    Args:
        pos: [num_atoms, 3] positions.
        r: cutoff radius, in the unit of `pos`.
        batch: [num_atoms] molecule of each atom, sorted; None for a single molecule.
    Returns:
        edge_index [2, num_edges]: row 0 the neighbour j (source), row 1 the centre i (target).
    """
    global _backend_announced
    if batch is None:
        batch = torch.zeros(pos.size(0), dtype=torch.long, device=pos.device)
    if _torch_cluster is None and not _backend_announced:  # say once per process that the fallback builds them
        _backend_announced = True
        warnings.warn("radius graphs: torch_cluster is not importable, using radius_pairs in both directions",
                      stacklevel=2)
    if _torch_cluster is None or pos.is_cuda and not _cluster_has_cuda():
        pairs = cpu_kernels.radius_pairs(pos, r, batch)
        return torch.cat([pairs, pairs.flip(0)], dim=1)
    cap = int(torch.bincount(batch).max()) if pos.numel() else 1
    return _torch_cluster.radius_graph(pos, r, batch, loop=False, max_num_neighbors=cap)


def _cluster_has_cuda() -> bool:
    return _torch_cluster is not None and bool(getattr(torch.ops.torch_cluster, "cuda_version", lambda: -1)() > 0)
