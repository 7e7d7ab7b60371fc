#!/usr/bin/env bash
# The lite demo: a small SchNet on 10,000 QM9 molecules, on CUDA when present, else CPU.
# Extra arguments go to train_lite.py, e.g. `bash run_lite.sh --target U0 --epochs 40`.
set -euo pipefail
cd "$(dirname "$0")"
exec "${PYTHON:-python3}" train_lite.py "$@"
