"""Mixed precision (precision.py, --precision): bfloat16 only in the linear layers, float32 sums, the stated
tolerance on predictions, and `auto` choosing float32 until a target is measured safe."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from schnet_model import LITE_CONFIG, SchNet
from schnetqm9.data import batch as batching
from schnetqm9.data import splits, targets
from schnetqm9.inference import predictions as predict
from schnetqm9.model import checkpoint, precision, shipped
from schnetqm9.model import kernels as cpu_kernels
from schnetqm9.training.step import Objective, train_step

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def test_bf16_inputs_are_summed_in_float32_by_kernels_and_definitions() -> None:
    torch.manual_seed(0)
    x, w = torch.randn(40, 16).bfloat16(), torch.randn(300, 16).bfloat16()
    c = torch.rand(300)
    j = torch.randint(0, 20, (300,))
    pairs = torch.stack([j, j + torch.randint(1, 20, (300,))])
    out = cpu_kernels.aggregate(x, w, c, pairs)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, cpu_kernels.aggregate_reference(x.float(), w.float(), c, pairs))
    s = cpu_kernels.shifted_softplus(x)
    assert s.dtype == torch.float32
    torch.testing.assert_close(s, cpu_kernels.shifted_softplus_reference(x.float()))


def test_under_bf16_the_matrix_products_are_bfloat16_and_the_readout_float32(qm9) -> None:
    model = SchNet(**LITE_CONFIG, readout=["add", "mean", "dipole"], atomref=torch.randn(100, 3))
    d = qm9[100]
    seen = []
    hook = model.interactions[0].mlp[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.no_grad(), precision.autocast(CPU, "bf16"):
        y = model(d.z, d.pos)
    hook.remove()
    assert seen == [torch.bfloat16] and y.dtype == torch.float32
    with torch.no_grad():
        y32 = model(d.z, d.pos)
    torch.testing.assert_close(y, y32, rtol=0.02, atol=0.05)  # bfloat16 keeps ~3 significant digits


def test_a_bf16_training_step_follows_the_fp32_gradient(qm9) -> None:
    from schnetqm9.training import optim

    torch.manual_seed(0)
    b = batching.Batcher(qm9)(torch.arange(32))
    grads = []
    for mixed in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = SchNet(**LITE_CONFIG, readout="mean", mean=6.8, std=1.3)
        opt = optim.FlatAdam(model, 1e-3)
        opt.step = lambda: None  # keep the weights: compare the gradients of the same point
        train_step(model, opt, b, Objective.single(4, 1.3), mixed=mixed)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    cosine = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)
    assert torch.isfinite(grads[1]).all() and cosine > 0.99


def test_shipped_predictions_in_bf16_within_the_stated_tolerance_for_the_gap_not_for_u0(qm9) -> None:
    """The tolerance: mean |bf16 - fp32| at most 5 % of the model's test MAE, the largest at most 25 %. The gap
    model meets it; the U0 model does not (mean ~70 %). `auto` trains the gap, U0 and lumo in bf16 (their accuracy
    per epoch was measured equal) and predicts in fp32 (exact invariance)."""
    mols = splits.standard_split()["test"][:300]
    batcher = batching.Batcher(qm9)
    ratios = {}
    for name in ("gap", "U0"):
        ckpt = checkpoint.load(shipped.path(name))
        shift = precision.prediction_shift(checkpoint.build_model(ckpt), batcher, mols)[:, 0]
        mae = checkpoint.test_mae(ckpt)[name]
        ratios[name] = (float(shift.mean()) / mae, float(shift.max()) / mae)
    assert ratios["gap"][0] <= 0.05 and ratios["gap"][1] <= 0.25, ratios
    assert ratios["U0"][0] > 0.05, ratios
    native = "bf16" if precision.native_bf16(CPU) else "fp32"
    for measured in (["gap"], ["U0"], ["lumo"], ["gap", "U0"]):  # trained in bf16 where the hardware has it
        assert precision.resolve("auto", CPU, measured) == native
    assert precision.resolve("auto", CPU, ["gap", "homo"]) == "fp32"  # homo: not measured
    assert precision.resolve("auto", CPU, targets.parse("all")) == "fp32"  # the dipole learned at half pace in bf16
    assert precision.resolve("auto", CPU, ["U0"], forces=True) == "fp32"  # second derivatives: not measured
    assert precision.resolve("auto", CPU, ["gap"], training=False) == "fp32"  # predicted in fp32: exact
    assert precision.resolve("bf16", CPU, ["U0"]) == precision.resolve("bf16", CPU, ["U0"], training=False) == "bf16"


@pytest.mark.slow
def test_predict_and_train_take_the_flag(qm9, tmp_path: Path) -> None:
    import ase
    import ase.io

    d = qm9[1096]
    ase.io.write(tmp_path / "m.xyz", ase.Atoms(numbers=d.z.numpy(), positions=d.pos.double().numpy()))
    fp32, bf16 = (predict.main(["--device", "cpu", "--target", "gap", "--precision", p, str(tmp_path / "m.xyz")])
                  for p in ("fp32", "bf16"))
    assert fp32[0]["gap"] != bf16[0]["gap"] and abs(fp32[0]["gap"] - bf16[0]["gap"]) < 0.02
    proc = subprocess.run([sys.executable, "train_lite.py", "--subset-size", "300", "--epochs", "2", "--precision",
                           "bf16", "--tsne-samples", "20", "--device", "cpu", "--output-dir", str(tmp_path / "r"),
                           "--checkpoint-dir", str(tmp_path / "c"), "--data-dir", str(REPO / "data")], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "training steps in bf16" in proc.stdout
    assert ("emulated there" in proc.stderr) == (not precision.native_bf16(CPU))  # the warning where it is slow
    metrics = json.loads((tmp_path / "r" / "metrics_lite.json").read_text())
    assert metrics["precision"] == "bf16" and metrics["test"]["gap"]["mae"] < 1.2  # it learned (std ~1.3 eV)


def test_onednn_kernel_cache_is_bounded_unless_the_user_sized_it() -> None:
    """precision.py bounds oneDNN's kernel cache (its default held a bf16 run's kernels of past batch shapes:
    3.8 GB); a size the user set is kept."""
    code = "import os; from schnetqm9.model import precision; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    ours = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    theirs = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env={**env, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "100"})
    assert ours.stdout.strip() == "32" and theirs.stdout.strip() == "100"


def test_bf16_breaks_rotation_invariance_only_at_the_rounding_level(qm9) -> None:
    """A rotated, translated copy gives the same prediction in fp32 (to float32 rounding) and nearly the same in
    bf16: if positions or distances went through bfloat16 (a product under autocast), the change would be ~30x
    larger (0.015 eV on average for the gap model, measured when the test's own rotation ran under autocast)."""
    mols = splits.standard_split()["test"][:100]
    model = checkpoint.build_model(checkpoint.load(shipped.path("gap")))
    fp32 = precision.rotation_shift(model, batching.Batcher(qm9), mols, "fp32")
    bf16 = precision.rotation_shift(model, batching.Batcher(qm9), mols, "bf16")
    assert float(fp32.max()) < 1e-4
    assert float(fp32.mean()) < float(bf16.mean()) < 0.003


def test_explicit_bf16_warns_only_where_the_hardware_emulates_it(monkeypatch) -> None:
    """bf16 without AVX-512 BF16 or AMX ran the default training step at 0.107x its fp32 speed: an explicit
    --precision bf16 says so there, and nowhere else; fp32 and auto never warn (auto picks fp32 there)."""
    for native in (True, False):
        monkeypatch.setattr(precision, "native_bf16", lambda device, native=native: native)
        warning = precision.emulation_warning("bf16", CPU)
        assert (warning is None) == native
        assert precision.emulation_warning("fp32", CPU) is None and precision.emulation_warning("auto", CPU) is None
    assert "emulated" in warning and "--precision auto" in warning
