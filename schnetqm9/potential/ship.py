"""Ship a surface model (train.py on a potential/surface.py file) as the U0 potential, with its QM9 figure recorded.

    python -m schnetqm9.potential.ship resume/potential/best_model_potential.pth models/schnet_qm9_U0_potential.pth

train.py tests a surface model on its file's held-out frames, which a clone rebuilds only from the labels of one
commit. The figure anyone can check from the file alone is its energy at QM9's 10,831 standard test minima against
QM9's own U0 - ZPVE (the electronic energy the surface learns; check.energy_mae); this records it in the checkpoint's
metrics as `qm9_minima` = {mae (eV), compared_with, molecules}, makes the recorded data path relative to the
repository, and writes the file atomically. tests/test_predict.py recomputes the figure from the shipped file, in
this project's SchNet and in PyG's.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from schnetqm9.cli import Parser, UserError
from schnetqm9.data import qm9 as qm9_data
from schnetqm9.data import splits
from schnetqm9.model import checkpoint
from schnetqm9.potential import check, surface

REPO = Path(__file__).resolve().parents[2]


def ship(source: Path, dest: Path, qm9: qm9_data.QM9) -> dict:
    """Copy the surface model `source` to `dest` with metrics["qm9_minima"] added; returns that entry."""
    ckpt = checkpoint.load(source)
    if checkpoint.target_names(ckpt) != [surface.KEY] or "optimizer" in ckpt:
        raise UserError(f"{source} is not a finished surface model (one output '{surface.KEY}', no optimizer "
                        "state): give the best_model file of a train.py run on a potential/surface.py file")
    mae, compared = check.energy_mae(qm9, ckpt, 0)
    raw = torch.load(source, map_location="cpu", weights_only=True)  # as written, without load()'s additions
    raw["metrics"]["qm9_minima"] = dict(mae=mae, compared_with=compared,
                                        molecules=len(splits.standard_split()["test"]))
    data = Path(raw["data"])
    if data.is_absolute() and data.is_relative_to(REPO):
        raw["data"] = str(data.relative_to(REPO))
    checkpoint.save(raw, dest)
    return raw["metrics"]["qm9_minima"]


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="the best_model file of a train.py run on a surface file")
    p.add_argument("dest", type=Path, help="where the shipped file goes (models/schnet_qm9_U0_potential.pth)")
    p.add_argument("--data-dir", default="data", help="QM9 cache folder")
    args = p.parse_args(argv)
    try:
        entry = ship(args.source, args.dest, qm9_data.QM9(args.data_dir))
    except UserError as err:
        sys.exit(f"error: {err}")
    print(f"wrote {os.path.relpath(args.dest)}: energy at the {entry['molecules']:,} QM9 test minima against "
          f"{entry['compared_with']}, MAE {entry['mae']:.4f} eV")


if __name__ == "__main__":
    main()
