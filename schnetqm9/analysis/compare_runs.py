"""Training runs side by side: validation MAE per epoch, the minutes to reach a validation MAE, and test MAE.

    python -m schnetqm9.analysis.compare_runs fp32=runs/prec/results/history_gap_fp32.csv \
        bf16=runs/prec/results/history_gap_bf16.csv \
        --threshold 0.15 --plot docs/figures/precision_gap.png --markdown

Each RUN is LABEL=HISTORY, a history<suffix>.csv that train.py writes (one row per validated epoch, with the cumulative
wall-clock `minutes`); its metrics<suffix>.json beside it, when present, gives the test MAE. HISTORY may also be a .pth:
a run's state (last<suffix>.pth, whose history goes as far as the run has) or a finished checkpoint
(best_model<suffix>.pth, a shipped model: one point, its epochs, minutes and validation MAE, and its test MAE).
Validation happens at the end of each epoch, so "minutes to reach" is the wall clock of the first epoch whose validated
MAE (the better of the weight average and the raw weights, the one train.py keeps) is at most the threshold: a bound
from above, resolved to one epoch. Minutes compare only between runs that ran side by side on one machine.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from schnetqm9.cli import Parser, UserError
from schnetqm9.data import targets


@dataclass
class Run:
    """One training run as compare_runs sees it: per validated epoch, the epochs done, the cumulative minutes and
    the kept validation MAE of `target`; the test MAE when the run finished."""
    label: str
    target: str
    unit: str
    epochs: list[float]
    minutes: list[float]
    val_mae: list[float]
    test_mae: float | None


def checkpoint_rows(path: Path) -> tuple[list[dict], dict | None]:
    """A train.py .pth as history rows: a run state's per-epoch history (no test yet), or a finished checkpoint as
    one row at its end, with {target: {"mae", "unit"}} for its test (single-target files keep their metrics flat,
    multi-target ones per target)."""
    from schnetqm9.model import checkpoint

    state = checkpoint.load(path)
    progress = checkpoint.progress(state)
    if progress is not None:
        return progress["history"], None
    metrics = state.get("metrics") or {}
    if "minutes" not in state or not ("val_mae" in metrics or "val" in metrics):
        raise UserError(f"{path} holds neither a run's history nor a model's minutes and validation MAE")
    if "val_mae" in metrics:
        val = {state["target"]: metrics["val_mae"]}
        test = {state["target"]: {"mae": metrics["test_mae"], "unit": state.get("unit", "")}}
    else:
        val = {t: m["mae"] for t, m in metrics["val"].items()}
        test = {t: {"mae": m["mae"], "unit": m.get("unit", "")} for t, m in metrics["test"].items()}
    row = {"epochs_done": state["epochs_done"], "minutes": state["minutes"]}
    for t, v in val.items():
        row.update({f"val_mae_{t}": v, f"val_mae_raw_{t}": v})
    return [row], test


def load(spec: str, target: str | None = None) -> Run:
    """LABEL=path -> Run (the first target of the history unless `target` is given); path a history<suffix>.csv or
    a .pth (checkpoint_rows)."""
    label, sep, name = spec.partition("=")
    if not sep or not label:
        raise UserError(f"{spec!r} is not LABEL=HISTORY: give each run as e.g. bf16=results/history_gap_bf16.csv")
    path = Path(name)
    if not path.is_file():
        raise UserError(f"{path} does not exist: give the history<suffix>.csv or a .pth that train.py wrote")
    if path.suffix == ".pth":
        rows, tests = checkpoint_rows(path)
    else:
        rows = list(csv.DictReader(path.open()))
        metrics_path = path.with_name("metrics" + path.stem[len("history"):] + ".json")
        tests = json.loads(metrics_path.read_text())["test"] if metrics_path.is_file() else None
    names = [c[len("val_mae_"):] for c in (rows[0] if rows else {}) if c.startswith("val_mae_")
             and not c.startswith("val_mae_raw_")]
    if not names:
        raise UserError(f"{path} has no val_mae_<target> column: is it a train.py history?")
    target = target or names[0]
    if target not in names:
        raise UserError(f"{path} has no target {target!r}; it has {', '.join(names)}")
    test = tests[target] if tests else None
    return Run(label=label, target=target, unit=test["unit"] if test else targets.TARGETS[target].unit,
               epochs=[float(r["epochs_done"]) for r in rows], minutes=[float(r["minutes"]) for r in rows],
               val_mae=[min(float(r[f"val_mae_{target}"]), float(r[f"val_mae_raw_{target}"])) for r in rows],
               test_mae=test["mae"] if test else None)


def minutes_to_reach(run: Run, threshold: float) -> tuple[float, float] | None:
    """(epochs, minutes) at the first validation with MAE <= threshold; None if the run never got there."""
    for e, m, v in zip(run.epochs, run.minutes, run.val_mae):
        if v <= threshold:
            return e, m
    return None


def markdown(runs: list[Run], thresholds: list[float]) -> str:
    """Validation MAE per epoch, one column per run, then minutes per epoch, minutes to each threshold and test MAE."""
    unit = next((r.unit for r in runs if r.unit), "")
    head = "| epoch | " + " | ".join(f"{r.label} val MAE{f' ({unit})' if unit else ''}" for r in runs) + " |"
    lines = [head, "|---|" + "---|" * len(runs)]
    for i in range(max(len(r.epochs) for r in runs)):
        epoch = next(r.epochs[i] for r in runs if i < len(r.epochs))
        lines.append(f"| {epoch:g} | " + " | ".join(f"{r.val_mae[i]:.4f}" if i < len(r.epochs) else "—"
                                                    for r in runs) + " |")
    lines.append("| minutes per epoch | " + " | ".join(f"{r.minutes[-1] / r.epochs[-1]:.1f}" for r in runs) + " |")
    for t in thresholds:
        cells = []
        for r in runs:
            hit = minutes_to_reach(r, t)
            cells.append("not reached" if hit is None else f"{hit[1]:.1f} min (epoch {hit[0]:g})")
        lines.append(f"| to val MAE ≤ {t:g} | " + " | ".join(cells) + " |")
    lines.append("| test MAE | " + " | ".join("—" if r.test_mae is None else f"{r.test_mae:.4f}" for r in runs) + " |")
    return "\n".join(lines)


def plot(runs: list[Run], path: Path, title: str = "") -> None:
    """Validation MAE against epochs (left) and against wall-clock minutes (right), one line per run, log scale."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    from schnetqm9 import plots

    fig, (by_epoch, by_time) = plots._grid(2, (4.8, 3.6))
    name = runs[0].target
    for r in runs:
        by_epoch.plot(r.epochs, r.val_mae, "o-", ms=3, label=r.label)
        by_time.plot(r.minutes, r.val_mae, "o-", ms=3, label=r.label)
    for ax, xlabel in ((by_epoch, "epoch"), (by_time, "wall clock (min, runs side by side)")):
        ax.set_yscale("log")
        for set_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            set_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.1, 0.2: not 10^-1, 2 x 10^-1
        ax.set_xlabel(xlabel)
        ax.set_ylabel(plots.quantity(f"{name} validation MAE", runs[0].unit))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title or f"{name}: validation MAE per epoch and per minute")
    fig.tight_layout()
    plots.save_figure(fig, path)


def main() -> None:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="LABEL=path/to/history<suffix>.csv (two or more)")
    p.add_argument("--target", help="the target to compare (default: the first in the first history)")
    p.add_argument("--threshold", type=float, action="append", default=[],
                   help="report the minutes to reach this validation MAE (repeatable)")
    p.add_argument("--plot", type=Path, help="write the figure here (.png)")
    p.add_argument("--title", default="", help="figure title")
    p.add_argument("--markdown", action="store_true", help="print the Markdown table")
    args = p.parse_args()
    try:
        runs = [load(spec, args.target) for spec in args.runs]
        if len({r.target for r in runs}) > 1:
            raise UserError(f"the runs have different targets ({', '.join(r.target for r in runs)}): give --target")
    except UserError as err:
        sys.exit(f"error: {err}")
    if args.plot:
        plot(runs, args.plot, args.title)
        print(f"wrote {args.plot}")
    if args.markdown or not args.plot:
        print(markdown(runs, args.threshold))


if __name__ == "__main__":
    main()
