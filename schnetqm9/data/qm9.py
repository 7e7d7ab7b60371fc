"""QM9 from the `qm9pack` CSV release, in PyTorch Geometric's layout and units: parsed once, cached, served as PyG
`Data` objects or as flat tensors.

Data flows one way through the data room::

    qm9pack CSVs --parse once--> flat tensors cached in data/qm9_v1.pt --> QM9 (this module)
                                 --> splits.split_indices --> batch.Batcher --> (z, pos, batch, y)

The 130,831 molecules are the QM9 release without the 3,054 molecules that failed the authors' geometry
consistency check, which is exactly the set `torch_geometric.datasets.QM9` holds. `y` has PyG's 19 columns in
PyG's order and units (see `targets.TARGETS`); energies are converted from Hartree with 27.211386246 eV/Ha.

The whole data set is stored as flat tensors (all atoms of all molecules concatenated, with a `ptr` of molecule
offsets), which is both the cache format and what the training loop batches from: a batch is a few index
operations on these tensors, on the CPU or on the GPU, with no per-molecule Python objects in the hot path.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from schnetqm9.data.targets import ATOM_ENERGY_TABLE, HARTREE_TO_EV, TARGETS
from schnetqm9.files import atomic_write

NUM_MOLECULES = 130_831
MAX_HEAVY_ATOMS = 9  # C, N, O, F: the GDB-17 subset QM9 enumerates
CACHE_FORMAT = 1  # bump when the cached tensors change meaning

# qm9pack column -> (column of y, factor to PyG's unit). Columns 12-15 are derived from 7-10 below.
_CSV_COLUMNS = {
    "Dipole_debye": (0, 1.0),
    "Polarizability_bohr3": (1, 1.0),
    "HOMO_au": (2, HARTREE_TO_EV),
    "LUMO_au": (3, HARTREE_TO_EV),
    "HOMO_LUMO_gap_au": (4, HARTREE_TO_EV),
    "R2_bohr2": (5, 1.0),
    "ZPVE_au": (6, HARTREE_TO_EV),
    "InternalEnergy_0K_au": (7, HARTREE_TO_EV),
    "InternalEnergy_298K_au": (8, HARTREE_TO_EV),
    "Enthalphy_298K_au": (9, HARTREE_TO_EV),  # sic, qm9pack's spelling
    "GibbsFreeEnergy_298K_au": (10, HARTREE_TO_EV),
    "Heatcapacity_Cv_cal_mol_K": (11, 1.0),
    "RotA_GHz": (16, 1.0),
    "RotB_GHz": (17, 1.0),
    "RotC_GHz": (18, 1.0),
}

ELEMENTS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
SYMBOLS = {z: s for s, z in ELEMENTS.items()}  # atomic number -> symbol


# --------------------------------------------------------------------------------------------------------------
# Parsing qm9pack's CSV files into flat tensors, and the cache.


def qm9pack_data_dir() -> Path:
    """The `data/` folder of the installed qm9pack package (found without importing it: its __init__ needs
    pkg_resources, which current setuptools no longer ships)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the qm9pack package is not installed: run `bash install.sh` (or pip install qm9pack)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [f"qm9_part{i}.csv" for i in (1, 2, 3) if not (folder / f"qm9_part{i}.csv").is_file()]
    if missing:
        raise FileNotFoundError(f"qm9pack at {folder.parent} lacks {', '.join(missing)}: reinstall it with "
                                "`pip install --force-reinstall qm9pack==1.0.3`")
    return folder


def read_smiles(folder: Path | None = None) -> dict[int, str]:
    """QM9's SMILES by gdb index (qm9pack's SMILES column, one string per molecule), read on demand:
    they are not part of the cached tensors."""
    import pandas as pd

    folder = folder or qm9pack_data_dir()
    out: dict[int, str] = {}
    for path in sorted(folder.glob("qm9_part*.csv")):
        df = pd.read_csv(path, usecols=["Index", "SMILES"])
        out.update(zip(df["Index"].astype(int).tolist(), df["SMILES"].astype(str).tolist()))
    return out


