"""Training throughput of this repo's SchNet step against PyTorch Geometric's pipeline, side by side, in one run.

    python bench.py                          # all three configurations, on CUDA when present
    python bench.py --device cpu --config lite --json results/bench_cpu.json

For each configuration both pipelines train the same architecture on the same QM9 training molecules, in the same
order, with the same batch size, optimiser (Adam), loss (MSE on the standardised target) and gradient clipping:

  ours       schnet_model.SchNet fed by batching.Batcher (batches cut from flat tensors on the device), the
             training step and optimiser of train.py;
  reference  torch_geometric.nn.models.SchNet fed by torch_geometric.loader.DataLoader over Data objects, given
             our radius graph as its interaction_graph (PyG 2.8's own needs pyg-lib).

Throughput: both pipelines live in one process and take turns, `--rounds` blocks of steps each after their warm-up
steps, so that a machine whose speed drifts (shared CPUs, clocks) slows both alike; the figure is the median over
the blocks, and the ratio's spread over the rounds is printed beside it. Peak memory (CUDA: max allocated; CPU:
peak resident set, data and Python included) is measured for each pipeline alone, in a fresh process.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

CONFIGS = {  # name -> (model hyperparameters, batch size)
    "lite": (dict(hidden_channels=64, num_filters=64, num_interactions=2, num_gaussians=25, cutoff=5.0), 16),
    "seed": (dict(hidden_channels=128, num_filters=128, num_interactions=3, num_gaussians=50, cutoff=5.0), 32),
}
TARGET = 4  # gap; the target does not change the cost


def _default_config() -> tuple[dict, int]:
    from schnet_model import FULL_CONFIG
    from schnetqm9.training import loop as train

    return dict(FULL_CONFIG), train.FULL_DEFAULTS["batch_size"]


def _setup(pipeline: str, config: dict, batch_size: int, device_name: str, num_steps: int, data_dir: str,
           threads: int, data_file: str | None = None) -> tuple[Callable[[], None], Callable[[], None]]:
    """(step, sync) for one pipeline, with the data for `num_steps` steps of its batches prepared. 'ours_file'
    is 'ours' batching from `data_file`'s tensors (data/structure_file.py; its label 'gap') at the same indices; a name
    ending in '_bf16' is that pipeline's forward pass under bfloat16 autocast (ours: model/precision.py)."""
    import torch

    torch.set_num_threads(threads)
    from schnetqm9.data import batch as batching
    from schnetqm9.data import qm9 as qm9_data
    from schnetqm9.data import splits, targets
    from schnetqm9.training import optim
    from schnetqm9.training.step import Objective, train_step

    device = torch.device(device_name)
    mixed = "bf16" if pipeline.endswith("_bf16") else "fp32"
    pipeline = pipeline.removesuffix("_bf16")
    data = qm9_data.QM9(data_dir, progress=False)
    train_idx = splits.split_indices(len(data), seed=0)["train"]
    g = torch.Generator().manual_seed(0)
    order = train_idx[torch.randperm(len(train_idx), generator=g)][: num_steps * batch_size]
    y = data.y[train_idx, TARGET]
    mean, std = float(y.mean()), float(y.std())
    torch.manual_seed(0)
    from schnet_model import SchNet

    model = SchNet(**config, readout="add", mean=mean, std=std)
    if pipeline.startswith("ours"):
        names = targets.STANDARD if pipeline == "ours_all" else [targets.TARGET_NAMES[TARGET]]
        if pipeline == "ours_all":  # twelve outputs, each with its own readout (dipole, spatial extent, ...)
            torch.manual_seed(0)
            model = SchNet(**config, readout=targets.readouts([targets.TARGETS[n] for n in names]))
        model = model.to(device)
        optimizer = optim.FlatAdam(model, lr=1e-4)
        source = data
        columns = torch.tensor([targets.TARGETS[n].column for n in names], device=device)
        if pipeline == "ours_file":
            from schnetqm9.data.structure_file import LabelledStructures

            source, columns = LabelledStructures(data_file, ["gap"], progress=False), torch.tensor([0], device=device)
        batcher = batching.Batcher(source, device)
        batches = iter(order.split(batch_size))
        scale = source.y[train_idx][:, columns.cpu()].std(0).to(device)
        objective = Objective(columns, scale, torch.ones(len(names), device=device))

        def step() -> None:
            train_step(model, optimizer, batcher(next(batches)), objective, mixed=mixed)
    else:
        from torch_geometric.loader import DataLoader

        # PyG's own class, with our radius graph as its interaction_graph (PyG 2.8's needs pyg-lib)
        ref = model.to_pyg().to(device)
        ref_optimizer = torch.optim.Adam(ref.parameters(), lr=1e-4)
        loader = iter(DataLoader([data[int(i)] for i in order], batch_size=batch_size, shuffle=False))

        def step() -> None:
            b = next(loader).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed == "bf16"):
                pred = ref(b.z, b.pos, b.batch)[:, 0].float()
            loss = torch.nn.functional.mse_loss(pred / std, b.y[:, TARGET] / std)
            ref_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 10.0)
            ref_optimizer.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return step, sync


