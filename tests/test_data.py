"""The QM9 data module: real data in PyG's layout and units, the cache, and the splits."""
from __future__ import annotations

import json
import shutil
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from schnetqm9.data import batch as batching
from schnetqm9.data import qm9 as qm9_data
from schnetqm9.data import splits, targets
from schnetqm9.data.qm9 import QM9
from schnetqm9.data.targets import HARTREE_TO_EV, TARGETS

HA = 27.211386246  # eV per Hartree, written out here on purpose rather than imported


def raw_row(gdb: int) -> pd.Series:
    """qm9pack's own CSV row for molecule gdb_N, read independently of the parser under test."""
    folder = qm9_data.qm9pack_data_dir()
    for part in sorted(folder.glob("qm9_part*.csv")):
        for chunk in pd.read_csv(part, chunksize=20000):
            hit = chunk[chunk["Index"] == gdb]
            if len(hit):
                return hit.iloc[0]
    raise LookupError(gdb)


def test_count_and_shapes(qm9: QM9) -> None:
    assert len(qm9) == 130_831
    assert qm9.y.shape == (130_831, 19) and qm9.y.dtype == torch.float32
    d = qm9[0]
    assert d.z.dtype == torch.long and d.pos.dtype == torch.float32
    assert d.y.shape == (1, 19) and d.pos.shape == (d.z.numel(), 3)
    assert d.name == "gdb_1" and int(d.idx) == 0
    last = qm9[-1]
    assert last.name == "gdb_133885" and int(last.idx) == 133_884  # PyG's idx: position in the full release
    assert int(qm9.num_atoms.max()) == 29 and set(qm9.z.unique().tolist()) == {1, 6, 7, 8, 9}
    assert bool((qm9.gdb.diff() > 0).all())


def test_methane_by_hand(qm9: QM9) -> None:
    y = qm9[0].y[0]
    # gdb_1 = CH4: gap 0.5048 Ha, U0 -40.47893 Ha, mu 0 D, alpha 13.21 a0^3, Cv 6.469 cal/mol K, A 157.7118 GHz
    assert y[4].item() == pytest.approx(13.7363, abs=1e-4)
    assert y[4].item() == pytest.approx(0.5048 * HA, rel=1e-6)
    assert y[7].item() == pytest.approx(-40.47893 * HA, rel=1e-7)
    assert y[0].item() == 0.0 and y[1].item() == pytest.approx(13.21)
    assert y[11].item() == pytest.approx(6.469) and y[16].item() == pytest.approx(157.7118)
    # U0_atom = U0 - E(C) - 4 E(H) with QM9's free-atom energies
    assert y[12].item() == pytest.approx((-40.47893 - (-37.846772) - 4 * (-0.500273)) * HA, abs=1e-4)
    assert qm9[0].z.tolist() == [6, 1, 1, 1, 1]
    assert qm9[0].pos[0].tolist() == pytest.approx([-0.0126981359, 1.0858041578, 0.0080009958], abs=1e-6)


