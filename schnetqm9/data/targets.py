"""What a QM9 target is: its column, unit, physics (extensive or intensive), reference energies, output module and
standardisation. The one place that defines a target; qm9_data, the model's outputs, train.py and predict.py read it.

    targets.parse("gap")        -> ["gap"]
    targets.parse("gap,U0")     -> ["gap", "U0"]
    targets.parse("all")        -> the twelve standard properties, mu ... cv (PyG's indices 0-11)

Output modules (the readout each target gets from `--readout auto`, see `schnet_model.SchNet`):
    add             y = sum_i a_i                  extensive properties (energies, alpha, zpve, cv)
    mean            y = (1/n) sum_i a_i            intensive properties (orbital energies, gap, rotational constants)
    attention       y = sum_i w_i a_i              intensive, weighted: w = softmax over the molecule's atoms of a
                                                   small network of their features (--readout attention)
    dipole          mu = |sum_i q_i (r_i - R)|     latent charges q_i = a_i - mean_i(a_i), which sum to zero;
                                                   R the centre of mass (any origin gives the same sum)
    spatial_extent  r2 = sum_i a_i |r_i - R|^2     atom-wise outputs weighted by the squared distance from R
The last two are those of the SchNet paper (J. Chem. Phys. 148, 241722, 2018) and SchNetPack.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from ase.data import atomic_masses
from torch import Tensor

HARTREE_TO_EV = 27.211386246
KCAL_PER_MOL_TO_EV = 0.0433641  # 1 kcal/mol (4.184 kJ/mol over N_A) in eV: MMFF's unit, chemists' yardstick
OUTPUTS = ("add", "mean", "attention", "dipole", "spatial_extent")
MASSES = torch.tensor(atomic_masses[:100], dtype=torch.float32)  # [100] by atomic number, in u (ASE's table)


@dataclass(frozen=True)
class Target:
    name: str
    column: int  # of QM9's y [num_molecules, 19], PyG's order
    unit: str  # PyG's unit
    description: str
    extensive: bool  # grows with the molecule (sum readout) or not (mean readout)
    output: str  # the output module `--readout auto` gives it (OUTPUTS)

    @property
    def plain_output(self) -> str:
        """The generic scalar readout: sum for extensive properties, mean for intensive ones."""
        return "add" if self.extensive else "mean"


def _t(name: str, column: int, unit: str, description: str, extensive: bool, output: str | None = None) -> Target:
    return Target(name, column, unit, description, extensive, output or ("add" if extensive else "mean"))


# Order and units are those of torch_geometric.datasets.QM9. The dipole moment is intensive (it does not grow with
# the number of atoms) but is the norm of a vector sum; r2 is extensive (electrons times squared distance).
TARGETS: dict[str, Target] = {t.name: t for t in (
    _t("mu", 0, "D", "dipole moment", False, "dipole"),
    _t("alpha", 1, "a0^3", "isotropic polarizability", True),
    _t("homo", 2, "eV", "HOMO energy", False),
    _t("lumo", 3, "eV", "LUMO energy", False),
    _t("gap", 4, "eV", "HOMO-LUMO gap", False),
    _t("r2", 5, "a0^2", "electronic spatial extent", True, "spatial_extent"),
    _t("zpve", 6, "eV", "zero-point vibrational energy", True),
    _t("U0", 7, "eV", "internal energy at 0 K", True),
    _t("U", 8, "eV", "internal energy at 298.15 K", True),
    _t("H", 9, "eV", "enthalpy at 298.15 K", True),
    _t("G", 10, "eV", "free energy at 298.15 K", True),
    _t("cv", 11, "cal/mol K", "heat capacity at 298.15 K", True),
    _t("U0_atom", 12, "eV", "atomization energy at 0 K", True),
    _t("U_atom", 13, "eV", "atomization energy at 298.15 K", True),
    _t("H_atom", 14, "eV", "atomization enthalpy at 298.15 K", True),
    _t("G_atom", 15, "eV", "atomization free energy at 298.15 K", True),
    _t("A", 16, "GHz", "rotational constant A", False),
    _t("B", 17, "GHz", "rotational constant B", False),
    _t("C", 18, "GHz", "rotational constant C", False),
)}
TARGET_NAMES = list(TARGETS)
STANDARD = TARGET_NAMES[:12]  # the twelve properties every QM9 benchmark reports (PyG's indices 0-11)

# Energies of the free atoms at the B3LYP/6-31G(2df,p) level of QM9 (its atomref table), in Hartree,
# for U0, U, H, G (targets 7-10). Target k+4 (U0_atom, ...) is target k minus the sum over the atoms.
ATOM_ENERGIES_HARTREE: dict[int, tuple[float, float, float, float]] = {
    1: (-0.500273, -0.498857, -0.497912, -0.510927),
    6: (-37.846772, -37.845355, -37.844411, -37.861317),
    7: (-54.583861, -54.582445, -54.581501, -54.598897),
    8: (-75.064579, -75.063162, -75.062219, -75.079532),
    9: (-99.718730, -99.717314, -99.716370, -99.733544),
}
ATOM_ENERGY_TABLE = np.zeros((max(ATOM_ENERGIES_HARTREE) + 1, 4))  # [atomic number, U0/U/H/G], Hartree
for _z, _energies in ATOM_ENERGIES_HARTREE.items():
    ATOM_ENERGY_TABLE[_z] = _energies


def target_index(target: str | int) -> int:
    """Column of `y` for a target given by name (case-insensitive) or by index 0-18.

    Raises `ValueError` with the list of valid names for anything else.
    """
    names = {name.lower(): t.column for name, t in TARGETS.items()}
    key = str(target).strip()
    if key.lstrip("-").isdigit() and 0 <= int(key) < len(TARGETS):
        return int(key)
    if key.lower() in names:
        return names[key.lower()]
    raise ValueError(f"unknown QM9 target {target!r}: use a name ({', '.join(TARGET_NAMES)}), an index 0-18, "
                     "a comma list of them, or 'all'")


def target_name(target: str | int) -> str:
    """Canonical name (PyG spelling) of a target given by name or index."""
    return TARGET_NAMES[target_index(target)]


def parse(spec: str) -> list[str]:
    """Canonical names of `--target`: one target, a comma list, or 'all' (the twelve of STANDARD, in order).

    Raises `ValueError` for an unknown or repeated name.
    """
    if spec.strip().lower() == "all":
        return list(STANDARD)
    names = [target_name(part) for part in spec.split(",") if part.strip()]
    if not names:
        raise ValueError("--target is empty: name a QM9 target, a comma list, or 'all'")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"--target names {', '.join(repeated)} twice: name each target once")
    return names


def atomref(target: str | int) -> Tensor | None:
    """Per-element reference values of a target, like `torch_geometric.datasets.QM9.atomref`.

    Returns a float32 tensor of shape [100, 1] indexed by atomic number (eV, the free-atom energy) for the total
    energies U0, U, H, G (targets 7-10), and `None` for every other target.
    """
    idx = target_index(target)
    if not 7 <= idx <= 10:
        return None
    out = torch.zeros(100, 1)
    out[: len(ATOM_ENERGY_TABLE), 0] = torch.from_numpy(ATOM_ENERGY_TABLE[:, idx - 7] * HARTREE_TO_EV)
    return out


def fit_atomref(z: Tensor, batch: Tensor, y: Tensor) -> Tensor:
    r"""Per-element reference values of an extensive label, fitted by least squares on the training structures.

    .. math::
        e = \arg\min_e \sum_m \Big(y_m - \sum_Z n_{mZ} e_Z\Big)^2

    with n_mZ the number of atoms of element Z in structure m: the part of y that a sum of constants per atom
    explains (for total energies, roughly each element's free-atom energy), which the network then need not learn.
    z [N] and batch [N] are the atoms of the M structures, y [M] their labels; returns [100, 1] (float32, zero for
    elements absent from the training structures). Solved in float64 (energies reach 10^4 eV); elements that
    always occur in the same proportion make the system rank-deficient, and lstsq's minimum-norm solution is then
    one of the equally good fits.
    """
    elements = z.unique()
    counts = torch.zeros(len(y), len(elements), dtype=torch.float64)
    counts.index_put_((batch, torch.searchsorted(elements, z)), torch.ones(len(z), dtype=torch.float64),
                      accumulate=True)  # [M, E]
    solution = torch.linalg.lstsq(counts, y.double()[:, None], driver="gelsd").solution  # [E, 1]
    out = torch.zeros(100, 1)
    out[elements] = solution.float()
    return out


def readouts(specs: list[Target], choice: str = "auto") -> list[str]:
    """The output module of each target for `--readout`: 'auto' (each target's own, `Target.output`), 'plain'
    (sum or mean by extensivity), 'add' / 'mean' for every target, or 'attention' (for the intensive targets;
    the others as 'auto')."""
    if choice == "auto":
        return [t.output for t in specs]
    if choice == "plain":
        return [t.plain_output for t in specs]
    if choice in ("add", "mean"):
        return [choice] * len(specs)
    if choice == "attention":  # the weighted mean for intensive targets; the others keep their own output
        return ["attention" if t.plain_output == "mean" else t.output for t in specs]
    raise ValueError(f"unknown readout {choice!r}: use auto, plain, add, mean or attention")


def label(key: str, column: int, unit: str, source: str, readout: str) -> Target:
    """A target of the user's own data: label `key`, column `column` of its y. Extensive (sum readout, fitted
    per-element references) unless `readout` is 'mean'."""
    extensive = readout != "mean"
    return Target(key, column, unit, f"label {key!r} of {source}", extensive, "add" if extensive else "mean")


def centre_of_mass(pos: Tensor, masses: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """R_m = sum_i m_i r_i / sum_i m_i per molecule: pos [N, 3], masses [N], batch [N] -> [num_graphs, 3]."""
    total = pos.new_zeros(num_graphs).index_add_(0, batch, masses)
    weighted = pos.new_zeros(num_graphs, 3).index_add_(0, batch, pos * masses[:, None])
    return weighted / total[:, None]


def references(specs: list[Target], outputs: list[str], z: Tensor, batch: Tensor, y: Tensor,
               fit: bool) -> list[Tensor | None]:
    """Each target's per-element reference values [100, 1] for the sum readout, or None: QM9's free-atom
    energies for U0, U, H, G; with `fit` (the user's own labels), a least-squares fit on the training structures
    (`fit_atomref`) for every target read out as a sum. z [N], batch [N], y [M, K] as in `normalisation`."""
    return [None if output != "add" else fit_atomref(z, batch, y[:, k]) if fit else atomref(t.name)
            for k, (t, output) in enumerate(zip(specs, outputs))]


def normalisation(outputs: list[str], refs: list[Tensor | None], z: Tensor, pos: Tensor, batch: Tensor,
                  y: Tensor) -> dict:
    """Standardisation of each target's atom-wise output, from the training molecules only.

    z [N], pos [N, 3], batch [N] are the atoms of the training molecules, y [M, K] their targets, `outputs` [K]
    the targets' output modules and `refs` [K] their per-element references ([100, 1] or None, `references`).
    For each target, a_i = mean + std * o_i with o_i the
    network's raw atom output, where (mean, std) are those of
        add:             per atom, (y - sum of the per-element references) / n
        mean, attention: per molecule, y
        spatial_extent:  per molecule, y / sum_i |r_i - R|^2   (so a_i starts near the typical weight)
        dipole:          mean 0, std 1 (latent charges in D/Angstrom: q_i = o_i, neutralised per molecule)
    loss_scale is the standard deviation of the molecule-level quantity the network must learn (after the atom
    references); each target's loss is measured in it. Returns lists over targets, JSON-friendly.
    """
    num = len(y)
    n = torch.zeros(num, dtype=torch.float64).index_add_(0, batch, torch.ones_like(batch, dtype=torch.float64))
    out: dict[str, list] = dict(mean=[], std=[], loss_scale=[], atomref=[])
    for k, (output, ref) in enumerate(zip(outputs, refs)):
        values = y[:, k].double()
        if ref is not None:
            values = values - torch.zeros(num, dtype=torch.float64).index_add_(0, batch, ref[z, 0].double())
        if output == "add":
            per = values / n
        elif output == "spatial_extent":
            r = pos.double() - centre_of_mass(pos.double(), MASSES[z].double(), batch, num)[batch]
            per = values / torch.zeros(num, dtype=torch.float64).index_add_(0, batch, r.square().sum(-1))
        elif output in ("mean", "attention"):  # a (weighted) mean: the molecule's value
            per = values
        else:  # dipole
            per = None
        out["mean"].append(0.0 if per is None else float(per.mean()))
        out["std"].append(1.0 if per is None else float(per.std()))
        out["loss_scale"].append(float(values.std()))
        out["atomref"].append(None if ref is None else ref.flatten().tolist())
    return out
