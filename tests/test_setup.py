"""The setup files agree with each other and pin what must be pinned."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def requirement_lines(text: str) -> list[str]:
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]


def test_requirements_and_environment_list_the_same_packages() -> None:
    reqs = requirement_lines((REPO / "requirements.txt").read_text())
    env = [m.group(1).strip() for m in re.finditer(r"^\s+- (\S.*)$", (REPO / "environment.yml").read_text(), re.M)]
    pip_section = env[env.index("pip:") + 1:] if "pip:" in env else [e for e in env if "==" in e or ">=" in e]
    assert sorted(reqs) == sorted(pip_section)
    assert "torch==2.13.0" in reqs  # an unpinned torch pulls a multi-GB CUDA build
    names = {re.split(r"[=<>]", r)[0] for r in reqs}
    assert {"torch", "torch-geometric", "torch-cluster", "numpy", "matplotlib", "scikit-learn", "tqdm", "pandas",
            "qm9pack", "ase", "rdkit", "pyscf", "tblite"} <= names
    assert "name: gdl_molecule" in (REPO / "environment.yml").read_text()
    assert "python=3.11" in (REPO / "environment.yml").read_text()


def test_ci_runs_the_readme_commands() -> None:
    readme, ci = (REPO / "README.md").read_text(), (REPO / ".ci" / "run").read_text()
    assert "bash install.sh" in readme and "bash install.sh" in ci
    assert "python -m pytest -q tests" in readme and "pytest -q tests" in ci


def test_the_cpu_kernels_build_where_a_compiler_exists() -> None:
    """Without this, a broken cpu_kernels.cpp would only show as a warning and a slower pure-PyTorch path."""
    import shutil

    import pytest

    from schnetqm9.model import kernels as cpu_kernels

    if shutil.which("c++") is None or not cpu_kernels.enabled():
        pytest.skip("no C++ compiler here (or SCHNET_CPU_KERNELS=0): the pure-PyTorch path is used")
    assert cpu_kernels.load() is not None
    assert cpu_kernels.backend() == "fused C++ kernels"
