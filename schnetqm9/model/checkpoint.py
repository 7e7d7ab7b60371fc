"""The checkpoint format: one plain dict per file, read and written only here (train, predict and bench share it).

A checkpoint holds everything needed to rebuild and use the model with nothing else at hand:
    format        CHECKPOINT_FORMAT, so a foreign file is refused
    model_config  SchNet's constructor arguments (readout: one output module per target)
    state_dict    weights and the standardisation buffers (mean, std, atomref)
    targets       [{name, unit, column, output}, ...] in the order of the model's outputs
    normalisation, split, elements, seed, ... (a training run's `RunRecord`) and, once tested, metrics (per
    target) and the command.
Files of the single-target format (the shipped gap and U0 models: 'target', 'unit', scalar mean/std) load too.
Three kinds are written, each by one function here: a run's best weights (`best_weights`, then `tested`), and its
resume state (`resume_state`: the record, weights, optimiser, weight average and progress).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
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


def command(ckpt: dict) -> str | None:
    """The command line that trained the model (None before the run was tested, or in files that predate it)."""
    return ckpt.get("command")


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


@dataclass
class RunRecord:
    """What every checkpoint of a training run records besides its weights: the model and its outputs, the data
    and its split, the standardisation, and the settings a resumed run must keep (`RESUME_FIXED`).

    targets [K]: {name, unit, column, output} per output; normalisation: {mean, std, loss_scale, atomref} lists
    over the targets (data/targets.py); split: {train, val, test} index tensors; elements and max_heavy_atoms:
    what the training molecules held (inference/domain.py); init_from: what --init-from copied (model/transfer.py).
    """
    target: str
    targets: list[dict]
    model_config: dict
    data: str  # 'QM9', or the resolved path of the --data file
    seed: int
    subset_size: int | None
    batch_size: int
    ema_decay: float
    time_budget: float | None
    normalisation: dict | None = None
    split: dict | None = None
    elements: list[int] | None = None
    max_heavy_atoms: int | None = None
    init_from: dict | None = None

    RESUME_FIXED = ("target", "data", "model_config", "batch_size", "ema_decay", "time_budget")

    def as_dict(self) -> dict:
        """The record as the checkpoint's top-level keys (init_from only when there is one)."""
        out = {"format": CHECKPOINT_FORMAT, **{f.name: getattr(self, f.name) for f in fields(self)}}
        if out["init_from"] is None:
            del out["init_from"]
        return out

    @classmethod
    def of(cls, ckpt: dict) -> "RunRecord":
        """The record of a checkpoint written by a training run ('data' is QM9 in files that predate it)."""
        return cls(**{f.name: ckpt.get(f.name, "QM9" if f.name == "data" else None) for f in fields(cls)})

    @property
    def names(self) -> list[str]:
        return [t["name"] for t in self.targets]

    def first_difference(self, other: "RunRecord") -> str | None:
        """The first of RESUME_FIXED in which `other` differs from this record, or None."""
        return next((k for k in self.RESUME_FIXED if getattr(self, k) != getattr(other, k)), None)


def best_weights(record: RunRecord, state_dict: dict, epoch: int, weights: str, val_score: float,
                 val: dict) -> dict:
    """A run's best weights so far: from `epoch`, the weight average or the raw ones (`weights`), with their
    validation metrics."""
    return {**record.as_dict(), "state_dict": state_dict, "epoch": epoch, "weights": weights,
            "metrics": {"val_score": val_score, "val": val}}


def best_epoch(ckpt: dict) -> tuple[int, str]:
    """(the epoch the best weights come from, 'average' or 'raw')."""
    return ckpt["epoch"], ckpt["weights"]


def tested(best: dict, test: dict, test_forces: dict | None, **run) -> dict:
    """The best weights with their test metrics (and the forces', for a potential) and how the run went (`run`:
    command, args, processes, epochs_done, minutes)."""
    metrics = {**best["metrics"], "test": test, **({"test_forces": test_forces} if test_forces else {})}
    return {**best, "metrics": metrics, **run}


def resume_state(record: RunRecord, training: dict, progress: dict) -> dict:
    """Everything to continue a run: its record, `training` {state_dict, optimizer, ema} and `progress` (the
    training loop's Progress as a dict)."""
    return {**record.as_dict(), **training, "progress": progress}


def training_state(state: dict) -> dict:
    """{state_dict, optimizer, ema} of a resume state."""
    return {k: state[k] for k in ("state_dict", "optimizer", "ema")}


def progress(state: dict) -> dict | None:
    """The Progress fields of a resume state, or None for a file that is not one (or predates the format)."""
    found = state.get("progress")
    return found if isinstance(found, dict) and "running_loss" in found else None
