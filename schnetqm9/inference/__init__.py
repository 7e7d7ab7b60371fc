"""Using a trained model: predictions for structure files and SMILES, notes on inputs outside the training domain,
per-atom explanations."""
