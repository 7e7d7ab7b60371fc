"""Displaced geometries of QM9 molecules, to be labelled (labelling.py): where molecular dynamics and relaxations go.

    python -m schnetqm9.potential.displace --split train --molecules 200 --max-heavy-atoms 7 \\
        --kinds minimum,t300,t300,t600,n0.05 --output labels/inputs/train.extxyz
    python -m schnetqm9.potential.displace --split test --molecules 70 --kinds minimum,t300,n0.05 \\
        --output labels/inputs/test.extxyz

Molecules are drawn from QM9's standard split (the first of a seeded permutation of its training or test molecules;
with --max-heavy-atoms, only the small ones), and each gives one frame per kind:

- ``minimum``: QM9's own geometry, a B3LYP minimum (its label gives the energy each displaced frame is measured
  from, and the residual force of the labelling method there);
- ``tT``: a classical harmonic sample at T kelvin along MMFF94's normal modes at the minimum,

  .. math::
      \\delta = \\sum_k \\xi_k \\sqrt{k_B T / \\max(\\lambda_k, \\lambda_{soft})}\\; v_k, \\qquad \\xi_k \\sim N(0, 1)

  each mode holding k_B T / 2 of potential energy on average; modes softer than lambda_soft (torsions, which a
  straight-line displacement would turn into bond stretches) move as if they had that curvature;
- ``nX``: Gaussian noise of X Angstrom on every coordinate (the start of potential_check's relaxations).

A draw that brings two atoms closer than 0.75 A is drawn again. Each frame's draw is seeded by (seed, gdb index,
frame), so a frame does not depend on which other molecules were drawn. Frames carry name (gdb_N:j:kind), gdb, kind,
split and QM9's U0 - ZPVE of the molecule (eV: the electronic energy at the minimum, the surface a potential learns).
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from schnetqm9.cli import Parser, UserError
from schnetqm9.data.batch import molecule_of_atoms
from schnetqm9.data.qm9 import QM9
from schnetqm9.data.splits import standard_split
from schnetqm9.data.targets import TARGETS
from schnetqm9.files import atomic_write
from schnetqm9.potential.losses import mmff_modes, mmff_typed, thermal_displacement

K_B = 8.617333262e-5  # eV/K
CLOSEST = 0.75  # Angstrom: a draw with two atoms closer than this is drawn again


def parse_kind(kind: str) -> tuple[str, float]:
    """'minimum' -> ('minimum', 0); 't300' -> ('thermal', 300 K); 'n0.05' -> ('noise', 0.05 A)."""
    try:
        if kind == "minimum":
            return "minimum", 0.0
        if kind[0] in "tn" and float(kind[1:]) > 0:
            return ("thermal" if kind[0] == "t" else "noise"), float(kind[1:])
    except (ValueError, IndexError):
        pass
    raise UserError(f"unknown kind {kind!r}: use minimum, tT (T kelvin, e.g. t300) or nX (X Angstrom, e.g. n0.05)")


def draw(pos: np.ndarray, modes: tuple[np.ndarray, np.ndarray], kind: str, amount: float, softest: float,
         rng: np.random.Generator) -> np.ndarray:
    """One geometry [n, 3] of `kind` around the minimum pos [n, 3] (MMFF94's modes (lambda [m], V [3n, m]))."""
    if kind == "minimum":
        return pos.copy()
    for _ in range(100):
        if kind == "noise":
            new = pos + rng.normal(0.0, amount, pos.shape)
        else:
            lam, vec = modes
            new = pos + thermal_displacement(np.maximum(lam, softest), vec, K_B * amount,
                                                       rng.standard_normal(len(lam)))
        d = np.linalg.norm(new[:, None] - new[None], axis=-1) + np.eye(len(new)) * 1e3
        if d.min() >= CLOSEST:
            return new
    raise RuntimeError("no draw kept its atoms apart in 100 tries")


def heavy_atoms(qm9: QM9) -> torch.Tensor:
    """Each molecule's number of atoms heavier than hydrogen: [num_molecules]."""
    return torch.bincount(molecule_of_atoms(qm9.num_atoms), weights=(qm9.z > 1).double(), minlength=len(qm9)).long()


def frames(qm9: QM9, mols: list[int], kinds: list[str], split: str, softest: float, seed: int):
    """ase.Atoms frames of each molecule (one per kind), skipping molecules MMFF94 cannot type."""
    from ase import Atoms

    u0, zpve = TARGETS["U0"].column, TARGETS["zpve"].column
    parsed = [parse_kind(k) for k in kinds]
    for i in tqdm(mols, desc="Displacing", unit="mol"):
        d = qm9[i]
        z, pos = d.z.numpy(), d.pos.double().numpy()
        typed = mmff_typed(z, pos)
        if typed is None:
            continue
        modes = mmff_modes(typed, pos)
        gdb = int(qm9.gdb[i])
        for j, (kind, amount) in enumerate(parsed):
            rng = np.random.default_rng([seed, gdb, j])
            atoms = Atoms(numbers=z, positions=draw(pos, modes, kind, amount, softest, rng))
            atoms.info.update(name=f"gdb_{gdb}:{j}:{kinds[j]}", gdb=gdb, kind=kinds[j], split=split,
                              qm9_u0_minus_zpve=float(d.y[0, u0] - d.y[0, zpve]))
            yield atoms


def main(argv: list[str] | None = None) -> None:
    import ase.io

    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", choices=["train", "val", "test"], default="train",
                   help="which part of QM9's standard split the molecules come from")
    p.add_argument("--molecules", type=int, default=200, help="molecules drawn")
    p.add_argument("--max-heavy-atoms", type=int, default=9, help="draw only molecules with at most this many "
                   "heavy atoms (9: every QM9 molecule, QM9's size distribution)")
    p.add_argument("--kinds", default="minimum,t300,t300,t600,n0.05",
                   help="the frames of each molecule, a comma list of minimum, tT (harmonic sample at T kelvin) and "
                   "nX (X Angstrom Gaussian noise)")
    p.add_argument("--softest", type=float, default=0.5, help="lambda_soft, eV/A^2: modes softer than this move as "
                   "if they had this curvature")
    p.add_argument("--seed", type=int, default=0, help="seed of the molecules drawn and of the displacements")
    p.add_argument("--data-dir", default="data", help="QM9 cache folder")
    p.add_argument("--output", type=Path, required=True, help="the extended-XYZ file written")
    args = p.parse_args(argv)
    try:
        if args.molecules <= 0 or not args.softest > 0 or not 1 <= args.max_heavy_atoms:
            raise UserError("--molecules, --softest and --max-heavy-atoms must be positive")
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        for k in kinds:
            parse_kind(k)
        qm9 = QM9(args.data_dir)
        part = standard_split()[args.split]
        part = part[torch.randperm(len(part), generator=torch.Generator().manual_seed(args.seed))]
        heavy = heavy_atoms(qm9)
        part = part[heavy[part] <= args.max_heavy_atoms][: args.molecules].tolist()
        out = list(frames(qm9, part, kinds, args.split, args.softest, args.seed))
    except UserError as err:
        sys.exit(f"error: {err}")
    buf = io.StringIO()
    ase.io.write(buf, out, format="extxyz")
    with atomic_write(args.output) as tmp:
        tmp.write_text(buf.getvalue())
    print(f"{len(out)} frames of {len(out) // len(kinds)} molecules ({len(part) - len(out) // len(kinds)} that "
          f"MMFF94 cannot type left out) written to {args.output}")


if __name__ == "__main__":
    main()
