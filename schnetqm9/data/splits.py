"""Splits of a data set into training, validation and test molecules: seeded, disjoint, saved beside a run's outputs
and inside its checkpoints, so that a run can be reproduced or resumed on the same molecules."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from schnetqm9.data.qm9 import NUM_MOLECULES
from schnetqm9.files import atomic_write


def split_sizes(num_molecules: int, subset_size: int | None = None) -> tuple[int, int, int]:
    """(train, val, test) sizes: x, 80/10/10 on a subset.

    Raises `ValueError` for a subset that is not a positive number no larger than the data set, or too small to
    put at least one molecule in each part.
    """
    n = num_molecules if subset_size is None else int(subset_size)
    if n <= 0 or n > num_molecules:
        raise ValueError(f"subset size must be between 10 and {num_molecules} molecules, got {n}")
    if subset_size is None and n == NUM_MOLECULES:
        return 110_000, 10_000, n - 120_000
    n_train, n_val = round(0.8 * n), round(0.1 * n)
    if n_val < 1 or n - n_train - n_val < 1:
        raise ValueError(f"subset size {n} is too small to split 80/10/10: use at least 10 molecules")
    return n_train, n_val, n - n_train - n_val


def split_indices(num_molecules: int, subset_size: int | None = None, seed: int = 0) -> dict[str, Tensor]:
    """A seeded random split of molecule indices: {'train', 'val', 'test'} -> sorted LongTensors, disjoint.

    The first `subset_size` molecules of one seeded permutation form the subset, so a smaller subset's molecules
    are not a function of the split sizes. Same seed and sizes -> same split, on every machine.
    """
    n_train, n_val, n_test = split_sizes(num_molecules, subset_size)
    perm = torch.randperm(num_molecules, generator=torch.Generator().manual_seed(seed))
    parts = perm[: n_train + n_val + n_test].split([n_train, n_val, n_test])
    return {name: part.sort().values for name, part in zip(("train", "val", "test"), parts)}


def save_split(split: dict[str, Tensor], path: str | Path, **meta) -> None:
    """Write a split as JSON (indices into QM9 and whatever metadata, e.g. the seed), atomically."""
    payload = {**meta, **{k: v.tolist() for k, v in split.items()}}
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(payload))


def load_split(path: str | Path, num_molecules: int | None = None) -> dict[str, Tensor]:
    """A split written by `save_split`; with `num_molecules`, checked to fit a data set of that size (ValueError:
    indices out of range, sets that overlap or are empty). A set may name a structure more than once (it is then
    seen that many times per epoch)."""
    payload = json.loads(Path(path).read_text())
    split = {k: torch.tensor(payload[k], dtype=torch.long) for k in ("train", "val", "test")}
    if num_molecules is not None:
        every = torch.cat(list(split.values()))
        if not all(len(v) for v in split.values()):
            raise ValueError("a set of the split is empty")
        if int(every.min()) < 0 or int(every.max()) >= num_molecules:
            raise ValueError(f"its indices reach {int(every.max())}, beyond the {num_molecules} structures of the data")
        if sum(len(v.unique()) for v in split.values()) != len(every.unique()):
            raise ValueError("its training, validation and test sets overlap")
    return split


def standard_split() -> dict[str, Tensor]:
    """QM9's standard split, the one every shipped model was trained and tested on: 110,000 / 10,000 / 10,831
    molecules of seed 0."""
    return split_indices(NUM_MOLECULES)


def checked_molecules(n: int, seed: int = 0) -> list[int]:
    """The first n molecules (QM9 indices) of a seeded permutation of the standard test split: the molecules the
    potential's checks measure, the same for every model."""
    test = standard_split()["test"]
    return test[torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n]].tolist()
