"""How the labels sit against QM9: at QM9's own minima (the frames of kind 'minimum'), the largest residual force of
the labelling method and its energy offset from QM9's U0 - ZPVE; and the seconds each label took, by size.

    python -m experiments.labels.minima labels/b3lyp_test.extxyz.gz labels/b3lyp_train.extxyz.gz \\
        --output experiments/labels/minima.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import ase.io
import numpy as np

from schnetqm9.files import atomic_write


def frames(paths: list[str]) -> list:
    return [a for p in paths if Path(p).exists() for a in ase.io.read(p, index=":")]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("labels", nargs="+", help="labelled extended-XYZ files (labelling.py's output)")
    p.add_argument("--output", type=Path, help="the JSON written")
    args = p.parse_args(argv)
    labelled = frames(args.labels)
    minima = [a for a in labelled if a.info.get("kind") == "minimum"]
    rows = [dict(name=a.info["name"], atoms=len(a), heavy=int((a.numbers > 1).sum()),
                 max_force=float(np.linalg.norm(a.get_forces(), axis=1).max()),
                 offset_mev=1000 * (a.get_potential_energy() - float(a.info["qm9_u0_minus_zpve"])))
            for a in minima]
    by_heavy: dict[int, list[float]] = {}
    for a in labelled:
        by_heavy.setdefault(int((a.numbers > 1).sum()), []).append(float(a.info["label_seconds"]))
    summary = dict(
        frames=len(labelled), minima=len(rows),
        max_force_median=float(np.median([r["max_force"] for r in rows])) if rows else None,
        max_force_range=[float(min(r["max_force"] for r in rows)), float(max(r["max_force"] for r in rows))]
        if rows else None,
        offset_mev_median=float(np.median([r["offset_mev"] for r in rows])) if rows else None,
        offset_mev_per_heavy_atom=float(np.median([r["offset_mev"] / r["heavy"] for r in rows])) if rows else None,
        seconds_by_heavy_atoms={k: dict(frames=len(v), median=float(np.median(v))) for k, v in sorted(by_heavy.items())})
    print(f"{len(labelled)} labelled frames, {len(rows)} of them QM9 minima")
    if rows:
        print(f"largest residual force at QM9's minima: median {summary['max_force_median']:.4f} eV/A "
              f"(range {summary['max_force_range'][0]:.4f}-{summary['max_force_range'][1]:.4f})")
        print(f"energy - (U0 - ZPVE): median {summary['offset_mev_median']:.1f} meV, "
              f"{summary['offset_mev_per_heavy_atom']:.1f} meV per heavy atom")
        print(f"{'heavy':>5} {'atoms':>5} {'max force':>10} {'offset':>10}  name")
        for r in sorted(rows, key=lambda r: r["heavy"]):
            print(f"{r['heavy']:>5} {r['atoms']:>5} {r['max_force']:>10.4f} {r['offset_mev']:>8.1f} meV  {r['name']}")
    print("seconds per label by heavy atoms: " + ", ".join(
        f"{k}: {v['median']:.0f} s ({v['frames']})" for k, v in summary["seconds_by_heavy_atoms"].items()))
    if args.output:
        with atomic_write(args.output) as tmp:
            tmp.write_text(json.dumps(dict(summary=summary, minima=rows), indent=1))
    return summary


if __name__ == "__main__":
    main()
