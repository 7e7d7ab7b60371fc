"""Shared fixtures: the real QM9 (parsed once from qm9pack into the repo's data/ cache) and the repo on sys.path."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import qm9_data  # noqa: E402


@pytest.fixture(scope="session")
def qm9() -> qm9_data.QM9:
    return qm9_data.QM9(REPO / "data", progress=False)
