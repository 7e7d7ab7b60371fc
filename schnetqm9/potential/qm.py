"""Energies and forces of one molecule from electronic-structure theory: QM9's own level, B3LYP/6-31G(2df,p), through
PySCF, or GFN2-xTB through tblite.

    from schnetqm9.potential.qm import METHODS, compute
    label = compute(z, pos, METHODS["b3lyp"])     # z [n], pos [n, 3] Angstrom
    label.energy, label.forces                    # eV, eV/Angstrom [n, 3]

QM9's labels were computed with Gaussian 09 at B3LYP/6-31G(2df,p) (Ramakrishnan et al., Sci. Data 2014). PySCF
computes the same functional and basis; what can differ is said by the settings each label records
(`Method.settings`):

- ``xc``: PySCF's ``b3lypg`` is Gaussian's B3LYP (the VWN-RPA local correlation, VWN3 in Gaussian's words);
- ``cart``: Gaussian takes Cartesian d shells (6D) for the 6-31G family; PySCF takes spherical ones unless told;
- ``grid_level``: PySCF's level 3 grid, (75, 302) points for C-F: the size of Gaussian 09's default FineGrid;
- ``density_fit``: the Coulomb and exchange integrals through an auxiliary basis (``auxbasis``), which makes a
  B3LYP gradient of a QM9 molecule minutes instead of tens of minutes on one core and moves energies by ~0.1 mHa.

The force is the analytic gradient, F = -dE/dr, converted from Hartree/Bohr.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from schnetqm9.cli import one_line

HARTREE_TO_EV = 27.211386246  # CODATA 2018, as data/targets.py
BOHR_TO_ANGSTROM = 0.529177210903


@dataclass(frozen=True)
class Method:
    """One level of theory and every setting that changes its numbers."""

    name: str  # 'b3lyp' or 'gfn2'
    program: str  # 'pyscf' or 'tblite'
    xc: str = ""
    basis: str = ""
    cart: bool = False
    density_fit: bool = True
    auxbasis: str = ""
    grid_level: int = 3
    conv_tol: float = 1e-9  # Hartree, SCF energy
    max_cycle: int = 100

    def settings(self) -> dict[str, str | int | float | bool]:
        """Every setting, and the program's version, as flat key-value pairs (recorded with each label)."""
        out = {f"label_{k}": v for k, v in asdict(self).items() if v != ""}
        out["label_version"] = program_version(self.program)
        return out


METHODS = {
    # QM9's level of theory; density fitting with PySCF's default auxiliary basis for it (def2-universal-jkfit)
    "b3lyp": Method("b3lyp", "pyscf", xc="b3lypg", basis="6-31g(2df,p)", auxbasis="def2-universal-jkfit"),
    # the same with Cartesian d and f shells, closer to Gaussian's 6D convention
    "b3lyp-cart": Method("b3lyp-cart", "pyscf", xc="b3lypg", basis="6-31g(2df,p)", cart=True,
                         auxbasis="def2-universal-jkfit"),
    "gfn2": Method("gfn2", "tblite", conv_tol=1e-7, max_cycle=250, density_fit=False, grid_level=0),
}


class LabelError(Exception):
    """A molecule this method cannot label: reported and skipped, never written as a label."""


@dataclass
class Label:
    energy: float  # eV
    forces: np.ndarray  # [n, 3] eV/Angstrom
    seconds: float  # wall clock of the calculation
    cycles: int  # SCF iterations


def program_version(program: str) -> str:
    import importlib.metadata

    try:
        return f"{program} {importlib.metadata.version(program)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{program} (not installed)"


def electron_count(z: np.ndarray, charge: int) -> int:
    return int(np.sum(z)) - int(charge)


