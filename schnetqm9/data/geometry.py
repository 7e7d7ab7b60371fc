"""Distances within one structure: its closest atoms and the parts that a cutoff separates."""
from __future__ import annotations

import numpy as np


def closest_pair(pos: np.ndarray) -> tuple[int, int, float]:
    """The two closest atoms (i < j) of a structure [n, 3] and their distance in Angstrom; (-1, -1, inf) for n < 2.

    A k-d tree's nearest neighbours (scipy, which scikit-learn installs), O(n log n): a large PDB file would not
    fit an n x n distance matrix.
    """
    from scipy.spatial import cKDTree

    if len(pos) < 2:
        return -1, -1, float("inf")
    dist, nearest = cKDTree(pos).query(pos, k=2)  # [n, 2]: each atom itself, then its nearest neighbour
    i = int(np.argmin(dist[:, 1]))
    j = int(nearest[i, 1])
    return min(i, j), max(i, j), float(dist[i, 1])


def fragments(pos: np.ndarray, cutoff: float) -> int:
    """Number of connected parts of the graph that joins atoms within `cutoff` (Angstrom) of each other: the parts
    that SchNet, whose messages travel only within the cutoff, sees as separate molecules. pos [n, 3]."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(pos)
    if n < 2:
        return n
    pairs = cKDTree(pos).query_pairs(cutoff, output_type="ndarray")  # [P, 2]
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return int(connected_components(graph, directed=False)[0])
