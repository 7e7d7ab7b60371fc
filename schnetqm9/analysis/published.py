"""The published QM9 test MAEs this repo measures itself against, in PyG's units (targets.TARGETS).

PAPER: SchNet, Schütt et al., J. Chem. Phys. 148, 241722 (2018), 110,000 training molecules; the four targets
issue 35 asks for. SCHNETPACK: the SchNetPack benchmark of the same architecture, all twelve standard targets
(converted to PyG's units: Hartree to eV, as in docs/MULTITASK.md).
"""
from __future__ import annotations

PAPER: dict[str, float] = {"homo": 0.041, "lumo": 0.034, "gap": 0.063, "U0": 0.014}

SCHNETPACK: dict[str, float] = {
    "mu": 0.021, "alpha": 0.124, "homo": 0.047, "lumo": 0.039, "gap": 0.074, "r2": 0.158, "zpve": 0.001616,
    "U0": 0.012, "U": 0.012, "H": 0.012, "G": 0.013, "cv": 0.034,
}


def figures(target: str) -> dict[str, float]:
    """{"SchNet paper": MAE, "SchNetPack": MAE} for the target, those that exist."""
    out = {}
    if target in PAPER:
        out["SchNet paper"] = PAPER[target]
    if target in SCHNETPACK:
        out["SchNetPack"] = SCHNETPACK[target]
    return out
