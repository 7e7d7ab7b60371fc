"""What a run trains on: QM9 or the user's own file, as the same flat tensors, its targets, and its split.

Both sources hold z [num_atoms], pos [num_atoms, 3], ptr [M + 1], num_atoms [M] and y [M, columns], which is all
that batching.Batcher, the training loop and the evaluation read:

    QM9 (qm9_data.QM9)                   y's 19 columns in PyG's order; the targets come from targets.TARGETS
    a file (structure_file.LabelledStructures)  y's column k is the label --target names k-th; targets.label
"""
from __future__ import annotations

from pathlib import Path

from torch import Tensor

from schnetqm9.cli import UserError
from schnetqm9.data import splits, targets
from schnetqm9.data.qm9 import QM9
from schnetqm9.data.structure_file import LabelledStructures

Source = QM9 | LabelledStructures


def open_data(path: str | None, names: list[str], unit: str = "", readout: str = "auto",
              data_dir: str = "data") -> tuple[Source, list[targets.Target]]:
    """QM9 (`path` None; `names` are QM9 targets) or the file at `path` (`names` are its label keys, in `unit`,
    extensive unless `readout` is 'mean' or 'attention'), and the targets trained on it."""
    if path is None:
        try:
            return QM9(data_dir), [targets.TARGETS[n] for n in names]
        except (FileNotFoundError, ValueError) as err:
            raise UserError(str(err)) from None
    data = LabelledStructures(path, names)
    kind = "mean" if readout in ("mean", "attention") else "add"  # intensive labels: a (weighted) mean
    return data, [targets.label(key, k, unit, Path(path).name, kind) for k, key in enumerate(names)]


def make_split(data: Source, path: str | None, split_file: str | None, subset_size: int | None,
               seed: int) -> dict[str, Tensor]:
    """`split_file`'s split (an earlier run's split*.json), or a seeded one: QM9's standard 110,000 / 10,000 / rest
    (80/10/10 of `subset_size`), or 80/10/10 of the file's structures (of `subset_size` of them)."""
    if split_file:
        try:
            return splits.load_split(split_file, len(data))
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"--split {split_file}: {err}") from None
    if path is None:
        return splits.split_indices(len(data), subset_size, seed=seed)
    size = len(data) if subset_size is None else min(subset_size, len(data))
    try:
        return splits.split_indices(len(data), size, seed=seed)
    except ValueError:
        raise UserError(f"{path} holds {len(data)} structures: at least 10 are needed to split them 80/10/10 into "
                        "training, validation and test sets") from None
