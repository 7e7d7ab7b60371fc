"""Fine-tuning: start a run from a checkpoint of this project (`train.py --init-from CHECKPOINT`).

What carries over, and why:
    embedding rows of the elements the checkpoint was trained on, and every interaction block: the representation,
        which knows chemistry whatever the label;
    the output layers (lin1, and lin2's row for a target) and that target's standardisation (mean, std, per-element
        references) only for a target of the same name and unit, where the old output is the right start;
    with `--init-output NEW=OLD`, the output layers and standardisation of the checkpoint's target OLD for the new
        target NEW (same unit), a related quantity (e.g. QM9's electronic energy from its U0): the per-element
        references of NEW are then fitted to what the copied output misses on the new training structures,
            ref_NEW = argmin_e sum_m (y_m - [f_OLD(x_m) - sum_i ref_OLD(z_i)] - sum_i e(z_i))^2,
        so that the new model starts at the old prediction plus a constant per atom (`refit_references`);
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
    have = checkpoint.RunRecord.of(src).model_config
    differ = [k for k in ARCHITECTURE if float(have[k]) != float(config[k])]
    if differ:
        flags = " ".join(f"--{k.replace('_', '-')} {have[k]:g}" for k in differ)
        asked = ", ".join(f"{k} {config[k]:g}" for k in differ)
        raise UserError(f"{path} has another architecture than the flags ask for ({asked}): start from it with "
                        f"{flags}")
    return src


def parse_renames(spec: str | None) -> dict[str, str]:
    """'NEW=OLD,...' (--init-output) as {NEW: OLD}; one-line UserError for anything else."""
    renames = {}
    for item in (spec or "").split(","):
        new, sep, old = (part.strip() for part in item.partition("="))
        if not (new and sep and old) or new in renames:
            raise UserError(f"--init-output takes NEW=OLD pairs separated by commas (e.g. energy=U0), not {spec!r}")
        renames[new] = old
    return renames


def matching_outputs(src: dict, targets: list[dict], renames: dict[str, str] | None = None) -> dict[int, int]:
    """{new output k: the checkpoint's output j} for each target whose name (or, renamed, `renames[name]`) and unit
    the checkpoint also has. A rename that names no new target, or no output of the checkpoint in the same unit,
    is a one-line UserError."""
    renames = renames or {}
    outputs = checkpoint.RunRecord.of(src).targets
    old = {(t["name"], t["unit"]): j for j, t in enumerate(outputs)}
    units = {t["name"]: t["unit"] for t in targets}
    for new, was in renames.items():
        if new not in units:
            raise UserError(f"--init-output {new}={was}: this run has no target {new} ({', '.join(units)})")
        if (was, units[new]) not in old:
            have = ", ".join(f"{t['name']} ({t['unit'] or 'no unit'})" for t in outputs)
            raise UserError(f"--init-output {new}={was}: the checkpoint has no output {was} in "
                            f"{units[new] or 'no unit'} (it has {have})")
    found = {k: (renames.get(t["name"], t["name"]), t["unit"]) for k, t in enumerate(targets)}
    return {k: old[key] for k, key in found.items() if key in old}


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
def refit_references(src: dict, outputs: dict[int, int], learned_from, y: torch.Tensor, z: torch.Tensor,
                     batch: torch.Tensor, norm: dict) -> dict:
    """The standardisation `norm` with new per-element references for each renamed output {k: checkpoint output j}
    (module docstring): fitted to y[:, k] minus the checkpoint's prediction of j less its own references.
    `learned_from(model)` evaluates a model on the M training structures ([M, K_src]); y [M, K], z [N] and
    batch [N] are their labels and atoms."""
    from schnetqm9.data.targets import fit_atomref

    model = checkpoint.build_model(src)
    pred = learned_from(model).double()  # [M, K_src]
    out = {key: list(values) for key, values in norm.items()}
    for k, j in outputs.items():
        own = torch.zeros(len(y), dtype=torch.float64).index_add_(0, batch, model.atomref[z, j].double())  # [M]
        ref = fit_atomref(z, batch, y[:, k].double() - (pred[:, j] - own))  # [100, 1]
        out["atomref"][k] = ref[:, 0].tolist()
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
    names = checkpoint.target_names(src)
    return dict(checkpoint=str(path), targets=names, elements=seen.tolist(),
                outputs_copied=sorted(names[j] for j in matches.values()), command=checkpoint.command(src))


def freeze_representation(model: SchNet) -> None:
    """No gradient for the embedding and the interaction blocks (call before the optimiser is built)."""
    for module in (model.atom_embedding, model.interactions):
        module.requires_grad_(False)
