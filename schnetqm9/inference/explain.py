"""Why a prediction: per-atom attributions of one output of a SchNet, named as the attribution literature (and
Captum) names them.

    ig = integrated_gradients(model, z, pos, output=0)     # ig.values [n], ig.steps, ig.completeness_error
    s = saliency(model, z, pos, output=0)                  # [n], |dy/dr_i|

Integrated gradients (Sundararajan, Taly, Yan 2017) of the prediction y with respect to each atom's input
embedding h_i = embedding(z_i), along the straight path from a baseline h' to h:

.. math::
    \\mathrm{IG}_i = \\sum_f (h_{if} - h'_{if}) \\int_0^1
        \\frac{\\partial y(h' + \\alpha (h - h'))}{\\partial h_{if}} \\, d\\alpha ,
    \\qquad \\sum_i \\mathrm{IG}_i = y(h) - y(h') \\quad \\text{(completeness)}

The baseline is every atom's embedding set to zero (the embedding's padding row: featureless atoms at the same
positions), so IG_i is atom i's share of the difference between the prediction and that of a molecule whose atoms
carry no element. The integral is a midpoint rule with S steps, S doubled from 32 until the sum matches y(h) - y(h')
within `tolerance` (1 %). Saliency (Simonyan et al. 2014) is the norm of the prediction's gradient with respect to
the atom's position, |dy/dr_i| in the output's unit per Angstrom: how strongly the prediction depends on where the
atom is. Both are functions of the molecule's geometry through distances only, so they are invariant to rotating
and translating it (tests/test_explain.py checks this, and that they change when the weights are randomised).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from schnet_model import SchNet

MAX_REPLICAS = 64  # path points evaluated in one batch (each a copy of the molecule)


@dataclass
class Attribution:
    values: np.ndarray  # [n] per atom, in the output's unit
    steps: int
    prediction: float  # y(h)
    baseline_prediction: float  # y(h')
    completeness_error: float  # |sum_i IG_i - (y(h) - y(h'))| / |y(h) - y(h')|


def _path_gradients(model: SchNet, z: Tensor, pos: Tensor, h: Tensor, base: Tensor, output: int,
                    alphas: Tensor) -> Tensor:
    """Sum over the path points alphas [S] of dy/dh at h' + alpha (h - h'): [n, H]."""
    n = len(z)
    total = torch.zeros_like(h)
    for chunk in alphas.split(MAX_REPLICAS):
        s = len(chunk)
        h_path = (base + chunk.view(s, 1, 1) * (h - base)).reshape(s * n, -1).requires_grad_(True)  # [S n, H]
        batch = torch.arange(s, device=z.device).repeat_interleave(n)
        a = model.atom_contributions(z.repeat(s), pos.repeat(s, 1), batch, h0=h_path)[:, output]  # [S n]
        (grad,) = torch.autograd.grad(a.sum(), h_path)  # y of each copy is the sum of its atoms' terms
        total += grad.view(s, n, -1).sum(0)
    return total


def _predict_from(model: SchNet, z: Tensor, pos: Tensor, h: Tensor, output: int) -> float:
    with torch.no_grad():
        return float(model.atom_contributions(z, pos, torch.zeros_like(z), h0=h)[:, output].sum())


def integrated_gradients(model: SchNet, z: Tensor, pos: Tensor, output: int = 0, tolerance: float = 0.01,
                         max_steps: int = 4096) -> Attribution:
    """IG_i of output `output` for one molecule (z [n], pos [n, 3]) from the zero-embedding baseline, with the
    fewest steps (32, 64, ...) whose sum is within `tolerance` of y(h) - y(h'); the last try if none is."""
    model.eval()
    h = model.atom_embedding(z).detach()  # [n, H]
    base = torch.zeros_like(h)
    y, y0 = _predict_from(model, z, pos, h, output), _predict_from(model, z, pos, base, output)
    steps = 32
    while True:
        alphas = (torch.arange(steps, dtype=h.dtype, device=h.device) + 0.5) / steps  # midpoints
        grads = _path_gradients(model, z, pos, h, base, output, alphas) / steps
        values = ((h - base) * grads).sum(-1)  # [n]
        error = abs(float(values.sum()) - (y - y0)) / max(abs(y - y0), 1e-12)
        if error <= tolerance or steps >= max_steps:
            return Attribution(values.cpu().numpy(), steps, y, y0, error)
        steps *= 2


def saliency(model: SchNet, z: Tensor, pos: Tensor, output: int = 0) -> np.ndarray:
    """|dy/dr_i| for one molecule: [n], in the output's unit per Angstrom."""
    model.eval()
    r = pos.detach().clone().requires_grad_(True)
    y = model(z, r)[0, output]
    (grad,) = torch.autograd.grad(y, r)  # [n, 3]
    return grad.norm(dim=-1).cpu().numpy()
