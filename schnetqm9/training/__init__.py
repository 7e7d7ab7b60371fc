"""The one training loop (train.py, train_lite.py), its flags, optimiser and schedule, data-parallel runs and the
reports a run writes."""
