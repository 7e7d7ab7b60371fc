"""What makes a run's loss "spike": replays epochs' windows of the training loop's loss guard with the weights of a
resume state (or of a finished model), and names the molecules behind every window above the guard's factor.

The guard (schnetqm9/training/optim.py, LossGuard) sees, every 10 steps of B molecules, the window's loss per target
L_k = (1/10B) sum_m e_mk, e_mk = ((yhat_mk - y_mk) / s_k)^2, against its running mean m_k, and rolls back when the
level r = (1/K) sum_k L_k / m_k exceeds 10. One molecule alone in an otherwise typical window lifts r by

    Delta r_m = (1/K) sum_k e_mk / (10 B m_k),

so with K = 12 and B = 32 a molecule whose squared error is ~3,500 times its target's running loss fires the guard
by itself, whether or not anything in the model blew up. This script computes e_mk for every training molecule at
the state's raw weights, replays the windows of the epoch order train.py draws (seeds.draw_seed(seed, epoch)), and
prints the windows above the threshold with the molecule that contributes most to each, and the molecules whose
Delta r_m alone exceeds 1. A finished model has no running mean: its mean training loss stands in (which the
outlier itself lifts, so its levels are a lower bound). Nothing is written but the printed report and, with
--output, its JSON.

    git show 72013cc:resume/all/last_all.pth > /tmp/last_all.pth   # the state after 10 epochs, 2026-12-07
    OMP_NUM_THREADS=1 python -m experiments.multitask.spikes /tmp/last_all.pth --epochs 11 12 13 14 \\
        --output experiments/multitask/spikes_all.json
    OMP_NUM_THREADS=1 python -m experiments.multitask.spikes models/schnet_qm9_lumo.pth --epochs 8 9 10 \\
        --output experiments/multitask/spikes_lumo.json   # likewise homo
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from schnetqm9.cli import Parser
from schnetqm9.data import sources
from schnetqm9.data.batch import Batcher
from schnetqm9.model import checkpoint
from schnetqm9.model.evaluation import batched_outputs
from schnetqm9.seeds import draw_seed
from schnetqm9.training.optim import LossGuard

WINDOW = 10  # steps between the guard's checks (training/trainer.py)


def window_levels(err: torch.Tensor, running: torch.Tensor, order: torch.Tensor, batch_size: int) -> torch.Tensor:
    """r_j [J] of the guard's windows of `order` [M] (positions into err's rows), err [M, K], running [K]."""
    per_window = WINDOW * batch_size
    levels = []
    for chunk in order.split(per_window):
        levels.append((err[chunk].mean(0) / running).mean())
    return torch.stack(levels)


def main() -> None:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("state", type=Path, help="a resume state (resume/*/last_*.pth), or a finished model (models/*.pth)")
    p.add_argument("--epochs", type=int, nargs="+", default=None,
                   help="epochs (1-based) whose order is replayed (default: the state's current one)")
    p.add_argument("--data-dir", default="data", help="QM9 cache folder")
    p.add_argument("--output", type=Path, default=None, help="JSON written with the report")
    args = p.parse_args()
    state = checkpoint.load(args.state)
    progress = checkpoint.progress(state) or dict(epoch=state.get("epochs_done"), spikes=state.get("spikes"),
                                                  lr_scale=None, running_loss=None)
    record = checkpoint.RunRecord.of(state)
    names = record.names
    data, _ = sources.open_data(None, names, data_dir=args.data_dir)
    model, batcher = checkpoint.build_model(state), Batcher(data)
    columns = torch.tensor([t["column"] for t in record.targets])
    scale = torch.tensor(record.normalisation["loss_scale"]).float()
    train = torch.as_tensor(record.split["train"])
    pred = batched_outputs(model, batcher, train, 256)  # [M, K]
    err = ((pred - data.y[train][:, columns].float()) / scale) ** 2  # [M, K]
    # the guard's running mean, or for a finished model (no resume state) its mean training loss in its place
    running = err.mean(0) if progress["running_loss"] is None else torch.tensor(progress["running_loss"]).float()
    k = len(names)
    alone = err / (WINDOW * record.batch_size * running) / k  # [M, K]: Delta r_m per target
    report = dict(state=str(args.state), epochs_done=progress["epoch"], spikes=progress["spikes"],
                  lr_scale=progress["lr_scale"], running_loss=dict(zip(names, running.tolist())),
                  train_loss=dict(zip(names, err.mean(0).tolist())), molecules={}, windows={})
    print(f"{args.state}: {progress['epoch']} epochs done, {progress['spikes']} spikes, lr x {progress['lr_scale']}"
          + (" (a finished model: its mean training loss stands in for the running mean)"
             if progress["running_loss"] is None else ""))
    print("target  running loss  mean train loss  max e/m  molecules with Delta r > 1")
    for j, name in enumerate(names):
        ratio = err[:, j] / running[j]
        print(f"{name:>6}  {running[j]:12.4g}  {err[:, j].mean():15.4g}  {ratio.max():7.3g}  "
              f"{int((alone[:, j] > 1).sum())}")
    big = (alone.sum(1) > 1).nonzero().flatten()
    for m in big[alone[big].sum(1).argsort(descending=True)].tolist():
        j = int(alone[m].argmax())
        mol = int(train[m])
        true = data.y[mol, columns[j]].item()
        report["molecules"][mol] = dict(target=names[j], delta_r=alone[m].sum().item(), true=true,
                                        predicted=pred[m, j].item(), atoms=int(data.num_atoms[mol]))
        print(f"molecule {mol}: Delta r {alone[m].sum():.3g} (mostly {names[j]}: QM9 {true:.4g}, "
              f"predicted {pred[m, j]:.4g} {record.targets[j]['unit']})")
    guard = LossGuard()
    for epoch in args.epochs or [int(progress["epoch"]) + 1]:
        g = torch.Generator().manual_seed(draw_seed(record.seed, epoch - 1))
        order = torch.randperm(len(train), generator=g)  # positions into train, as trainer.train_epoch draws them
        levels = window_levels(err, running, order, record.batch_size)
        fired = (levels > guard.factor).nonzero().flatten().tolist()
        rows = []
        for w in fired:
            chunk = order[w * WINDOW * record.batch_size:(w + 1) * WINDOW * record.batch_size]
            top = int(chunk[alone[chunk].sum(1).argmax()])
            rows.append(dict(step=w * WINDOW, level=levels[w].item(), molecule=int(train[top]),
                             molecule_delta_r=alone[top].sum().item()))
        report["windows"][epoch] = dict(median_level=levels.median().item(), max_level=levels.max().item(),
                                        fired=rows)
        print(f"epoch {epoch}: window level median {levels.median():.3g}, max {levels.max():.3g}; "
              f"{len(fired)} above {guard.factor:g}: " +
              "; ".join(f"step {r['step']} ({r['level']:.3g}, molecule {r['molecule']} alone "
                        f"{r['molecule_delta_r']:.3g})" for r in rows))
    if args.output:
        args.output.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
