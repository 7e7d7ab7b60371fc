"""The model's outputs for molecules of a data set, in batches: what validation, testing, t-SNE and the checks use."""
from __future__ import annotations

import torch
from torch import Tensor

from schnet_model import SchNet
from schnetqm9.data.batch import Batcher


@torch.no_grad()
def batched_outputs(model: SchNet, batcher: Batcher, mols: Tensor, batch_size: int,
                    embeddings: bool = False) -> Tensor:
    """Outputs [M, num_outputs] (or embeddings [M, D]) for molecules `mols` [M] of the batcher's data, in batches of
    `batch_size` on the batcher's device; float32 on the CPU. Leaves the model in training mode."""
    model.eval()
    out = []
    for chunk in mols.split(batch_size):
        b = batcher(chunk)
        out.append(model.embedding(b.z, b.pos, b.batch) if embeddings else model(b.z, b.pos, b.batch))
    model.train()
    return torch.cat(out).float().cpu()