def read_frequencies(gdb: set[int], folder: Path | None = None) -> dict[int, np.ndarray]:
    """QM9's own B3LYP/6-31G(2df,p) harmonic wavenumbers (cm^-1, ascending; 3n - 6, or 3n - 5 for a linear
    molecule) of the molecules with these gdb numbers (qm9pack's Harmonic_Freq_cmi column), read on demand."""
    import pandas as pd

    folder = folder or qm9pack_data_dir()
    out: dict[int, np.ndarray] = {}
    for path in sorted(folder.glob("qm9_part*.csv")):
        df = pd.read_csv(path, usecols=["Index", "Harmonic_Freq_cmi"])
        df = df[df["Index"].isin(gdb)]
        out.update({int(g): np.sort(_floats([f])) for g, f in zip(df["Index"], df["Harmonic_Freq_cmi"])})
    return out


def _source_fingerprint(folder: Path) -> str:
    """Identifies the CSV release and this parser: a cache made from anything else is stale."""
    try:
        version = importlib.metadata.version("qm9pack")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    parts = [f"format={CACHE_FORMAT}", f"qm9pack={version}"]
    parts += [f"{p.name}={p.stat().st_size}" for p in sorted(folder.glob("qm9_part*.csv"))]
    return hashlib.sha1(";".join(parts).encode()).hexdigest()


def _floats(strings) -> np.ndarray:
    """Parse a sequence of '[a,b,[c,...]]' strings into one flat float64 array."""
    text = ",".join(strings).replace("[", "").replace("]", "").replace("*^", "e")
    return np.array(text.split(","), dtype=np.float64)


