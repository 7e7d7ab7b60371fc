"""Learning curves: test MAE against the number of training molecules, from scratch and fine-tuned (--init-from).

    python -m schnetqm9.analysis.learning_curve --target gap --init-from models/schnet_qm9_U0.pth
    python -m schnetqm9.analysis.learning_curve --target cv --init-from models/schnet_qm9_U0.pth --sizes 100,1000 --arms finetune
    python -m schnetqm9.analysis.learning_curve --plot experiments/transfer/*.csv --output docs/figures/learning_curves.png

Every point is one `train.py` run on QM9 with the default architecture and a split file written here:
    train  the first N molecules of a seeded permutation of the standard training split (so a smaller set is part
           of every larger one, and a shipped model trained on that split has seen their geometries, never the
           target's labels);
    val    the first 1,000 molecules of the standard validation split, for every N;
    test   the standard test split (10,831 molecules), for every N and both arms: geometries no model saw.
The budget rule is the same for both arms: S = min(3000, max(500, 50 epochs)) steps of batch 32, run to the end
(no early stop), the weights of the best validation epoch tested. A finished point is not run again, so the
command can be repeated after an interruption (points already in --table are skipped, so a committed table carries
over to another session); the table (CSV) is rewritten after each point.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import torch

from schnetqm9 import files
from schnetqm9.cli import Parser, UserError
from schnetqm9.data import splits
from schnetqm9.model import transfer

REPO = Path(__file__).resolve().parents[2]
VAL_SIZE = 1000
BATCH = 32


def budget_epochs(n: int) -> int:
    """Epochs of the budget rule: S = min(3000, max(500, 50 epochs)) steps, in whole epochs."""
    steps_per_epoch = math.ceil(n / BATCH)
    steps = min(3000, max(500, 50 * steps_per_epoch))
    return math.ceil(steps / steps_per_epoch)


def write_split(n: int, path: Path, seed: int = 0) -> None:
    standard = splits.standard_split()
    g = torch.Generator().manual_seed(seed)
    train = standard["train"][torch.randperm(len(standard["train"]), generator=g)[:n]].sort().values
    splits.save_split(dict(train=train, val=standard["val"][:VAL_SIZE], test=standard["test"]), path, seed=seed,
                        subset_size=None, rule=f"first {n} of a seed-{seed} permutation of the standard training split")


def run_point(target: str, n: int, arm: str, args: argparse.Namespace, out: Path) -> dict:
    """One training run (skipped when its metrics exist); returns its row of the table."""
    lr = args.lr if arm == "scratch" else args.finetune_lr
    epochs = min(budget_epochs(n), args.max_epochs or budget_epochs(n))
    folder = out / f"{target}_{arm}_{n}_lr{lr:g}"
    metrics_path = folder / "metrics.json"
    if not metrics_path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write_split(n, folder / "split_in.json")
        command = [sys.executable, str(REPO / "train.py"), "--target", target, "--split", str(folder / "split_in.json"),
                   "--epochs", str(epochs), "--patience", "0", "--batch-size", str(BATCH),
                   "--output-dir", str(folder), "--checkpoint-dir", str(folder), "--tsne-samples", "200",
                   "--lr", str(lr)]
        if arm == "finetune":
            command += ["--init-from", args.init_from]
        print(f"{target} {arm} N={n}: {epochs} epochs", flush=True)
        with open(folder / "log.txt", "w") as log:
            proc = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise UserError(f"the run for {target} {arm} N={n} failed: see {folder / 'log.txt'}")
    m = json.loads(metrics_path.read_text())
    history = list(csv.DictReader((folder / "history.csv").open()))
    best = history[m["best_epoch"] - 1]
    return dict(target=target, arm=arm, train_size=n, lr=m["args"]["lr"], epochs=round(m["epochs_done"], 2),
                steps=round(m["epochs_done"] * math.ceil(n / BATCH)), best_epoch=m["best_epoch"],
                val_mae=min(float(best[f"val_mae_{target}"]), float(best[f"val_mae_raw_{target}"])),
                test_mae=m["test"][target]["mae"], unit=m["test"][target]["unit"], minutes=round(m["minutes"], 2),
                init_from=(m.get("init_from") or {}).get("checkpoint", ""))


def write_table(rows: list[dict], path: Path) -> None:
    with files.atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(tables: list[Path], path: Path) -> None:
    """One panel per target: test MAE against training molecules (log-log), one line per arm."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from schnetqm9 import plots

    rows = [r for t in tables for r in csv.DictReader(t.open())]
    names = list(dict.fromkeys(r["target"] for r in rows))
    fig, axes = plots._grid(len(names), (4.8, 3.8))
    for ax, name in zip(axes, names):
        for arm, style in (("scratch", dict(color="tab:blue", marker="o", label="from scratch")),
                           ("finetune", dict(color="tab:red", marker="s", label="fine-tuned"))):
            pts = sorted((int(r["train_size"]), float(r["test_mae"])) for r in rows
                         if r["target"] == name and r["arm"] == arm)
            if pts:
                ax.plot(*zip(*pts), **style)
            origin = {r["init_from"] for r in rows if r["target"] == name and r["arm"] == "finetune"}
        unit = next(r["unit"] for r in rows if r["target"] == name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))  # 100, 1,000: not 10^2, 10^3
        ax.xaxis.set_minor_formatter(NullFormatter())
        for set_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            set_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("training molecules")
        ax.set_ylabel(plots.quantity(f"{name} test MAE", unit))
        ax.set_title(name + (f" (fine-tuned from {Path(origin.pop()).name})" if len(origin) == 1 else ""), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    plots.save_figure(fig, path)


def markdown(tables: list[Path]) -> str:
    """The tables side by side per target and size, as the Markdown rows of docs/TRANSFER.md."""
    rows = [r for t in tables for r in csv.DictReader(t.open())]
    lines = []
    for name in dict.fromkeys(r["target"] for r in rows):
        unit = next(r["unit"] for r in rows if r["target"] == name)
        lines += [f"{name} test MAE ({unit}):", "", "| training molecules | epochs (steps) | from scratch | fine-tuned "
                  "| change |", "|---|---|---|---|---|"]
        by = {(r["arm"], int(r["train_size"])): r for r in rows if r["target"] == name}
        for n in sorted({n for _, n in by}):
            a, b = by.get(("scratch", n)), by.get(("finetune", n))
            some = a or b
            cells = [f"{float(r['test_mae']):.4g}" if r else "not run" for r in (a, b)]
            ratio = float(b["test_mae"]) / float(a["test_mae"]) if a and b else None
            change = "" if ratio is None else f"{100 * (ratio - 1):+.0f} %".replace("-", "−")
            lines.append(f"| {n:,} | {float(some['epochs']):g} ({int(some['steps']):,}) | {cells[0]} | {cells[1]} "
                         f"| {change} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", help="QM9 target the curves are for (a single name)")
    p.add_argument("--init-from", default="models/schnet_qm9_U0.pth", help="checkpoint the fine-tuned arm starts from")
    p.add_argument("--sizes", default="100,300,1000,3000,10000", help="training set sizes, comma-separated")
    p.add_argument("--arms", default="scratch,finetune", help="scratch, finetune or both")
    p.add_argument("--max-epochs", type=int, help="cap every point's epochs below the budget rule's (a quick look, "
                   "not the curve the docs show)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate from scratch (chosen on validation at "
                   "N = 1,000 against train.py's full-QM9 default 1e-3: docs/TRANSFER.md)")
    p.add_argument("--finetune-lr", type=float, default=transfer.FINETUNE_LR,
                   help="peak learning rate when fine-tuning (train.py's default with --init-from)")
    p.add_argument("--out", type=Path, default=Path("runs/learning_curves"), help="one folder per run")
    p.add_argument("--table", type=Path, help="the CSV to write (default: OUT/<target>.csv)")
    p.add_argument("--plot", type=Path, nargs="+", help="draw these tables into --output instead of running")
    p.add_argument("--output", type=Path, default=Path("results/learning_curves.png"), help="the figure of --plot")
    p.add_argument("--markdown", action="store_true", help="with --plot: also print the tables as Markdown")
    args = p.parse_args(argv)
    try:
        if args.plot:
            plot(args.plot, args.output)
            print(f"wrote {args.output}")
            if args.markdown:
                print(markdown(args.plot))
            return
        if not args.target:
            raise UserError("name --target (or --plot tables)")
        sizes = [int(s) for s in args.sizes.split(",")]
        arms = args.arms.split(",")
        if set(arms) - {"scratch", "finetune"} or min(sizes) < 1 or max(sizes) > 110_000:
            raise UserError("--arms takes scratch and/or finetune, --sizes numbers from 1 to 110000")
        if args.max_epochs is not None and args.max_epochs < 1:
            raise UserError(f"--max-epochs must be a positive number of epochs, got {args.max_epochs}")
        table = args.table or args.out / f"{args.target}.csv"
        rows = list(csv.DictReader(table.open())) if table.is_file() else []  # points of earlier sessions
        for n in sizes:
            for arm in arms:
                lr = args.lr if arm == "scratch" else args.finetune_lr
                if any((r["target"], r["arm"], int(r["train_size"]), float(r["lr"])) == (args.target, arm, n, lr)
                       for r in rows):
                    continue
                rows.append(run_point(args.target, n, arm, args, args.out))
                write_table(rows, table)
                print(f"  test MAE {rows[-1]['test_mae']:.4g} {rows[-1]['unit']} -> {table}", flush=True)
    except UserError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
