"""Predict QM9 properties for your own molecules (structure files, .smi files or --smiles) with a shipped or trained
model, optionally atom by atom, explained, or relaxed first.

    python predict.py mol1.xyz traj.extxyz ligand.sdf          # the twelve properties, shipped all-target model
    python predict.py --target gap --smiles CCO c1ccccc1O      # the shipped gap model, geometries from RDKit
    python predict.py mols.smi --csv out.csv                   # a .smi file: a SMILES per line, a name optional

The work is schnetqm9/inference/predictions.py; every flag is in `python predict.py --help`.
"""
from schnetqm9.inference.predictions import main

if __name__ == "__main__":
    main()
