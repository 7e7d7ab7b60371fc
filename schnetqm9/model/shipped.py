"""The models shipped in models/, in one registry: each one's name, file and what it is for.

    from schnetqm9.model import shipped
    shipped.path("gap")            # models/schnet_qm9_gap.pth
    shipped.for_target("homo")     # the model predict.py uses for a target: its own, else the all-target one
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FOLDER = Path(__file__).resolve().parents[2] / "models"


@dataclass(frozen=True)
class Shipped:
    name: str
    purpose: str
    targets: tuple[str, ...]  # the QM9 targets it is the model for in predict.py; () for the potential

    @property
    def path(self) -> Path:
        return FOLDER / f"schnet_qm9_{self.name}.pth"


MODELS = {m.name: m for m in [
    Shipped("all", "the twelve standard QM9 properties in one model: predict.py's default", ()),
    Shipped("gap", "the HOMO-LUMO gap alone", ("gap",)),
    Shipped("U0", "U0 alone: energies at DFT geometries", ("U0",)),
    Shipped("homo", "the HOMO energy alone", ("homo",)),
    Shipped("lumo", "the LUMO energy alone", ("lumo",)),
    Shipped("U0_potential", "the potential (QM9's electronic surface, U0 - ZPVE): SchNetCalculator()'s default, "
            "for forces, relaxations (predict.py --relax) and MD", ()),
]}
POTENTIAL = "U0_potential"  # SchNetCalculator()'s surface, the one predict.py --relax relaxes on and the checks measure


def path(name: str) -> Path:
    return MODELS[name].path


def dedicated() -> list[str]:
    """The QM9 targets with a model of their own."""
    return [t for m in MODELS.values() for t in m.targets]


def for_target(target: str | None) -> Path:
    """The shipped model predict.py uses for `target`: the dedicated one where there is one, else the all-target
    model (also for no target or 'all')."""
    dedicated = [m for m in MODELS.values() if target in m.targets]
    return (dedicated[0] if dedicated else MODELS["all"]).path
