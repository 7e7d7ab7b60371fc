"""How close is an energy model's surface to labelled DFT away from the minima? Forces and energy rises on labelled
frames (labels/, potential/labelling.py): the held-out measurement of a potential.

    python -m schnetqm9.potential.force_check labels/b3lyp_test.extxyz.gz
    python -m schnetqm9.potential.force_check labels/b3lyp_test.extxyz.gz --checkpoint checkpoints/best_model_energy.pth
    python -m schnetqm9.potential.force_check labels/b3lyp_test.extxyz.gz --compare-labels gfn2_test.extxyz.gz

For every labelled frame x of a molecule, with the label's energy E*(x) and forces F*(x) [n, 3]:

    forces    the model's F(x) = -dE/dx against F*(x), per Cartesian component of every atom: MAE (goal
              <= 0.05 eV/A) and RMSE over all frames, per element, per kind of frame (minimum, t300, n0.05, ...)
              and per molecule size (heavy atoms), and per frame the cosine between the two force vectors [3n];
    energies  the rise from the molecule's labelled minimum, dE(x) = E(x) - E(x_min), against the label's
              dE*(x) = E*(x) - E*(x_min): absolute energies are not compared, because the labelling method's differ
              from QM9's by a per-molecule offset (labels/README.md) and an energy model's output may be U0 (with
              the zero-point energy) or the electronic energy.

The model is evaluated through SchNetCalculator (float64, with its repulsive wall, which is zero beyond 0.8 of each
element pair's shortest QM9 distance), as a user's relaxation or MD would see it. With --compare-labels, another
method's labels of the same frames (labelling.py run on the labelled file, e.g. --method gfn2) take the model's
place: how far a cheaper level of theory is from the labels, the floor of a model pretrained on it alone. Prints a
table, writes the per-frame numbers and the summary to --output (JSON) and the parity plot of the force components,
per element, to --figure.
"""
from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from ase import Atoms
from tqdm.auto import tqdm

from schnetqm9 import files
from schnetqm9.cli import Parser, UserError
from schnetqm9.data.qm9 import SYMBOLS
from schnetqm9.potential import calculator as ase_calculator
from schnetqm9.potential import surface

GOALS = dict(force_mae=0.05)


def read_frames(paths: list[Path]) -> list:
    """The frames (ase.Atoms) of labelled files (surface.read_labelled), each with its label energy (eV) and forces
    [n, 3] (eV/A) kept as info['label_energy'] and arrays['label_forces']."""
    frames = surface.read_labelled([str(path) for path in paths])
    if not frames:
        raise UserError("no frames in " + ", ".join(map(str, paths)))
    for k, atoms in enumerate(frames):
        try:
            energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        except Exception:  # ASE: no calculator, or one without that property
            name = atoms.info.get("name", atoms.get_chemical_formula())
            raise UserError(f"frame {k} ({name}) has no energy or no forces: give labelled frames "
                            "(python -m schnetqm9.potential.labelling writes them)") from None
        atoms.info["label_energy"], atoms.arrays["label_forces"] = float(energy), np.array(forces, dtype=float)
        atoms.info.setdefault("name", f"frame {k}")
    return frames


def molecule_of(atoms) -> str:
    """The key that groups frames of one molecule: QM9's gdb index, or else the chemical formula."""
    gdb = atoms.info.get("gdb")
    return f"gdb_{gdb}" if gdb is not None else atoms.get_chemical_formula()


Surface = Callable[[Atoms], tuple[float, np.ndarray]]  # a frame -> (energy in eV, forces [n, 3] in eV/A)


def of_calculator(calc: ase_calculator.SchNetCalculator) -> Surface:
    """A model's surface, through the calculator (float64, with its wall unless it was built without)."""
    def surface_at(atoms: Atoms) -> tuple[float, np.ndarray]:
        atoms = atoms.copy()
        atoms.calc = calc
        return float(atoms.get_potential_energy()), atoms.get_forces()
    return surface_at


def of_labels(other: list) -> Surface:
    """Another method's labels (read_frames) of the same frames, found by the frame's name; a frame missing from
    them, or at other positions, is a one-line UserError."""
    by_name = {str(a.info["name"]): a for a in other}

    def surface_at(atoms: Atoms) -> tuple[float, np.ndarray]:
        name = str(atoms.info["name"])
        twin = by_name.get(name)
        if twin is None or len(twin) != len(atoms) or not np.allclose(twin.positions, atoms.positions, atol=1e-6):
            raise UserError(f"--compare-labels has no frame {name} at the same positions: label the same file "
                            "with the other method (python -m schnetqm9.potential.labelling LABELS --method ...)")
        return twin.info["label_energy"], twin.arrays["label_forces"]
    return surface_at


