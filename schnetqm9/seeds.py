"""One formula for the seeds of a run's repeated draws (the epoch's molecule order, a step's displacements, a
molecule's noisy start), so that each draw is a function of the run's seed and its own index alone: the same after
a resume, on every rank, whatever else was drawn before."""
from __future__ import annotations

STRIDE = 1_000_003  # a prime above any count of draws: (seed, index) pairs never share a seed


def draw_seed(seed: int, index: int) -> int:
    """The seed of draw `index` (an epoch, a step, a molecule) of a run seeded `seed`."""
    return seed * STRIDE + index