def measure_memory(pipeline: str, config: dict, batch_size: int, device_name: str, steps: int, data_dir: str,
                   threads: int) -> float:
    """Peak memory in MB of `steps` training steps of one pipeline, alone in its (fresh) process."""
    import torch

    step, sync = _setup(pipeline, config, batch_size, device_name, steps, data_dir, threads)
    for _ in range(steps):
        step()
    sync()
    if device_name == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure_throughput(config: dict, batch_size: int, device_name: str, warmup: int, steps: int, rounds: int,
                       data_dir: str, threads: int, multi_target: bool = False,
                       data_file: str | None = None, bf16: bool = False) -> dict[str, list[float]]:
    """Molecules/s of each pipeline in each of `rounds` alternating blocks of steps // rounds timed steps."""
    block = steps // rounds
    names = (["reference", "ours"] + ["ours_all"] * multi_target + ["ours_file"] * (data_file is not None)
             + ["reference_bf16", "ours_bf16"] * bf16)
    pipelines = {name: _setup(name, config, batch_size, device_name, warmup + block * rounds, data_dir, threads,
                              data_file) for name in names}
    for step, sync in pipelines.values():
        for _ in range(warmup):
            step()
        sync()
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(rounds):
        for name, (step, sync) in pipelines.items():
            start = time.perf_counter()
            for _ in range(block):
                step()
            sync()
            rates[name].append(block * batch_size / (time.perf_counter() - start))
    return rates


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--config", choices=["lite", "seed", "default", "all"], default="all",
                   help="lite: train_lite.py's model, batch 16; seed: 128/128, 3 interactions, cutoff 5, batch 32; "
                        "default: train.py's defaults")
    p.add_argument("--steps", type=int, default=None, help="timed steps per pipeline, split into --rounds blocks "
                   "(default: 60 on CPU, 600 on CUDA)")
    p.add_argument("--rounds", type=int, default=6, help="alternating blocks per pipeline")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 10 on CPU, 50 on CUDA)")
    p.add_argument("--multi-target", action="store_true",
                   help="also time our step with all twelve QM9 targets (one output each, dipole and spatial extent "
                        "included) in the same rounds, against our one-target step")
    p.add_argument("--data", help="also time our step batching from this structure file's tensors (a label 'gap' "
                   "on every structure; e.g. QM9 written as extended XYZ, so the molecules are QM9's) in the same "
                   "rounds, against batching from QM9's")
    p.add_argument("--bf16", action="store_true",
                   help="also time both pipelines with their forward pass under bfloat16 autocast (ours: "
                        "train.py --precision bf16; PyG: torch.autocast, a fair peer) in the same rounds")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    p.add_argument("--data-dir", default="data")
    return p


def check(args: argparse.Namespace) -> tuple[str, int, int]:
    """(device type, timed steps, warm-up steps) of the flags; UserError for flags that cannot run. Builds QM9's
    cache (and --data's) before the measuring processes start."""
    from schnetqm9.cli import UserError, resolve_device
    from schnetqm9.data import qm9 as qm9_data

    device = resolve_device(args.device).type
    steps = args.steps or (600 if device == "cuda" else 60)
    warmup = args.warmup if args.warmup is not None else (50 if device == "cuda" else 10)
    if args.rounds <= 0:
        raise UserError(f"--rounds must be positive, got {args.rounds}")
    if steps < args.rounds:
        raise UserError(f"--steps ({steps}) must be at least --rounds ({args.rounds}): each round times "
                        "steps // rounds")
    if warmup < 0:
        raise UserError(f"--warmup must be non-negative, got {warmup}")
    qm9_data.QM9(args.data_dir)
    if args.data:
        from schnetqm9.data.structure_file import LabelledStructures

        size = len(LabelledStructures(args.data, ["gap"]))
        if size != qm9_data.NUM_MOLECULES:
            raise UserError(f"--data {args.data} holds {size} structures: it must be QM9 written as a file "
                            f"({qm9_data.NUM_MOLECULES} structures, in QM9's order) so that both pipelines train "
                            "on the same molecules")
    return device, steps, warmup


