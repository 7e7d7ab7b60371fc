"""Where the molecules come from: QM9 (qm9pack, in PyG's layout and units) and your own files as flat tensors, the
targets and their units, splits, radius graphs and batches."""