def evaluate(frames: list, surface_at: Surface) -> list[dict]:
    """One row per frame: the model's (or other method's) energy (eV) and forces [n, 3] (eV/A) beside the label's,
    and their errors."""
    rows = []
    for atoms in tqdm(frames, desc="Evaluating", unit="frame"):
        energy, f = surface_at(atoms)
        ref = atoms.arrays["label_forces"]
        cosine = float((f * ref).sum() / max(np.linalg.norm(f) * np.linalg.norm(ref), 1e-12))
        rows.append(dict(name=str(atoms.info["name"]), molecule=molecule_of(atoms),
                         kind=str(atoms.info.get("kind", "")), atoms=len(atoms), z=atoms.numbers.tolist(),
                         energy=float(energy), label_energy=atoms.info["label_energy"],
                         force_mae=float(np.abs(f - ref).mean()), force_rms_label=float(np.sqrt((ref**2).mean())),
                         cosine=cosine, forces=f.tolist(), label_forces=ref.tolist()))
    return rows


def energy_rises(rows: list[dict]) -> None:
    """Adds to every frame of a molecule whose minimum is among the frames (kind 'minimum') its rise above it, the
    model's and the label's (eV): 'rise' and 'label_rise'."""
    minima = {r["molecule"]: r for r in rows if r["kind"] == "minimum"}
    for r in rows:
        m = minima.get(r["molecule"])
        if m is not None and r is not m:
            r["rise"], r["label_rise"] = r["energy"] - m["energy"], r["label_energy"] - m["label_energy"]


def summarise(rows: list[dict]) -> dict:
    """Force errors over all components (all frames, per element, per kind) and the energy-rise errors."""
    per_frame = [np.abs(np.subtract(r["forces"], r["label_forces"])) for r in rows]  # [n, 3] each
    err = np.concatenate(per_frame)  # [atoms, 3]
    z = np.concatenate([r["z"] for r in rows])
    by_element = {SYMBOLS.get(int(e), str(e)): float(err[z == e].mean()) for e in np.unique(z)}

    def grouped(key: Callable[[dict], object]) -> dict:
        groups = defaultdict(list)
        for r, e in zip(rows, per_frame):
            groups[key(r)].append(e)
        return {k: dict(frames=len(v), force_mae=float(np.concatenate(v).mean())) for k, v in sorted(groups.items())}

    s = dict(frames=len(rows), molecules=len({r["molecule"] for r in rows}), atoms=int(len(z)),
             force_mae=float(err.mean()), force_rmse=float(np.sqrt((err**2).mean())),
             force_mae_by_element=by_element, force_by_kind=grouped(lambda r: r["kind"]),
             force_by_heavy_atoms=grouped(lambda r: sum(1 for e in r["z"] if e > 1)),
             cosine_median=float(np.median([r["cosine"] for r in rows])),
             label_force_rms_median=float(np.median([r["force_rms_label"] for r in rows])))
    risen = [r for r in rows if "rise" in r]
    if risen:
        miss = np.array([r["rise"] - r["label_rise"] for r in risen])
        s.update(rise_frames=len(risen), rise_mae_mev=float(1000 * np.abs(miss).mean()),
                 rise_error_median_mev=float(1000 * np.median(miss)),
                 label_rise_median_ev=float(np.median([r["label_rise"] for r in risen])))
    return s


