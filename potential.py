"""Training an energy model as a potential: the loss terms beyond the energy that make QM9's DFT geometries the
minima of the learned surface (`train.py --force-weight W --prior-weight W`).

QM9's 130,831 geometries are B3LYP minima, so the forces there vanish: a label for every molecule, free. The
zero-force term is

.. math::
    \\mathcal{L}_0 = \\frac{1}{N} \\sum_i \\frac{|F_i(x)|^2}{s^2}, \\qquad F = -\\partial E / \\partial r

over the N atoms of a batch, with s the energy's loss scale (per Angstrom), so that a weight of 1 sets an error
of 1 eV/A on every atom against 1 eV on every molecule. Stationarity alone does not make a minimum, so a second
term shapes the surface around it: at the geometry displaced by Gaussian noise, x' = x + delta, the model's forces
are trained towards the restoring forces of the MMFF94 force field shifted so that x is its stationary point,

.. math::
    F^*(x') = F_{\\mathrm{MMFF}}(x') - F_{\\mathrm{MMFF}}(x) \\approx -H_{\\mathrm{MMFF}}(x)\\,\\delta, \\qquad
    \\mathcal{L}_{\\mathrm{prior}} = \\frac{1}{N} \\sum_i \\frac{|F_i(x') - F^*_i(x')|^2}{s^2}

MMFF94's curvature at QM9's geometries is close to DFT's (its harmonic frequencies there are within a median 4 %
of QM9's: docs/POTENTIAL.md); its minimum is not, which the shift removes; and where atoms are pushed together
its bonds and van der Waals terms push them apart. Bonds come from each DFT geometry (RDKit's rdDetermineBonds);
molecules RDKit cannot type are left out of the prior term (their atoms get no target). Both terms differentiate
forces, which are themselves a gradient: second derivatives through the model (cpu_kernels.py provides them).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

KCAL_TO_EV = 0.0433641  # eV per kcal/mol, MMFF's energy unit


def forces(energy: Tensor, pos: Tensor, create_graph: bool = True) -> Tensor:
    """F = -dE/dr [N, 3] for energies [B] of positions pos [N, 3] (which must require grad)."""
    (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=create_graph)
    return -grad


def mmff_typed(z: np.ndarray, pos: np.ndarray):
    """(RDKit molecule, its MMFF94 properties) with bonds perceived from the geometry (z [n], pos [n, 3]
    Angstrom), or None when its bonds or atom types cannot be assigned."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem, rdDetermineBonds

    RDLogger.DisableLog("rdApp.*")
    table = Chem.GetPeriodicTable()
    block = f"{len(z)}\n\n" + "\n".join(f"{table.GetElementSymbol(int(a))} {x:.8f} {y:.8f} {w:.8f}"
                                        for a, (x, y, w) in zip(z, pos))
    try:
        mol = Chem.MolFromXYZBlock(block)
        rdDetermineBonds.DetermineBonds(mol, charge=0)
        Chem.SanitizeMol(mol)
    except Exception:  # RDKit raises several types for valences it cannot assign
        return None
    props = AllChem.MMFFGetMoleculeProperties(mol)
    return None if props is None else (mol, props)


def mmff_forces(typed, pos: np.ndarray) -> np.ndarray:
    """MMFF94's forces (eV/Angstrom) [n, 3] at positions pos [n, 3] of a molecule from `mmff_typed`.

    A fresh force field for each geometry: RDKit's ForceField.CalcGrad(positions), called again with other
    positions, returned gradients that disagree with its own energy (by up to 1e9 kcal/mol/A, RDKit 2026.9)."""
    from rdkit.Chem import AllChem
    from rdkit.Geometry import Point3D

    mol, props = typed
    conf = mol.GetConformer()
    for a, (x, y, w) in enumerate(pos.tolist()):
        conf.SetAtomPosition(a, Point3D(x, y, w))
    ff = AllChem.MMFFGetMoleculeForceField(mol, props)
    return -np.array(ff.CalcGrad()).reshape(-1, 3) * KCAL_TO_EV


def mmff_restoring_forces(z: np.ndarray, pos: np.ndarray, displaced: np.ndarray) -> np.ndarray | None:
    """F_MMFF(displaced) - F_MMFF(pos) in eV/Angstrom [n, 3] (zero at pos), or None if MMFF cannot type it."""
    typed = mmff_typed(z, pos)
    if typed is None:
        return None
    return mmff_forces(typed, displaced) - mmff_forces(typed, pos)


