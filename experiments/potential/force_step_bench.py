"""One training step of the default model, batch 32 QM9 molecules: an energy loss alone, and an energy + force loss
(forces by autograd with create_graph=True, so the step takes second derivatives), each with the fused CPU kernels
and with the pure-PyTorch path, in 3 alternating rounds of 10 steps (the figure of docs/POTENTIAL_MMFF.md):

    OMP_NUM_THREADS=1 python -m experiments.potential.force_step_bench
"""
import time

import torch

from schnet_model import FULL_CONFIG, SchNet
from schnetqm9.cli import Parser
from schnetqm9.data import batch as batching
from schnetqm9.data import qm9 as qm9_data
from schnetqm9.model import kernels as cpu_kernels


def main(argv: list[str] | None = None) -> None:
    Parser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    torch.manual_seed(0)
    q = qm9_data.QM9("data", progress=False); bat = batching.Batcher(q)
    model = SchNet(**FULL_CONFIG)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    batches = [bat(torch.randint(0, len(q), (32,))) for _ in range(10)]
    def step(b, force):
        pos = b.pos.clone().requires_grad_(force)
        e = model(b.z, pos, b.batch)[:, 0]
        loss = (e - e.detach().mean()).square().mean()
        if force:
            f = -torch.autograd.grad(e.sum(), pos, create_graph=True)[0]
            loss = loss + f.square().sum(-1).mean()
        opt.zero_grad(); loss.backward(); opt.step()
    def timed(force, kernels):
        saved = cpu_kernels._module
        if not kernels: cpu_kernels._module = None
        step(batches[0], force)
        t = time.perf_counter()
        for b in batches: step(b, force)
        cpu_kernels._module = saved
        return (time.perf_counter() - t) / len(batches) * 1000
    cpu_kernels.load()
    res = {k: [] for k in ("energy, kernels", "energy, pure", "energy+force, kernels", "energy+force, pure")}
    for r in range(3):
        res["energy, kernels"].append(timed(False, True)); res["energy, pure"].append(timed(False, False))
        res["energy+force, kernels"].append(timed(True, True)); res["energy+force, pure"].append(timed(True, False))
    for k, v in res.items(): print(f"{k:24s} {min(v):7.1f} ms/step (rounds {', '.join(f'{x:.1f}' for x in v)})")


if __name__ == "__main__":
    main()
