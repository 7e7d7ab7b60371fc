#!/usr/bin/env bash
# Every check of issue 34's goals on one surface, measured the same way for each surface:
#   bash experiments/potential/evaluate.sh CHECKPOINT NAME [STEP ...]
# STEPs (default: all, in this order):
#   forces       force_check on the held-out B3LYP test frames (TEST, default labels/b3lyp_test.extxyz.gz)
#   frequencies  harmonic wavenumbers and ZPVE at 20 QM9 test minima against QM9's
#   flat         the restoring force at fractions of a 0.05 A displacement against MMFF94's
#   check        check.py on 100 test molecules (forces at the minima, relaxations, 100 fs NVE, energies at the
#                10,831 test minima), writing the relaxations for relax_energy.py (the first 20 molecules are
#                labelled: `python -m schnetqm9.potential.labelling .../relaxed.extxyz --limit 40 ...`)
#   nve          1 ps of NVE at 300 K on 10 molecules
#   smiles       what --relax on this surface costs predictions from SMILES (geometry_cost, 100 molecules)
# JSON results go to experiments/potential/evaluated/NAME/, figures to runs/evaluated/NAME/ (copy the ones a doc
# shows to docs/figures/).
set -euo pipefail
cd "$(dirname "$0")/../.."
ckpt=${1:?usage: evaluate.sh CHECKPOINT NAME [STEP ...]}
name=${2:?usage: evaluate.sh CHECKPOINT NAME [STEP ...]}
shift 2
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(forces frequencies flat check nve smiles)
test=${TEST:-labels/b3lyp_test.extxyz.gz}
out=experiments/potential/evaluated/$name
fig=runs/evaluated/$name
mkdir -p "$out" "$fig"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for step in "${steps[@]}"; do
    echo "==> $name: $step"
    case $step in
        forces) python -m schnetqm9.potential.force_check "$test" --checkpoint "$ckpt" \
                    --output "$out/force_check.json" --figure "$fig/force_parity.png" ;;
        frequencies) python -m schnetqm9.potential.frequencies --checkpoint "$ckpt" --molecules 20 \
                    --output "$out/frequencies.json" --figure "$fig/frequencies.png" ;;
        flat) python -m experiments.potential.flat_bottom --checkpoint "$ckpt" --output "$out/flat_bottom.json" ;;
        check) python -m schnetqm9.potential.check --checkpoint "$ckpt" --molecules 100 \
                    --relaxed "$out/relaxed.extxyz" --output "$out/check_100.json" ;;
        nve) python -m schnetqm9.potential.nve --checkpoint "$ckpt" --molecules 10 --fs 1000 \
                    --output "$out/nve_1ps.json" --figure "$fig/nve_1ps.png" ;;
        smiles) python -m schnetqm9.analysis.geometry_cost --molecules 100 --relax --relax-checkpoint "$ckpt" \
                    --output "$out/geometry_cost_relax_100.json" ;;
        *) echo "error: unknown step '$step' (forces, frequencies, flat, check, nve, smiles)" >&2; exit 2 ;;
    esac
done
