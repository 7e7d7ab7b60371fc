"""Batches of molecules cut from flat tensors (all atoms of all molecules concatenated, with molecule offsets): a
few index operations per batch on the training device, no per-molecule objects or collation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from schnetqm9.data.sources import Source


def molecule_of_atoms(counts: Tensor, total: int | None = None) -> Tensor:
    """The batch vector [N]: molecule b of a batch owns counts[b] consecutive atoms (counts [B]; `total`, N, saves
    a host synchronisation where the caller knows it)."""
    total = int(counts.sum()) if total is None else total
    return torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts, output_size=total)


@dataclass
class Batch:
    """A batch of molecules: z [N] long, pos [N, 3], batch [N] (molecule of each atom, 0..B-1), y [B, columns]
    and, where the data has them, forces [N, 3] (eV/Angstrom, NaN where unknown; None for QM9)."""

    z: Tensor
    pos: Tensor
    batch: Tensor
    y: Tensor
    forces: Tensor | None = None

    @property
    def num_graphs(self) -> int:
        return self.y.size(0)


class Batcher:
    """Assembles batches of QM9 molecules by indexing flat tensors held on one device (the GPU when training on
    it: the whole of QM9 is ~40 MB). Replaces a DataLoader + per-molecule `Data` collation."""

    def __init__(self, data: Source, device: torch.device | str = "cpu") -> None:
        self.z = data.z.to(device)
        self.pos = data.pos.to(device)
        self.y = data.y.to(device)
        self.ptr = data.ptr.to(device)
        self.num_atoms = data.num_atoms.to(device)
        forces = getattr(data, "forces", None)
        self.forces = None if forces is None else forces.to(device)

    def __call__(self, mols: Tensor) -> Batch:
        """mols: [B] molecule indices (on any device) -> Batch on this batcher's device."""
        mols = mols.to(self.ptr.device)
        counts = self.num_atoms.index_select(0, mols)  # [B] (index_select: cheaper than [] for these sizes)
        total = int(counts.sum())
        batch = molecule_of_atoms(counts, total)  # [N]
        # atom n of the batch: its molecule's first atom in QM9 + its rank within the molecule
        start = self.ptr.index_select(0, mols) - (torch.cumsum(counts, 0) - counts)  # [B]
        atoms = start.index_select(0, batch) + torch.arange(total, device=mols.device)  # [N]
        return Batch(self.z.index_select(0, atoms), self.pos.index_select(0, atoms), batch,
                     self.y.index_select(0, mols), None if self.forces is None else self.forces.index_select(0, atoms))
