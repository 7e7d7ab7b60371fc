"""SchNet: continuous-filter convolutions over interatomic distances.

Schütt, Kindermans, Sauceda, Chmiela, Tkatchenko, Müller, "SchNet: A continuous-filter convolutional neural
network for modeling quantum interactions", NeurIPS 2017; and "SchNet - A deep learning architecture for
molecules and materials", J. Chem. Phys. 148, 241722 (2018).

A molecule is a set of atoms with atomic numbers z_i and positions r_i. Each atom starts from a learned embedding
of its element and is refined by interaction blocks that let it see every neighbour within a cutoff, through a
filter that depends only on the distance d_ij = |r_i - r_j|. Each prediction is read out of atom-wise values:
a sum or mean, or, for the dipole moment and the electronic spatial extent, the paper's physical outputs (the norm
of a sum of latent charges times positions, a sum weighted by squared distances from the centre of mass). Every
output is invariant to rotation, translation and atom order by construction.

The layer layout and parameter names follow `torch_geometric.nn.models.SchNet`, so the weights of one load into
the other one-to-one (tests/test_model.py proves the outputs agree). One difference is for speed, not meaning:
the filter W(d_ij) is computed once per unordered pair {i, j} and used for both messages j -> i and i -> j,
since d_ij = d_ji; this halves the work of the filter networks, which dominate SchNet's cost.

Run `python schnet_model.py` to print the full and lite configurations with their parameter counts.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from schnetqm9.data.targets import MASSES, OUTPUTS, centre_of_mass
from schnetqm9.model.graph import radius_graph
from schnetqm9.model.kernels import aggregate, gaussians, radius_pairs, shifted_softplus

# The two configurations used by train.py and train_lite.py (see README.md for why these values).
FULL_CONFIG = dict(hidden_channels=128, num_filters=128, num_interactions=6, num_gaussians=50, cutoff=10.0)
LITE_CONFIG = dict(hidden_channels=64, num_filters=64, num_interactions=2, num_gaussians=25, cutoff=5.0)


class ShiftedSoftplus(nn.Module):
    r"""ssp(x) = ln(0.5 e^x + 0.5) = softplus(x) - ln 2: smooth like softplus, and ssp(0) = 0.

    On CPU one fused pass computes it and its derivative (model/kernels.py); elsewhere F.softplus(x) - ln 2.
    """

    def forward(self, x: Tensor) -> Tensor:
        return shifted_softplus(x)


class GaussianSmearing(nn.Module):
    r"""Expands a distance into K Gaussian radial basis functions with centres \mu_k evenly spaced in [start, stop]:

    .. math::
        e_k(d) = \exp\left(-\frac{(d - \mu_k)^2}{2 \Delta^2}\right), \qquad \Delta = \mu_{k+1} - \mu_k .

    Input: distances of shape [E]. Output: [E, K].
    """

    def __init__(self, start: float = 0.0, stop: float = 5.0, num_gaussians: int = 50) -> None:
        super().__init__()
        offset = torch.linspace(start, stop, num_gaussians)
        self.coeff = -0.5 / (offset[1] - offset[0]).item() ** 2
        self.register_buffer("offset", offset)

    def forward(self, dist: Tensor) -> Tensor:
        return gaussians(dist, self.offset, self.coeff)  # [E, K]; one fused pass on CPU (model/kernels.py)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(start={self.offset[0].item():g}, stop={self.offset[-1].item():g}, "
                f"num_gaussians={self.offset.numel()})")


class CFConv(nn.Module):
    r"""Continuous-filter convolution.

    .. math::
        x_i' = W_2 \sum_{j \in \mathcal{N}(i)} (W_1 x_j) \odot W(d_{ij}) + b_2, \qquad
        W(d_{ij}) = \mathrm{nn}(e(d_{ij})) \cdot \tfrac12 \left(\cos\frac{\pi d_{ij}}{r_c} + 1\right)

    where e(d) is the Gaussian expansion of the distance, nn the filter-generating network (Dense, ssp, Dense:
    the paper's "cfconv" filter) and the cosine factor takes each filter smoothly to zero at the cutoff r_c.
    W_1 (no bias) maps hidden_channels -> num_filters, W_2 maps num_filters -> out_channels.

    The pairs come as unordered edges (j, i) with j < i: each one carries both messages j -> i and i -> j with the
    same filter, because W depends on the distance alone.
    """

    def __init__(self, in_channels: int, out_channels: int, num_filters: int, nn: nn.Module, cutoff: float) -> None:
        super().__init__()
        self.lin1 = torch.nn.Linear(in_channels, num_filters, bias=False)
        self.lin2 = torch.nn.Linear(num_filters, out_channels)
        self.nn = nn
        self.cutoff = cutoff
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.lin1.weight)
        torch.nn.init.xavier_uniform_(self.lin2.weight)
        self.lin2.bias.data.fill_(0)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor, edge_attr: Tensor) -> Tensor:
        """x [N, in_channels], edge_index [2, E] unordered pairs, edge_weight [E], edge_attr [E, K] -> [N, out]."""
        envelope = 0.5 * (torch.cos(edge_weight * (math.pi / self.cutoff)) + 1.0)  # [E]
        # sum over pairs of (W_1 x_j) * nn(e(d_ij)) * envelope_ij, both directions (one fused pass on CPU)
        return self.lin2(aggregate(self.lin1(x), self.nn(edge_attr), envelope, edge_index))


class InteractionBlock(nn.Module):
    r"""One SchNet interaction: the update v_i that the model adds to atom i's features, h_i <- h_i + v_i, with

    .. math::
        v_i = W_3\, \mathrm{ssp}(\mathrm{cfconv}(h)_i) + b_3 .

    The filter-generating network `mlp` is Linear(num_gaussians, num_filters), ssp, Linear(num_filters, num_filters).
    """

    def __init__(self, hidden_channels: int, num_gaussians: int, num_filters: int, cutoff: float) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(num_gaussians, num_filters),
            ShiftedSoftplus(),
            nn.Linear(num_filters, num_filters),
        )
        self.conv = CFConv(hidden_channels, hidden_channels, num_filters, self.mlp, cutoff)
        self.act = ShiftedSoftplus()
        self.lin = nn.Linear(hidden_channels, hidden_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in (self.mlp[0], self.mlp[2], self.lin):
            torch.nn.init.xavier_uniform_(layer.weight)
            layer.bias.data.fill_(0)
        self.conv.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor, edge_attr: Tensor) -> Tensor:
        """x [N, hidden] -> v [N, hidden]."""
        return self.lin(self.act(self.conv(x, edge_index, edge_weight, edge_attr)))


def _sum_per_molecule(values: Tensor, batch: Tensor) -> Tensor:
    """values [N, D] per atom, batch [N] sorted molecule index -> [num_graphs, D] sums per molecule."""
    num_graphs = int(batch[-1]) + 1 if batch.numel() else 0
    return values.new_zeros(num_graphs, values.size(1)).index_add_(0, batch, values)


class SchNet(nn.Module):
    r"""SchNet for one or several scalar properties per molecule: one representation, one output per target.

    .. math::
        h_i^{(0)} = \mathrm{embedding}(z_i), \qquad h_i^{(t+1)} = h_i^{(t)} + v_i^{(t)} \quad (t < T),

        a_{ik} = \sigma_k \left(\mathrm{ssp}(W_1 h_i^{(T)} + b_1)\,W_2 + b_2\right)_k + \mu_k
                 + \mathrm{atomref}_k(z_i)

    and output k reads the atom-wise values a_{ik} out with its own module (`readout[k]`, see data/targets.py):

    .. math::
        \text{add: } y = \sum_i a_i, \quad \text{mean: } y = \frac1n \sum_i a_i, \quad
        \text{attention: } y = \sum_i w_i a_i, \ w_i = \mathrm{softmax}_{j \in m}(s_j)_i, \quad
        \text{spatial\_extent: } y = \sum_i a_i |r_i - R|^2, \quad
        \text{dipole: } y = \Big|\sum_i q_i (r_i - R)\Big|, \ q_i = a_i - \frac1n \sum_j a_j

    with R the molecule's centre of mass. \sigma_k, \mu_k are output k's standardisation (`std`, `mean`) and
    atomref a per-element reference value (the free atoms' energies for U0, U, H, G). All are buffers saved with
    the weights, so a loaded model predicts in physical units with nothing else at hand. With one 'add' or 'mean'
    output this is exactly PyTorch Geometric's SchNet (`to_pyg`, tests/test_model.py).

    Args:
        hidden_channels: size of the atom features h_i.
        num_filters: size of the filters W(d_ij).
        num_interactions: number of interaction blocks T. Default 6, the value of the JCP 2018 paper's QM9
            models (the NeurIPS paper used 3); each block widens an atom's view by one cutoff radius.
        num_gaussians: number of radial basis functions K.
        cutoff: interaction cutoff r_c in Angstrom; pairs farther apart do not interact.
        readout: the output module, or a list of them, one per output: 'add' (extensive properties: energies),
            'mean' (intensive ones: orbital energies, gap), 'attention' (intensive: a weighted mean whose weights
            w_i are a softmax over the molecule's atoms of s_i = attention(x_i), a small network of the atom's
            final features), 'dipole', 'spatial_extent'.
        mean, std: standardisation of each output's atom-wise value (a float, or one per output).
        atomref: [100, num_outputs] per-element reference values added to each atom's value, or None.

    Inputs: z [N] long, pos [N, 3] in Angstrom, batch [N] molecule of each atom (sorted; None = one molecule).
    """

    def __init__(
        self,
        hidden_channels: int = 128,
        num_filters: int = 128,
        num_interactions: int = 6,
        num_gaussians: int = 50,
        cutoff: float = 10.0,
        readout: str | list[str] = "add",
        mean: float | list[float] | None = None,
        std: float | list[float] | None = None,
        atomref: Tensor | None = None,
    ) -> None:
        super().__init__()
        readouts = [readout] if isinstance(readout, str) else list(readout)
        unknown = [r for r in readouts if r not in OUTPUTS]
        if unknown or not readouts:
            raise ValueError(f"readout must be one of {', '.join(OUTPUTS)} (or a list of them), got {readout!r}")
        self.hidden_channels = hidden_channels
        self.num_filters = num_filters
        self.num_interactions = num_interactions
        self.num_gaussians = num_gaussians
        self.cutoff = float(cutoff)
        self.readout = readout if isinstance(readout, str) else list(readout)
        self.readouts = readouts
        k = len(readouts)

        self.atom_embedding = nn.Embedding(100, hidden_channels, padding_idx=0)
        self.distance_expansion = GaussianSmearing(0.0, cutoff, num_gaussians)
        self.interactions = nn.ModuleList(
            InteractionBlock(hidden_channels, num_gaussians, num_filters, cutoff) for _ in range(num_interactions))
        self.lin1 = nn.Linear(hidden_channels, hidden_channels // 2)
        self.act = ShiftedSoftplus()
        self.lin2 = nn.Linear(hidden_channels // 2, k)
        # attention readout: one logit per attention output from each atom's final features (no module otherwise,
        # so that checkpoints without one load as before)
        self.attention_outputs = [i for i, r in enumerate(readouts) if r == "attention"]
        self.attention = nn.Sequential(
            nn.Linear(hidden_channels // 2, hidden_channels // 2), ShiftedSoftplus(),
            nn.Linear(hidden_channels // 2, len(self.attention_outputs)),
        ) if self.attention_outputs else None

        self.register_buffer("mean", torch.zeros(k) if mean is None else torch.tensor(mean).float().reshape(k))
        self.register_buffer("std", torch.ones(k) if std is None else torch.tensor(std).float().reshape(k))
        atomref = torch.zeros(100, k) if atomref is None else atomref.detach().float().reshape(100, k)
        self.register_buffer("atomref", atomref)
        # atomic masses for the centre of mass (dipole, spatial extent); a constant, not saved with the weights
        self.register_buffer("masses", MASSES.clone(), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.atom_embedding.reset_parameters()
        for interaction in self.interactions:
            interaction.reset_parameters()
        layers = [self.lin1, self.lin2] + ([self.attention[0], self.attention[2]] if self.attention else [])
        for layer in layers:
            torch.nn.init.xavier_uniform_(layer.weight)
            layer.bias.data.fill_(0)

    def config(self) -> dict:
        """Constructor arguments that rebuild this model (with its buffers loaded from a state dict)."""
        return dict(hidden_channels=self.hidden_channels, num_filters=self.num_filters,
                    num_interactions=self.num_interactions, num_gaussians=self.num_gaussians,
                    cutoff=self.cutoff, readout=self.readout)

    def interaction_graph(self, pos: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
        """Unordered pairs within the cutoff: edge_index [2, E] with edge_index[0] < edge_index[1], distances [E]."""
        edge_index = radius_pairs(pos, self.cutoff, batch)
        j, i = edge_index
        return edge_index, (pos[i] - pos[j]).norm(dim=-1)

    def _atom_features(self, z: Tensor, pos: Tensor, batch: Tensor, h0: Tensor | None = None) -> Tensor:
        """Atom features after the interactions and the first output layer: [N, hidden_channels // 2]. `h0`
        [N, hidden] replaces the input embedding of the atoms (inference/explain.py integrates gradients along it)."""
        h = self.atom_embedding(z) if h0 is None else h0  # [N, hidden]
        edge_index, edge_weight = self.interaction_graph(pos, batch)  # [2, E], [E]
        edge_attr = self.distance_expansion(edge_weight)  # [E, K], shared by all blocks
        for interaction in self.interactions:
            h = h + interaction(h, edge_index, edge_weight, edge_attr)
        return self.act(self.lin1(h))

    def atom_contributions(self, z: Tensor, pos: Tensor, batch: Tensor | None = None,
                           h0: Tensor | None = None) -> Tensor:
        """Per-atom terms of each output, in its unit: [N, num_outputs]; per molecule they sum to `forward`.

        add: a_i; mean: a_i / n; attention: w_i a_i; spatial_extent: a_i |r_i - R|^2; dipole: q_i (r_i - R) .
        mu_hat, the atom's share of the dipole along the molecule's dipole direction (these add up to |mu|).
        `h0` [N, hidden]: input embeddings to use instead of the atoms' own (see `_atom_features`).
        """
        batch = torch.zeros_like(z) if batch is None else batch
        x = self._atom_features(z, pos, batch, h0)  # [N, hidden // 2]
        with torch.autocast(x.device.type, enabled=False):  # the readout in float32 (model/precision.py)
            return self._readout(x.float() if x.dtype == torch.bfloat16 else x, z, pos, batch)

    def _readout(self, x: Tensor, z: Tensor, pos: Tensor, batch: Tensor) -> Tensor:
        """Per-atom terms [N, K] of each output from the final atom features x [N, hidden // 2]."""
        a = self.lin2(x) * self.std + self.mean + self.atomref[z]  # [N, K]
        if all(r == "add" for r in self.readouts):
            return a
        weights = self._attention(x, batch) if self.attention is not None else None  # [N, K_att]
        num_graphs = int(batch[-1]) + 1
        n = torch.bincount(batch, minlength=num_graphs).to(a.dtype)  # [B]
        r = None  # [N, 3] positions from the centre of mass, when an output needs them
        if any(kind in ("dipole", "spatial_extent") for kind in self.readouts):
            r = pos - centre_of_mass(pos, self.masses[z].to(pos.dtype), batch, num_graphs)[batch]
        columns = []
        for k, kind in enumerate(self.readouts):
            ak = a[:, k]  # [N]
            if kind == "mean":
                ak = ak / n[batch]
            elif kind == "attention":
                ak = ak * weights[:, self.attention_outputs.index(k)]
            elif kind == "spatial_extent":
                ak = ak * r.square().sum(-1)
            elif kind == "dipole":
                q = ak - (ak.new_zeros(num_graphs).index_add_(0, batch, ak) / n)[batch]  # [N], sums to 0
                mu = _sum_per_molecule(q[:, None] * r, batch)  # [B, 3]
                direction = mu / mu.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [B, 3]; 0 for a zero dipole
                ak = q * (r * direction[batch]).sum(-1)
            columns.append(ak)
        return torch.stack(columns, dim=1)

    def _attention(self, x: Tensor, batch: Tensor) -> Tensor:
        r"""Attention weights [N, K_att] from the atoms' final features x [N, hidden // 2]: a softmax over the atoms
        of each molecule, w_{ik} = exp(s_{ik}) / \sum_{j \in m(i)} exp(s_{jk}), with s = attention(x)."""
        s = self.attention(x)  # [N, K_att] logits
        num_graphs = int(batch[-1]) + 1
        top = s.new_full((num_graphs, s.size(1)), -math.inf).scatter_reduce(
            0, batch[:, None].expand_as(s), s, "amax", include_self=True)  # [B, K_att], for a stable exp
        e = (s - top[batch]).exp()
        return e / _sum_per_molecule(e, batch)[batch]

    def attention_weights(self, z: Tensor, pos: Tensor, batch: Tensor | None = None) -> Tensor:
        """Each atom's weight in each attention output: [N, K_att] (columns in the order of
        `attention_outputs`); per molecule each column sums to 1. Needs a model with an attention readout."""
        if self.attention is None:
            raise ValueError("this model has no attention readout")
        batch = torch.zeros_like(z) if batch is None else batch
        return self._attention(self._atom_features(z, pos, batch), batch)

    def forward(self, z: Tensor, pos: Tensor, batch: Tensor | None = None) -> Tensor:
        """Prediction per molecule: [num_graphs, num_outputs]."""
        batch = torch.zeros_like(z) if batch is None else batch
        return _sum_per_molecule(self.atom_contributions(z, pos, batch), batch)

    def embedding(self, z: Tensor, pos: Tensor, batch: Tensor | None = None) -> Tensor:
        """Learned molecule representation: the sum (a single 'add' output) or else the mean of the atom features
        that the output layer maps linearly to the atom-wise values. [num_graphs, hidden_channels // 2]; t-SNE."""
        batch = torch.zeros_like(z) if batch is None else batch
        out = _sum_per_molecule(self._atom_features(z, pos, batch), batch)  # [B, D]
        if self.readouts != ["add"]:
            out = out / torch.bincount(batch, minlength=out.size(0)).clamp(min=1).unsqueeze(-1)
        return out

    def to_pyg(self) -> nn.Module:
        """The same function as a `torch_geometric.nn.models.SchNet`, with this model's weights copied in.

        Only for one 'add' or 'mean' output, the readouts PyG has. The layouts match name for name except three:
        our `atom_embedding` is PyG's `embedding` (the name here
        belongs to the `embedding()` method), and PyG keeps mean/std as floats and atomref as an Embedding.
        PyG's own radius graph needs pyg-lib, so the copy is given ours as its `interaction_graph`.
        """
        from torch_geometric.nn.models import SchNet as PyGSchNet

        if self.readout not in ("add", "mean"):
            raise ValueError(f"PyG's SchNet has one 'add' or 'mean' output; this model has {self.readout!r}")

        cutoff = self.cutoff

        def interaction_graph(pos: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
            edge_index = radius_graph(pos, cutoff, batch)
            return edge_index, (pos[edge_index[0]] - pos[edge_index[1]]).norm(dim=-1)

        atomref = self.atomref.detach().clone() if bool(self.atomref.any()) else None
        ref = PyGSchNet(self.hidden_channels, self.num_filters, self.num_interactions, self.num_gaussians,
                        self.cutoff, interaction_graph=interaction_graph, readout=self.readout,
                        mean=float(self.mean[0]), std=float(self.std[0]), atomref=atomref)
        state = {("embedding." + k[len("atom_embedding."):] if k.startswith("atom_embedding.") else k): v
                 for k, v in self.state_dict().items() if k not in ("mean", "std", "atomref")}
        if atomref is not None:
            state["atomref.weight"] = atomref
            state["initial_atomref"] = atomref
        ref.load_state_dict(state)
        return ref.to(self.atomref.device, self.atomref.dtype)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(hidden_channels={self.hidden_channels}, "
                f"num_filters={self.num_filters}, num_interactions={self.num_interactions}, "
                f"num_gaussians={self.num_gaussians}, cutoff={self.cutoff:g}, readout={self.readout!r})")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description="Print the full and lite SchNet configurations and their parameter "
                                        "counts.").parse_args()
    for name, config in (("full", FULL_CONFIG), ("lite", LITE_CONFIG)):
        model = SchNet(**config)
        print(f"{name:5s} {count_parameters(model):>9,} parameters  {model!r}")
