"""Looking at runs and models: comparisons of runs, learning curves, the cost of RDKit geometries, throughput
benchmarks."""
