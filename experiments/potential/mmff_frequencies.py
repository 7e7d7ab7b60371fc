"""Is MMFF94's curvature at QM9's DFT geometries close to DFT's? A check of a candidate prior for the U0 potential
(docs/POTENTIAL.md): MMFF94's harmonic frequencies at each DFT geometry against QM9's own B3LYP harmonic
frequencies (qm9pack's Harmonic_Freq_cmi column).

    OMP_NUM_THREADS=1 python -m experiments.potential.mmff_frequencies --molecules 20

Bonds come from the DFT geometry (RDKit's rdDetermineBonds), MMFF94 types from them (as the training prior). The
Hessian is potential.mmff_hessian (central differences of MMFF's gradient, h = 1e-3 A), mass-weighted (ASE's
masses); its eigenvalues lambda give
wavenumbers 521.47 sqrt(lambda) cm^-1 for lambda in eV/(A^2 u), negative for negative lambda. The 3N - 6 (or 5)
highest are compared, sorted, with DFT's. A DFT geometry is not MMFF's minimum, so a few soft modes can come out
negative; the count of modes below -50 cm^-1 is reported.
"""
import argparse

import numpy as np
import pandas as pd
import torch

from schnetqm9.data import qm9 as qm9_data
from schnetqm9.data import splits
from schnetqm9.potential import losses as potential

WAVENUMBER = 521.47  # cm^-1 per sqrt(eV / (A^2 u))


def main() -> None:
    from ase.data import atomic_masses

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--molecules", type=int, default=20, help="QM9 test molecules (a seeded sample)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    qm9 = qm9_data.QM9("data", progress=False)
    test = splits.standard_split()["test"]
    chosen = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))[:args.molecules]]
    wanted = {int(qm9.gdb[i]) for i in chosen}
    freqs = {}
    for path in sorted(qm9_data.qm9pack_data_dir().glob("qm9_part*.csv")):
        df = pd.read_csv(path, usecols=["Index", "Harmonic_Freq_cmi"])
        df = df[df["Index"].isin(wanted)]
        freqs.update({int(g): np.sort(qm9_data._floats([f])) for g, f in zip(df["Index"], df["Harmonic_Freq_cmi"])})
    errors, negatives, grads, untyped = [], [], [], 0
    for i in chosen.tolist():
        d = qm9[i]
        z, pos = d.z.numpy(), d.pos.double().numpy()
        typed = potential.mmff_typed(z, pos)
        if typed is None:
            untyped += 1
            continue
        hess, grad = potential.mmff_hessian(typed, pos), potential.mmff_forces(typed, pos)
        mass = np.repeat(atomic_masses[z], 3)
        lam = np.linalg.eigvalsh(hess / np.sqrt(np.outer(mass, mass)))
        nu = np.sort(np.sign(lam) * np.sqrt(np.abs(lam)) * WAVENUMBER)
        dft = freqs[int(qm9.gdb[i])]
        mmff = nu[-len(dft):]
        errors.append(float(np.median(np.abs(mmff - dft) / dft)))
        negatives.append(int((nu < -50).sum()))  # of all 3N: clearly negative, not translation/rotation
        grads.append(float(np.abs(grad).max()))
        print(f"gdb_{int(qm9.gdb[i])}: {len(z)} atoms, median |nu_MMFF - nu_DFT| / nu_DFT {errors[-1]:.3f}, "
              f"{negatives[-1]} modes below -50 cm^-1, largest MMFF gradient component {grads[-1]:.2f} eV/A")
    print(f"{len(errors)} of {len(chosen)} molecules typed by MMFF94 ({untyped} not): median over molecules of the "
          f"median relative frequency error {np.median(errors):.3f} (range {min(errors):.3f}-{max(errors):.3f}); "
          f"modes below -50 cm^-1 per molecule: median {np.median(negatives):g}, max {max(negatives)}; largest MMFF gradient "
          f"component at the DFT geometry: median {np.median(grads):.2f} eV/A")


if __name__ == "__main__":
    main()
