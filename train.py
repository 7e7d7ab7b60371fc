"""Train SchNet on QM9 (or your own structures) for one target or several; evaluate on the test split; write
figures (results/), metrics and checkpoints (checkpoints/).

    python train.py --target gap                      # full QM9: 110,000 / 10,000 / 10,831 molecules
    python train.py --target gap --time-budget 60     # the same in one hour: the schedule spans the budget
    python train.py --target all                      # the twelve standard properties, one model
    python train.py --data mine.extxyz --target energy --unit eV   # your own structures
    python train.py --target gap --init-from models/schnet_qm9_U0.pth  # fine-tune a checkpoint
    python train_lite.py                              # the same loop, smaller defaults (10k subset, small model)
    torchrun --nproc_per_node 2 train_lite.py         # data-parallel, the same steps

The loop is schnetqm9/training/ (loop.py sets a run up, trainer.py trains it, finish.py tests it); every flag is in `python train.py --help`.
"""
from schnetqm9.training.loop import main

if __name__ == "__main__":
    main()
