"""compare_runs.py: the kept validation MAE per epoch, the first epoch at a threshold, and clear errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from schnetqm9.analysis import compare_runs

REPO = Path(__file__).resolve().parents[1]


def write_run(folder: Path, suffix: str, val: list[float], raw: list[float], minutes_per_epoch: float,
              test_mae: float | None) -> Path:
    """A history<suffix>.csv (and metrics<suffix>.json when test_mae is given) in train.py's format."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["epoch,val_mae_gap,val_mae_raw_gap,lr,epochs_done,minutes"]
    lines += [f"{i + 1},{v},{r},0.001,{i + 1}.0,{minutes_per_epoch * (i + 1)}" for i, (v, r) in enumerate(zip(val, raw))]
    path = folder / f"history{suffix}.csv"
    path.write_text("\n".join(lines) + "\n")
    if test_mae is not None:
        (folder / f"metrics{suffix}.json").write_text(json.dumps({"test": {"gap": {"mae": test_mae, "unit": "eV"}}}))
    return path


def test_the_kept_mae_is_the_better_of_average_and_raw_and_the_threshold_is_the_first_epoch_below(tmp_path) -> None:
    path = write_run(tmp_path, "_a", val=[0.5, 0.30, 0.20, 0.12], raw=[0.4, 0.35, 0.15, 0.13], minutes_per_epoch=2.5,
                     test_mae=0.11)
    run = compare_runs.load(f"a={path}")
    assert run.val_mae == [0.4, 0.30, 0.15, 0.12] and run.unit == "eV" and run.test_mae == 0.11
    assert compare_runs.minutes_to_reach(run, 0.30) == (2.0, 5.0)
    assert compare_runs.minutes_to_reach(run, 0.15) == (3.0, 7.5)  # the raw weights got there first
    assert compare_runs.minutes_to_reach(run, 0.10) is None


def test_markdown_has_a_row_per_epoch_and_marks_a_shorter_run(tmp_path) -> None:
    a = write_run(tmp_path, "_a", val=[0.5, 0.3, 0.2], raw=[0.5, 0.3, 0.2], minutes_per_epoch=10, test_mae=0.19)
    b = write_run(tmp_path, "_b", val=[0.45, 0.28], raw=[0.45, 0.28], minutes_per_epoch=3, test_mae=None)
    table = compare_runs.markdown([compare_runs.load(f"fp32={a}"), compare_runs.load(f"bf16={b}")], [0.29])
    assert "| 3 | 0.2000 | — |" in table
    assert "| to val MAE ≤ 0.29 | 30.0 min (epoch 3) | 6.0 min (epoch 2) |" in table
    assert "| minutes per epoch | 10.0 | 3.0 |" in table and "| test MAE | 0.1900 | — |" in table


@pytest.mark.slow
def test_the_script_draws_the_figure_and_rejects_bad_runs_in_one_line(tmp_path) -> None:
    a = write_run(tmp_path, "_a", val=[0.5, 0.3], raw=[0.5, 0.3], minutes_per_epoch=1, test_mae=0.3)
    b = write_run(tmp_path, "_b", val=[0.4, 0.2], raw=[0.4, 0.2], minutes_per_epoch=1, test_mae=0.2)
    ok = subprocess.run([sys.executable, "-m", "schnetqm9.analysis.compare_runs", f"a={a}", f"b={b}", "--plot", str(tmp_path / "c.png")],
                        cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0 and (tmp_path / "c.png").stat().st_size > 10_000
    for bad, says in (([str(a)], "LABEL=HISTORY"), ([f"a={tmp_path / 'none.csv'}"], "does not exist"),
                      ([f"a={a}", "--target", "U0"], "no target 'U0'")):
        out = subprocess.run([sys.executable, "-m", "schnetqm9.analysis.compare_runs", *bad], cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 1 and says in out.stderr and len(out.stderr.strip().splitlines()) == 1
