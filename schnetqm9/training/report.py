"""What a run reports: per-target metrics, the one score of a multi-target run, the test table, and the files
(figures, metrics.json, history.csv) that train.py writes at the end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from schnetqm9 import plots
from schnetqm9.files import atomic_write


def regression_metrics(pred: torch.Tensor, true: torch.Tensor, names: list[str]) -> dict[str, dict]:
    """Per target: MAE, RMSE and R^2 of predictions [M, K] against true values [M, K] (targets `names`)."""
    err = pred.double() - true.double()
    out = {}
    for k, name in enumerate(names):
        e, t = err[:, k], true[:, k].double()
        out[name] = dict(mae=float(e.abs().mean()), rmse=float(e.square().mean().sqrt()),
                         r2=1.0 - float(e.square().sum() / (t - t.mean()).square().sum()))
    return out


def score(metrics: dict[str, dict], scales: list[float]) -> float:
    """The one number a multi-target run is judged by: the mean over targets of MAE / loss scale (a single
    target's MAE divided by a constant, so its ordering is that of the MAE)."""
    return sum(m["mae"] / s for m, s in zip(metrics.values(), scales)) / len(scales)


def print_test(test: dict[str, dict], what: str) -> None:
    """One line for a single target; a table, a row per target, for several."""
    if len(test) == 1:
        (name, m), = test.items()
        print(f"test {name} ({what}): MAE {m['mae']:.5g} {m['unit']}"
              + (f" ({1000 * m['mae']:.1f} meV)" if m["unit"] == "eV" else "")
              + f" | RMSE {m['rmse']:.5g} {m['unit']} | R2 {m['r2']:.5f}")
        return
    print(f"test ({what}):\n  {'target':<7} {'MAE':>11} {'RMSE':>11} {'R2':>8}  unit")
    for name, m in test.items():
        print(f"  {name:<7} {m['mae']:>11.5g} {m['rmse']:>11.5g} {m['r2']:>8.5f}  {m['unit']}")


def write(out_dir: Path, suffix: str, metrics: dict, history: list[dict], true: np.ndarray, pred: np.ndarray,
          embeddings: np.ndarray, tsne_values: np.ndarray) -> None:
    """results/{predictions,loss_curve,tsne}<suffix>.png, metrics<suffix>.json and history<suffix>.csv.

    true, pred [M, K]: test values and predictions of the K targets; embeddings [S, D] of S test molecules,
    coloured in the t-SNE by tsne_values [S] (the first target).
    """
    names, test = metrics["targets"], metrics["test"]
    units = {name: test[name]["unit"] for name in names}
    tag = f" ({suffix.strip('_')})" if suffix else ""
    what = names[0] if len(names) == 1 else f"{len(names)} targets"
    data = "QM9" if metrics["data"] == "QM9" else Path(metrics["data"]).name
    reference = "DFT" if data == "QM9" else "reference"
    plots.plot_predictions(true, pred, test, out_dir / f"predictions{suffix}.png",
                           title=f"{data} {what}{tag}, test set", reference=reference)
    plots.plot_loss_curve(history, units, out_dir / f"loss_curve{suffix}.png", title=f"SchNet on {data} {what}{tag}")
    plots.plot_tsne(embeddings, tsne_values, names[0], units[names[0]], out_dir / f"tsne{suffix}.png",
                    seed=metrics["split"]["seed"])
    with atomic_write(out_dir / f"metrics{suffix}.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    write_history(out_dir / f"history{suffix}.csv", history)


def write_history(path: Path, history: list[dict]) -> None:
    """history.csv: a row per validated epoch, a column per key of any row (a run resumed by a newer version may
    record more in its later epochs), empty where a row lacks it."""
    columns = list(dict.fromkeys(k for h in history for k in h))
    rows = [",".join(columns)] + [",".join(f"{h.get(c, '')}" for c in columns) for h in history]
    with atomic_write(path) as tmp:
        tmp.write_text("\n".join(rows) + "\n")