def check_molecule(z: np.ndarray, charge: int, spin: int, method: Method) -> str | None:
    """Why `method` cannot label a molecule of atomic numbers z [n] with this charge and spin (number of unpaired
    electrons, 2S), or None when it can."""
    from ase.data import chemical_symbols

    largest = 36 if method.program == "pyscf" else 86  # 6-31G(2df,p) up to Kr; GFN2-xTB up to Rn
    unknown = sorted({int(a) for a in z if not 1 <= a <= largest})
    if unknown:
        names = ", ".join(chemical_symbols[a] if a < len(chemical_symbols) else str(a) for a in unknown)
        return f"element {names} is beyond {method.name} (elements H to {chemical_symbols[largest]})"
    electrons = electron_count(z, charge)
    if electrons <= 0:
        return f"charge {charge} leaves {electrons} electrons"
    if (electrons - spin) % 2 or spin < 0 or spin > electrons:
        return (f"{electrons} electrons (charge {charge}) cannot have {spin} unpaired: give the frame's charge and "
                "spin (extended-XYZ keys charge= and spin=, or --charge and --spin; spin is the number of unpaired "
                "electrons, 1 for a doublet)")
    return None


def compute(z: np.ndarray, pos: np.ndarray, method: Method, charge: int = 0, spin: int = 0) -> Label:
    """Energy (eV) and forces (eV/A) [n, 3] of the molecule z [n], pos [n, 3] (Angstrom); LabelError when the
    molecule is refused or its SCF does not converge."""
    reason = check_molecule(z, charge, spin, method)
    if reason:
        raise LabelError(reason)
    start = time.perf_counter()
    run = _pyscf if method.program == "pyscf" else _tblite
    energy_ha, gradient, cycles = run(np.asarray(z), np.asarray(pos, dtype=np.float64), method, charge, spin)
    forces = -np.asarray(gradient) * HARTREE_TO_EV / BOHR_TO_ANGSTROM
    if not (np.isfinite(energy_ha) and np.all(np.isfinite(forces))):
        raise LabelError("the energy or forces are not finite")
    return Label(float(energy_ha) * HARTREE_TO_EV, forces, time.perf_counter() - start, cycles)


def _pyscf(z: np.ndarray, pos: np.ndarray, method: Method, charge: int, spin: int) -> tuple[float, np.ndarray, int]:
    """(energy Ha, gradient Ha/Bohr [n, 3], SCF cycles): restricted Kohn-Sham for closed shells, unrestricted
    otherwise; DIIS first, then second-order (Newton) SCF from where DIIS stopped if it did not converge."""
    from pyscf import dft, gto

    mol = gto.M(atom=[(int(a), tuple(p)) for a, p in zip(z, pos)], unit="Angstrom", basis=method.basis,
                charge=charge, spin=spin, cart=method.cart, verbose=0)
    mf = dft.RKS(mol) if spin == 0 else dft.UKS(mol)
    mf.xc = method.xc
    mf.grids.level = method.grid_level
    mf.conv_tol = method.conv_tol
    mf.max_cycle = method.max_cycle
    if method.density_fit:
        mf = mf.density_fit(auxbasis=method.auxbasis)
    cycles = 0

    def count(envs: dict) -> None:
        nonlocal cycles
        cycles += 1

    mf.callback = count
    energy = mf.kernel()
    if not mf.converged:
        newton = mf.newton()
        newton.callback = count
        energy = newton.kernel(mf.make_rdm1())
        if not newton.converged:
            raise LabelError(f"the SCF did not converge in {cycles} cycles (DIIS, then Newton)")
        mf = newton
    gradient = mf.nuc_grad_method().kernel()
    return float(energy), np.asarray(gradient), cycles


def _tblite(z: np.ndarray, pos: np.ndarray, method: Method, charge: int, spin: int) -> tuple[float, np.ndarray, int]:
    from tblite.interface import Calculator

    calc = Calculator("GFN2-xTB", z, pos / BOHR_TO_ANGSTROM, charge=charge, uhf=spin)
    calc.set("verbosity", 0)
    calc.set("max-iter", method.max_cycle)
    try:
        res = calc.singlepoint()
    except RuntimeError as err:  # tblite raises on SCF failure
        raise LabelError(f"tblite: {one_line(err)}") from None
    return float(res.get("energy")), np.asarray(res.get("gradient")), 0  # tblite does not report its cycles
