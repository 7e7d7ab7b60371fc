"""SMILES in (smiles.py, molecules.py, predict.py --smiles and .smi files) and the notes on what lies outside QM9
(domain.py): each with what a chemist would check."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest

from schnetqm9.inference import domain, smiles
from schnetqm9.inference import predictions as predict

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "predict.py"), "--device", "cpu", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_embedding_is_seeded_chemically_sane_and_complete() -> None:
    z1, pos1 = smiles.embed("OCC(=O)N")
    z2, pos2 = smiles.embed("OCC(=O)N")
    np.testing.assert_array_equal(z1, z2)
    np.testing.assert_array_equal(pos1, pos2)  # the same SMILES, the same geometry, to the last bit
    assert sorted(z1.tolist()) == sorted([8, 6, 6, 8, 7] + [1] * 5)  # hydrogens added
    d = np.linalg.norm(pos1[:, None] - pos1[None], axis=-1)[np.triu_indices(len(z1), 1)]
    assert 0.9 < d.min() < 1.1 and d.max() < 5.0  # an X-H bond is the shortest distance; a compact molecule
    assert smiles.charge(smiles.parse("C[NH3+]")) == 1


def test_predict_from_smiles_matches_predict_from_the_same_geometry(tmp_path: Path) -> None:
    z, pos = smiles.embed("c1ccccc1O")
    ase.io.write(tmp_path / "phenol.xyz", ase.Atoms(numbers=z, positions=pos))
    from_file = predict.main(["--device", "cpu", "--target", "gap", str(tmp_path / "phenol.xyz")])
    from_smiles = predict.main(["--device", "cpu", "--target", "gap", "--smiles", "c1ccccc1O"])
    assert from_smiles[0]["gap"] == pytest.approx(from_file[0]["gap"], abs=1e-5)
    assert from_smiles[0]["smiles"] == "c1ccccc1O" and from_smiles[0]["formula"] == "C6H6O"


def test_smi_file_rows_show_smiles_and_names(tmp_path: Path) -> None:
    (tmp_path / "mols.smi").write_text("# two molecules\nCCO ethanol\n\nC#N hydrogen cyanide\n")
    proc = run(["--target", "gap", "--csv", "out.csv", "mols.smi"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [(r["smiles"], r["name"], r["frame"]) for r in rows] == [("CCO", "ethanol", "0"),
                                                                     ("C#N", "hydrogen cyanide", "1")]
    assert "CCO" in proc.stdout and "C#N" in proc.stdout


@pytest.mark.slow
def test_bad_smiles_get_one_line_each_and_the_good_rows_are_still_printed(tmp_path: Path) -> None:
    (tmp_path / "mixed.smi").write_text("CCO\nC1CC\nC[Si](C)(C)C\n")
    proc = run(["--target", "gap", "--csv", "out.csv", "mixed.smi", "--smiles", "not_a_smiles", "CC#N"], tmp_path)
    errors = proc.stderr.strip().splitlines()
    assert proc.returncode == 1
    assert errors == [
        "error: mixed.smi line 2: SMILES 'C1CC': RDKit cannot parse it",
        "error: mixed.smi line 3: SMILES 'C[Si](C)(C)C': element Si was never seen in training; this model knows "
        "H, C, N, O, F",
        "error: SMILES 'not_a_smiles': RDKit cannot parse it"]
    table = proc.stdout.splitlines()[2:]
    assert [line.split()[4] for line in table] == ["CCO", "CC#N"]  # the good inputs, in order
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))  # every good row, then a row per failure
    assert [r["smiles"] for r in rows] == ["CCO", "CC#N", "C1CC", "C[Si](C)(C)C", "not_a_smiles"]
    assert [r["note"].startswith("failed: ") for r in rows] == [False, False, True, True, True]
    assert rows[2]["file"] == "mixed.smi" and rows[2]["frame"] == "1" and rows[2]["gap"] == ""
    proc = run(["--smiles", "C1CC"], tmp_path)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines() == ["error: SMILES 'C1CC': RDKit cannot parse it"]


def test_a_smiles_that_cannot_be_embedded_is_named(monkeypatch) -> None:
    from rdkit.Chem import AllChem

    monkeypatch.setattr(AllChem, "EmbedMolecule", lambda mol, params: -1)  # as RDKit answers when it gives up
    with pytest.raises(smiles.SmilesError, match=r"SMILES 'CCO': RDKit could not embed it in 3D"):
        smiles.embed("CCO")


def test_notes_name_each_way_out_of_qm9() -> None:
    water = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    z_water = np.array([8, 1, 1])
    assert domain.notes(z_water, water, cutoff=10.0, max_heavy_atoms=9) == []
    assert domain.notes(np.array([6]), np.zeros((1, 3)), 10.0, 9)[0] == "a single atom: QM9 has no free atoms"
    two = np.concatenate([water, water + (50.0, 0, 0)])
    assert "2 fragments farther apart than the cutoff (10 A)" in domain.notes(np.tile(z_water, 2), two, 10.0, 9)[0]
    assert domain.notes(np.tile(z_water, 2), two, 60.0, 9) == []  # within a 60 A cutoff: one molecule
    methyl = np.array([6, 1, 1, 1])
    pos = np.array([[0, 0, 0], [1.09, 0, 0], [-0.5, 0.94, 0], [-0.5, -0.94, 0]])
    assert domain.notes(methyl, pos, 10.0, 9) == ["odd number of electrons (9, if neutral): a radical; QM9 is "
                                                  "closed-shell"]
    assert domain.notes(methyl, pos, 10.0, 9, charge=1) == ["net charge +1: QM9 is neutral, the model cannot see a "
                                                            "charge"]
    chain = np.array([[1.5 * k, 0.0, 0.0] for k in range(10)])
    assert domain.notes(np.full(10, 6), chain, 10.0, 9) == ["10 heavy atoms, more than any training molecule (9)"]
    assert domain.notes(np.full(10, 6), chain, 10.0, None) == []
    crushed = water.copy()
    crushed[2] = [0.3, 0.0, 0.0]
    assert "atoms 0 and 2 only 0.30 A apart: broken geometry" in domain.notes(z_water, crushed, 10.0, 9)


def test_predict_prints_the_notes(tmp_path: Path) -> None:
    ase.io.write(tmp_path / "h.xyz", ase.Atoms("H", positions=[[0, 0, 0]]))
    ase.io.write(tmp_path / "far.xyz", ase.Atoms("CH4CH4", positions=np.concatenate(
        [smiles.embed("C")[1], smiles.embed("C")[1] + (40.0, 0, 0)])))
    rows = predict.main(["--device", "cpu", "--target", "gap", str(tmp_path / "h.xyz"), str(tmp_path / "far.xyz")])
    assert rows[0]["note"] == "a single atom: QM9 has no free atoms; odd number of electrons (1, if neutral): a " \
                              "radical; QM9 is closed-shell"
    assert rows[1]["note"] == "2 fragments farther apart than the cutoff (10 A): seen as separate molecules"


def test_geometry_cost_compares_rdkit_and_dft_geometries_for_every_shipped_target(tmp_path: Path) -> None:
    import json

    from schnetqm9.analysis import geometry_cost
    from schnetqm9.data.targets import STANDARD

    result = geometry_cost.main(["--molecules", "4", "--output", str(tmp_path / "gc.json")])
    assert json.loads((tmp_path / "gc.json").read_text()) == result
    assert result["molecules"] + len(result["failed"]) == 4 and list(result["targets"]) == STANDARD
    for row in result["targets"].values():
        assert row["ratio"] == pytest.approx(row["mae_rdkit_geometry"] / row["mae_dft_geometry"])


@pytest.mark.slow
def test_geometry_cost_relaxed_from_dft_minima(tmp_path: Path) -> None:
    """geometry_cost --relax --start dft: the DFT minima relaxed on the shipped potential move (a median RMSD > 0)
    and every shipped target gets both MAEs and their ratio."""
    out = tmp_path / "g.json"
    proc = subprocess.run([sys.executable, "-m", "schnetqm9.analysis.geometry_cost", "--molecules", "2", "--relax",
                           "--start", "dft", "--output", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["relax"] and result["start"] == "dft" and result["molecules"] == 2 and result["failed"] == []
    assert 0 < result["relax_rmsd_median"] < 1.0
    assert len(result["targets"]) == 12 and all(r["ratio"] > 0 for r in result["targets"].values())
