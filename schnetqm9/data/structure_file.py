"""Your own labelled structures, from any file ASE reads, as the same flat tensors QM9 is held in.

    python train.py --data my_molecules.extxyz --target energy --unit eV
    python train.py --data results.db --target homo,lumo --unit eV --readout mean

Data flows as for QM9 (data/qm9.py)::

    FILE --ase.io.iread once--> flat tensors cached beside it (FILE.schnet-v1.pt) --> LabelledStructures
                                                                                  --> split_indices --> Batcher --> ...

A structure's label under KEY is, in this order: its extended-XYZ comment-line entry (`atoms.info[KEY]`), its ASE
database key-value pair, or its calculator result (`energy`, `free_energy`, ... as ASE stores them: extended XYZ
files written with energies keep them there). The parse keeps every scalar numeric label of every structure (NaN
where a structure lacks one), so another `--target` reads the same cache. Forces (eV/Angstrom, per atom) come from the
extended-XYZ `forces` column or the calculator's `forces`, for `train.py --force-weight`. Only molecules: periodic
cells are refused.
"""
from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from schnetqm9.cli import UserError
from schnetqm9.files import atomic_write

CACHE_FORMAT = 2  # bump when the cached tensors change meaning
MAX_Z = 99  # SchNet's embedding has rows 0-99; row 0 is padding


def keys(spec: str) -> list[str]:
    """The label keys of `--target` with `--data`: one key or a comma list (ValueError: empty, repeated, 'all')."""
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names or spec.strip().lower() == "all":
        raise ValueError(f"with --data, --target names the label key(s) in the file (a comma list for several), "
                         f"got {spec!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"--target names {', '.join(repeated)} twice: name each label once")
    return names


def cache_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.schnet-v{CACHE_FORMAT}.pt")


def _fingerprint(path: Path) -> list[int]:
    """What invalidates the cache: the file's size and modification time (ns)."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def read_all(path: str | Path) -> Iterator:
    """Every structure of `path` (ase.Atoms), as ase.io.iread reads them. A gzipped file (NAME.gz, NAME's extension
    naming the format) is decompressed in memory first: ASE's extended-XYZ reader seeks back to each frame, and a
    seek in a gzip stream rereads it from the start, so 9,435 frames took more than ten minutes instead of seconds."""
    import ase.io

    if not str(path).endswith(".gz"):
        yield from ase.io.iread(str(path), index=":")
        return
    import gzip

    from ase.io.formats import filetype

    with gzip.open(path, "rt") as f:
        text = io.StringIO(f.read())
    yield from ase.io.iread(text, index=":", format=filetype(str(path)[:-3], read=False))


def _frames(path: Path):
    """(atoms, labels) per structure: labels = the structure's scalar numbers by key (info, key-value pairs,
    calculator results; earlier sources win)."""
    import ase.io
    from ase.io.formats import filetype

    try:
        kind = filetype(str(path), guess=True)
    except Exception:
        kind = None
    if kind in ("db", "json"):  # ase.io.read drops a database row's key-value pairs: read the rows
        import ase.db

        with ase.db.connect(str(path), type=kind) as db:
            for row in db.select():
                atoms = row.toatoms()
                yield atoms, {**_results(atoms), **dict(row.key_value_pairs)}
        return
    for atoms in read_all(path):
        yield atoms, {**_results(atoms), **atoms.info}


def _results(atoms) -> dict:
    calc = getattr(atoms, "calc", None)
    return dict(getattr(calc, "results", None) or {})


def _forces(atoms) -> np.ndarray | None:
    """The structure's forces [n, 3] (a per-atom `forces` array, or its calculator's), or None."""
    value = atoms.arrays.get("forces")
    if value is None:
        value = _results(atoms).get("forces")
    return None if value is None else np.asarray(value, dtype=np.float64).reshape(len(atoms), 3)


def _scalar(value) -> float | None:
    """A label as a float, or None when it is not one number (a string, a vector such as forces, ...)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, np.ndarray) and value.size == 1 and np.issubdtype(value.dtype, np.number):
        return float(value.reshape(()))
    return None


