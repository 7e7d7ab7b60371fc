#!/usr/bin/env bash
# The lite demo: a small SchNet on 10,000 QM9 molecules, on CUDA when present, else CPU.
# Extra arguments go to train_lite.py, e.g. `bash run_lite.sh --target U0 --epochs 40`.
# NPROC=N runs it data-parallel in N processes on this machine through torchrun (the same global batch).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ "${NPROC:-1}" -gt 1 ]; then
    exec "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" train_lite.py "$@"
fi
exec "$PY" train_lite.py "$@"
