"""Molecular dynamics on a potential, checked: does an NVE trajectory keep its energy and its bonds?

    python -m schnetqm9.potential.nve --checkpoint models/schnet_qm9_U0_potential.pth --molecules 20 --fs 1000

From each QM9 test molecule's DFT geometry with Maxwell-Boltzmann velocities at 300 K (no net momentum or rotation),
velocity Verlet (ASE) at 0.5 fs per step for `--fs` femtoseconds on the calculator's surface. Measured per
trajectory:

    drift     max_t |E(t) - E(0)|, E = kinetic + potential: an exact integrator of a smooth surface keeps it to
              O(dt^2) (issue 34's goal over 1 ps: <= 10 meV);
    bonds     a bond (a pair closer than 1.2 times the sum of ASE's covalent radii at the start) is broken when it
              stretches beyond 1.5 times its starting length; the goal is none.

Prints the median and worst drift and the broken bonds, writes the per-molecule numbers to --output (JSON) and one
trajectory's total, potential and kinetic energy against time to --figure: the first molecule's, or the one with
the worst drift.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from tqdm.auto import tqdm

from schnetqm9 import files
from schnetqm9.cli import Parser, UserError
from schnetqm9.data import qm9 as qm9_data
from schnetqm9.data.splits import checked_molecules

GOALS = dict(drift_mev=10.0, broken=0)
BONDED = 1.2  # a bond: closer than this times the covalent sum at the start
BROKEN = 1.5  # broken: longer than this times its starting length


def thermalise(atoms: Atoms, temperature: float, seed: int) -> None:
    """Maxwell-Boltzmann momenta at `temperature` (K), then no net momentum and no net rotation."""
    from ase.md import velocitydistribution as vd

    draw = getattr(vd, "thermalize_momenta", vd.MaxwellBoltzmannDistribution)  # renamed in ASE 3.29
    draw(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    vd.Stationary(atoms)
    vd.ZeroRotation(atoms)


def bonds(atoms: Atoms) -> np.ndarray:
    """Pairs [m, 2] closer than BONDED times the sum of their covalent radii (ASE's)."""
    from ase.data import covalent_radii

    d = atoms.get_all_distances()
    r = covalent_radii[atoms.numbers]
    i, j = np.nonzero(np.triu(d < BONDED * (r[:, None] + r[None, :]), 1))
    return np.stack([i, j], axis=1)


@dataclass
class Trajectory:
    """Energies (eV) [T + 1] at t = 0, dt, ..., T dt (fs: t_fs), and each bond's largest stretch (ratio to its
    starting length) [m]."""
    t_fs: np.ndarray
    potential: np.ndarray
    kinetic: np.ndarray
    stretch: np.ndarray

    @property
    def total(self) -> np.ndarray:
        return self.potential + self.kinetic

    @property
    def drift(self) -> float:
        """max_t |E(t) - E(0)| (eV)."""
        return float(np.abs(self.total - self.total[0]).max())

    @property
    def broken(self) -> int:
        return int((self.stretch > BROKEN).sum())


def run(atoms: Atoms, calc, fs: float = 100.0, dt_fs: float = 0.5, temperature: float = 300.0,
        seed: int = 0) -> Trajectory:
    """NVE (velocity Verlet) for `fs` femtoseconds from `atoms`' positions with thermal velocities (seeded)."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = calc
    thermalise(atoms, temperature, seed)
    pairs = bonds(atoms)
    start = np.linalg.norm(atoms.positions[pairs[:, 0]] - atoms.positions[pairs[:, 1]], axis=1)
    stretch = np.ones(len(pairs))
    steps = round(fs / dt_fs)
    potential, kinetic = np.empty(steps + 1), np.empty(steps + 1)
    potential[0], kinetic[0] = atoms.get_potential_energy(), atoms.get_kinetic_energy()
    dyn = VelocityVerlet(atoms, dt_fs * units.fs)
    for k in range(1, steps + 1):
        dyn.run(1)
        potential[k], kinetic[k] = atoms.get_potential_energy(), atoms.get_kinetic_energy()
        length = np.linalg.norm(atoms.positions[pairs[:, 0]] - atoms.positions[pairs[:, 1]], axis=1)
        stretch = np.maximum(stretch, length / start)
    return Trajectory(np.arange(steps + 1) * dt_fs, potential, kinetic, stretch)


def plot(traj: Trajectory, path: Path, title: str) -> None:
    """Total, potential and kinetic energy (meV, relative to the start) against time (fs)."""
    from schnetqm9.plots import plt, save_figure

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.2), sharex=True, height_ratios=[1, 2])
    top.plot(traj.t_fs, 1000 * (traj.total - traj.total[0]), color="k", lw=0.8)
    top.set_ylabel("E(t) − E(0) (meV)")
    top.set_title(f"{title}\ntotal energy: largest change {1000 * traj.drift:.1f} meV; {traj.broken} bonds broken",
                  fontsize=9)
    for values, name in ((traj.potential, "potential"), (traj.kinetic, "kinetic")):
        bottom.plot(traj.t_fs, 1000 * (values - values[0]), lw=0.8, label=name)
    bottom.set_xlabel("time (fs)")
    bottom.set_ylabel("energy − its start (meV)")
    bottom.legend(fontsize=8)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    from schnetqm9.potential.calculator import add_model_flags, from_flags

    p = Parser(description=__doc__.split("\n\n")[0])
    add_model_flags(p)
    p.add_argument("--molecules", type=int, default=20, help="QM9 test molecules (check.py's sample)")
    p.add_argument("--fs", type=float, default=1000.0, help="length of each trajectory (fs)")
    p.add_argument("--dt", type=float, default=0.5, help="time step (fs)")
    p.add_argument("--temperature", type=float, default=300.0, help="of the starting velocities (K)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and of the velocities")
    p.add_argument("--data-dir", default="data", help="QM9 cache folder")
    p.add_argument("--output", type=Path, default=Path("results/nve.json"), help="the JSON written")
    p.add_argument("--figure", type=Path, default=Path("results/nve.png"), help="the worst trajectory's energies")
    args = p.parse_args(argv)
    try:
        if min(args.molecules, args.fs, args.dt, args.temperature) <= 0 or args.dt > args.fs:
            raise UserError("--molecules, --fs, --dt and --temperature must be positive, --dt at most --fs")
        calc = from_flags(args)
        qm9 = qm9_data.QM9(args.data_dir)
        rows, worst = [], None
        for i in tqdm(checked_molecules(args.molecules, args.seed), desc="NVE", unit="mol"):
            d = qm9[i]
            traj = run(Atoms(numbers=d.z.numpy(), positions=d.pos.double().numpy()), calc, args.fs, args.dt,
                       args.temperature, args.seed + i)
            rows.append(dict(index=i, gdb=int(qm9.gdb[i]), atoms=len(d.z), drift_mev=1000 * traj.drift,
                             bonds=len(traj.stretch), broken=traj.broken, max_stretch=float(traj.stretch.max())))
            if worst is None or traj.drift > worst[1].drift:
                worst = (i, traj)
    except UserError as err:
        sys.exit(f"error: {err}")
    drift = np.array([r["drift_mev"] for r in rows])
    summary = dict(molecules=len(rows), fs=args.fs, dt_fs=args.dt, temperature=args.temperature,
                   drift_median_mev=float(np.median(drift)), drift_max_mev=float(drift.max()),
                   within_goal=float((drift <= GOALS["drift_mev"]).mean()),
                   broken=int(sum(r["broken"] for r in rows)), max_stretch=float(max(r["max_stretch"] for r in rows)))
    print(f"{args.checkpoint}: NVE {args.fs:g} fs at {args.temperature:g} K, {args.dt:g} fs steps, {len(rows)} QM9 "
          f"test molecules: |E(t) - E(0)| max median {summary['drift_median_mev']:.1f} meV, worst "
          f"{summary['drift_max_mev']:.1f}; within {GOALS['drift_mev']:g} meV: {100 * summary['within_goal']:.0f} %; "
          f"bonds broken: {summary['broken']} (largest stretch {summary['max_stretch']:.2f}x)")
    for path in (args.output, args.figure):
        path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_write(args.output) as tmp:
        tmp.write_text(json.dumps(dict(checkpoint=str(args.checkpoint), goals=GOALS, summary=summary, molecules=rows,
                                       args={k: str(v) for k, v in vars(args).items()}), indent=1))
    i, traj = worst
    plot(traj, args.figure, f"NVE on {args.checkpoint.stem}: gdb_{int(qm9.gdb[i])}, the largest drift of "
                            f"{len(rows)} molecules")
    print(f"wrote {args.output} and {args.figure}")
    return summary


if __name__ == "__main__":
    main()
