"""Train SchNet on a 10,000-molecule QM9 subset with a small model: the same loop as train.py, smaller defaults.

    python train_lite.py --target gap --epochs 20 --batch-size 16 --subset-size 10000

Every flag of train.py works here; outputs get the suffix _lite (results/predictions_lite.png,
checkpoints/best_model_lite.pth, ...).
"""
from __future__ import annotations

from schnet_model import LITE_CONFIG
from schnetqm9.training import loop as train

# fp32 even where `auto` would train the gap in bf16: the lite model's step is bound by its operations' fixed cost,
# not by its small products, and bf16 made it slower (0.76x, bench.py --config lite --bf16: docs/PERFORMANCE.md)
LITE_DEFAULTS = dict(subset_size=10_000, epochs=20, batch_size=16, lr=3e-3, patience=0, ema_decay=0.999, suffix="_lite",
                     precision="fp32", **LITE_CONFIG)

if __name__ == "__main__":
    train.main(defaults=LITE_DEFAULTS,
               description="Train a small SchNet on a 10,000-molecule QM9 subset (80/10/10 split).")
