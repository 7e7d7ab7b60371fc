"""Training an energy model as a potential: the loss terms beyond the energy that fit its forces
(`train.py --force-weight W --prior-weight W`).

The force term compares the model's forces with labelled ones,

.. math::
    \\mathcal{L}_F = \\frac{1}{N} \\sum_i \\frac{|F_i(x) - F^*_i|^2}{s^2}, \\qquad F = -\\partial E / \\partial r

over the N atoms of a batch that have labels, with s the energy's loss scale (per Angstrom), so that a weight of 1
sets an error of 1 eV/A on every atom against 1 eV on every molecule. On QM9 the labels are free: its 130,831
geometries are B3LYP minima, so F* = 0 for every atom. A structure file's labels are its `forces` (the labeller's,
potential/labelling.py; atoms of a structure without them are left out).

On QM9 alone, stationarity does not make a minimum, so a second term shapes the surface around it: at the
geometry displaced by Gaussian noise, x' = x + delta, the model's forces are trained towards the restoring forces
of the MMFF94 force field shifted so that x is its stationary point,

.. math::
    F^*(x') = F_{\\mathrm{MMFF}}(x') - F_{\\mathrm{MMFF}}(x) \\approx -H_{\\mathrm{MMFF}}(x)\\,\\delta, \\qquad
    \\mathcal{L}_{\\mathrm{prior}} = \\frac{1}{N} \\sum_i \\frac{|F_i(x') - F^*_i(x')|^2}{s^2}

Around a structure with force labels F*(x) (a structure file's), the same first-order step starts from them:
F*(x') = F*(x) + F_MMFF(x') - F_MMFF(x); atoms without labels get no prior target. At QM9's minima F*(x) = 0 and
the two agree.

MMFF94's curvature at QM9's geometries is close to DFT's (its harmonic frequencies there are within a median 4 %
of QM9's: docs/POTENTIAL.md); its minimum is not, which the shift removes; and where atoms are pushed together
its bonds and van der Waals terms push them apart. Bonds come from each DFT geometry (RDKit's rdDetermineBonds);
molecules RDKit cannot type are left out of the prior term (their atoms get no target). Both terms differentiate
forces, which are themselves a gradient: second derivatives through the model (model/kernels.py provides them).

A force residual r says little about how far the minimum lies: along a normal mode of curvature lambda it moves the
minimum by r / lambda, so the same 0.03 eV/A is 0.001 A along a C-H stretch (lambda ~ 50 eV/A^2) and 0.3 A along a
torsion (~ 0.1). Plain squared forces spend the training on the stiff modes, and the minimum misses DFT's along the
soft ones (experiments/potential/mode_check.py). With a stiffness k > 0 (`train.py --precondition k`) both residuals are
measured through

.. math::
    M = I + \\sum_k (w_k - 1)\\, v_k v_k^T, \\qquad
    w_k = \\max\\left(1, \\frac{k}{\\max(|\\lambda_k|, \\lambda_0)}\\right),
    \\qquad \\mathcal{L} = \\frac{1}{N} \\sum_i \\frac{|(M r)_i|^2}{s^2}

with (lambda_k, v_k) MMFF94's internal normal modes at the DFT geometry and lambda_0 = 0.1 eV/A^2: modes stiffer
than k keep the plain term; along softer ones the residual counts as the displacement it causes, times k.
Isotropic noise probes the soft modes little (their restoring forces, lambda delta, are small beside the
stretches'); with an energy E > 0 (`train.py --prior-thermal E`) the prior's displacements are drawn along MMFF's
modes instead, each holding a mean harmonic energy E/2 (`thermal_displacement`).

One noise scale sigma trains the forces at |delta| ~ sigma and, with the zero forces at the minimum, nothing in
between: a model can meet both with a flat-bottomed well, whose curvature at the minimum (its harmonic
frequencies) is far below MMFF's although its forces at sigma are right (docs/POTENTIAL.md, "The flat bottom"). With
`train.py --prior-noise-min a` each molecule m draws its own scale log-uniformly, log sigma_m ~ U(log a,
log sigma), and its residual is weighted by (sigma / sigma_m)^2, so that every scale counts alike: the small ones
fit the Hessian at the minimum (F* ~ -H_MMFF delta), the large ones the restoring forces farther out.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from schnetqm9.data.targets import KCAL_PER_MOL_TO_EV
from schnetqm9.seeds import draw_seed

SOFTEST = 0.1  # eV/A^2, lambda_0: the smallest curvature the preconditioner divides by (at most k / 0.1 times)


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
    return -np.array(ff.CalcGrad()).reshape(-1, 3) * KCAL_PER_MOL_TO_EV


def mmff_restoring_forces(z: np.ndarray, pos: np.ndarray, displaced: np.ndarray) -> np.ndarray | None:
    """F_MMFF(displaced) - F_MMFF(pos) in eV/Angstrom [n, 3] (zero at pos), or None if MMFF cannot type it."""
    typed = mmff_typed(z, pos)
    if typed is None:
        return None
    return mmff_forces(typed, displaced) - mmff_forces(typed, pos)


def internal_basis(pos: np.ndarray) -> np.ndarray:
    """An orthonormal basis Q [3n, 3n - 6] of the displacements of positions pos [n, 3] that are not rigid
    translations or rotations (for a linear molecule one rotation is degenerate: 3n - 5 columns)."""
    c = pos - pos.mean(0)
    rigid = [np.tile(np.eye(3)[a], len(pos)) for a in range(3)]  # translations
    rigid += [np.cross(np.eye(3)[a], c).ravel() for a in range(3)]  # infinitesimal rotations about the centroid
    u, s, _ = np.linalg.svd(np.array(rigid).T, full_matrices=True)
    return u[:, int((s > 1e-6 * s[0]).sum()):]


def mmff_hessian(typed, pos: np.ndarray, h: float = 1e-3) -> np.ndarray:
    """MMFF94's Hessian (eV/A^2) [3n, 3n] at pos [n, 3], central differences of its gradient, symmetrised.

    One force field serves the 6n gradients, each after Initialize() (0.04 ms, a new field 1 ms): without it,
    CalcGrad(positions) is right only on its first call (later ones were off by hundreds of kcal/mol/A, RDKit
    2026.9; `mmff_forces` builds a new field instead)."""
    from rdkit.Chem import AllChem

    ff = AllChem.MMFFGetMoleculeForceField(*typed)
    x = pos.ravel()

    def gradient(y: np.ndarray) -> np.ndarray:
        ff.Initialize()
        return np.array(ff.CalcGrad(y.tolist()))

    step = h * np.eye(x.size)
    rows = np.array([gradient(x + e) - gradient(x - e) for e in step]) * KCAL_PER_MOL_TO_EV / (2 * h)
    return 0.5 * (rows + rows.T)


def mmff_modes(typed, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MMFF94's internal normal modes at pos [n, 3]: curvatures lambda [m] (eV/A^2, ascending; negative where pos
    is not MMFF's minimum) and orthonormal modes V [3n, m], m = 3n - 6, from Q^T H Q = U diag(lambda) U^T, V = Q U
    (Q: `internal_basis`)."""
    q = internal_basis(pos)
    lam, u = np.linalg.eigh(q.T @ mmff_hessian(typed, pos) @ q)
    return lam, q @ u