@pytest.mark.parametrize("gdb", [2, 57_000, 133_885])
def test_molecules_value_by_value(qm9: QM9, gdb: int) -> None:
    """Every target of a molecule equals qm9pack's raw number, converted by hand."""
    row = raw_row(gdb)
    i = int(torch.nonzero(qm9.gdb == gdb))
    d = qm9[i]
    expected = [
        row["Dipole_debye"], row["Polarizability_bohr3"], row["HOMO_au"] * HA, row["LUMO_au"] * HA,
        row["HOMO_LUMO_gap_au"] * HA, row["R2_bohr2"], row["ZPVE_au"] * HA, row["InternalEnergy_0K_au"] * HA,
        row["InternalEnergy_298K_au"] * HA, row["Enthalphy_298K_au"] * HA, row["GibbsFreeEnergy_298K_au"] * HA,
        row["Heatcapacity_Cv_cal_mol_K"],
    ]
    np.testing.assert_allclose(d.y[0, :12].double().numpy(), expected, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(d.y[0, 16:].double().numpy(), [row["RotA_GHz"], row["RotB_GHz"], row["RotC_GHz"]],
                               rtol=1e-6)
    assert d.name == f"gdb_{gdb}" and d.z.numel() == row["N_atoms"]
    xyz = np.array(json.loads(row["XYZ_Ang"]))
    np.testing.assert_allclose(d.pos.numpy(), xyz, atol=1e-6)


def test_atomization_energies_are_total_minus_atomref(qm9: QM9) -> None:
    """Targets 12-15 equal targets 7-10 minus the per-element reference energies (PyG's atomref), summed."""
    mols = torch.arange(0, len(qm9), 997)
    b = batching.Batcher(qm9)(mols)
    for k, name in enumerate(["U0", "U", "H", "G"]):
        ref = targets.atomref(name)
        assert ref.shape == (100, 1)
        per_mol = torch.zeros(len(mols), dtype=torch.float64).index_add_(0, b.batch, ref[b.z, 0].double())
        atomization = b.y[:, 7 + k].double() - per_mol
        torch.testing.assert_close(b.y[:, 12 + k].double(), atomization, atol=2e-3, rtol=0)  # float32 of ~-1e4 eV
    # PyG's published H reference energy for U0, to the digits it prints
    assert targets.atomref("U0")[1, 0].item() == pytest.approx(-13.61312172, abs=1e-5)
    assert targets.atomref("gap") is None and targets.atomref("U0_atom") is None


def test_target_names() -> None:
    assert targets.target_index("gap") == 4 and targets.target_index("GAP") == 4
    assert targets.target_index("u0") == 7 and targets.target_index("U0_atom") == 12
    assert targets.target_index(18) == 18 and targets.target_index("3") == 3
    assert [TARGETS[n].column for n in TARGETS] == list(range(19))
    for bad in ["bandgap", 19, -1, ""]:
        with pytest.raises(ValueError, match="unknown QM9 target .*gap, r2"):
            targets.target_index(bad)


def test_target_lists() -> None:
    assert targets.parse("all") == ["mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "cv"]
    assert targets.parse("GAP, u0") == ["gap", "U0"] and targets.parse("4") == ["gap"]
    for bad, match in [("gap,gap", "twice"), ("gap,bandgap", "unknown QM9 target"), (",", "empty")]:
        with pytest.raises(ValueError, match=match):
            targets.parse(bad)
    specs = [targets.TARGETS[n] for n in ["mu", "r2", "gap", "U0"]]
    assert targets.readouts(specs) == ["dipole", "spatial_extent", "mean", "add"]
    assert targets.readouts(specs, "plain") == ["mean", "add", "mean", "add"]
    extensive = [n for n in targets.STANDARD if targets.TARGETS[n].extensive]
    assert extensive == ["alpha", "r2", "zpve", "U0", "U", "H", "G", "cv"]


def test_normalisation_comes_from_the_given_molecules_and_matches_its_definition(qm9: QM9) -> None:
    """Each target's standardisation: U0 per atom after the free atoms' energies, gap per molecule, r2 per unit of
    squared distance from the centre of mass; loss scales are the spreads of what the network must learn."""
    train = torch.arange(0, 5000, 3)
    b = batching.Batcher(qm9)(train)
    names = ["U0", "gap", "r2", "mu"]
    specs = [targets.TARGETS[n] for n in names]
    outputs = targets.readouts(specs)
    y = b.y[:, [7, 4, 5, 0]]
    refs = targets.references(specs, outputs, b.z, b.batch, y, fit=False)
    norm = targets.normalisation(outputs, refs, b.z, b.pos, b.batch, y)
    n = torch.bincount(b.batch).double()
    free = torch.zeros(len(train), dtype=torch.float64).index_add_(0, b.batch, targets.atomref("U0")[b.z, 0].double())
    assert norm["mean"][0] == pytest.approx(float(((y[:, 0].double() - free) / n).mean()), rel=1e-9)
    assert norm["loss_scale"][0] == pytest.approx(float((y[:, 0].double() - free).std()), rel=1e-9)
    assert 5 < norm["loss_scale"][0] < 15  # atomization energies spread over ~10 eV, totals over ~1000 eV
    assert norm["mean"][1] == pytest.approx(float(y[:, 1].double().mean()), rel=1e-9)
    assert norm["atomref"][0] is not None and norm["atomref"][1] is None
    assert norm["mean"][3] == 0.0 and norm["std"][3] == 1.0
    from ase.data import atomic_masses  # r2: per unit of sum_i |r_i - R|^2, R the centre of mass

    m = torch.tensor(atomic_masses, dtype=torch.float64)[b.z]
    com = torch.zeros(len(train), 3, dtype=torch.float64).index_add_(0, b.batch, m[:, None] * b.pos.double())
    com = com / torch.zeros(len(train), dtype=torch.float64).index_add_(0, b.batch, m)[:, None]
    spread = torch.zeros(len(train), dtype=torch.float64).index_add_(
        0, b.batch, (b.pos.double() - com[b.batch]).square().sum(1))
    assert norm["mean"][2] == pytest.approx(float((y[:, 2].double() / spread).mean()), rel=1e-9)
    assert norm["std"][2] == pytest.approx(float((y[:, 2].double() / spread).std()), rel=1e-9)
    first = batching.Batcher(qm9)(train[:50])
    other = targets.normalisation(outputs, refs, first.z, first.pos, first.batch, first.y[:, [7, 4, 5, 0]])
    assert other["mean"][1] != norm["mean"][1]  # it depends on the molecules it is given, nothing else


def test_cache_second_load_is_fast_and_equal(qm9: QM9) -> None:
    start = time.perf_counter()
    again = QM9(qm9.root, progress=False)
    assert time.perf_counter() - start < 5.0
    for attr in ("z", "pos", "ptr", "y", "gdb"):
        assert torch.equal(getattr(qm9, attr), getattr(again, attr))
    cache = qm9.root / f"qm9_v{qm9_data.CACHE_FORMAT}.pt"
    assert cache.stat().st_size < 60e6


@pytest.mark.slow
def test_truncated_cache_is_rebuilt(qm9: QM9, tmp_path) -> None:
    cache = qm9.root / f"qm9_v{qm9_data.CACHE_FORMAT}.pt"
    broken = tmp_path / cache.name
    shutil.copy(cache, broken)
    with open(broken, "r+b") as f:
        f.truncate(broken.stat().st_size // 2)
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = QM9(tmp_path, progress=False)
    assert torch.equal(rebuilt.y, qm9.y) and torch.equal(rebuilt.pos, qm9.pos)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt cache now loads cleanly
        QM9(tmp_path, progress=False)
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_stale_cache_is_rebuilt(qm9: QM9, tmp_path) -> None:
    cache = qm9.root / f"qm9_v{qm9_data.CACHE_FORMAT}.pt"
    tensors = torch.load(cache, weights_only=True)
    tensors["fingerprint"] = "from another release"
    torch.save(tensors, tmp_path / cache.name)
    with pytest.warns(UserWarning, match="another qm9pack release"):
        QM9(tmp_path, progress=False)


def test_splits() -> None:
    n = 130_831
    a, b = splits.split_indices(n, seed=7), splits.split_indices(n, seed=7)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [len(a[k]) for k in ("train", "val", "test")] == [110_000, 10_000, 10_831]
    c = splits.split_indices(n, seed=8)
    assert not torch.equal(a["train"], c["train"])
    sub = splits.split_indices(n, subset_size=10_000, seed=7)
    assert [len(sub[k]) for k in ("train", "val", "test")] == [8_000, 1_000, 1_000]
    for s in (a, sub):
        everything = torch.cat(list(s.values()))
        assert everything.unique().numel() == everything.numel()  # disjoint
        assert int(everything.min()) >= 0 and int(everything.max()) < n
    for bad in (0, -5, n + 1):
        with pytest.raises(ValueError, match="subset size"):
            splits.split_indices(n, subset_size=bad)
    with pytest.raises(ValueError, match="too small"):
        splits.split_indices(n, subset_size=5)


def test_split_roundtrip(tmp_path) -> None:
    s = splits.split_indices(1000, seed=3)
    splits.save_split(s, tmp_path / "split.json", seed=3)
    t = splits.load_split(tmp_path / "split.json")
    assert all(torch.equal(s[k], t[k]) for k in s)


def test_batcher_matches_data_objects(qm9: QM9) -> None:
    mols = torch.tensor([5, 0, 130_830, 42])
    b = batching.Batcher(qm9)(mols)
    for k, m in enumerate(mols.tolist()):
        d = qm9[m]
        assert torch.equal(b.z[b.batch == k], d.z) and torch.equal(b.pos[b.batch == k], d.pos)
        assert torch.equal(b.y[k], d.y[0])
    assert HARTREE_TO_EV == HA
