"""What each term of the potential's loss costs: train.py's own training step (training/step.train_step with
potential.PotentialLoss) on the default model, batch 32 QM9 molecules, energy loss alone, with the zero-force term,
with the MMFF94 prior term, with both, and with both preconditioned (--precondition 1); and the MMFF94 parts alone:
the prior's (bond perception, typing and two force evaluations per molecule, potential.prior_targets) and the
preconditioner's (typing and a finite-difference Hessian per molecule, potential.preconditioners). 3 alternating
rounds of 10 steps, the best round kept:

    OMP_NUM_THREADS=1 python -m experiments.potential.potential_step_bench
"""
import time

import torch

from schnet_model import FULL_CONFIG, SchNet
from schnetqm9.cli import Parser
from schnetqm9.data import batch as batching
from schnetqm9.data import qm9 as qm9_data
from schnetqm9.potential import losses as potential
from schnetqm9.training.optim import FlatAdam
from schnetqm9.training.step import Objective, train_step


def main(argv: list[str] | None = None) -> None:
    Parser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    torch.manual_seed(0)
    q = qm9_data.QM9("data", progress=False)
    bat = batching.Batcher(q)
    model = SchNet(**FULL_CONFIG)
    opt = FlatAdam(model, lr=1e-5)
    batches = [bat(torch.randint(0, len(q), (32,))) for _ in range(10)]
    column, scale, one = torch.tensor([7]), torch.tensor([10.3]), torch.ones(1)
    arms = {"energy": (0.0, 0.0, 0.0), "energy + zero force": (1.0, 0.0, 0.0), "energy + prior": (0.0, 1.0, 0.0),
            "energy + zero force + prior": (1.0, 1.0, 0.0), "the same, preconditioned": (1.0, 1.0, 1.0)}


    def timed(force_weight: float, prior_weight: float, stiffness: float) -> float:
        terms = None if not (force_weight or prior_weight) else potential.PotentialLoss(
            0, 10.3, force_weight, prior_weight, 0.05, seed=0, stiffness=stiffness)
        t = time.perf_counter()
        for s, b in enumerate(batches):
            train_step(model, opt, b, Objective(column, scale, one, terms=terms), step=s)
        return (time.perf_counter() - t) / len(batches) * 1000


    def mmff_only(preconditioners: bool) -> float:
        t = time.perf_counter()
        for b in batches:
            z, pos, spans = b.z.numpy(), b.pos.double().numpy(), potential.molecule_spans(b.batch)
            typed = potential.batch_typed(z, pos, spans)
            if preconditioners:
                potential.preconditioners(potential.batch_modes(typed, pos, spans), spans, 1.0)
            else:
                noise = 0.05 * torch.randn(pos.shape, dtype=torch.float64).numpy()
                potential.prior_targets(typed, pos, spans, pos + noise)
        return (time.perf_counter() - t) / len(batches) * 1000


    timed(1.0, 1.0, 1.0)  # warm-up
    alone = {"MMFF94 prior targets alone": False, "MMFF94 preconditioners alone": True}
    res = {k: [] for k in [*arms, *alone]}
    for _ in range(3):
        for name, weights in arms.items():
            res[name].append(timed(*weights))
        for name, which in alone.items():
            res[name].append(mmff_only(which))
    base = min(res["energy"])
    for k, v in res.items():
        rounds = ", ".join(f"{x:.0f}" for x in v)
        print(f"{k:30s} {min(v):7.1f} ms/step  {min(v) / base:5.2f}x energy  (rounds {rounds})")


if __name__ == "__main__":
    main()
