"""Time to accuracy: the epochs and minutes on this machine that each training run took to reach the SchNet paper's
and SchNetPack's QM9 test MAE, and one figure with every run's validation curve against both.

    python -m schnetqm9.analysis.time_to_accuracy \\
        "U0 shipped (fp32, 1 core)=models/schnet_qm9_U0.pth" \\
        "U0, 120-epoch schedule (fp32, 1 core)=resume/U0/last_U0.pth" \\
        "gap shipped (fp32, 1 core)=models/schnet_qm9_gap.pth" \\
        --plot docs/figures/time_to_accuracy.png --json experiments/time_to_accuracy.json

Each RUN is LABEL=PATH as for compare_runs: a history<suffix>.csv, a run's state (last<suffix>.pth, as far as it has
gone) or a finished checkpoint (a shipped model: one point, its end), with @TARGET for one target of a multi-target run.
Put the precision and the cores in the label: nothing in a history says on what it ran. The runs are grouped by target,
one column of panels each: validation MAE against epochs (top) and against wall-clock minutes (bottom), log scales, the
published figures as lines (analysis/published.py). "Reached" is the first validation at or below a figure; validation
MAE (10,000 molecules) stands in for the published test MAE (the shipped models' differ from their test MAE by 1-2 %).
Minutes drift with the machine's load by up to 3x; epochs do not.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from schnetqm9.analysis import published
from schnetqm9.analysis.compare_runs import Run, load, minutes_to_reach
from schnetqm9.cli import Parser, UserError
from schnetqm9.data import targets


def load_run(spec: str) -> Run:
    """LABEL=PATH[@TARGET] -> Run; an @ followed by anything but a target name belongs to the path."""
    head, at, target = spec.rpartition("@")
    return load(head, target) if at and target in targets.TARGETS else load(spec)


def summary(run: Run) -> dict:
    """A run's end, its best validation and, per published figure, the (epochs, minutes) that reached it or None."""
    best = min(range(len(run.val_mae)), key=run.val_mae.__getitem__)
    reached = {}
    for name, mae in published.figures(run.target).items():
        hit = minutes_to_reach(run, mae)
        reached[name] = {"mae": mae, "epochs": hit[0], "minutes": hit[1]} if hit else {"mae": mae, "epochs": None,
                                                                                           "minutes": None}
    return {"label": run.label, "target": run.target, "unit": run.unit, "epochs": run.epochs[-1],
            "minutes": run.minutes[-1], "best_val_mae": run.val_mae[best], "best_epochs": run.epochs[best],
            "test_mae": run.test_mae, "reached": reached}


def markdown(rows: list[dict]) -> str:
    """One line per run: epochs and minutes so far, best validation MAE, and the cost of each published figure."""
    lines = ["| run | target | epochs (minutes) | best val MAE | to SchNetPack's | to the paper's |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        cells = []
        for name in ("SchNetPack", "SchNet paper"):
            hit = r["reached"].get(name)
            cells.append("" if hit is None else f"not reached (≤ {hit['mae']:g})" if hit["epochs"] is None
                         else f"{hit['epochs']:.1f} epochs, {hit['minutes']:.0f} min")
        lines.append(f"| {r['label']} | {r['target']} | {r['epochs']:.1f} ({r['minutes']:.0f}) | "
                     f"{r['best_val_mae']:.4g} {r['unit']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def plot(runs: list[Run], path: Path) -> None:
    """Per target a column: validation MAE against epochs above, against minutes below; published figures dashed."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    from schnetqm9 import plots

    by_target: dict[str, list[Run]] = {}
    for r in runs:
        by_target.setdefault(r.target, []).append(r)
    fig, axes = plt.subplots(2, len(by_target), figsize=(5.2 * len(by_target), 9.0), squeeze=False)
    for col, (target, group) in enumerate(by_target.items()):
        for row, (x_of, xlabel) in enumerate(((lambda r: r.epochs, "epochs"),
                                              (lambda r: r.minutes, "wall clock (min, this machine)"))):
            ax = axes[row, col]
            for r in group:
                style = "o" if len(r.epochs) == 1 else "-"
                ax.plot(x_of(r), r.val_mae, style, ms=6, lw=1.5, label=r.label)
            for (name, mae), ls in zip(published.figures(target).items(), ("--", ":")):
                ax.axhline(mae, color="k", ls=ls, lw=1, label=f"{name} (test) {mae:g}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            for set_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter,
                                  ax.xaxis.set_major_formatter):
                set_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
            ax.set_xlabel(xlabel)
            ax.set_ylabel(plots.quantity(f"{target} validation MAE", group[0].unit))
            ax.grid(alpha=0.3, which="both")
        axes[0, col].set_title(target)
        axes[1, col].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2))  # below: no curve hidden
    fig.suptitle("Time to accuracy on 2 CPU cores: validation MAE against epochs and minutes")
    fig.tight_layout()
    plots.save_figure(fig, path)


def main() -> None:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="LABEL=PATH[@TARGET]: a history<suffix>.csv, "
                   "last<suffix>.pth or a finished checkpoint (TARGET: which of a multi-target run's; default the "
                   "first); the label says precision and cores")
    p.add_argument("--plot", type=Path, help="write the figure here (.png)")
    p.add_argument("--json", type=Path, help="write each run's summary here")
    args = p.parse_args()
    try:
        runs = [load_run(spec) for spec in args.runs]
    except UserError as err:
        sys.exit(f"error: {err}")
    rows = [summary(r) for r in runs]
    if args.plot:
        plot(runs, args.plot)
        print(f"wrote {args.plot}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {args.json}")
    print(markdown(rows))


if __name__ == "__main__":
    main()
