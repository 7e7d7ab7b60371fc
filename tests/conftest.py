"""Shared fixtures: the real QM9 (parsed once from qm9pack into the repo's data/ cache), one tiny trained run that
every test needing a checkpoint shares, and the repo on sys.path."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from schnetqm9.data import qm9 as qm9_data  # noqa: E402

# a tiny lite run: 300 molecules, 2 epochs, on the CPU
TINY = ["--subset-size", "300", "--epochs", "2", "--tsne-samples", "25", "--device", "cpu"]


@pytest.fixture(scope="session")
def qm9() -> qm9_data.QM9:
    return qm9_data.QM9(REPO / "data", progress=False)


@pytest.fixture(scope="session")
def lite_run(tmp_path_factory, qm9) -> Path:
    """`bash run_lite.sh` on TINY's settings, once per session: its folder holds results/ and checkpoints/."""
    tmp = tmp_path_factory.mktemp("lite")
    proc = subprocess.run(["bash", "run_lite.sh", *TINY, "--output-dir", str(tmp / "results"), "--checkpoint-dir",
                           str(tmp / "checkpoints"), "--data-dir", str(REPO / "data")], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "test gap (30 molecules" in proc.stdout, proc.stderr
    return tmp


@pytest.fixture(scope="session")
def tiny_checkpoint(lite_run: Path) -> Path:
    """The tiny run's best model (gap, the lite architecture), for tests that use a checkpoint but do not test
    the training that made it."""
    return lite_run / "checkpoints" / "best_model_lite.pth"


def wait_for_mid_epoch_state(last: Path, proc: subprocess.Popen, min_step: int = 0, timeout: float = 300) -> dict:
    """Polls the resume state `last` of the running `proc` until one from inside epoch 2 (more than `min_step`
    steps into it) is on disk, and returns it."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if last.exists():
            try:
                state = torch.load(last, weights_only=True)
            except Exception:  # caught between the write and the rename of an atomic save, or not yet complete
                state = None
            if state and state["progress"]["epoch"] == 1 and state["progress"]["step_in_epoch"] > min_step:
                return state
        time.sleep(0.05)
    raise AssertionError(f"no resume state from inside epoch 2 appeared in {last}")