def print_summary(s: dict, what: str, labels: list[Path]) -> None:
    print(f"{what}; {s['frames']} labelled frames of {s['molecules']} molecules "
          f"({s['atoms']:,} atoms) from {', '.join(map(str, labels))}")
    print(f"  forces: MAE {s['force_mae']:.4f} eV/A per component (goal <= {GOALS['force_mae']}), RMSE "
          f"{s['force_rmse']:.4f}; cosine to the label's, median {s['cosine_median']:.4f} (label force RMS, median "
          f"frame: {s['label_force_rms_median']:.3f} eV/A)")
    print("  force MAE per element: " + ", ".join(f"{e} {v:.4f}" for e, v in s["force_mae_by_element"].items()))
    print("  force MAE per kind of frame: " + ", ".join(f"{k} {v['force_mae']:.4f} ({v['frames']} frames)"
                                                     for k, v in s["force_by_kind"].items()))
    print("  force MAE per heavy-atom count: " + ", ".join(f"{k} {v['force_mae']:.4f} ({v['frames']} frames)"
                                                         for k, v in s["force_by_heavy_atoms"].items()))
    if "rise_frames" in s:
        print(f"  energy rise above the molecule's minimum ({s['rise_frames']} frames, label's median "
              f"{s['label_rise_median_ev']:.3f} eV): MAE {s['rise_mae_mev']:.1f} meV, median error "
              f"{s['rise_error_median_mev']:+.1f} meV (negative: the model's surface too flat)")


def plot_parity(rows: list[dict], summary: dict, path: Path, title: str, ylabel: str = "SchNet") -> None:
    """Model force components against the label's, one colour per element, with y = x."""
    from schnetqm9.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(5.6, 5.4))
    z = np.concatenate([r["z"] for r in rows])
    pred, ref = (np.concatenate([r[k] for r in rows]) for k in ("forces", "label_forces"))  # [atoms, 3]
    lim = float(np.abs(np.concatenate([pred, ref])).max()) * 1.05
    ax.plot([-lim, lim], [-lim, lim], color="0.3", lw=1, ls="--", label="y = x", zorder=1)
    for e in np.unique(z):
        symbol = SYMBOLS.get(int(e), str(e))
        ax.scatter(ref[z == e].ravel(), pred[z == e].ravel(), s=5, alpha=0.45, linewidths=0, zorder=2,
                   label=f"{symbol} (MAE {summary['force_mae_by_element'][symbol]:.3f})")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("DFT force component (eV/Å)")
    ax.set_ylabel(f"{ylabel} force component (eV/Å)")
    ax.text(0.04, 0.96, f"MAE  {summary['force_mae']:.4f} eV/Å\nRMSE {summary['force_rmse']:.4f} eV/Å",
            transform=ax.transAxes, va="top", family="monospace", fontsize=8,
            bbox=dict(boxstyle="round", fc="white", ec="0.7"))
    ax.legend(loc="lower right", fontsize=8, markerscale=2)
    ax.set_title(f"{title} ({summary['frames']} frames, {summary['atoms']:,} atoms)")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("labels", type=Path, nargs="+", help="extended-XYZ files of labelled frames (energy, forces)")
    ase_calculator.add_model_flags(p)
    p.add_argument("--compare-labels", type=Path, metavar="FILE", help="instead of a model, another method's labels "
                   "of the same frames (labelling.py run on the labelled file, e.g. with --method gfn2)")
    p.add_argument("--output", type=Path, default=Path("results/force_check.json"), help="the JSON written")
    p.add_argument("--figure", type=Path, default=Path("results/force_parity.png"), help="the parity plot written")
    args = p.parse_args(argv)
    try:
        frames = read_frames(args.labels)
        if args.compare_labels:
            other = read_frames([args.compare_labels])
            surface_at, name = of_labels(other), str(other[0].info.get("label_name", args.compare_labels.name))
            what, repulsion = f"labels of {args.compare_labels} ({name})", None
        else:
            calc = ase_calculator.from_flags(args)
            surface_at, name = of_calculator(calc), "SchNet"
            what, repulsion = f"model: {os.path.relpath(args.checkpoint)}", calc.repulsion
        rows = evaluate(frames, surface_at)
    except UserError as err:
        sys.exit(f"error: {err}")
    energy_rises(rows)
    summary = {**summarise(rows), "repulsion": repulsion}
    print_summary(summary, what, args.labels)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    kept = [{k: v for k, v in r.items() if k not in ("forces", "label_forces", "z")} for r in rows]
    with files.atomic_write(args.output) as tmp:
        tmp.write_text(json.dumps(dict(checkpoint=None if args.compare_labels else str(args.checkpoint),
                                       compared_labels=str(args.compare_labels) if args.compare_labels else None,
                                       labels=[str(x) for x in args.labels],
                                       goals=GOALS, summary=summary, frames=kept), indent=1))
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    title = f"Forces of {name if args.compare_labels else args.checkpoint.stem}"
    plot_parity(rows, summary, args.figure, title, ylabel=name)
    print(f"wrote {args.output} and {args.figure}")
    return summary


if __name__ == "__main__":
    main()
