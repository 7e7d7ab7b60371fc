"""One optimisation step: what it minimises (`Objective`) and the step itself (`train_step`), shared by the training
loop, bench.py and the studies that time a step."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from schnet_model import SchNet
from schnetqm9.data import batch as batching
from schnetqm9.model import precision
from schnetqm9.potential import losses as potential
from schnetqm9.training.distributed import World


@dataclass
class Objective:
    r"""What a training step minimises for a batch of B molecules and K targets:

    .. math::
        \mathcal{L} = \frac1K \sum_k w_k \frac1B \sum_m \ell\left(\frac{\hat y_{mk}}{s_k},
        \frac{y_{mk}}{s_k}\right) + \mathcal{L}_{\mathrm{forces}}

    `columns` [K]: the targets' columns of the data's y; `scale` [K]: s_k, each target's loss scale; `weights` [K]:
    w_k, its task weight (the loop updates them in place of the tensor); `loss`: l, 'mse' (squared) or 'l1'
    (absolute); `terms`: the force terms of a potential (potential/losses.py), or None.
    """
    columns: Tensor
    scale: Tensor
    weights: Tensor
    loss: str = "mse"
    terms: potential.PotentialLoss | None = None

    @classmethod
    def single(cls, column: int, scale: float = 1.0, device: torch.device | str = "cpu", **kw) -> "Objective":
        """One target in column `column` of y, with loss scale `scale` and weight 1."""
        return cls(torch.tensor([column], device=device), torch.tensor([float(scale)], device=device),
                   torch.ones(1, device=device), **kw)


def train_step(model: SchNet, optimizer: torch.optim.Optimizer, b: batching.Batch, objective: Objective, *,
               step: int = 0, mixed: str = "fp32", clip_grad: float = 10.0, world: World = World(),
               global_size: int | None = None) -> tuple[Tensor, Tensor]:
    """One step of `optimizer` on `objective` (see Objective) for batch `b`.

    `step` numbers the step (the force terms draw their displacements from it); `mixed` is the forward pass's
    precision (model/precision.py); the gradient norm is clipped to `clip_grad`. With several processes, `b` is this
    rank's share of a global batch of `global_size` molecules: each rank back-propagates its share's summed loss /
    global_size and the gradients are summed over the ranks (training/distributed.py). Returns (this rank's part of
    each target's loss [K], predictions [B, K]), detached, without a host synchronisation.
    """
    o = objective
    pos = b.pos.detach().requires_grad_(True) if o.terms is not None else b.pos  # forces: dE/dr
    with precision.autocast(pos.device, mixed):
        pred = model(b.z, pos, b.batch)  # [B, K], float32 (the readout is)
        extra = None if o.terms is None else o.terms(model, b.z, pos, b.batch, pred[:, o.terms.output], step,
                                                    b.forces)
    loss_fn = torch.nn.functional.mse_loss if o.loss == "mse" else torch.nn.functional.l1_loss
    per_molecule = loss_fn(pred / o.scale, b.y.index_select(1, o.columns) / o.scale, reduction="none")  # [B, K]
    per_target = per_molecule.sum(0) / global_size if world.active else per_molecule.mean(0)  # [K]
    value = (per_target * o.weights).mean()
    if extra is not None:
        value = value + extra / world.size
    optimizer.zero_grad()
    value.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]  # FlatAdam: the one flat tensor
    for p in params:
        world.sum_(p.grad)
    torch.nn.utils.clip_grad_norm_(params, clip_grad, foreach=True)
    optimizer.step()
    return per_target.detach(), pred.detach()
