"""One training file for a potential on QM9's own surface: QM9's minima (energy, zero forces) and labelled displaced
frames (energy, forces), with the split to train it by.

    python -m schnetqm9.potential.surface labels/b3lyp_train*.extxyz.gz --test labels/b3lyp_test.extxyz.gz \\
        --output data/surface/b3lyp.extxyz
    python train.py --data data/surface/b3lyp.extxyz --split data/surface/b3lyp.split.json \\
        --target energy --unit eV --force-weight 1

The energy of every frame is the electronic energy of QM9's surface, as an atomization energy (relative to QM9's
free atoms, so that float32 keeps it to micro-eV):

.. math::
    E(x) = (U_0 - \\mathrm{ZPVE})_{\\mathrm{QM9}} - \\sum_i E_{\\mathrm{atom}}(Z_i)
           + \\left[E_{\\mathrm{label}}(x) - E_{\\mathrm{label}}(x_{\\min})\\right]

QM9's columns give the surface at the molecule's minimum x_min; the labelling method gives how it rises from there
(its own absolute energies differ from QM9's by a per-molecule offset: labels/README.md), so a labelled frame is
used only when its molecule's minimum is labelled with the same method. Forces are the labels' (eV/A); QM9's
minima get zero.

The split (written beside the file as .split.json, for `train.py --split`) keeps QM9's standard split by molecule:
- train: the labelled frames of training molecules, each `--repeat` times (so that a few thousand frames weigh
  against tens of thousands of minima in every epoch), and `--minima` minima drawn from QM9's training molecules
  (a molecule with a labelled minimum contributes that one instead: the label carries the method's residual force);
- val: the labelled frames of `--val-share` of the labelled training molecules (whole molecules, never trained
  on), and `--val-minima` minima of QM9's validation molecules;
- test: the labelled frames of the `--test` files (QM9's test molecules) only: the held-out set forces are
  measured on.
"""
from __future__ import annotations

import io
import shlex
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from schnetqm9.cli import Parser, UserError, one_line
from schnetqm9.data import splits, structure_file
from schnetqm9.data.qm9 import QM9
from schnetqm9.data.targets import TARGETS
from schnetqm9.files import atomic_write
from schnetqm9.seeds import draw_seed

KEY = "energy"  # the label key of the file: train.py --target energy


@dataclass
class Frame:
    """A structure of the file: atomic numbers z [n], positions pos [n, 3] (A), energy E(x) (eV, module docstring),
    forces [n, 3] (eV/A), and where it comes from."""
    z: np.ndarray
    pos: np.ndarray
    energy: float
    forces: np.ndarray
    gdb: int
    kind: str  # 'minimum' (QM9's), or the labelled frame's kind: minimum, t300, n0.05, ...
    source: str  # 'qm9', or the labelling method's name


def qm9_minimum_energies(qm9: QM9) -> torch.Tensor:
    """(U0 - ZPVE) - sum of free-atom energies [num_molecules] (eV, float64): QM9's atomization U0 less its ZPVE."""
    return qm9.y[:, TARGETS["U0_atom"].column].double() - qm9.y[:, TARGETS["zpve"].column].double()


def by_gdb(qm9: QM9, values: torch.Tensor) -> dict[int, float]:
    """Per-molecule values keyed by the molecule's gdb number (QM9's index is not gdb - 1: 3,054 gdb numbers are
    not in it)."""
    return dict(zip(qm9.gdb.tolist(), values.tolist()))


def read_labelled(paths: list[str]) -> list:
    """Every frame of the labelled files (ase.Atoms, with the labeller's info keys and calculator results)."""
    frames = []
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"{path}: no such file")
        try:
            frames += list(structure_file.read_all(path))
        except Exception as err:
            raise UserError(f"{path}: cannot read it as structures ({one_line(err)})") from None
    return frames