def preconditioner(lam: np.ndarray, modes: np.ndarray, stiffness: float) -> np.ndarray:
    """M = I + V diag(w - 1) V^T [3n, 3n], w_k = max(1, stiffness / max(|lambda_k|, SOFTEST)) (module docstring)."""
    w = np.maximum(1.0, stiffness / np.maximum(np.abs(lam), SOFTEST))
    return np.eye(len(modes)) + (modes * (w - 1.0)) @ modes.T


def molecule_spans(batch: Tensor) -> list[tuple[int, int]]:
    """(first atom, one past the last) of each molecule of a batch vector [N] (molecules contiguous)."""
    ends = torch.bincount(batch).cumsum(0).tolist()
    return list(zip([0] + ends[:-1], ends))


def batch_typed(z: np.ndarray, pos: np.ndarray, spans: list[tuple[int, int]]) -> list:
    """Each molecule's `mmff_typed` (or None) for a batch's elements z [N], positions pos [N, 3] and atom spans."""
    return [mmff_typed(z[a:b], pos[a:b]) for a, b in spans]


def batch_modes(typed: list, pos: np.ndarray, spans: list[tuple[int, int]]) -> list:
    """Each molecule's `mmff_modes` at pos [N, 3] (None where MMFF could not type it)."""
    return [None if t is None else mmff_modes(t, pos[a:b]) for t, (a, b) in zip(typed, spans)]


