"""Data parallelism under torchrun, on the CPU with gloo: two processes take the steps of one, a resume state moves
between process counts, and a worker killed with SIGKILL is survived with --max-restarts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import wait_for_mid_epoch_state

pytestmark = pytest.mark.slow  # every test here runs the real script in fresh processes

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--subset-size", "600", "--epochs", "3", "--tsne-samples", "25", "--device", "cpu"]


def outputs(tmp: Path) -> list[str]:
    return ["--output-dir", str(tmp / "results"), "--checkpoint-dir", str(tmp / "checkpoints"),
            "--data-dir", str(REPO / "data")]


def torchrun(n: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), *extra]


def run(cmd: list[str], tmp: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}, **env}
    proc = subprocess.run(cmd + outputs(tmp), cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def reported_mae(tmp: Path) -> float:
    return json.loads((tmp / "results" / "metrics_lite.json").read_text())["test"]["gap"]["mae"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, qm9) -> Path:
    tmp = tmp_path_factory.mktemp("one")
    run([sys.executable, "train_lite.py", *SMALL], tmp)
    return tmp


def test_two_processes_take_the_same_steps_as_one(one_process: Path, tmp_path: Path) -> None:
    """--batch-size is the global batch: 2 gloo processes (through run_lite.sh) end with the parameters and test
    MAE of 1 process."""
    proc = run(["bash", "run_lite.sh", *SMALL], tmp_path, NPROC="2")
    assert proc.stdout.count("test gap (60 molecules") == 1  # only rank 0 prints
    assert f"2 processes, {max(1, len(os.sched_getaffinity(0)) // 2)} thread(s) each" in proc.stdout
    two = torch.load(tmp_path / "checkpoints" / "last_lite.pth", weights_only=True)
    one = torch.load(one_process / "checkpoints" / "last_lite.pth", weights_only=True)
    assert two["progress"]["step"] == one["progress"]["step"] == 3 * 30
    torch.testing.assert_close(two["state_dict"], one["state_dict"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(two["ema"], one["ema"], rtol=1e-4, atol=1e-5)
    assert reported_mae(tmp_path) == pytest.approx(reported_mae(one_process), rel=1e-4)
    metrics = json.loads((tmp_path / "results" / "metrics_lite.json").read_text())
    assert metrics["processes"] == 2
    h1 = (one_process / "results" / "history_lite.csv").read_text().splitlines()
    h2 = (tmp_path / "results" / "history_lite.csv").read_text().splitlines()
    for a, b in zip(h1[1:], h2[1:]):  # train loss and MAE summed over the ranks: the one-process numbers
        assert [float(x) for x in a.split(",")[1:4]] == pytest.approx([float(x) for x in b.split(",")[1:4]], rel=1e-4)


def test_a_batch_smaller_than_the_processes_stops(tmp_path: Path) -> None:
    proc = run(torchrun(2) + ["train_lite.py", *SMALL, "--batch-size", "1"], tmp_path, check=False)
    assert proc.returncode != 0
    assert "error: --batch-size 1 is smaller than the 2 processes" in proc.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "checkpoints").exists()


def children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (from /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def start(cmd: list[str], tmp: Path) -> subprocess.Popen:
    """Starts `cmd` in a session of its own, its output going to tmp/log."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    with open(tmp / "log", "w") as log:
        return subprocess.Popen(cmd + outputs(tmp), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def finished(proc: subprocess.Popen, tmp: Path, timeout: float = 300) -> str:
    """The output of `proc` once it ended (its whole session is killed if it outlives `timeout`)."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return (tmp / "log").read_text()


def test_a_killed_worker_is_survived_with_max_restarts(one_process: Path, tmp_path: Path) -> None:
    """SIGKILL one of two workers mid-epoch: torchrun restarts the group, which resumes from the last saved state
    by itself and ends with the test MAE of an uninterrupted run."""
    proc = start(torchrun(2, "--max-restarts", "3") + ["train_lite.py", *SMALL, "--checkpoint-every", "0"], tmp_path)
    wait_for_mid_epoch_state(tmp_path / "checkpoints" / "last_lite.pth", proc)
    workers = children(proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[1], signal.SIGKILL)
    out = finished(proc, tmp_path)
    assert proc.returncode == 0, out[-3000:]
    assert "torchrun restarted the workers (restart " in out and "Resuming" in out
    assert reported_mae(tmp_path) == pytest.approx(reported_mae(one_process), rel=1e-4)


def test_a_state_saved_by_two_processes_resumes_with_one(one_process: Path, tmp_path: Path) -> None:
    proc = start(torchrun(2) + ["train_lite.py", *SMALL, "--checkpoint-every", "0"], tmp_path)
    state = wait_for_mid_epoch_state(tmp_path / "checkpoints" / "last_lite.pth", proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole session: torchrun and both workers
    finished(proc, tmp_path)
    assert state["progress"]["step_in_epoch"] > 0
    resumed = run([sys.executable, "train_lite.py", *SMALL, "--resume"], tmp_path)
    assert "Resuming" in resumed.stdout
    assert reported_mae(tmp_path) == pytest.approx(reported_mae(one_process), rel=1e-4)
