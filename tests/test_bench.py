"""bench.py runs end to end on the CPU with a few steps and writes the rows the README's table is made of."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here runs the real script in fresh processes

REPO = Path(__file__).resolve().parents[1]
KEYS = {"config", "device", "batch_size", "ours_mol_s", "reference_mol_s", "ratio", "ours_peak_mb", "reference_peak_mb"}


def bench(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench.py", "--device", "cpu", "--data-dir", str(REPO / "data"), *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def test_lite_rows(tmp_path: Path, qm9) -> None:
    out = tmp_path / "bench.json"
    proc = bench("--config", "lite", "--steps", "4", "--rounds", "2", "--warmup", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    assert len(rows) == 1 and KEYS <= rows[0].keys()
    row = rows[0]
    assert row["config"] == "lite" and row["device"] == "cpu" and row["batch_size"] == 16
    assert row["ours_mol_s"] > 0 and row["reference_mol_s"] > 0 and row["ours_peak_mb"] > 0
    assert row["ratio"] == pytest.approx(row["ours_mol_s"] / row["reference_mol_s"])
    assert row["ratio_min"] <= row["ratio_max"] and row["rounds"] == 2 and row["steps_per_round"] == 2
    assert "| lite | CPU" in proc.stdout


def test_multi_target_step_is_timed_beside_the_one_target_step(tmp_path: Path, qm9) -> None:
    out = tmp_path / "bench.json"
    proc = bench("--config", "lite", "--steps", "4", "--rounds", "2", "--warmup", "1", "--multi-target",
                 "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    row = json.loads(out.read_text())[0]
    assert row["ours_all_mol_s"] > 0 and row["all_vs_one"] == pytest.approx(row["ours_all_mol_s"] / row["ours_mol_s"])
    assert "ours with all twelve targets" in proc.stdout


def test_bf16_pipelines_are_timed_beside_fp32(tmp_path: Path, qm9) -> None:
    out = tmp_path / "bench.json"
    proc = bench("--config", "lite", "--steps", "4", "--rounds", "2", "--warmup", "1", "--bf16", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    row = json.loads(out.read_text())[0]
    assert row["ours_bf16_mol_s"] > 0 and row["reference_bf16_mol_s"] > 0
    assert row["bf16_vs_fp32"] == pytest.approx(row["ours_bf16_mol_s"] / row["ours_mol_s"])
    assert row["bf16_vs_reference"] == pytest.approx(row["ours_bf16_mol_s"] / row["reference_mol_s"])
    assert row["bf16_vs_reference_bf16"] == pytest.approx(row["ours_bf16_mol_s"] / row["reference_bf16_mol_s"])
    assert "ours bf16" in proc.stdout and "PyG bf16" in proc.stdout


@pytest.mark.parametrize("flags,message", [(["--steps", "1", "--rounds", "2"], "--steps (1) must be at least"),
                                           (["--rounds", "0"], "--rounds must be positive"),
                                           (["--warmup", "-1"], "--warmup must be non-negative")])
def test_bad_input_is_one_line(tmp_path: Path, flags: list[str], message: str) -> None:
    out = tmp_path / "bench.json"
    proc = bench("--config", "lite", "--json", str(out), *flags)
    assert proc.returncode != 0
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()
