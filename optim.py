"""The optimiser's pieces: Adam over one flat parameter tensor, the learning-rate schedule, the weight average."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


@dataclass
class Schedule:
    r"""The learning rate as a function of how far the run has come: a linear warm-up over the first `warmup`
    steps, then a cosine decay from the peak to 1 % of it,

    .. math::
        \eta = \eta_{peak} \frac{s + 1}{s_w} \ (s < s_w), \qquad
        \eta = \eta_{peak} \left(0.01 + 0.99 \cdot \tfrac{1}{2}\left(1 + \cos \pi p\right)\right), \quad
        p = \min\left(1, \max\left(\frac{s - s_w}{S - s_w}, \frac{t}{T}\right)\right)

    with s the steps taken, S those of --epochs, t the seconds spent and T the --time-budget (the t/T term only
    with a budget). The decay ends at whichever of the epoch count and the budget comes first, so a budgeted run
    always ends on a decayed learning rate.
    """
    peak: float
    warmup: int
    total_steps: int
    budget_s: float | None = None

    def progress(self, step: int, elapsed: float) -> float:
        p = (step - self.warmup) / max(1, self.total_steps - self.warmup)
        if self.budget_s is not None:
            p = max(p, elapsed / self.budget_s)
        return min(1.0, max(0.0, p))

    def lr(self, step: int, elapsed: float) -> float:
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        return self.peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * self.progress(step, elapsed))))


def make_ema(model: torch.nn.Module, decay: float) -> AveragedModel | None:
    """Exponential moving average of the weights (torch.optim.swa_utils), or None for decay 0.

    After each step, w_ema <- decay * w_ema + (1 - decay) * w (the first update copies w). The buffers (mean, std,
    atomref) are constants and are not averaged.
    """
    if decay == 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)


class FlatAdam(torch.optim.Adam):
    """Adam (fused kernel) over one flat tensor that holds all of the model's parameters.

    Each parameter's data becomes a view into `flat`, and each one's .grad a view into `flat.grad`, so gradient
    clipping and the update are one operation each instead of one per parameter tensor (23 in the lite model, 51
    in the full one); the same arithmetic as torch.optim.Adam over model.parameters() (tests/test_train.py).
    Build it after the model is on its device: moving the model afterwards would undo the views.
    """

    def __init__(self, model: torch.nn.Module, lr: float) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
        flat.grad = torch.zeros_like(flat)
        self.flat, self._views, offset = flat, [], 0
        for p in params:
            n = p.numel()
            p.data = flat.data[offset:offset + n].view_as(p)
            self._views.append((p, flat.grad[offset:offset + n].view_as(p)))
            offset += n
        super().__init__([flat], lr=lr, fused=True)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zeroes the flat gradient in place and (re)attaches each parameter's .grad view of it; set_to_none is
        ignored, since gradients must accumulate into the views."""
        self.flat.grad.zero_()
        for p, g in self._views:
            p.grad = g
