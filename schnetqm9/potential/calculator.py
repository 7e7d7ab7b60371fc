"""An ASE calculator around an energy model of this project: energies and forces for ase.optimize and ase.md.

    from ase.io import read
    from ase.optimize import BFGS
    from schnetqm9.potential.calculator import SchNetCalculator

    atoms = read("mol.xyz")
    atoms.calc = SchNetCalculator()          # the shipped U0 potential; or SchNetCalculator("checkpoints/x.pth")
    # the U0 model is for energies at DFT geometries only (its surface has holes):
    # SchNetCalculator("models/schnet_qm9_U0.pth")
    print(atoms.get_potential_energy())      # eV; the potential's is relative to the free atoms, the U0 model's total
    BFGS(atoms).run(fmax=0.01)               # forces in eV/Angstrom

The forces are the exact negative gradient of the reported energy, by automatic differentiation:

.. math::
    E(\\{z_i, r_i\\}) = \\sum_i a_i, \\qquad F_i = -\\frac{\\partial E}{\\partial r_i}

The model runs in float64: QM9's total energies are ~10^4 eV, where float32 resolves only ~1 meV, too coarse for
molecular dynamics (a trajectory's energy would wander by the rounding alone). The interaction graph is rebuilt at
every call, so an atom that crosses the cutoff only switches a filter that the cosine envelope has taken to zero:
the energy stays smooth.

With `repulsion=True` (the default) the calculator adds potential/repulsion.py's switched ZBL pair repulsion, which
is zero at every pair farther apart than 0.8 of the pair's shortest distance in QM9 (so at every QM9 geometry: no
QM9 prediction changes; O-H 0.77 A, C-H 0.85 A, C-C 0.96 A) and rises as
k_e Z_i Z_j / r (screened) below it: atoms pushed together cost energy instead of falling into the holes that the
model's extrapolation has there. `repulsion=False` gives the model's surface alone.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from schnetqm9.cli import UserError
from schnetqm9.model import checkpoint, shipped
from schnetqm9.potential import repulsion


def energy_output(ckpt: dict, path: Path, target: str | None = None) -> int:
    """The output of a checkpoint to use as the energy: `target`, else its only output, else U0; it must be in eV
    and read out as a sum over atoms (an energy, extensive). One-line UserError otherwise."""
    names = checkpoint.target_names(ckpt)
    if target is None:
        target = names[0] if len(names) == 1 else "U0"
    if target not in names:
        raise UserError(f"{path} predicts {', '.join(names)}, not {target}: name its energy output with target=")
    k = names.index(target)
    spec = checkpoint.output_spec(ckpt, k)
    if spec["unit"] != "eV" or spec["output"] != "add":
        raise UserError(f"{path}: output {target} ({spec['unit'] or 'no unit'}, {spec['output']} readout) is not an "
                        "energy in eV read out as a sum over atoms: a potential needs one (e.g. QM9's U0)")
    return k


class SchNetCalculator(Calculator):
    """Energy (eV) and forces (eV/Angstrom) of one of this project's checkpoints, for any molecule of the elements
    it was trained on. Periodic cells are refused (the model has no periodic images)."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, checkpoint_path: str | Path = shipped.path(shipped.POTENTIAL), target: str | None = None,
                 device: str | torch.device = "cpu", repulsion: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        path = Path(checkpoint_path)
        ckpt = checkpoint.load(path)
        self.output = energy_output(ckpt, path, target)
        self.model = checkpoint.build_model(ckpt, device).double()
        for p in self.model.parameters():
            p.requires_grad_(False)  # forces need the gradient with respect to positions only
        self.elements = checkpoint.elements(ckpt)
        self.device = torch.device(device)
        self.checkpoint_path = path
        self.repulsion = repulsion

    def energy(self, z: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """The surface: energy [] (eV, float64) of one molecule, z [n] and pos [n, 3] (Angstrom, float64),
        differentiable in pos (twice: potential/frequencies.py takes its Hessian)."""
        energy = self.model(z, pos)[0, self.output]
        return energy + repulsion.energy(z, pos)[0] if self.repulsion else energy

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if self.atoms.pbc.any():
            raise UserError("periodic cells are not supported: SchNet here sees one molecule, not its images")
        numbers = self.atoms.get_atomic_numbers()
        unknown = sorted(set(numbers.tolist()) - self.elements)
        if unknown:
            raise UserError(f"atomic numbers {unknown} were never seen in training by {self.checkpoint_path}")
        z = torch.as_tensor(numbers, dtype=torch.long, device=self.device)
        pos = torch.as_tensor(self.atoms.get_positions(), dtype=torch.float64, device=self.device)
        pos.requires_grad_(True)
        energy = self.energy(z, pos)
        (grad,) = torch.autograd.grad(energy, pos)  # [n, 3] eV/Angstrom
        e = float(energy.detach())
        self.results = dict(energy=e, free_energy=e, forces=-grad.cpu().numpy().astype(np.float64))


def add_model_flags(p: argparse.ArgumentParser, default: str = shipped.POTENTIAL) -> None:
    """The flags that pick the surface a check measures: --checkpoint (default: the shipped model `default`),
    --target and --no-repulsion; `from_flags` builds the calculator from them."""
    p.add_argument("--checkpoint", type=Path, default=shipped.path(default), help="an energy checkpoint")
    p.add_argument("--target", help="its energy output (default: its only output, or U0)")
    p.add_argument("--no-repulsion", action="store_true", help="the model's surface alone, without the "
                   "calculator's ZBL wall (potential/repulsion.py; zero at every QM9 geometry)")


def from_flags(args: argparse.Namespace) -> SchNetCalculator:
    """The calculator of `add_model_flags`' flags."""
    return SchNetCalculator(args.checkpoint, args.target, repulsion=not args.no_repulsion)


def aligned_rmsd(reference: np.ndarray, pos: np.ndarray) -> float:
    """RMSD (Angstrom) between two geometries [n, 3] of the same atoms after the best rotation and translation
    (Kabsch, ase.build.minimize_rotation_and_translation)."""
    from ase import Atoms
    from ase.build import minimize_rotation_and_translation

    ref, moved = Atoms(positions=reference), Atoms(positions=pos)
    minimize_rotation_and_translation(ref, moved)
    return float(np.sqrt(np.mean(np.sum((moved.positions - ref.positions) ** 2, axis=1))))


def relax(z: np.ndarray, pos: np.ndarray, calc: SchNetCalculator, fmax: float = 0.01,
          steps: int = 1000) -> tuple[np.ndarray, int, bool]:
    """BFGS on the calculator's surface from positions pos [n, 3] until every atomic force is below `fmax`
    (eV/Angstrom) or `steps` steps: (relaxed positions [n, 3], steps taken, converged)."""
    from ase import Atoms
    from ase.optimize import BFGS

    atoms = Atoms(numbers=z, positions=pos)
    atoms.calc = calc
    opt = BFGS(atoms, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    return atoms.get_positions(), int(opt.nsteps), converged
