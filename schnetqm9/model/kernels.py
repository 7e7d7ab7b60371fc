"""SchNet's four non-matrix-product steps, as fused CPU kernels and as the pure-PyTorch definitions they equal.

On CPU a SchNet training step spends most of its non-matrix-product time streaming [P, F] tensors (P atom pairs,
F filter channels) through memory — gathers, products and scatters in the continuous-filter convolution, the
shifted softplus and its backward pass, the Gaussian expansion — and building the interaction graph out of ~30
small tensor operations. `kernels.cpp` does each of these in one pass:

    aggregate(x, w, c, pairs)[n] = sum_{p = {j, i}: i = n} x_j * w_p * c_p  +  sum_{p = {j, i}: j = n} x_i * w_p * c_p
    shifted_softplus(x)          = ln(1 + e^x) - ln 2,   with  d/dx = sigmoid(x)
    gaussians(d, mu, coeff)      = exp(coeff * (d_p - mu_k)^2)                       [P, K]
    radius_pairs(pos, r, batch)  = {(j, i): j < i, same molecule, |pos_i - pos_j| <= r}

x [N, F] atom features, w [P, F] filters, c [P] cutoff envelope, pairs [2, P] unordered (j, i). The kernels are
compiled from `kernels.cpp` with torch.utils.cpp_extension the first time they are needed (about 40 s; the
build is kept in `build/cpu_kernels/` and reused until the source changes). Everything else — CUDA tensors, a
machine without a C++ compiler, or `SCHNET_CPU_KERNELS=0` in the environment — runs the pure-PyTorch
definitions below (`aggregate_reference`, `shifted_softplus_reference`, `gaussians_reference`,
`radius_pairs_reference`), which tests/test_kernels.py and tests/test_radius.py compare the kernels with (values
and gradients, float32 and float64). Second derivatives work too: a backward pass with create_graph=True (forces
F = -dE/dr that a loss then differentiates again) runs differentiable operations instead of the fused backward
kernels (see kernels.cpp), and the tests check it with gradgradcheck.
"""
from __future__ import annotations

import math
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from schnetqm9.cli import one_line
from schnetqm9.data.batch import molecule_of_atoms

SOURCE = Path(__file__).resolve().parent / "kernels.cpp"
BUILD_DIR = Path(__file__).resolve().parents[2] / "build" / "cpu_kernels"  # the clone's build/ folder
LN2 = math.log(2.0)

_module: ModuleType | None = None
_tried = False


def enabled() -> bool:
    """False when the user turned the kernels off with SCHNET_CPU_KERNELS=0."""
    return os.environ.get("SCHNET_CPU_KERNELS", "1") != "0"