def prior_targets(typed: list, pos: np.ndarray, spans: list[tuple[int, int]], displaced: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """For a batch (each molecule's `mmff_typed` or None, DFT positions pos [N, 3], the molecules' atom spans,
    displaced positions [N, 3]): the shifted MMFF94 forces at the displaced geometries [N, 3] (eV/A) and which
    atoms have one [N] (bool)."""
    target = np.zeros_like(pos)
    known = np.zeros(len(pos), dtype=bool)
    for t, (a, b) in zip(typed, spans):
        if t is not None:
            target[a:b] = mmff_forces(t, displaced[a:b]) - mmff_forces(t, pos[a:b])
            known[a:b] = True
    return target, known


def preconditioners(modes: list, spans: list[tuple[int, int]], stiffness: float) -> np.ndarray:
    """Each molecule's `preconditioner` from its `mmff_modes` (the identity for None: MMFF cannot type it),
    zero-padded to [B, 3m, 3m] for the batch's largest molecule of m atoms."""
    m = max(b - a for a, b in spans)
    out = np.zeros((len(spans), 3 * m, 3 * m))
    for j, (mode, (a, b)) in enumerate(zip(modes, spans)):
        out[j, :3 * (b - a), :3 * (b - a)] = np.eye(3 * (b - a)) if mode is None else preconditioner(*mode, stiffness)
    return out


def thermal_displacement(lam: np.ndarray, modes: np.ndarray, energy: float, xi: np.ndarray) -> np.ndarray:
    """A displacement [n, 3] along MMFF94's modes (lambda [m], V [3n, m]) from standard normals xi [m]:

    .. math::
        \\delta = \\sum_k \\xi_k \\sqrt{E / \\max(|\\lambda_k|, \\lambda_0)}\\; v_k

    so that each mode holds a mean harmonic energy E/2, as at a temperature E / k_B (E = 0.025 eV: 290 K): torsions
    move tenths of an Angstrom, stretches hundredths, and every mode's restoring force carries signal."""
    return (modes @ (xi * np.sqrt(energy / np.maximum(np.abs(lam), SOFTEST)))).reshape(-1, 3)


def apply_blocks(blocks: Tensor, r: Tensor, batch: Tensor) -> Tensor:
    """(M r) [N, 3] for per-atom vectors r [N, 3] of a batch and per-molecule matrices `blocks` [B, 3m, 3m]."""
    from torch_geometric.utils import to_dense_batch

    dense, mask = to_dense_batch(r, batch, max_num_nodes=blocks.shape[1] // 3)  # [B, m, 3], atom-major like pos
    return torch.bmm(blocks, dense.reshape(len(blocks), -1, 1)).reshape(dense.shape)[mask]


class PotentialLoss:
    """The force and prior terms for energy output `output` of each training batch (weighted, to add to the
    energy loss), and their running means for the epoch's line (`take`). With `stiffness` > 0 both residuals are
    preconditioned by MMFF94's normal modes (module docstring). The displacements of step t come from a generator
    seeded by (seed, t), so a resumed run draws the same ones."""

    def __init__(self, output: int, scale: float, force_weight: float, prior_weight: float, noise: float,
                 seed: int, stiffness: float = 0.0, thermal: float = 0.0, noise_min: float = 0.0) -> None:
        self.output, self.scale, self.noise, self.seed = output, scale, noise, seed
        self.noise_min = noise_min  # > 0: each molecule's noise scale log-uniform in [noise_min, noise]
        self.force_weight, self.prior_weight, self.stiffness = force_weight, prior_weight, stiffness
        self.thermal = thermal  # > 0: the prior's displacements along MMFF's modes (thermal_displacement), not noise
        self.sums: Tensor | None = None  # [2] summed over steps: mean |F|^2 at minima, mean |F - F*|^2 displaced
        self.steps = 0

    def __call__(self, model: torch.nn.Module, z: Tensor, pos: Tensor, batch: Tensor, energy: Tensor,
                 step: int, labels: Tensor | None = None) -> Tensor:
        """pos [N, 3] the positions the batch's energies [B] were computed from (requiring grad); `labels` [N, 3]
        the forces there (NaN where unknown), or None: zero, QM9's minima."""
        loss = energy.new_zeros(())
        stats = energy.new_zeros(2).double()  # on the device: no host synchronisation for the statistics
        spans = molecule_spans(batch)
        typed, modes, blocks = [], [], None
        if self.prior_weight or self.stiffness:
            z_np, pos_np = z.cpu().numpy(), pos.detach().double().cpu().numpy()
            typed = batch_typed(z_np, pos_np, spans)
        if self.stiffness or self.thermal:
            modes = batch_modes(typed, pos_np, spans)
        if self.stiffness:
            blocks = torch.from_numpy(preconditioners(modes, spans, self.stiffness)).to(pos)

        def measured(r: Tensor) -> Tensor:  # [N] squared residual per atom, through M when preconditioned
            return (r if blocks is None else apply_blocks(blocks, r, batch)).square().sum(-1)

        if self.force_weight:
            f = forces(energy, pos)  # [N, 3]
            if labels is None:
                r, known = f, torch.ones(len(f), device=f.device)
            else:  # masked with arithmetic, not indexing: no host synchronisation
                known = (~labels.isnan().any(-1)).to(f.dtype)  # [N]
                r = (f - labels.nan_to_num()) * known[:, None]
            count = known.sum().clamp(min=1)
            loss = loss + self.force_weight * (measured(r) * known).sum() / count / self.scale**2
            stats[0] = r.detach().square().sum(-1).sum() / count
        if self.prior_weight:
            delta, weight = self.displacement(pos, modes, spans, step, batch)
            displaced = (pos.detach() + delta).requires_grad_(True)
            f = forces(model(z, displaced, batch)[:, self.output], displaced)  # [N, 3]
            target, known = prior_targets(typed, pos_np, spans, displaced.detach().double().cpu().numpy())
            target, known = torch.from_numpy(target).to(pos), torch.from_numpy(known).to(pos.device)
            if labels is not None:  # around a labelled geometry: its forces plus MMFF's change, F* + H_MMFF delta
                known = known & ~labels.isnan().any(-1)
                target = target + labels.nan_to_num()
            if bool(known.any()):
                loss = loss + self.prior_weight * (measured(f - target) * weight)[known].mean() / self.scale**2
                stats[1] = (f - target).detach().square().sum(-1)[known].mean()
        self.sums = stats if self.sums is None else self.sums + stats
        self.steps += 1
        return loss

    def displacement(self, pos: Tensor, modes: list, spans: list[tuple[int, int]], step: int,
                     batch: Tensor) -> tuple[Tensor, Tensor]:
        """The prior's displacement [N, 3] at step `step` and each atom's weight [N]: Gaussian noise of `noise` A
        per coordinate (weight 1); with `noise_min`, of a scale sigma_m per molecule (weight (noise / sigma_m)^2,
        module docstring); or with `thermal`, each molecule's first 3n - 6 of the same normals driving its modes
        (`thermal_displacement`; no move for a molecule MMFF cannot type, whose atoms get no target)."""
        g = torch.Generator().manual_seed(draw_seed(self.seed, step))
        xi = torch.randn(pos.shape, generator=g, dtype=pos.dtype)  # [N, 3]
        ones = torch.ones(len(pos), dtype=pos.dtype, device=pos.device)
        if self.noise_min:
            u = torch.rand(len(spans), generator=g, dtype=pos.dtype)  # [B]
            sigma = (math.log(self.noise_min) + u * math.log(self.noise / self.noise_min)).exp().to(pos.device)
            sigma = sigma[batch]  # [N]
            return xi.to(pos.device) * sigma[:, None], (self.noise / sigma) ** 2
        if not self.thermal:
            return (xi * self.noise).to(pos.device), ones
        parts = [np.zeros((b - a, 3)) if mode is None else
                 thermal_displacement(*mode, self.thermal, xi[a:b].double().flatten()[:len(mode[0])].numpy())
                 for mode, (a, b) in zip(modes, spans)]
        return torch.from_numpy(np.concatenate(parts)).to(pos.device, pos.dtype), ones

    def take(self) -> dict[str, float]:
        """RMS force error against the labels (at QM9's minima: the RMS force) and against the prior (eV/A, plain:
        not preconditioned) since the last call."""
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


def force_error_sums(model: torch.nn.Module, batcher, mols: Tensor, output: int, batch_size: int = 256) -> Tensor:
    """Sums of the force error of energy output `output` over molecules `mols` [M] against the batcher's force
    labels (zero where the data has none: QM9's minima), per Cartesian component of the labelled atoms: [3] float64
    = (sum |F - F*|, sum (F - F*)^2, number of components). Sums, so that processes can add theirs
    (`force_metrics` turns them into MAE and RMSE)."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=batcher.z.device)
    for chunk in mols.split(batch_size):
        b = batcher(chunk)
        pos = b.pos.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            f = forces(model(b.z, pos, b.batch)[:, output], pos, create_graph=False).detach()  # [N, 3]
        labels = torch.zeros_like(f) if b.forces is None else b.forces
        known = ~labels.isnan()  # [N, 3]
        err = (f - labels.nan_to_num()).double() * known
        sums += torch.stack([err.abs().sum(), err.square().sum(), known.sum().double()])
    model.train()
    return sums


def force_metrics(sums: Tensor) -> dict[str, float]:
    """MAE and RMSE (eV/A, per Cartesian component) and the number of labelled atoms from `force_error_sums`."""
    abs_sum, sq_sum, n = sums.tolist()
    return dict(mae=abs_sum / max(n, 1), rmse=math.sqrt(sq_sum / max(n, 1)), atoms=int(n // 3))
