"""Shared fixtures: the real QM9 (parsed once from qm9pack into the repo's data/ cache) and the repo on sys.path."""
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


@pytest.fixture(scope="session")
def qm9() -> qm9_data.QM9:
    return qm9_data.QM9(REPO / "data", progress=False)


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
