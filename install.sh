#!/usr/bin/env bash
# Install everything this repo needs into the active Python, in the order the build requires:
#   1. build tools (setuptools, wheel, ninja) and torch, pinned;
#   2. everything else in requirements.txt with --no-build-isolation, so that torch-cluster's C++ extension
#      compiles against the torch installed in step 1 (it exists on PyPI only as source);
#   3. this repo's fused CPU kernels (schnetqm9/model/kernels.cpp), compiled once into build/cpu_kernels/.
# Idempotent: when everything is installed, a second run only checks and takes seconds.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
TORCH_PIN=$(grep -E '^torch==' requirements.txt)

step() { printf '\n==> %s\n' "$*"; }

if $PY - <<PYEOF 2>/dev/null
import importlib.metadata as md, sys
from packaging.requirements import Requirement
missing = []
for line in open("requirements.txt"):
    line = line.split("#")[0].strip()
    if not line:
        continue
    req = Requirement(line)
    try:
        if not req.specifier.contains(md.version(req.name), prereleases=True):
            missing.append(line)
    except md.PackageNotFoundError:
        missing.append(line)
import torch_cluster  # an installed-but-broken build (torch upgraded underneath) counts as missing
sys.exit(1 if missing else 0)
PYEOF
then
    echo "All requirements are already installed in $($PY -c 'import sys; print(sys.prefix)')."
else
    step "Build tools and $TORCH_PIN"
    $PY -m pip install --upgrade-strategy only-if-needed setuptools wheel ninja packaging "$TORCH_PIN"

    step "torch-geometric, torch-cluster and the rest of requirements.txt"
    if ! $PY -c 'import torch_cluster' 2>/dev/null; then
        echo "    torch-cluster is compiled from source: ~25 minutes on 2 CPU cores the first time;"
        echo "    pip caches the wheel, so later installs take seconds."
    fi
    MAX_JOBS=${MAX_JOBS:-$(nproc)} $PY -m pip install --no-build-isolation -r requirements.txt

    step "Check"
    $PY -c 'import torch, torch_geometric, torch_cluster; print(f"torch {torch.__version__}, torch_geometric {torch_geometric.__version__}, torch_cluster {torch_cluster.__version__}, cuda available: {torch.cuda.is_available()}")'
fi

step "Fused CPU kernels (schnetqm9/model/kernels.cpp)"
# Without a C++ compiler the repo still runs, on the pure-PyTorch path, and says so here.
$PY -c 'from schnetqm9.model import kernels; print(f"    CPU training path: {kernels.backend()}")'
