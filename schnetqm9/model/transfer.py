"""Fine-tuning: start a run from a checkpoint of this project (`train.py --init-from CHECKPOINT`).

What carries over, and why:
    embedding rows of the elements the checkpoint was trained on, and every interaction block: the representation,
        which knows chemistry whatever the label;
    the output layers (lin1, and lin2's row for a target) and that target's standardisation (mean, std, per-element
        references) only for a target of the same name and unit, where the old output is the right start;
    nothing else: elements the checkpoint never saw keep the new model's fresh embedding rows (the checkpoint's rows
        for them were never trained), new targets get fresh output rows.
`--freeze-representation` then trains only the output layers (the embedding and interactions get no gradient and
are left out of the optimiser).
"""
from __future__ import annotations

from pathlib import Path

import torch

from schnet_model import SchNet
from schnetqm9.cli import UserError
from schnetqm9.model import checkpoint

FINETUNE_LR = 3e-3  # peak learning rate with --init-from; measured against 1e-4, 3e-4, 1e-3 in docs/TRANSFER.md
ARCHITECTURE = ("hidden_channels", "num_filters", "num_interactions", "num_gaussians", "cutoff")


def load_source(path: str | Path, config: dict) -> dict:
    """The checkpoint to start from, refused in one line when it is not one of this project's or its architecture
    is not the one the flags ask for."""
    src = checkpoint.load(path)
    differ = [k for k in ARCHITECTURE if float(src["model_config"][k]) != float(config[k])]
    if differ:
        flags = " ".join(f"--{k.replace('_', '-')} {src['model_config'][k]:g}" for k in differ)
        asked = ", ".join(f"{k} {config[k]:g}" for k in differ)
        raise UserError(f"{path} has another architecture than the flags ask for ({asked}): start from it with "
                        f"{flags}")
    return src


def matching_outputs(src: dict, targets: list[dict]) -> dict[int, int]:
    """{new output k: the checkpoint's output j} for each target whose name and unit the checkpoint also has."""
    old = {(t["name"], t["unit"]): j for j, t in enumerate(src["targets"])}
    return {k: old[(t["name"], t["unit"])] for k, t in enumerate(targets) if (t["name"], t["unit"]) in old}


def carry_normalisation(src: dict, matches: dict[int, int], norm: dict) -> dict:
    """The new run's standardisation with each matched target's mean, std and references taken from the
    checkpoint (so its copied output layer means what it meant); loss scales stay those of the new data."""
    model = checkpoint.build_model(src)
    out = {key: list(values) for key, values in norm.items()}
    for k, j in matches.items():
        out["mean"][k], out["std"][k] = float(model.mean[j]), float(model.std[j])
        ref = model.atomref[:, j]
        out["atomref"][k] = ref.tolist() if bool(ref.any()) else None
    return out


@torch.no_grad()
def initialise(model: SchNet, src: dict, matches: dict[int, int], path: str | Path) -> dict:
    """Copy the checkpoint's representation (and matched output layers) into `model`, in place (so optimiser views
    of the parameters stay valid). Returns what was done, for the new checkpoint's `init_from` record."""
    old = checkpoint.build_model(src)
    seen = torch.tensor(sorted(checkpoint.elements(src)), dtype=torch.long)
    model.atom_embedding.weight[seen] = old.atom_embedding.weight[seen]
    model.interactions.load_state_dict(old.interactions.state_dict())
    if matches:
        model.lin1.load_state_dict(old.lin1.state_dict())
        for k, j in matches.items():
            model.lin2.weight[k] = old.lin2.weight[j]
            model.lin2.bias[k] = old.lin2.bias[j]
    names = [t["name"] for t in src["targets"]]
    return dict(checkpoint=str(path), targets=names, elements=seen.tolist(),
                outputs_copied=sorted(names[j] for j in matches.values()), command=src.get("command"))


def freeze_representation(model: SchNet) -> None:
    """No gradient for the embedding and the interaction blocks (call before the optimiser is built)."""
    for module in (model.atom_embedding, model.interactions):
        module.requires_grad_(False)
