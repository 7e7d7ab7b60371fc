"""compare_runs.py: the kept validation MAE per epoch, the first epoch at a threshold, and clear errors;
epoch_table.py: a multi-target run's validation MAE per epoch against SchNetPack's."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from schnetqm9.analysis import compare_runs, epoch_table
from schnetqm9.analysis.published import SCHNETPACK
from schnetqm9.training import report

REPO = Path(__file__).resolve().parents[1]


def write_run(folder: Path, suffix: str, val: list[float], raw: list[float], minutes_per_epoch: float,
              test_mae: float | None) -> Path:
    """A history<suffix>.csv (and metrics<suffix>.json when test_mae is given) in train.py's format."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["epoch,val_mae_gap,val_mae_raw_gap,lr,epochs_done,minutes"]
    lines += [f"{i + 1},{v},{r},0.001,{i + 1}.0,{minutes_per_epoch * (i + 1)}"
              for i, (v, r) in enumerate(zip(val, raw))]
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


def test_a_history_whose_later_epochs_record_more_is_written_aligned_and_read_back(tmp_path) -> None:
    """A run resumed by a version that records another column from some epoch on: every value stays under its own
    header (report.write_history), the earlier rows empty there, and compare_runs reads the run as before."""
    history = [dict(epoch=1, val_mae_U0=0.05, val_mae_raw_U0=0.06, lr=1e-3, epochs_done=1.0, minutes=5.0),
               dict(epoch=2, val_mae_U0=0.02, val_mae_raw_U0=0.03, unrefitted_val_mae_U0=0.04, lr=5e-4,
                    epochs_done=2.0, minutes=10.0)]
    report.write_history(tmp_path / "history_r.csv", history)
    rows = list(csv.DictReader((tmp_path / "history_r.csv").open()))
    assert rows[0]["unrefitted_val_mae_U0"] == "" and rows[1]["unrefitted_val_mae_U0"] == "0.04"
    assert [float(r["lr"]) for r in rows] == [1e-3, 5e-4] and rows[1]["minutes"] == "10.0"
    run = compare_runs.load(f"r={tmp_path / 'history_r.csv'}")
    assert run.target == "U0" and run.val_mae == [0.05, 0.02] and run.minutes == [5.0, 10.0]


