"""SMILES in: a 3D structure from RDKit for a SMILES string, the same one every time.

    z, pos = smiles.embed("c1ccccc1O")        # atomic numbers [n], positions [n, 3] in Angstrom
    entries = smiles.read_smi("mols.smi")     # [(line, smiles, name), ...]: one per line, a name optional

The recipe (RDKit's standard one for small organic molecules):
    1. parse the SMILES and add the explicit hydrogens;
    2. embed with ETKDG v3 (distance geometry with experimental torsion preferences), seeded with SEED, so the same
       SMILES always gives the same geometry; when that fails (strained cages, of which QM9 has many), embed again
       from random starting coordinates with more iterations, which places about half of what the first try
       cannot (measured on QM9 test molecules: README, "What the geometry costs");
    3. optimise with the MMFF94 force field (UFF where MMFF has no parameters) to a local minimum.
The geometry is a force-field minimum, not QM9's DFT one: what that costs in accuracy is measured in the README
("What the geometry costs").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SEED = 0xF00D
MAX_ITERS = 2000  # force-field optimisation steps
FALLBACK_ITERATIONS = 10_000  # embedding iterations of the second try (RDKit's default, 0, lets it choose)


class SmilesError(ValueError):
    """A SMILES that cannot become a 3D structure; the message names the SMILES and the reason."""


def _rdkit():
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem

    RDLogger.DisableLog("rdApp.*")  # parse and embedding failures are reported by SmilesError, in one line
    return Chem, AllChem


def parse(smiles: str):
    """The RDKit molecule with explicit hydrogens, or SmilesError."""
    Chem, _ = _rdkit()
    mol = Chem.MolFromSmiles(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        raise SmilesError(f"SMILES {smiles!r}: RDKit cannot parse it")
    return Chem.AddHs(mol)


def embed(smiles: str, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Atomic numbers [n] and force-field-optimised positions [n, 3] (Angstrom) for `smiles`; SmilesError when
    it cannot be parsed or placed in 3D."""
    return embed_molecule(parse(smiles), smiles, seed)


def embed_molecule(mol, smiles: str, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """`embed` for a molecule already parsed (with hydrogens) by `parse`."""
    _, AllChem = _rdkit()
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) < 0:
        params.useRandomCoords = True
        params.maxIterations = FALLBACK_ITERATIONS
        if AllChem.EmbedMolecule(mol, params) < 0:
            raise SmilesError(f"SMILES {smiles!r}: RDKit could not embed it in 3D (ETKDG, also from random "
                              "coordinates); give a structure file instead")
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=MAX_ITERS)
    else:
        AllChem.UFFOptimizeMolecule(mol, maxIters=MAX_ITERS)
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    return z, mol.GetConformer().GetPositions()


def charge(mol) -> int:
    """Net formal charge of a parsed molecule (electrons = sum of atomic numbers - charge)."""
    return sum(a.GetFormalCharge() for a in mol.GetAtoms())


def read_smi(path: str | Path) -> list[tuple[int, str, str]]:
    """(line number, SMILES, name) per entry of a .smi file: a SMILES per line, then optionally whitespace and a
    name. Blank lines and lines starting with '#' are skipped."""
    entries = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        parts = line.strip().split(maxsplit=1)
        if parts and not parts[0].startswith("#"):
            entries.append((number, parts[0], parts[1].strip() if len(parts) > 1 else ""))
    return entries
