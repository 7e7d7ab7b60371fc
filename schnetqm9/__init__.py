"""SchNet on QM9: the package behind train.py, train_lite.py and predict.py.

Its rooms follow the data's way through the repo, and an import only ever points down this list::

    data       QM9 and your own files -> flat tensors -> splits -> batches and radius graphs
    model      SchNet's kernels, the checkpoint format and the shipped models, precision, transfer
    training   the loop, optimiser, distributed runs, reports
    inference  predictions for molecules, SMILES, domain notes, explanations
    potential  U0 as a potential: force losses, the ASE calculator, repulsion, DFT and xTB labels
    analysis   plots, run comparisons, learning curves, benchmarks

`cli` (the one-line user error, argparse with it, the device choice) sits beside them and imports none of them.
"""