def on_qm9_surface(frames: list, minimum_energy: dict[int, float]) -> tuple[list[Frame], int]:
    """The labelled frames as Frames on QM9's surface (module docstring; `minimum_energy` by gdb number, from
    `qm9_minimum_energies`), and how many were left out because their molecule's minimum is not labelled with the
    same method."""
    minima: dict[tuple[int, str], float] = {}
    for atoms in frames:
        if atoms.info.get("kind") == "minimum":
            minima[int(atoms.info["gdb"]), atoms.info["label_name"]] = atoms.get_potential_energy()
    out, left = [], 0
    seen: set[str] = set()
    for atoms in frames:
        info = atoms.info
        key = info.get("label_key", info.get("name"))
        if key in seen:  # a frame labelled twice (two files of the same inputs): once is enough
            continue
        seen.add(key)
        gdb, method = int(info["gdb"]), info["label_name"]
        if (gdb, method) not in minima:
            left += 1
            continue
        energy = minimum_energy[gdb] + atoms.get_potential_energy() - minima[gdb, method]
        out.append(Frame(atoms.numbers.copy(), atoms.positions.copy(), energy, atoms.get_forces().copy(), gdb,
                         info["kind"], method))
    return out, left


def qm9_minimum(qm9: QM9, i: int, energy: float) -> Frame:
    a, b = int(qm9.ptr[i]), int(qm9.ptr[i + 1])
    z = qm9.z[a:b].numpy()
    return Frame(z, qm9.pos[a:b].double().numpy(), energy, np.zeros((len(z), 3)), int(qm9.gdb[i]), "minimum", "qm9")


def choose(part: torch.Tensor, count: int | None, seed: int, salt: int) -> list[int]:
    """`count` molecules of a part of QM9's split (all with None), the first of a seeded permutation."""
    order = part[torch.randperm(len(part), generator=torch.Generator().manual_seed(draw_seed(seed, salt)))]
    return order[:count].tolist()


def build(qm9: QM9, train_frames: list[Frame], test_frames: list[Frame], minima: int, val_minima: int,
          val_share: float, repeat: int, seed: int, molecules: int | None = None
          ) -> tuple[list[Frame], dict[str, list[int]]]:
    """The file's frames and the split (indices into them; a training frame appears `repeat` times). With
    `molecules`, only the frames of that many labelled training molecules train, the first of a seeded order: the
    sets for a learning curve are nested, and the validation molecules (drawn first, from all) are the same in each.
    """
    energies = qm9_minimum_energies(qm9)
    standard = splits.standard_split()
    by_molecule: dict[int, list[Frame]] = defaultdict(list)
    for f in train_frames:
        by_molecule[f.gdb].append(f)
    labelled = sorted(by_molecule)
    rng = np.random.default_rng(seed)
    held = set(rng.choice(labelled, size=round(val_share * len(labelled)), replace=False).tolist()) \
        if labelled else set()
    order = [labelled[i] for i in np.random.default_rng(draw_seed(seed, 3)).permutation(len(labelled))]
    trained = set([g for g in order if g not in held][:molecules])  # all with None
    frames: list[Frame] = []
    split: dict[str, list[int]] = dict(train=[], val=[], test=[])

    def add(frame: Frame, where: str, times: int = 1) -> None:
        split[where] += [len(frames)] * times
        frames.append(frame)

    for gdb in labelled:
        for f in by_molecule[gdb]:
            if gdb in held:
                add(f, "val")
            elif gdb in trained:
                add(f, "train", repeat)
    labelled_minima = {f.gdb for f in train_frames if f.kind == "minimum" and f.gdb in trained}
    for i in choose(standard["train"], minima, seed, 1):
        if int(qm9.gdb[i]) not in labelled_minima:
            add(qm9_minimum(qm9, i, float(energies[i])), "train")
    for i in choose(standard["val"], val_minima, seed, 2):
        add(qm9_minimum(qm9, i, float(energies[i])), "val")
    for f in test_frames:
        add(f, "test")
    return frames, split


def check_sides(qm9: QM9, train_frames: list[Frame], test_frames: list[Frame]) -> None:
    """Training frames must come from QM9's training molecules and test frames from its test molecules."""
    standard = splits.standard_split()
    gdb = qm9.gdb
    sides = {name: set(gdb[standard[name]].tolist()) for name in ("train", "test")}
    for frames, side, flag in ((train_frames, "train", "the labelled files"), (test_frames, "test", "--test")):
        stray = sorted({f.gdb for f in frames} - sides[side])
        if stray:
            raise UserError(f"{flag} hold{'s' if flag == '--test' else ''} frames of gdb_{stray[0]} (and "
                            f"{len(stray) - 1} more molecules) outside QM9's standard {side} split: keep test "
                            "molecules out of training and training molecules out of the test")


