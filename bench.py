"""Training throughput of this repo's SchNet step against PyTorch Geometric's pipeline, side by side, in one run.

    python bench.py                          # all three configurations, on CUDA when present
    python bench.py --device cpu --config lite --json results/bench_cpu.json

The benchmark is schnetqm9/analysis/bench.py; every flag is in `python bench.py --help`.
"""
from schnetqm9.analysis.bench import main

if __name__ == "__main__":
    main()