def load() -> ModuleType | None:
    """The compiled kernels, building them on first use; None (with one warning) when they cannot be built."""
    global _module, _tried
    if _tried or not enabled():
        return _module
    _tried = True
    from torch.utils import cpp_extension

    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    built = [so.stat().st_mtime for so in BUILD_DIR.glob("*.so")]
    if not built or max(built) < SOURCE.stat().st_mtime:  # (torch rebuilds when the source changed)
        print(f"cpu_kernels: compiling {SOURCE.name} once (about 40 s) into {BUILD_DIR}", file=sys.stderr, flush=True)
    try:
        _module = cpp_extension.load(
            name="schnet_cpu_kernels", sources=[str(SOURCE)], build_directory=str(BUILD_DIR),
            extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as err:  # no compiler, no ninja, ...: the reference path computes the same function
        first = one_line(err)
        warnings.warn(f"cpu_kernels: could not build {SOURCE.name} ({first}); using the pure-PyTorch path",
                      stacklevel=2)
    return _module


def backend() -> str:
    """Which implementation CPU tensors get: 'fused C++ kernels' or 'pure PyTorch'."""
    return "fused C++ kernels" if load() is not None else "pure PyTorch"


# --------------------------------------------------------------------------------------------------------------
# Definitions in plain PyTorch (CUDA, fallback, and the tests' reference).


def aggregate_reference(x: Tensor, w: Tensor, c: Tensor, edge_index: Tensor) -> Tensor:
    """x [N, F], w [P, F], c [P], edge_index [2, P] unordered pairs (j, i) -> [N, F]: both messages per pair."""
    j, i = edge_index
    W = w * c.unsqueeze(-1)
    # index_select rather than x[j]: its backward is an index_add, much cheaper than x[j]'s index_put
    out = torch.zeros_like(x).index_add_(0, i, x.index_select(0, j) * W)  # messages j -> i
    return out.index_add_(0, j, x.index_select(0, i) * W)  # and i -> j, same filter


def shifted_softplus_reference(x: Tensor) -> Tensor:
    return F.softplus(x) - LN2


def gaussians_reference(d: Tensor, mu: Tensor, coeff: float) -> Tensor:
    """d [P], mu [K] -> [P, K] = exp(coeff * (d_p - mu_k)^2)."""
    return torch.exp(coeff * (d.view(-1, 1) - mu.view(1, -1)).square())


def radius_pairs_reference(pos: Tensor, r: float, batch: Tensor) -> Tensor:
    """All unordered pairs {j, i} of atoms of one molecule with |pos_i - pos_j| <= r: edge_index [2, P], j < i.

    SchNet's interaction graph (each pair carries both messages). Built by listing every pair of each molecule and
    keeping those within r: exact, no neighbour cap, no per-molecule loop; for molecules (QM9: at most 29 atoms,
    406 pairs) listing all pairs costs less than building a search tree per molecule, as torch_cluster does.
    The k-th pair of a molecule is (j, i) with i = floor((1 + sqrt(8k + 1)) / 2), j = k - i (i - 1) / 2: the
    lower triangle of its distance matrix, read row by row.

    Args:
        pos: [N, 3] positions; batch: [N] molecule of each atom, sorted.
    """
    counts = torch.bincount(batch)  # [B] atoms per molecule
    npairs = counts * (counts - 1) // 2  # [B]
    total = int(npairs.sum())
    mol = molecule_of_atoms(npairs, total)  # [T] the molecule of each pair (its 'atoms' here are pairs)
    # (index_select rather than [] throughout: several times faster on these small index tensors)
    k = torch.arange(total, device=pos.device) - (torch.cumsum(npairs, 0) - npairs).index_select(0, mol)
    i = ((torch.sqrt(8.0 * k.double() + 1.0) + 1.0) * 0.5).floor().long()  # [T]; exact for k < 2^50
    j = k - i * (i - 1) // 2
    first = (torch.cumsum(counts, 0) - counts).index_select(0, mol)  # [T] first atom of the pair's molecule
    i, j = i + first, j + first
    d2 = (pos.index_select(0, i) - pos.index_select(0, j)).square().sum(-1)
    keep = torch.nonzero(d2 <= r * r).squeeze(1)
    return torch.stack([j.index_select(0, keep), i.index_select(0, keep)])


# --------------------------------------------------------------------------------------------------------------
# Dispatch: the kernels where they apply (their autograd nodes are C++, see cpu_kernels.cpp), the definitions
# above everywhere else.


def _use_kernels(*tensors: Tensor) -> bool:
    """The kernels take CPU tensors of one dtype, float32 or float64."""
    dtype = tensors[0].dtype
    same = all(t.dtype == dtype and t.device.type == "cpu" for t in tensors)
    return same and dtype in (torch.float32, torch.float64) and load() is not None


def _float32(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Half-precision inputs (torch.autocast's bfloat16) as float32: the sums accumulate in float32."""
    return tuple(t.float() if t.dtype in (torch.bfloat16, torch.float16) else t for t in tensors)


def aggregate(x: Tensor, w: Tensor, c: Tensor, edge_index: Tensor) -> Tensor:
    """Continuous-filter aggregation (see the module docstring): [N, F]. Fused on CPU, reference elsewhere;
    bfloat16 inputs are summed in float32 (and the result is float32)."""
    x, w, c = _float32(x, w, c)
    if _use_kernels(x, w, c):
        return _module.aggregate(x, w, c, edge_index[0], edge_index[1])
    return aggregate_reference(x, w, c, edge_index)


def gaussians(d: Tensor, mu: Tensor, coeff: float) -> Tensor:
    """exp(coeff * (d_p - mu_k)^2): [P, K]. One pass on CPU; the reference when d needs a gradient (forces)."""
    if not d.requires_grad and _use_kernels(d, mu):
        return _module.gaussian_expansion(d, mu, float(coeff))
    return gaussians_reference(d, mu, coeff)


def radius_pairs(pos: Tensor, r: float, batch: Tensor | None = None) -> Tensor:
    """Unordered pairs within r in each molecule (see `radius_pairs_reference`): [2, P], j < i. One loop on CPU.

    pos [N, 3]; batch [N] molecule of each atom, sorted (None: one molecule). Not differentiable (indices only).
    """
    if batch is None:
        batch = torch.zeros(pos.size(0), dtype=torch.long, device=pos.device)
    if _use_kernels(pos):
        return _module.radius_pairs(pos.detach(), batch, float(r))
    return radius_pairs_reference(pos, r, batch)


def shifted_softplus(x: Tensor) -> Tensor:
    """ln(1 + e^x) - ln 2, elementwise. Fused on CPU, reference elsewhere; bfloat16 in, float32 out."""
    (x,) = _float32(x)
    if _use_kernels(x):
        return _module.shifted_softplus(x)
    return shifted_softplus_reference(x)
