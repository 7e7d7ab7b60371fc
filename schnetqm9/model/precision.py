"""Mixed precision: bfloat16 for the matrix products where the hardware multiplies it natively, float32 for the rest.

    with precision.autocast(device, "bf16"):      # a training step's forward pass (train.py), or a prediction
        pred = model(z, pos, batch)

Under `bf16` the linear layers (the filter networks and the atom-wise layers, where the step spends its time) run
in bfloat16 through torch.autocast; everything whose precision matters stays float32: the pair aggregation and the
shifted softplus (their inputs are cast to float32 at the boundary, model/kernels.py, so the sums over neighbours
accumulate in float32), the distances and the Gaussian expansion, the output layer and the readout's sums with
their atom references (schnet_model.SchNet), the loss, the optimiser state and the weight average (the parameters
themselves stay float32; autocast casts a copy per operation).

`auto` takes bfloat16 only where the hardware has it natively (CPU: AVX-512 BF16 or AMX; CUDA: a GPU with bfloat16
support) and only where it was measured to be safe: in training, for the targets whose accuracy per epoch does not
suffer (MEASURED_SAFE: the gap, U0 and lumo; docs/PERFORMANCE.md), without the potential's force terms; in prediction,
nowhere yet (PREDICTION_SAFE). Everything else is float32.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

CHOICES = ("fp32", "bf16", "auto")
# oneDNN, which runs PyTorch's bfloat16 matrix products on the CPU, keeps up to 1,024 compiled kernels, one per
# operand shape; every batch of molecules brings shapes of its own, so the cache fills with kernels of past
# batches: a full-QM9 bf16 run peaked at 3.8 GB against 1.1 GB in fp32. 300 default bf16 training steps
# (experiments/precision/onednn_cache_probe.py) peaked at 1.09 GB in 35.6 s with 32 kernels, 1.79 GB in 37.4 s with the
# default, and took 80 s with no cache. oneDNN reads the size when it first compiles, so it is set at import,
# before any product; a value the user set wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32")
# Targets that `auto` trains in bf16: as accurate per epoch as fp32 on full QM9, side by side (docs/PERFORMANCE.md:
# 5 epochs each, the gap within 0.6 % at every epoch and 2.7x sooner to each validation MAE; U0 likewise; lumo over
# 10 epochs, within 0.5 % at every epoch, same seed and schedule).
# Not with the potential's force terms: their second derivatives were not measured in bf16.
# Not the twelve-target model: in bf16 its dipole (mu) learned at half float32's pace for three epochs on the run's
# own seed, and its spatial extent fell behind (docs/PERFORMANCE.md); one bf16 run in three, by probes of epoch 1.
MEASURED_SAFE: frozenset[str] = frozenset({"gap", "U0", "lumo"})
# Targets that `auto` predicts in bf16: none. Prediction is cheap, and bf16 gives up exact invariance: the shipped
# gap model's predictions for a molecule and for its rotated, translated copy differ by 4.5e-4 eV on average and
# 5.6e-3 at most in bf16, against 9e-7 and 6.7e-6 eV in fp32 (1,000 test molecules,
# `python -m schnetqm9.model.precision`).
PREDICTION_SAFE: frozenset[str] = frozenset()


def native_bf16(device: torch.device) -> bool:
    """Whether the device multiplies bfloat16 matrices natively: a CUDA GPU with bfloat16 support, or a CPU with
    AVX-512 BF16 or AMX (Linux's /proc/cpuinfo flags)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def resolve(choice: str, device: torch.device, targets: list[str], training: bool = True,
            forces: bool = False) -> str:
    """'fp32' or 'bf16' for --precision `choice` on `device` for a model of `targets`, in training (`forces`: with
    the potential's force terms) or prediction."""
    if choice != "auto":
        return choice
    safe = PREDICTION_SAFE if not training else frozenset() if forces else MEASURED_SAFE
    return "bf16" if native_bf16(device) and set(targets) <= safe else "fp32"