def prior_targets(z: Tensor, pos: Tensor, ptr: Tensor, displaced: Tensor) -> tuple[Tensor, Tensor]:
    """For a batch (z [N], DFT positions pos [N, 3], molecule offsets ptr [B + 1], displaced positions [N, 3]):
    the shifted MMFF94 forces at the displaced geometries [N, 3] (eV/A) and which atoms have one [N] (bool)."""
    z_np = z.cpu().numpy()
    pos_np, moved_np = pos.detach().double().cpu().numpy(), displaced.detach().double().cpu().numpy()
    target = np.zeros_like(pos_np)
    known = np.zeros(len(z_np), dtype=bool)
    for a, b in zip(ptr[:-1].tolist(), ptr[1:].tolist()):
        f = mmff_restoring_forces(z_np[a:b], pos_np[a:b], moved_np[a:b])
        if f is not None:
            target[a:b], known[a:b] = f, True
    return torch.from_numpy(target).to(pos), torch.from_numpy(known).to(pos.device)


class PotentialLoss:
    """The zero-force and prior terms for energy output `output` of each training batch (weighted, to add to the
    energy loss), and their running means for the epoch's line (`take`). The displacements of step t come from a
    generator seeded by (seed, t), so a resumed run draws the same ones."""

    def __init__(self, output: int, scale: float, force_weight: float, prior_weight: float, noise: float,
                 seed: int) -> None:
        self.output, self.scale, self.noise, self.seed = output, scale, noise, seed
        self.force_weight, self.prior_weight = force_weight, prior_weight
        self.sums: Tensor | None = None  # [2] summed over steps: mean |F|^2 at minima, mean |F - F*|^2 displaced
        self.steps = 0

    def __call__(self, model: torch.nn.Module, z: Tensor, pos: Tensor, batch: Tensor, energy: Tensor,
                 step: int) -> Tensor:
        """pos [N, 3] the DFT positions the batch's energies [B] were computed from (requiring grad)."""
        loss = energy.new_zeros(())
        stats = energy.new_zeros(2).double()  # on the device: no host synchronisation for the statistics
        if self.force_weight:
            f = forces(energy, pos)  # [N, 3]
            term = f.square().sum(-1).mean()
            loss = loss + self.force_weight * term / self.scale**2
            stats[0] = term.detach()
        if self.prior_weight:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            delta = (torch.randn(pos.shape, generator=g, dtype=pos.dtype) * self.noise).to(pos.device)
            displaced = (pos.detach() + delta).requires_grad_(True)
            f = forces(model(z, displaced, batch)[:, self.output], displaced)  # [N, 3]
            ptr = torch.cat([batch.new_zeros(1), torch.bincount(batch).cumsum(0)])
            target, known = prior_targets(z, pos, ptr, displaced)
            if bool(known.any()):
                term = (f - target).square().sum(-1)[known].mean()
                loss = loss + self.prior_weight * term / self.scale**2
                stats[1] = term.detach()
        self.sums = stats if self.sums is None else self.sums + stats
        self.steps += 1
        return loss

    def take(self) -> dict[str, float]:
        """RMS force at the DFT geometries and RMS force error against the prior (eV/A) since the last call."""
        rms = [math.nan, math.nan] if self.sums is None else (self.sums / self.steps).sqrt().tolist()
        self.sums, self.steps = None, 0
        return dict(train_force_rms=rms[0] if self.force_weight else math.nan,
                    train_prior_rms=rms[1] if self.prior_weight else math.nan)


def max_force_median(model: torch.nn.Module, batcher, mols: Tensor, output: int, batch_size: int = 256) -> float:
    """Median over molecules `mols` of the largest atomic force |F_i| (eV/A) at their (DFT) geometries."""
    model.eval()
    worst = []
    for chunk in mols.split(batch_size):
        b = batcher(chunk)
        pos = b.pos.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            f = forces(model(b.z, pos, b.batch)[:, output], pos, create_graph=False).norm(dim=-1)  # [N]
        top = f.new_zeros(len(chunk)).scatter_reduce(0, b.batch, f.detach(), "amax", include_self=True)
        worst.append(top)
    model.train()
    return float(torch.cat(worst).median())