def write(frames: list[Frame], split: dict[str, list[int]], output: Path, meta: dict) -> None:
    """The frames as extended XYZ (energy and forces as calculator results) and the split beside them."""
    import ase.io
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    structures = []
    for f in frames:
        atoms = Atoms(numbers=f.z, positions=f.pos)
        atoms.info.update(gdb=f.gdb, kind=f.kind, source=f.source)
        atoms.calc = SinglePointCalculator(atoms, energy=f.energy, forces=f.forces)
        structures.append(atoms)
    buf = io.StringIO()
    ase.io.write(buf, structures, format="extxyz")
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(output) as tmp:
        tmp.write_text(buf.getvalue())
    splits.save_split({k: torch.tensor(v) for k, v in split.items()}, split_path(output), **meta)


def split_path(output: Path) -> Path:
    return output.with_name(output.name.removesuffix(".extxyz") + ".split.json")


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("labels", nargs="+", help="labelled frames of QM9 training molecules (potential/labelling.py)")
    p.add_argument("--test", nargs="+", default=[], help="labelled frames of QM9 test molecules: the test set")
    p.add_argument("--minima", type=int, default=20000, help="QM9 training minima (zero forces) in the training set")
    p.add_argument("--val-minima", type=int, default=500, help="QM9 validation minima in the validation set")
    p.add_argument("--val-share", type=float, default=0.1,
                   help="share of the labelled training molecules whose frames validate instead of train")
    p.add_argument("--repeat", type=int, default=10, help="times each labelled training frame is in an epoch")
    p.add_argument("--molecules", type=int, default=None, help="train on the labelled frames of only this many "
                   "labelled training molecules (a seeded choice; smaller counts are subsets of larger ones, the "
                   "validation molecules the same): the points of a learning curve")
    p.add_argument("--seed", type=int, default=0, help="seed of the minima drawn and of the validation molecules")
    p.add_argument("--data-dir", default="data", help="QM9 cache folder")
    p.add_argument("--output", type=Path, required=True, help="the extended-XYZ file written (and .split.json)")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    try:
        if min(args.minima, args.val_minima) < 0 or args.repeat < 1 or not 0 <= args.val_share < 1 \
                or (args.molecules is not None and args.molecules < 1):
            raise UserError("--minima and --val-minima must be non-negative, --repeat and --molecules positive and "
                            "--val-share in [0, 1)")
        qm9 = QM9(args.data_dir)
        energies = by_gdb(qm9, qm9_minimum_energies(qm9))
        train_frames, left_train = on_qm9_surface(read_labelled(args.labels), energies)
        test_frames, left_test = on_qm9_surface(read_labelled(args.test), energies) if args.test else ([], 0)
        check_sides(qm9, train_frames, test_frames)
        frames, split = build(qm9, train_frames, test_frames, args.minima, args.val_minima, args.val_share,
                              args.repeat, args.seed, args.molecules)
        if not split["test"]:
            raise UserError("the test set is empty: give labelled frames of QM9 test molecules with --test")
    except UserError as err:
        sys.exit(f"error: {err}")
    write(frames, split, args.output, dict(command=shlex.join(["python", "-m", __spec__.name, *argv]), seed=args.seed))
    labelled = sum(f.source != "qm9" for f in frames) - len(test_frames)
    print(f"{len(frames):,} structures written to {args.output} ({labelled} labelled training frames, "
          f"{len(test_frames)} test frames, {len(frames) - labelled - len(test_frames):,} QM9 minima); split "
          f"{len(split['train']):,} / {len(split['val']):,} / {len(split['test']):,} (training frames x{args.repeat}) "
          f"in {split_path(args.output)}"
          + (f"; {left_train + left_test} frames left out: their molecule's minimum is not labelled yet"
             if left_train + left_test else ""))


if __name__ == "__main__":
    main()
