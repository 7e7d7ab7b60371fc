"""Does a relaxation on the potential end where B3LYP's surface is low? The B3LYP energy of each relaxed geometry
against that of the QM9 minimum it started near (issue 34's goal: within 1 kcal/mol for the median molecule).

    python -m schnetqm9.potential.check --molecules 20 --relaxed results/relaxed.extxyz       # relax; both geometries
    python -m schnetqm9.potential.labelling results/relaxed.extxyz --method b3lyp --output results/relaxed.extxyz.gz
    python -m schnetqm9.potential.relax_energy results/relaxed.extxyz.gz

Several surfaces share one labelled file: the minimum's frame is named by the molecule alone, so the labeller
computes it once, and each relaxed frame by the molecule and the surface it was relaxed on (check.py's --checkpoint,
with a digest of the file: surface_name), so a second surface's --relaxed file, labelled into the same output, costs
only its relaxations.

check.py relaxes each molecule (BFGS on the potential) from its DFT geometry displaced by 0.05 A of noise; the
labeller computes B3LYP/6-31G(2df,p) at the DFT geometry x_m* and where the relaxation ended x_m; here, per molecule

.. math::
    \\Delta E_m = E_{B3LYP}(x_m) - E_{B3LYP}(x_m^*)

in kcal/mol. QM9's geometry is Gaussian's B3LYP minimum, a few hundredths of an eV/A from PySCF's, so Delta E can
be slightly negative; a relaxation that ends on B3LYP's minimum gives ~0, one that stops short or elsewhere more.
Both energies come from one program and one set of settings, so the per-molecule offset between PySCF and QM9
cancels.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
from ase import Atoms

from schnetqm9 import files
from schnetqm9.cli import Parser, UserError
from schnetqm9.data import qm9 as qm9_data
from schnetqm9.data.targets import KCAL_PER_MOL_TO_EV

GOAL_KCAL = 1.0


def surface_name(path: Path) -> str:
    """A checkpoint's name in the labels: its path and the first 10 hex digits of its SHA-256, so that a file
    replaced at the same path (a new model shipped) is a new surface to the labeller, not one already labelled."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:10]
    return f"{os.path.relpath(path)}@{digest}"


def write_pairs(path: Path, qm9: qm9_data.QM9, relaxed: list[tuple[int, np.ndarray]], surface: str) -> None:
    """Extended XYZ for the labeller: per molecule i, its DFT geometry and the positions [n, 3] (A) its relaxation on
    `surface` ended at, named relax:<i>:minimum and relax:<i>:relaxed:<surface> (the labeller resumes by name)."""
    import ase.io

    frames = []
    for i, pos in relaxed:
        d = qm9[i]
        frames.append(Atoms(numbers=d.z.numpy(), positions=d.pos.double().numpy(),
                            info=dict(name=f"relax:{i}:minimum", qm9_index=i, geometry="minimum")))
        frames.append(Atoms(numbers=d.z.numpy(), positions=pos,
                            info=dict(name=f"relax:{i}:relaxed:{surface}", qm9_index=i, geometry="relaxed",
                                      relaxed_on=surface)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_write(path) as tmp:
        ase.io.write(tmp, frames, format="extxyz")


def energy_rises(frames: list[Atoms]) -> dict[str, dict[int, float]]:
    """{surface: {QM9 index: E(relaxed) - E(minimum) in kcal/mol}} for every molecule whose minimum and relaxation
    on that surface are both labelled."""
    minima: dict[int, float] = {}
    relaxed: dict[str, dict[int, float]] = {}
    for a in frames:
        if "qm9_index" not in a.info or a.calc is None:
            raise UserError("a frame without qm9_index or an energy: give the labeller's output of check.py's "
                            "--relaxed file")
        i, e = int(a.info["qm9_index"]), a.get_potential_energy()
        if a.info["geometry"] == "minimum":
            minima[i] = e
        else:
            relaxed.setdefault(str(a.info["relaxed_on"]), {})[i] = e
    return {s: {i: (e - minima[i]) / KCAL_PER_MOL_TO_EV for i, e in sorted(ends.items()) if i in minima}
            for s, ends in relaxed.items()}


def summarise(rises: dict[int, float]) -> dict:
    values = np.array(list(rises.values()))
    return dict(molecules=len(values), median_kcal=float(np.median(values)), mean_kcal=float(values.mean()),
                max_kcal=float(values.max()), within_goal=float((values <= GOAL_KCAL).mean()), goal_kcal=GOAL_KCAL)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    import ase.io

    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("labels", type=Path, help="the labeller's output for check.py's --relaxed file (.extxyz[.gz])")
    p.add_argument("--output", type=Path, help="write the per-molecule rises and their summary here (JSON)")
    args = p.parse_args(argv)
    try:
        if not args.labels.is_file():
            raise UserError(f"{args.labels}: no such file")
        rises = {s: r for s, r in energy_rises(ase.io.read(args.labels, ":")).items() if r}
        if not rises:
            raise UserError(f"{args.labels} has no molecule with both geometries labelled yet")
    except UserError as err:
        sys.exit(f"error: {err}")
    summaries = {s: summarise(r) for s, r in rises.items()}
    print(f"B3LYP energy where the relaxation ended, above the QM9 minimum's (goal: median <= {GOAL_KCAL:g} kcal/mol)")
    for s, m in summaries.items():
        print(f"  {s}: {m['molecules']} molecules, median {m['median_kcal']:.2f} kcal/mol, mean {m['mean_kcal']:.2f}, "
              f"largest {m['max_kcal']:.2f}; within {GOAL_KCAL:g}: {100 * m['within_goal']:.0f} %")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with files.atomic_write(args.output) as tmp:
            tmp.write_text(json.dumps({s: dict(summary=summaries[s], molecules={str(i): v for i, v in r.items()})
                                       for s, r in rises.items()}, indent=1))
    return summaries


if __name__ == "__main__":
    main()
