"""Where a default training step's time goes in fp32 and under bf16 autocast (docs/PERFORMANCE.md, "bfloat16"):

    OMP_NUM_THREADS=1 python -m experiments.precision.profile_precision

torch.profiler over 6 training steps of the default model (batch 32, the same QM9 training molecules in both
precisions, after 2 warm-up steps): the matrix products' share of the step, their GFLOP per step and GFLOP/s, and
the largest operators; then two of the step's product shapes alone, 20 times each.
"""
import time

import torch
from torch.profiler import ProfilerActivity, profile

from schnet_model import FULL_CONFIG, SchNet
from schnetqm9.data import batch as batching
from schnetqm9.data import qm9 as qm9_data
from schnetqm9.data import splits
from schnetqm9.training import optim
from schnetqm9.training.step import Objective, train_step


def main() -> None:
    torch.manual_seed(0)
    qm9 = qm9_data.QM9("data", progress=False)
    batcher = batching.Batcher(qm9)
    model = SchNet(**FULL_CONFIG, readout="mean", mean=6.8, std=1.3)
    optimizer = optim.FlatAdam(model, 1e-4)
    train_idx = splits.standard_split()["train"]
    batches = [batcher(train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(k))[:32]])
               for k in range(8)]
    objective = Objective.single(4, 1.3)
    for mixed in ("fp32", "bf16"):
        for b in batches[:2]:
            train_step(model, optimizer, b, objective, mixed=mixed)
        with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            for b in batches[2:]:
                train_step(model, optimizer, b, objective, mixed=mixed)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        products = [e for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm")]
        t, flops = sum(e.self_cpu_time_total for e in products), sum(e.flops for e in products)
        print(f"{mixed}: {total / 6 / 1000:.1f} ms per step (profiled); matrix products {100 * t / total:.0f} % of "
              f"it, {flops / 6 / 1e9:.2f} GFLOP per step at {flops / t / 1e3:.0f} GFLOP/s")
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:6]
        print("  largest: " + ", ".join(f"{e.key} {100 * e.self_cpu_time_total / total:.0f} %" for e in top))
    for m, k, n in ((12000, 50, 128), (12000, 128, 128)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        for dtype in (torch.float32, torch.bfloat16):
            x, y = a.to(dtype), b.to(dtype)
            for _ in range(3):
                x @ y
            start = time.perf_counter()
            for _ in range(20):
                x @ y
            print(f"[{m}, {k}] @ [{k}, {n}] {str(dtype).removeprefix('torch.')}: "
                  f"{(time.perf_counter() - start) / 20 * 1000:.2f} ms")


if __name__ == "__main__":
    main()
