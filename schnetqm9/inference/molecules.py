"""What predict.py reads, as one kind of record: structure files (anything ase.io.read reads), .smi files and SMILES
strings. Each input, down to a frame of a file or a line of a .smi file, gives its molecule or a Failure that says
why not; a bad input never stops the others.

    molecules, failures = molecules.read_inputs(["a.xyz", "mols.smi"], ["CCO"], allowed={1, 6, 7, 8, 9})
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from schnetqm9.cli import UserError, one_line
from schnetqm9.inference import smiles as smiles_3d


@dataclass
class Molecule:
    file: str  # the structure file, the .smi file, or "--smiles"
    frame: int  # frame of the file, entry of the .smi file, position among --smiles (from 0)
    formula: str
    z: np.ndarray  # [n] atomic numbers
    pos: np.ndarray  # [n, 3] Angstrom
    smiles: str = ""  # the SMILES it was built from, and its name in the .smi file
    name: str = ""
    charge: int | None = None  # net formal charge, known for a SMILES; None: taken as neutral
    notes: list[str] = field(default_factory=list)  # why not to trust its prediction (inference/domain.py, relaxation)
    relax_rmsd: float | None = None  # how far --relax moved it (aligned RMSD, Angstrom)


@dataclass
class Failure:
    """An input that gave no prediction: where it is and why (`message`, one line that names it)."""

    file: str  # the structure file, the .smi file, or "--smiles"
    frame: int | None  # frame of the file, entry of the .smi file, position among --smiles; None: the whole file
    message: str
    smiles: str = ""
    name: str = ""

    @classmethod
    def of(cls, m: Molecule, message: str) -> Failure:
        """A molecule that was read but failed later (its relaxation, its explanation)."""
        return cls(m.file, m.frame, message, m.smiles, m.name)


def _formula(z: np.ndarray) -> str:
    from ase import Atoms

    return Atoms(numbers=z).get_chemical_formula()


def check_elements(z: np.ndarray, allowed: set[int], where: str) -> None:
    from ase.data import chemical_symbols

    unknown = sorted(set(z.tolist()) - allowed)
    if unknown:
        names = ", ".join(chemical_symbols[u] for u in unknown)
        seen = ", ".join(chemical_symbols[a] for a in sorted(allowed))
        raise UserError(f"{where}: element {names} was never seen in training; this model knows {seen}")


def read_structure_file(path: str, allowed: set[int]) -> tuple[list[Molecule], list[Failure]]:
    """Every frame of a structure file, checked: readable, atoms, elements the model knows, finite coordinates. A
    bad frame fails alone; a file that cannot be read fails as a whole (frame None)."""
    import ase.io
    from ase.data import chemical_symbols

    if not Path(path).is_file():
        return [], [Failure(path, None, f"{path}: no such file")]
    try:
        frames = ase.io.read(path, index=":")
    except Exception as err:  # ASE raises many types; its message often names the line
        detail = one_line(err)
        return [], [Failure(path, None, f"{path}: cannot read it as a structure ({detail})")]
    if not frames:
        return [], [Failure(path, None, f"{path}: no structure in the file")]
    out, failed = [], []
    for k, atoms in enumerate(frames):
        z, pos = atoms.get_atomic_numbers(), atoms.get_positions()
        bad = np.flatnonzero(~np.isfinite(pos).all(axis=1))
        try:
            if len(z) == 0:
                raise UserError(f"{path}: frame {k} has no atoms")
            check_elements(z, allowed, f"{path} (frame {k})")
            if len(bad):
                raise UserError(f"{path}: frame {k}, atom {bad[0]} ({chemical_symbols[z[bad[0]]]}) has coordinates "
                                f"{pos[bad[0]].tolist()}: every coordinate must be a finite number in Angstrom")
            if atoms.pbc.any():
                raise UserError(f"{path}: frame {k} is periodic: the model sees one molecule, not its images")
        except UserError as err:
            failed.append(Failure(path, k, str(err)))
            continue
        out.append(Molecule(path, k, atoms.get_chemical_formula(), z, pos))
    return out, failed


def from_smiles(text: str, allowed: set[int], file: str, index: int, name: str = "") -> Molecule:
    """One SMILES as a Molecule with an RDKit geometry (inference/smiles.py); UserError naming the SMILES if it cannot be."""
    try:
        mol = smiles_3d.parse(text)
        z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
        check_elements(z, allowed, f"SMILES {text!r}")
        z, pos = smiles_3d.embed_molecule(mol, text)
    except smiles_3d.SmilesError as err:
        raise UserError(str(err)) from None
    return Molecule(file, index, _formula(z), z, pos, smiles=text, name=name, charge=smiles_3d.charge(mol))


def read_inputs(paths: list[str], smiles: list[str], allowed: set[int]) -> tuple[list[Molecule], list[Failure]]:
    """The molecules of every input (files in order, then --smiles), and a Failure for every input, frame or .smi
    line that gave none."""
    molecules, failures = [], []
    for path in paths:
        if Path(path).suffix.lower() != ".smi":
            good, bad = read_structure_file(path, allowed)
            molecules += good
            failures += bad
            continue
        entries = smiles_3d.read_smi(path) if Path(path).is_file() else None
        if not entries:
            failures.append(Failure(path, None, f"{path}: " + ("no such file" if entries is None else
                                                               "no SMILES in the file")))
            continue
        for k, (line, text, name) in enumerate(entries):
            try:
                molecules.append(from_smiles(text, allowed, path, k, name))
            except UserError as err:
                failures.append(Failure(path, k, f"{path} line {line}: {err}", text, name))
    for k, text in enumerate(smiles):
        try:
            molecules.append(from_smiles(text, allowed, "--smiles", k))
        except UserError as err:
            failures.append(Failure("--smiles", k, str(err), text))
    return molecules, failures