@pytest.mark.slow
def test_the_script_draws_the_figure_and_rejects_bad_runs_in_one_line(tmp_path) -> None:
    a = write_run(tmp_path, "_a", val=[0.5, 0.3], raw=[0.5, 0.3], minutes_per_epoch=1, test_mae=0.3)
    b = write_run(tmp_path, "_b", val=[0.4, 0.2], raw=[0.4, 0.2], minutes_per_epoch=1, test_mae=0.2)
    script = [sys.executable, "-m", "schnetqm9.analysis.compare_runs"]
    ok = subprocess.run([*script, f"a={a}", f"b={b}", "--plot", str(tmp_path / "c.png")],
                        cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0 and (tmp_path / "c.png").stat().st_size > 10_000
    for bad, says in (([str(a)], "LABEL=HISTORY"), ([f"a={tmp_path / 'none.csv'}"], "does not exist"),
                      ([f"a={a}", "--target", "U0"], "no target 'U0'")):
        out = subprocess.run([*script, *bad], cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 1 and says in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_a_run_state_gives_its_history_and_a_finished_checkpoint_its_end(tmp_path) -> None:
    from schnetqm9.model import checkpoint

    history = [dict(epoch=e, epochs_done=float(e), minutes=4.0 * e, val_mae_U0=v, val_mae_raw_U0=v + 0.01)
               for e, v in ((1, 0.09), (2, 0.05), (3, 0.03))]
    checkpoint.save({"format": checkpoint.CHECKPOINT_FORMAT, "target": "U0", "unit": "eV", "target_index": 7,
                     "model_config": {"readout": "add"}, "progress": {"running_loss": 0.1, "history": history}},
                    tmp_path / "last_U0.pth")
    run = compare_runs.load(f"long={tmp_path / 'last_U0.pth'}")
    assert run.val_mae == [0.09, 0.05, 0.03] and run.minutes == [4.0, 8.0, 12.0] and run.test_mae is None
    assert run.unit == "eV"  # from the target's definition, as there is no test yet
    checkpoint.save({"format": checkpoint.CHECKPOINT_FORMAT, "target": "gap", "unit": "eV", "target_index": 4,
                     "model_config": {"readout": "mean"}, "epochs_done": 17.6, "minutes": 70.0,
                     "metrics": {"val_mae": 0.0637, "test_mae": 0.0645}}, tmp_path / "best_model_gap.pth")
    shipped = compare_runs.load(f"shipped={tmp_path / 'best_model_gap.pth'}")
    assert (shipped.epochs, shipped.minutes, shipped.val_mae, shipped.test_mae) == ([17.6], [70.0], [0.0637], 0.0645)
    checkpoint.save({"format": checkpoint.CHECKPOINT_FORMAT, "targets": [{"name": "homo"}, {"name": "lumo"}],
                     "epochs_done": 7.3, "minutes": 150.0,
                     "metrics": {"val": {"homo": {"mae": 0.13}, "lumo": {"mae": 0.146}},
                                 "test": {"homo": {"mae": 0.14, "unit": "eV"}, "lumo": {"mae": 0.147, "unit": "eV"}}}},
                    tmp_path / "best_model_all.pth")
    lumo = compare_runs.load(f"all={tmp_path / 'best_model_all.pth'}", "lumo")
    assert (lumo.val_mae, lumo.test_mae, lumo.unit) == ([0.146], 0.147, "eV")


def test_time_to_accuracy_reaches_the_published_figures_at_the_first_validation_below(tmp_path) -> None:
    from schnetqm9.analysis import published, time_to_accuracy

    path = write_run(tmp_path, "_a", val=[0.2, 0.07, 0.065, 0.06], raw=[0.2, 0.08, 0.07, 0.062], minutes_per_epoch=5,
                     test_mae=0.061)
    row = time_to_accuracy.summary(time_to_accuracy.load_run(f"gap={path}@gap"))  # @TARGET picks the target
    assert published.SCHNETPACK["gap"] == 0.074 and published.PAPER["gap"] == 0.063
    assert row["reached"]["SchNetPack"] == {"mae": 0.074, "epochs": 2.0, "minutes": 10.0}
    assert row["reached"]["SchNet paper"] == {"mae": 0.063, "epochs": 4.0, "minutes": 20.0}
    assert row["best_val_mae"] == 0.06 and row["best_epochs"] == 4.0
    b = write_run(tmp_path, "_b", [0.2, 0.1], [0.2, 0.1], 5, None)
    short = time_to_accuracy.summary(compare_runs.load(f"short={b}"))
    assert short["reached"]["SchNet paper"]["epochs"] is None
    assert "not reached (≤ 0.063)" in time_to_accuracy.markdown([row, short])


@pytest.mark.slow
def test_time_to_accuracy_script_draws_every_target_and_rejects_a_bad_file_in_one_line(tmp_path) -> None:
    a = write_run(tmp_path, "_a", val=[0.2, 0.07], raw=[0.2, 0.07], minutes_per_epoch=5, test_mae=0.07)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    script = [sys.executable, "-m", "schnetqm9.analysis.time_to_accuracy"]
    ok = subprocess.run([*script, f"gap={a}", "--plot", str(tmp_path / "t.png"), "--json", str(tmp_path / "t.json")],
                        cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0 and (tmp_path / "t.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "t.json").read_text())[0]["reached"]["SchNetPack"]["epochs"] == 2.0
    bad = subprocess.run([*script, f"x={tmp_path / 'junk.pth'}"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 1 and "not a readable PyTorch checkpoint" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_epoch_table_gives_the_kept_weights_mae_and_its_ratio_to_schnetpack(tmp_path) -> None:
    """An epoch at exactly SchNetPack's MAE on every target has mean ratio 1.00; one where the raw weights were kept
    takes their MAE (here twice SchNetPack's gap, three times its U0: mean 2.50, worst 3.0 on U0)."""
    gap, u0 = SCHNETPACK["gap"], SCHNETPACK["U0"]
    lines = ["epoch,kept,val_mae_gap,val_mae_raw_gap,val_mae_U0,val_mae_raw_U0,epochs_done,minutes",
             f"1,average,{gap},{9 * gap},{u0},{9 * u0},1.0,10.25",
             f"2,raw,{9 * gap},{2 * gap},{9 * u0},{3 * u0},2.0,20.5"]
    path = tmp_path / "history_all.csv"
    path.write_text("\n".join(lines) + "\n")
    rows = epoch_table.table(epoch_table.rows_of(path)).splitlines()
    assert rows[0] == "| epoch (minutes) | gap (eV) | U0 (eV) | mean ratio | worst |" and len(rows) == 4
    assert rows[2].endswith("| 1.00 | 1.0 (gap) |") and rows[2].startswith("| 1 (10.2) |")
    assert rows[3].endswith("| 2.50 | 3.0 (U0) |") and f"| {2 * gap:.3g} | {3 * u0:.3g} |" in rows[3]
    shipped = epoch_table.table(epoch_table.rows_of(REPO / "models" / "schnet_qm9_all.pth")).splitlines()
    val = torch.load(REPO / "models" / "schnet_qm9_all.pth", weights_only=False)["metrics"]["val"]
    mean_ratio = sum(val[n]["mae"] / SCHNETPACK[n] for n in SCHNETPACK) / len(SCHNETPACK)
    assert len(shipped) == 3 and shipped[2].startswith("| 7.3 (") and f"| {mean_ratio:.2f} |" in shipped[2]
    proc = subprocess.run([sys.executable, "-m", "schnetqm9.analysis.epoch_table", str(tmp_path / "none.pth")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