def comparisons(args: argparse.Namespace) -> list[tuple[str, str, str, str, str]]:
    """(pipeline, the one it is compared with, row key, what, against what) for the extra pipelines asked for."""
    extra = [("ours_all", "all_vs_one", "with all twelve targets", "one target")] if args.multi_target else []
    if args.data:
        extra.append(("ours_file", "file_vs_qm9", f"batching from {Path(args.data).name}", "QM9's"))
    extra = [(pipeline, "ours", key, f"ours {what}", base) for pipeline, key, what, base in extra]
    if args.bf16:  # bfloat16 against float32, ours against PyG's
        extra += [("ours_bf16", "ours", "bf16_vs_fp32", "ours bf16", "ours fp32"),
                  ("reference_bf16", "reference", "reference_bf16_vs_fp32", "PyG bf16", "PyG fp32"),
                  ("ours_bf16", "reference", "bf16_vs_reference", "ours bf16", "PyG fp32"),
                  ("ours_bf16", "reference_bf16", "bf16_vs_reference_bf16", "ours bf16", "PyG bf16")]
    return extra


def bench_config(name: str, config: dict, batch_size: int, args: argparse.Namespace, device: str, warmup: int,
                 block: int, threads: int) -> dict:
    """One configuration's row: each pipeline's speed (alternating rounds in one process) and peak memory (each in
    a fresh process), and the ratios of the comparisons asked for, printed as they come."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        rates = pool.apply(measure_throughput, (config, batch_size, device, warmup, block * args.rounds,
                                                args.rounds, args.data_dir, threads, args.multi_target,
                                                args.data, args.bf16))
    peaks = {}
    for pipeline in ("reference", "ours"):
        with ctx.Pool(1) as pool:
            peaks[pipeline] = pool.apply(measure_memory, (pipeline, config, batch_size, device, warmup + block,
                                                          args.data_dir, threads))
    ours, ref = statistics.median(rates["ours"]), statistics.median(rates["reference"])
    per_round = [a / b for a, b in zip(rates["ours"], rates["reference"])]
    row = dict(config=name, batch_size=batch_size, model=config, ours_mol_s=ours, reference_mol_s=ref,
               ratio=ours / ref, ratio_min=min(per_round), ratio_max=max(per_round), ours_peak_mb=peaks["ours"],
               reference_peak_mb=peaks["reference"], warmup=warmup, rounds=args.rounds, steps_per_round=block)
    print(f"  {name}: ours {ours:,.0f} mol/s, reference {ref:,.0f} mol/s, ratio {ours / ref:.2f}x "
          f"(rounds: {min(per_round):.2f}-{max(per_round):.2f}x)", flush=True)
    for pipeline, against, key, what, base in comparisons(args):  # one step against another, round by round
        rate, other = statistics.median(rates[pipeline]), statistics.median(rates[against])
        per_round = [a / b for a, b in zip(rates[pipeline], rates[against])]
        row.update({f"{pipeline}_mol_s": rate, key: rate / other, f"{key}_min": min(per_round),
                    f"{key}_max": max(per_round)})
        print(f"  {name}: {what} {rate:,.0f} mol/s, {rate / other:.3f}x {base} "
              f"(rounds: {min(per_round):.3f}-{max(per_round):.3f}x)", flush=True)
    return row


def print_table(rows: list[dict]) -> None:
    print("\n| config | device | batch | ours (mol/s) | PyG reference (mol/s) | ratio (rounds) | ours peak (MB) | "
          "reference peak (MB) |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['hardware']} | {r['batch_size']} | {r['ours_mol_s']:,.0f} | "
              f"{r['reference_mol_s']:,.0f} | {r['ratio']:.2f}x ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | "
              f"{r['ours_peak_mb']:,.0f} | {r['reference_peak_mb']:,.0f} |")


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    import torch

    from schnetqm9 import files
    from schnetqm9.cli import UserError
    from schnetqm9.model import graph
    from schnetqm9.model import kernels as cpu_kernels

    try:
        device, steps, warmup = check(args)
    except UserError as err:
        sys.exit(f"error: {err}")
    kernels = cpu_kernels.backend() if device == "cpu" else "pure PyTorch (CUDA)"
    configs = dict(CONFIGS, default=_default_config())
    threads = torch.get_num_threads()
    hardware = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU, {threads} threads"
    block = steps // args.rounds
    print(f"bench: {hardware} | torch {torch.__version__} | ours: {kernels} | reference radius graph: "
          f"{graph.RADIUS_BACKEND} | {warmup} warm-up steps, then {args.rounds} alternating blocks of {block} "
          f"timed steps per pipeline")
    rows = [dict(bench_config(name, *configs[name], args, device, warmup, block, threads), device=device,
                 hardware=hardware, ours_kernels=kernels)
            for name in (list(configs) if args.config == "all" else [args.config])]
    print_table(rows)
    if args.json:
        with files.atomic_write(args.json) as tmp:
            tmp.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