def parse(path: Path, progress: bool = True) -> dict:
    """Read every structure of `path` into flat tensors.

    Returns z [num_atoms] int64, pos [num_atoms, 3] float32 (Angstrom), ptr [M + 1] int64 (structure m owns atoms
    ptr[m]:ptr[m+1]), labels {key: [M] float64, NaN where a structure has none} and forces [num_atoms, 3] float32
    (NaN on the atoms of a structure without forces; None when no structure has them). Raises UserError for a file
    ASE cannot read, a periodic structure, an element outside 1-99, or a non-finite coordinate.
    """
    from tqdm.auto import tqdm

    zs, poss, counts, labels, forces = [], [], [], {}, []
    try:
        frames = tqdm(_frames(path), desc=f"Reading {path.name}", unit=" structures",
                      disable=None if progress else True)  # None: off when stderr is not a terminal
        for m, (atoms, found) in enumerate(frames):
            if atoms.pbc.any():
                raise UserError(f"{path}: structure {m} is periodic (pbc={atoms.pbc.tolist()}): periodic cells are "
                                "not supported yet; give molecules (pbc False, as ASE writes them without a cell)")
            z, pos = atoms.numbers.astype(np.int64), atoms.positions
            if len(z) == 0:
                raise UserError(f"{path}: structure {m} has no atoms")
            bad = (z < 1) | (z > MAX_Z)
            if bad.any():
                raise UserError(f"{path}: structure {m} has an atom with atomic number {int(z[bad][0])}: SchNet "
                                f"embeds elements 1-{MAX_Z} only")
            if not np.isfinite(pos).all():
                raise UserError(f"{path}: structure {m} has a coordinate that is not finite (NaN or infinite)")
            zs.append(z)
            poss.append(pos)
            forces.append(_forces(atoms))
            counts.append(len(z))
            for key, value in found.items():
                number = _scalar(value)
                if number is not None:
                    labels.setdefault(key, {})[m] = number
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"no file at {path}") from None
    except Exception as err:
        raise UserError(f"{path}: ASE cannot read it as structures ({type(err).__name__}: {err})".splitlines()[0]
                        ) from None
    if not counts:
        raise UserError(f"{path} holds no structures")
    num = len(counts)
    dense = {}
    for key, by_structure in labels.items():
        column = np.full(num, np.nan)
        column[list(by_structure)] = list(by_structure.values())
        dense[key] = torch.from_numpy(column)
    known = any(f is not None for f in forces)
    flat = np.concatenate([np.full((n, 3), np.nan) if f is None else f for f, n in zip(forces, counts)])
    return dict(z=torch.from_numpy(np.concatenate(zs)), pos=torch.from_numpy(np.concatenate(poss).astype(np.float32)),
                ptr=torch.from_numpy(np.concatenate([[0], np.cumsum(counts)])), labels=dense,
                forces=torch.from_numpy(flat.astype(np.float32)) if known else None)


def load_tensors(path: Path, progress: bool = True) -> dict:
    """parse(path), from its cache beside the file when that is current (same size and modification time)."""
    cache = cache_path(path)
    if not path.is_file():
        raise UserError(f"no file at {path}")
    fingerprint = _fingerprint(path)
    if cache.exists():
        try:
            cached = torch.load(cache, weights_only=True)
            if cached.get("fingerprint") == fingerprint:
                return cached
        except Exception:  # a truncated or foreign cache is rebuilt
            pass
    tensors = parse(path, progress)
    tensors["fingerprint"] = fingerprint
    try:
        with atomic_write(cache) as tmp:
            torch.save(tensors, tmp)
    except OSError as err:  # a read-only folder: train without the cache
        warnings.warn(f"could not cache the parsed structures at {cache} ({err.strerror}): the file will be "
                      "parsed again next time", stacklevel=2)
    return tensors


class LabelledStructures:
    """The structures of a file and their labels under `keys`, as the flat tensors qm9_data.QM9 holds:

        z [num_atoms] long, pos [num_atoms, 3] float32 (Angstrom), ptr [M + 1], num_atoms [M], y [M, K],
        forces [num_atoms, 3] float32 (eV/Angstrom; NaN rows for structures without) or None

    with y's column k the label `keys[k]` (float32). Every structure must carry every key as a finite number.
    """

    def __init__(self, path: str | Path, keys: list[str], progress: bool = True) -> None:
        self.path = Path(path)
        t = load_tensors(self.path, progress)
        labels: dict[str, Tensor] = t["labels"]
        for key in keys:
            if key not in labels:
                raise UserError(f"no structure in {self.path} has a numeric label {key!r}: the labels are "
                                f"{', '.join(sorted(labels)) or 'none'}")
            bad = torch.nonzero(~torch.isfinite(labels[key])).flatten()
            if len(bad):
                raise UserError(f"label {key!r} is missing, NaN or infinite on {len(bad)} of {len(labels[key])} "
                                f"structures of {self.path}, first on structure {int(bad[0])}: fix or drop them")
        self.keys = list(keys)
        self.z: Tensor = t["z"].long()
        self.pos: Tensor = t["pos"]
        self.ptr: Tensor = t["ptr"]
        self.num_atoms: Tensor = self.ptr.diff()
        self.y: Tensor = torch.stack([labels[k] for k in keys], 1).float()  # [M, K]
        self.forces: Tensor | None = t.get("forces")

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        return f"LabelledStructures({os.path.relpath(self.path)}, {len(self)} structures, labels {self.keys})"
