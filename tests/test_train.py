"""End to end on CPU: the real scripts on a few hundred QM9 molecules, then what they wrote is opened and checked."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import pytest
import torch

import qm9_data
import train

REPO = Path(__file__).resolve().parents[1]
TINY = ["--subset-size", "300", "--epochs", "2", "--tsne-samples", "25", "--device", "cpu"]


def run(cmd: list[str], tmp: Path, check: bool = True) -> subprocess.CompletedProcess:
    full = cmd + ["--output-dir", str(tmp / "results"), "--checkpoint-dir", str(tmp / "checkpoints"),
                  "--data-dir", str(REPO / "data")]
    proc = subprocess.run(full, cwd=REPO, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def lite_run(tmp_path_factory, qm9) -> Path:
    tmp = tmp_path_factory.mktemp("lite")
    proc = run(["bash", "run_lite.sh", *TINY], tmp)
    assert "test (30 molecules" in proc.stdout
    return tmp


def test_lite_run_writes_figures_metrics_and_checkpoint(lite_run: Path) -> None:
    results = lite_run / "results"
    for name in ("predictions_lite.png", "loss_curve_lite.png", "tsne_lite.png"):
        image = matplotlib.image.imread(results / name)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
        assert image[..., :3].std() > 0.05, f"{name} is blank"
    metrics = json.loads((results / "metrics_lite.json").read_text())
    for key in ("mae", "rmse", "r2", "mae_meV"):
        assert math.isfinite(metrics["test"][key])
    assert metrics["unit"] == "eV" and metrics["target"] == "gap" and metrics["epochs_run"] == 2
    assert metrics["split"] == {"seed": 0, "subset_size": 300, "train": 240, "val": 30, "test": 30}
    assert metrics["parameters"] > 0 and metrics["peak_memory_mb"] > 0 and metrics["wall_time_s"] > 0
    history = (results / "history_lite.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss,train_mae,val_mae") and len(history) == 3
    split = qm9_data.load_split(results / "split_lite.json")
    assert [len(split[k]) for k in ("train", "val", "test")] == [240, 30, 30]
    assert not list(results.glob(".*tmp*")) and not list((lite_run / "checkpoints").glob(".*tmp*"))


def test_checkpoint_reproduces_reported_test_mae(lite_run: Path, qm9) -> None:
    ckpt = torch.load(lite_run / "checkpoints" / "best_model_lite.pth", weights_only=True)
    assert ckpt["target"] == "gap" and ckpt["unit"] == "eV"
    model = train.model_from_checkpoint(ckpt)  # constructor arguments and normalisation come from the file
    test = ckpt["split"]["test"]
    pred = train.predict(model, qm9_data.Batcher(qm9), test, 64)
    mae = float((pred - qm9.y[test, 4]).abs().mean())
    reported = json.loads((lite_run / "results" / "metrics_lite.json").read_text())["test"]["mae"]
    assert mae == pytest.approx(reported, rel=1e-5)
    assert ckpt["metrics"]["test_mae"] == pytest.approx(reported, rel=1e-9)


def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    args = [sys.executable, "train_lite.py", "--subset-size", "600", "--epochs", "3", "--tsne-samples", "25",
            "--device", "cpu", "--checkpoint-every", "0"]
    run(args, tmp_path / "clean")
    killed = tmp_path / "killed"
    cmd = args + ["--output-dir", str(killed / "results"), "--checkpoint-dir", str(killed / "checkpoints"),
                  "--data-dir", str(REPO / "data")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last_lite.pth"
    deadline = time.time() + 120
    state = None
    while time.time() < deadline:  # wait until a mid-epoch state of epoch 2 is on disk, then kill -9
        if last.exists():
            try:
                state = torch.load(last, weights_only=True)
            except Exception:
                state = None
            if state and state["epoch"] == 1 and state["step_in_epoch"] > 5:
                break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state is not None and state["epoch"] == 1 and state["step_in_epoch"] > 0
    resumed = run(args + ["--resume"], killed)
    assert "Resuming" in resumed.stdout
    got = json.loads((killed / "results" / "metrics_lite.json").read_text())
    want = json.loads((tmp_path / "clean" / "results" / "metrics_lite.json").read_text())
    assert got["epochs_run"] == 3
    assert got["test"]["mae"] == pytest.approx(want["test"]["mae"], rel=1e-4)


@pytest.mark.parametrize("flags, message", [
    (["--target", "bandgap"], "unknown QM9 target 'bandgap'"),
    (["--subset-size", "200000"], "subset size must be between"),
    (["--subset-size", "0"], "subset size must be between"),
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--epochs", "-1"], "--epochs must be a positive integer"),
    (["--target"], "expected one argument"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, flags: list[str], message: str) -> None:
    proc = run([sys.executable, "train_lite.py", *flags], tmp_path, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "checkpoints").exists()


def test_cuda_asked_for_without_a_gpu(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = run([sys.executable, "train_lite.py", "--device", "cuda"], tmp_path, check=False)
    assert proc.returncode == 1 and "no CUDA GPU" in proc.stderr.strip().splitlines()[-1]


def test_resume_refuses_another_target_or_architecture(lite_run: Path) -> None:
    base = [sys.executable, "train_lite.py", *TINY, "--resume"]
    proc = run(base + ["--target", "U0"], lite_run, check=False)
    assert proc.returncode == 1 and "was trained for target 'gap'" in proc.stderr
    proc = run(base + ["--hidden", "32"], lite_run, check=False)
    assert proc.returncode == 1 and "another architecture" in proc.stderr
    proc = run(base + ["--batch-size", "8"], lite_run, check=False)
    assert proc.returncode == 1 and "same batch size" in proc.stderr


def test_resume_refuses_an_optimiser_state_of_another_layout(lite_run: Path, tmp_path: Path) -> None:
    """A resume state whose optimiser is per-parameter Adam (this repo before FlatAdam) stops with one line."""
    import shutil

    shutil.copytree(lite_run / "checkpoints", tmp_path / "checkpoints")
    last = tmp_path / "checkpoints" / "last_lite.pth"
    state = torch.load(last, weights_only=True)
    model = train.model_from_checkpoint(state)
    state["optimizer"] = torch.optim.Adam(model.parameters(), lr=1e-3).state_dict()
    torch.save(state, last)
    proc = run([sys.executable, "train_lite.py", *TINY, "--resume"], tmp_path, check=False)
    assert proc.returncode == 1 and "does not fit this version's optimiser" in proc.stderr, proc.stderr
    assert str(last) in proc.stderr.strip().splitlines()[-1]


def test_nan_loss_stops_with_a_message(tmp_path: Path) -> None:
    proc = run([sys.executable, "train_lite.py", *TINY, "--lr", "1e30", "--clip-grad", "1e30"], tmp_path,
               check=False)
    assert proc.returncode == 1 and "the loss became" in proc.stderr, proc.stderr
    assert not (tmp_path / "results" / "metrics_lite.json").exists()


def test_flat_adam_takes_the_same_steps_as_adam(qm9) -> None:
    """FlatAdam (all parameters in one tensor) follows torch.optim.Adam over the model's parameters: the same
    weights after 5 clipped steps, and checkpoints of the weights still load into a plain SchNet."""
    from schnet_model import LITE_CONFIG, SchNet

    batches = [qm9_data.Batcher(qm9)(torch.arange(16) + 16 * k) for k in range(5)]
    models = []
    for flat in (True, False):
        torch.manual_seed(0)
        model = SchNet(**LITE_CONFIG, mean=0.0, std=1.0)
        opt = train.FlatAdam(model, 1e-3) if flat else torch.optim.Adam(model.parameters(), lr=1e-3)
        for b in batches:
            train.train_step(model, opt, b, 4, 1.0, clip_grad=0.5)  # small max norm: clipping is active
        models.append(model)
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name
    torch.manual_seed(0)
    assert not torch.allclose(models[0].lin2.weight, SchNet(**LITE_CONFIG).lin2.weight)  # it did train
    fresh = SchNet(**LITE_CONFIG)
    fresh.load_state_dict(models[0].state_dict())
    assert torch.equal(fresh.lin2.weight, models[0].lin2.weight)
