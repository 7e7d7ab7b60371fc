"""The checkpoint format: one plain dict per file, read and written only here (train, predict and bench share it).

A checkpoint holds everything needed to rebuild and use the model with nothing else at hand:
    format        CHECKPOINT_FORMAT, so a foreign file is refused
    model_config  SchNet's constructor arguments (readout: one output module per target)
    state_dict    weights and the standardisation buffers (mean, std, atomref)
    targets       [{name, unit, column, output}, ...] in the order of the model's outputs
    normalisation, split, elements, seed, ... and, once tested, metrics (per target) and the command.
Files of the single-target format (the shipped gap and U0 models: 'target', 'unit', scalar mean/std) load too.
"""
from __future__ import annotations

from pathlib import Path

import torch

from schnet_model import SchNet
from schnetqm9.cli import UserError
from schnetqm9.data.qm9 import MAX_HEAVY_ATOMS
from schnetqm9.files import atomic_write

CHECKPOINT_FORMAT = "schnet-qm9/1"


def save(obj: dict, path: str | Path) -> None:
    """Atomically: a reader (or a kill -9) sees the old file or the new one, never half of one."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def load(path: str | Path) -> dict:
    """A checkpoint of this project, or a one-line UserError saying why not."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}): "
                        "it is corrupt or was not written by this project") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a checkpoint of this project (format {CHECKPOINT_FORMAT})")
    if "targets" not in ckpt:  # single-target layout
        ckpt["targets"] = [dict(name=ckpt["target"], unit=ckpt["unit"], column=ckpt["target_index"],
                                output=ckpt["model_config"]["readout"])]
    return ckpt


def target_names(ckpt: dict) -> list[str]:
    return [t["name"] for t in ckpt["targets"]]


def output_spec(ckpt: dict, k: int) -> dict:
    """Output k's target: {name, unit, column (of QM9's y, or of the file's labels), output (its readout)}."""
    return ckpt["targets"][k]


def data_source(ckpt: dict) -> str:
    """'QM9', or the path of the file the model was trained on (--data)."""
    return ckpt.get("data", "QM9")


def elements(ckpt: dict) -> set[int]:
    """The atomic numbers of the training molecules (QM9's H, C, N, O, F for QM9 checkpoints that predate the
    record)."""
    return set(ckpt.get("elements", [1, 6, 7, 8, 9] if data_source(ckpt) == "QM9" else range(1, 100)))


def max_heavy_atoms(ckpt: dict) -> int | None:
    """The most heavy atoms of any training molecule (QM9's 9 for QM9 checkpoints that predate the record; None
    when unknown)."""
    if "max_heavy_atoms" in ckpt:
        return int(ckpt["max_heavy_atoms"])
    return MAX_HEAVY_ATOMS if data_source(ckpt) == "QM9" else None


def test_size(ckpt: dict) -> int:
    """How many molecules the recorded test MAE is over (0 when the checkpoint has no split)."""
    return len(ckpt["split"]["test"]) if "split" in ckpt else 0


def build_model(ckpt: dict, device: torch.device | str = "cpu") -> SchNet:
    """The model of a checkpoint, with its weights, on `device`, in eval mode."""
    state = dict(ckpt["state_dict"])
    for key in ("mean", "std"):  # the single-target layout kept them as 0-d tensors
        state[key] = state[key].reshape(-1)
    model = SchNet(**ckpt["model_config"])
    model.load_state_dict(state)
    return model.to(device).eval()


def test_mae(ckpt: dict) -> dict[str, float]:
    """Test MAE per target as recorded by train.py ({} before the run was tested)."""
    metrics = ckpt.get("metrics", {})
    if "test" in metrics:
        return {name: m["mae"] for name, m in metrics["test"].items()}
    return {ckpt["targets"][0]["name"]: metrics["test_mae"]} if "test_mae" in metrics else {}
