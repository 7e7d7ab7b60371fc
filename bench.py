"""Training throughput of this repo's SchNet step against PyTorch Geometric's pipeline, side by side, in one run.

    python bench.py                          # all three configurations, on CUDA when present
    python bench.py --device cpu --config lite --steps 30 --json results/bench_cpu.json

For each configuration both pipelines train the same architecture on the same QM9 training molecules, with the
same batch size, optimiser (Adam), loss (MSE on the standardised target) and gradient clipping:

  ours       schnet_model.SchNet fed by qm9_data.Batcher (batches cut from flat tensors on the device), the
             training step of train.py;
  reference  torch_geometric.nn.models.SchNet fed by torch_geometric.loader.DataLoader over Data objects, given
             our radius graph as its interaction_graph (PyG 2.8's own needs pyg-lib).

Each measurement runs in a fresh process, so that peak memory (CUDA: max allocated; CPU: peak resident set) is its
own. Throughput is molecules per second over the timed steps, after warm-up steps.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

CONFIGS = {  # name -> (model hyperparameters, batch size)
    "lite": (dict(hidden_channels=64, num_filters=64, num_interactions=2, num_gaussians=25, cutoff=5.0), 16),
    "seed": (dict(hidden_channels=128, num_filters=128, num_interactions=3, num_gaussians=50, cutoff=5.0), 32),
}
TARGET = 4  # gap; the target does not change the cost


def _default_config() -> tuple[dict, int]:
    import train
    from schnet_model import FULL_CONFIG

    return dict(FULL_CONFIG), train.FULL_DEFAULTS["batch_size"]


def measure(pipeline: str, config: dict, batch_size: int, device_name: str, warmup: int, steps: int,
            data_dir: str, threads: int) -> dict:
    """Time `steps` training steps of one pipeline after `warmup` steps. Runs in its own process."""
    import torch

    torch.set_num_threads(threads)
    import qm9_data
    import train

    device = torch.device(device_name)
    data = qm9_data.QM9(data_dir, progress=False)
    train_idx = qm9_data.split_indices(len(data), seed=0)["train"]
    g = torch.Generator().manual_seed(0)
    order = train_idx[torch.randperm(len(train_idx), generator=g)][: (warmup + steps) * batch_size]
    y = data.y[train_idx, TARGET]
    mean, std = float(y.mean()), float(y.std())
    torch.manual_seed(0)

    if pipeline == "ours":
        from schnet_model import SchNet

        model = SchNet(**config, readout="add", mean=mean, std=std).to(device)
        optimizer = train.make_optimizer(model, lr=1e-4)
        batcher = qm9_data.Batcher(data, device)
        batches = iter(order.split(batch_size))

        def step() -> None:
            train.train_step(model, optimizer, batcher(next(batches)), TARGET, std)
    else:
        from torch_geometric.loader import DataLoader

        from schnet_model import SchNet

        # PyG's own class, with our radius graph as its interaction_graph (PyG 2.8's needs pyg-lib)
        model = SchNet(**config, readout="add", mean=mean, std=std).to_pyg().to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        loader = iter(DataLoader([data[int(i)] for i in order], batch_size=batch_size, shuffle=False))

        def step() -> None:
            b = next(loader).to(device)
            pred = model(b.z, b.pos, b.batch)[:, 0]
            loss = torch.nn.functional.mse_loss(pred / std, b.y[:, TARGET] / std)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    return dict(mol_s=steps * batch_size / seconds, peak_mb=peak, seconds=seconds)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--config", choices=["lite", "seed", "default", "all"], default="all",
                   help="lite: train_lite.py's model, batch 16; seed: 128/128, 3 interactions, cutoff 5, batch 32; "
                        "default: train.py's defaults")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default: 30 on CPU, "
                   "300 on CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5 on CPU, 30 on CUDA)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    p.add_argument("--data-dir", default="data")
    args = p.parse_args(argv)

    import torch

    import train

    try:
        device = train.resolve_device(args.device).type
    except train.TrainingError as err:
        sys.exit(f"error: {err}")
    steps = args.steps or (300 if device == "cuda" else 30)
    warmup = args.warmup if args.warmup is not None else (30 if device == "cuda" else 5)
    if steps <= 0 or warmup < 0:
        sys.exit("error: --steps must be positive and --warmup non-negative")
    import qm9_data

    qm9_data.QM9(args.data_dir)  # build the cache once, before the measuring processes start
    configs = dict(CONFIGS, default=_default_config())
    names = list(configs) if args.config == "all" else [args.config]
    hardware = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"bench: {hardware} | torch {torch.__version__} | radius graph {qm9_data.RADIUS_BACKEND} | "
          f"{warmup} warm-up + {steps} timed steps per measurement")
    ctx = mp.get_context("spawn")
    rows = []
    for name in names:
        config, batch_size = configs[name]
        result = {}
        for pipeline in ("reference", "ours"):
            with ctx.Pool(1) as pool:
                result[pipeline] = pool.apply(measure, (pipeline, config, batch_size, device, warmup, steps,
                                                        args.data_dir, torch.get_num_threads()))
        rows.append(dict(config=name, device=device, hardware=hardware, batch_size=batch_size, model=config,
                         ours_mol_s=result["ours"]["mol_s"], reference_mol_s=result["reference"]["mol_s"],
                         ratio=result["ours"]["mol_s"] / result["reference"]["mol_s"],
                         ours_peak_mb=result["ours"]["peak_mb"], reference_peak_mb=result["reference"]["peak_mb"]))
        r = rows[-1]
        print(f"  {name}: ours {r['ours_mol_s']:,.0f} mol/s, reference {r['reference_mol_s']:,.0f} mol/s", flush=True)

    print("\n| config | device | batch | ours (mol/s) | PyG reference (mol/s) | ratio | ours peak (MB) | "
          "reference peak (MB) |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['hardware']} | {r['batch_size']} | {r['ours_mol_s']:,.0f} | "
              f"{r['reference_mol_s']:,.0f} | {r['ratio']:.2f}x | {r['ours_peak_mb']:,.0f} | "
              f"{r['reference_peak_mb']:,.0f} |")
    if args.json:
        with qm9_data.atomic_write(args.json) as tmp:
            tmp.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
