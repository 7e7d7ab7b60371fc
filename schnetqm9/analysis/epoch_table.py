"""A run's validation MAE per epoch for every target, and its ratio to SchNetPack's test MAE: the Markdown table
the docs show for a multi-target run while it trains.

    python -m schnetqm9.analysis.epoch_table resume/all/last_all.pth

RUN is a history<suffix>.csv that train.py wrote, a run's state (last<suffix>.pth) or a finished model (one row, at
its epochs done). Each row is one validated epoch: the epoch (the cumulative wall-clock minutes), the MAE of the
weights train.py kept at that epoch (the weight average or the raw ones, its `kept` column) per target in PyG's
units, the mean over the targets of MAE / SchNetPack's MAE (published.SCHNETPACK), and the worst such ratio.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

from schnetqm9.analysis.compare_runs import checkpoint_rows
from schnetqm9.analysis.published import SCHNETPACK
from schnetqm9.cli import Parser, UserError
from schnetqm9.data import targets


def rows_of(path: Path) -> list[dict]:
    """The history rows of a history<suffix>.csv, a run's state or a finished model (compare_runs.checkpoint_rows)."""
    if not path.is_file():
        raise UserError(f"{path} does not exist: give a history<suffix>.csv or a last<suffix>.pth that train.py wrote")
    rows = checkpoint_rows(path)[0] if path.suffix == ".pth" else list(csv.DictReader(path.open()))
    if not rows:
        raise UserError(f"{path} has no validated epoch yet")
    return rows


def kept_mae(row: dict, name: str) -> float:
    """Validation MAE of `name` for the weights the epoch kept (the average unless the row says 'raw')."""
    return float(row[f"val_mae_raw_{name}" if row.get("kept") == "raw" else f"val_mae_{name}"])


def table(rows: list[dict]) -> str:
    """The Markdown table (header, rule, a line per epoch); the targets are the history's that SchNetPack reports."""
    names = [c[len("val_mae_"):] for c in rows[0] if c.startswith("val_mae_") and not c.startswith("val_mae_raw_")
             and c[len("val_mae_"):] in SCHNETPACK]
    if not names:
        raise UserError("the history has no target that SchNetPack reports (val_mae_<target> columns)")
    head = ["epoch (minutes)"] + [f"{n} ({targets.TARGETS[n].unit})" for n in names] + ["mean ratio", "worst"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        mae = {n: kept_mae(row, n) for n in names}
        ratio = {n: mae[n] / SCHNETPACK[n] for n in names}
        worst = max(ratio, key=ratio.get)
        epoch = row["epoch"] if "epoch" in row else f"{float(row['epochs_done']):.1f}"  # a finished model: one row
        cells = [f"{epoch} ({float(row['minutes']):.1f})"] + [f"{mae[n]:.3g}" for n in names]
        cells += [f"{sum(ratio.values()) / len(ratio):.2f}", f"{ratio[worst]:.1f} ({worst})"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a history<suffix>.csv, a run's state (last<suffix>.pth) or a model")
    try:
        print(table(rows_of(p.parse_args().run)))
    except UserError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