def emulation_warning(choice: str, device: torch.device) -> str | None:
    """The warning for an explicit `--precision bf16` on a device without native bfloat16, else None. There the
    products are emulated: the default training step ran at 0.107x its fp32 speed on an AMD EPYC without AVX-512
    BF16 (`python bench.py --config default --bf16`, experiments/precision/bench_bf16_emulated_2026-12-01.json)."""
    if choice != "bf16" or native_bf16(device):
        return None
    where = ("a CPU without native bfloat16 (AVX-512 BF16 or AMX): it is emulated there, ~9x slower than fp32 "
             "(docs/PERFORMANCE.md)" if device.type == "cpu" else
             "a GPU without bfloat16 support: it is emulated there, slower than fp32")
    return f"warning: --precision bf16 on {where}; --precision auto picks fp32 here"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """torch.autocast to bfloat16 under 'bf16'; nothing under 'fp32'."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def prediction_shift(model: torch.nn.Module, batcher, mols: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """|y_bf16 - y_fp32| [M, K] of a model's predictions for molecules `mols` (CPU), by schnet_model.predict."""
    from schnetqm9.model.evaluation import batched_outputs

    fp32 = batched_outputs(model, batcher, mols, batch_size)
    with autocast(torch.device("cpu"), "bf16"):
        bf16 = batched_outputs(model, batcher, mols, batch_size)
    return (bf16 - fp32).abs()


def rotation_shift(model: torch.nn.Module, batcher, mols: torch.Tensor, mixed: str,
                   batch_size: int = 256) -> torch.Tensor:
    """|y(R r + t) - y(r)| [M, K] under `mixed` precision: how far a model's predictions for molecules `mols` move
    when every molecule is rotated by one seeded random rotation R and translated by t (exactly 0 in exact
    arithmetic: the model sees distances only)."""
    g = torch.Generator().manual_seed(0)
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=g))[0]  # [3, 3], orthogonal
    shift = torch.tensor([5.0, -3.0, 11.0])
    out = []
    model.eval()
    for chunk in mols.split(batch_size):
        b = batcher(chunk)
        moved = b.pos @ rotation.T + shift  # outside autocast, which would round this product to bfloat16
        with torch.no_grad(), autocast(torch.device("cpu"), mixed):
            y = model(b.z, b.pos, b.batch)
            y_moved = model(b.z, moved, b.batch)
        out.append((y_moved - y).abs())
    return torch.cat(out)


def main() -> None:
    """How far bfloat16 moves each shipped model's predictions, against its test MAE, and how far a rotated copy of
    each molecule moves them in each precision (docs/PERFORMANCE.md)."""
    import argparse

    from schnetqm9.data import batch as batching
    from schnetqm9.data import qm9 as qm9_data
    from schnetqm9.data import splits
    from schnetqm9.model import checkpoint, shipped

    p = argparse.ArgumentParser(description="bfloat16 against float32 predictions of every shipped model on the "
                                "first M molecules of the standard test split")
    p.add_argument("--molecules", type=int, default=1000)
    args = p.parse_args()
    qm9 = qm9_data.QM9("data", progress=False)
    mols = splits.standard_split()["test"][:args.molecules]
    print(f"{len(mols)} test molecules, |bf16 - fp32| per target (and over the model's recorded test MAE), "
          f"native bf16 here: {native_bf16(torch.device('cpu'))}")
    for path in (m.path for m in shipped.MODELS.values()):
        ckpt = checkpoint.load(path)
        model, batcher = checkpoint.build_model(ckpt), batching.Batcher(qm9)
        shift = prediction_shift(model, batcher, mols)
        maes = checkpoint.test_mae(ckpt)
        for k, target in enumerate(checkpoint.target_names(ckpt)):
            mean, top = float(shift[:, k].mean()), float(shift[:, k].max())
            print(f"  {path.name:22s} {target:6s} mean {mean:.3g} ({mean / maes[target]:.3f}), max {top:.3g} "
                  f"({top / maes[target]:.3f})")
        for mixed in ("fp32", "bf16"):
            moved = rotation_shift(model, batcher, mols, mixed)
            names = checkpoint.target_names(ckpt)
            print(f"  {path.name:22s} rotated and translated copy in {mixed}: |change| mean "
                  + ", ".join(f"{t} {float(moved[:, k].mean()):.2g}" for k, t in enumerate(names))
                  + "; max " + ", ".join(f"{t} {float(moved[:, k].max()):.2g}" for k, t in enumerate(names)))


if __name__ == "__main__":
    main()
