"""Peak memory and time of 300 default training steps in bf16 (batch 32, random QM9 molecules, training/step.train_step)
for a given size of oneDNN's kernel cache (precision.py sets 32 unless ONEDNN_PRIMITIVE_CACHE_CAPACITY is set):

    OMP_NUM_THREADS=1 python -m experiments.precision.onednn_cache_probe 32      # the repo's setting
    OMP_NUM_THREADS=1 python -m experiments.precision.onednn_cache_probe 1024    # oneDNN's default
    OMP_NUM_THREADS=1 python -m experiments.precision.onednn_cache_probe 0       # no cache
"""
import argparse
import os
import resource
import time

if __name__ == "__main__":  # oneDNN reads the cache size when torch is imported: parse before importing it
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("capacity", nargs="?", default="32", help="ONEDNN_PRIMITIVE_CACHE_CAPACITY (kernels cached)")
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = p.parse_args().capacity

import torch  # noqa: E402

from schnet_model import FULL_CONFIG, SchNet  # noqa: E402
from schnetqm9.data import batch as batching  # noqa: E402
from schnetqm9.data import qm9 as qm9_data  # noqa: E402
from schnetqm9.training.optim import FlatAdam  # noqa: E402
from schnetqm9.training.step import Objective, train_step  # noqa: E402


def main() -> None:
    torch.manual_seed(0)
    q = qm9_data.QM9("data", progress=False)
    bat = batching.Batcher(q)
    model = SchNet(**FULL_CONFIG)
    opt = FlatAdam(model, 1e-4)
    objective = Objective.single(4)
    t = time.perf_counter()
    for step in range(301):
        train_step(model, opt, bat(torch.randint(0, len(q), (32,))), objective, mixed="bf16")
        if step % 100 == 0:
            print(f"cache {os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY']:>5}: step {step:3d}, peak "
                  f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB, "
                  f"{time.perf_counter() - t:.1f} s",
                  flush=True)


if __name__ == "__main__":
    main()