def parse_qm9pack(folder: Path | None = None, progress: bool = True) -> dict[str, Tensor]:
    """Read qm9pack's three CSV parts into flat tensors.

    Returns a dict with
        z   [num_atoms] uint8     atomic numbers of all atoms, molecule after molecule
        pos [num_atoms, 3] float32 positions in Angstrom
        ptr [num_molecules + 1] int64  molecule m owns atoms ptr[m]:ptr[m+1]
        y   [num_molecules, 19] float32  targets in PyG's order and units
        gdb [num_molecules] int64  gdb index of each molecule (1-based, as in the name gdb_N)
    sorted by gdb index.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    folder = folder or qm9pack_data_dir()
    files = sorted(folder.glob("qm9_part*.csv"))
    usecols = ["Index", "N_atoms", "Elements", "XYZ_Ang", *_CSV_COLUMNS]
    chunks: list[tuple[np.ndarray, ...]] = []
    with tqdm(total=NUM_MOLECULES, desc="Parsing QM9 (qm9pack CSV)", unit="mol", disable=not progress) as bar:
        for path in files:
            for df in pd.read_csv(path, usecols=usecols, chunksize=8192):
                n_atoms = df["N_atoms"].to_numpy(np.int64)
                pos = _floats(df["XYZ_Ang"]).reshape(-1, 3)
                symbols = ",".join(df["Elements"]).translate({ord(c): None for c in "[]' "}).split(",")
                try:
                    z = np.array([ELEMENTS[s] for s in symbols], dtype=np.uint8)
                except KeyError as err:
                    raise ValueError(f"{path.name}: unexpected element {err.args[0]!r}") from None
                if len(z) != n_atoms.sum() or len(pos) != n_atoms.sum():
                    raise ValueError(f"{path.name}: atom counts disagree with N_atoms near Index "
                                     f"{int(df['Index'].iloc[0])}: the CSV is damaged, reinstall qm9pack")
                props = np.zeros((len(df), len(TARGETS)), dtype=np.float64)
                for column, (col, factor) in _CSV_COLUMNS.items():
                    props[:, col] = df[column].to_numpy(np.float64) * factor
                # Atomization energies: total energy minus the free atoms' energies (targets 12-15 from 7-10).
                mol_of_atom = np.repeat(np.arange(len(df)), n_atoms)  # [atoms in chunk]
                free_atoms = ATOM_ENERGY_TABLE[z]  # [atoms in chunk, 4], Hartree
                for k in range(4):
                    ref = np.bincount(mol_of_atom, weights=free_atoms[:, k], minlength=len(df))
                    props[:, 12 + k] = props[:, 7 + k] - ref * HARTREE_TO_EV
                chunks.append((df["Index"].to_numpy(np.int64), n_atoms, z, pos, props))
                bar.update(len(df))

    gdb = np.concatenate([c[0] for c in chunks])
    n_atoms = np.concatenate([c[1] for c in chunks])
    z = np.concatenate([c[2] for c in chunks])
    pos = np.concatenate([c[3] for c in chunks])
    y = np.concatenate([c[4] for c in chunks])
    ptr = np.concatenate([[0], np.cumsum(n_atoms)])
    if len(gdb) != NUM_MOLECULES or not np.all(np.diff(gdb) > 0):
        raise ValueError(f"expected {NUM_MOLECULES} molecules in increasing gdb order in {folder}, "
                         f"found {len(gdb)}: reinstall qm9pack==1.0.3")
    return {
        "z": torch.from_numpy(z),
        "pos": torch.from_numpy(pos.astype(np.float32)),
        "ptr": torch.from_numpy(ptr),
        "y": torch.from_numpy(y.astype(np.float32)),
        "gdb": torch.from_numpy(gdb),
    }


def _valid(tensors: dict) -> bool:
    """Cheap consistency check of a loaded cache (a cache that fails it is rebuilt)."""
    try:
        ptr, z, pos, y, gdb = (tensors[k] for k in ("ptr", "z", "pos", "y", "gdb"))
        return (len(ptr) == NUM_MOLECULES + 1 and int(ptr[0]) == 0 and int(ptr[-1]) == len(z) == len(pos)
                and tuple(y.shape) == (NUM_MOLECULES, len(TARGETS)) and len(gdb) == NUM_MOLECULES
                and pos.shape[1] == 3 and bool(torch.isfinite(pos).all()))
    except (KeyError, TypeError, IndexError, AttributeError):
        return False




def load_tensors(root: str | Path = "data", force_reload: bool = False, progress: bool = True) -> dict[str, Tensor]:
    """The flat QM9 tensors (see `parse_qm9pack`), from `root/qm9_v1.pt` when it is present, current and intact;
    otherwise parsed from qm9pack and cached there."""
    path = Path(root) / f"qm9_v{CACHE_FORMAT}.pt"
    folder = qm9pack_data_dir()
    fingerprint = _source_fingerprint(folder)
    if path.exists() and not force_reload:
        try:
            cached = torch.load(path, weights_only=True)
            if cached.get("fingerprint") == fingerprint and _valid(cached):
                return cached
            reason = "made from another qm9pack release or an older format"
        except Exception as err:  # truncated or otherwise unreadable file
            reason = f"unreadable ({type(err).__name__})"
        warnings.warn(f"QM9 cache {path} is {reason}: rebuilding it", stacklevel=2)
    tensors = parse_qm9pack(folder, progress=progress)
    tensors["fingerprint"] = fingerprint
    with atomic_write(path) as tmp:
        torch.save(tensors, tmp)
    return tensors


class QM9(torch.utils.data.Dataset):
    """All 130,831 QM9 molecules as `torch_geometric.data.Data` objects, like `torch_geometric.datasets.QM9`
    but built offline from qm9pack and without PyG's 2D features (x, bonds, SMILES).

    `dataset[i]` is a `Data` with
        z    [num_atoms] long      atomic numbers
        pos  [num_atoms, 3] float  positions in Angstrom
        y    [1, 19] float         targets in PyG's order and units (see `targets.TARGETS`)
        name str                   'gdb_N'
        idx  long                  N - 1, the molecule's position in the full QM9 release (as in PyG)

    The flat tensors behind it (`z`, `pos`, `ptr`, `y`, `num_atoms`) are attributes, for fast batching.
    """

    def __init__(self, root: str | Path = "data", force_reload: bool = False, progress: bool = True) -> None:
        t = load_tensors(root, force_reload=force_reload, progress=progress)
        self.root = Path(root)
        self.z: Tensor = t["z"].long()  # [num_atoms]
        self.pos: Tensor = t["pos"]  # [num_atoms, 3]
        self.ptr: Tensor = t["ptr"]  # [num_molecules + 1]
        self.y: Tensor = t["y"]  # [num_molecules, 19]
        self.gdb: Tensor = t["gdb"]  # [num_molecules]
        self.num_atoms: Tensor = self.ptr.diff()  # [num_molecules]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        """Molecule i as a torch_geometric.data.Data (PyG imported here, not with the module: most users of this
        module batch from the flat tensors and never need it)."""
        from torch_geometric.data import Data

        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"molecule {i} out of range for QM9 with {len(self)} molecules")
        i %= len(self)
        a, b = int(self.ptr[i]), int(self.ptr[i + 1])
        gdb = int(self.gdb[i])
        return Data(z=self.z[a:b], pos=self.pos[a:b], y=self.y[i:i + 1], name=f"gdb_{gdb}",
                    idx=torch.tensor(gdb - 1))

    def __repr__(self) -> str:
        return f"QM9({len(self)})"
