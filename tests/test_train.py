"""End to end on CPU: the real scripts on a few hundred QM9 molecules, then what they wrote is opened and checked."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch
from conftest import TINY, wait_for_mid_epoch_state

from schnetqm9.data import batch as batching
from schnetqm9.data import splits
from schnetqm9.model import checkpoint
from schnetqm9.model.evaluation import batched_outputs
from schnetqm9.training import loop as train
from schnetqm9.training import optim
from schnetqm9.training.step import Objective, train_step

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], tmp: Path, check: bool = True) -> subprocess.CompletedProcess:
    full = cmd + ["--output-dir", str(tmp / "results"), "--checkpoint-dir", str(tmp / "checkpoints"),
                  "--data-dir", str(REPO / "data")]
    proc = subprocess.run(full, cwd=REPO, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_lite_run_writes_figures_metrics_and_checkpoint(lite_run: Path) -> None:
    results = lite_run / "results"
    for name in ("predictions_lite.png", "loss_curve_lite.png", "tsne_lite.png"):
        image = matplotlib.image.imread(results / name)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
        assert image[..., :3].std() > 0.05, f"{name} is blank"
    metrics = json.loads((results / "metrics_lite.json").read_text())
    for key in ("mae", "rmse", "r2"):
        assert math.isfinite(metrics["test"]["gap"][key])
    assert metrics["test"]["gap"]["unit"] == "eV" and metrics["target"] == "gap" and metrics["epochs_run"] == 2
    assert metrics["split"] == {"seed": 0, "subset_size": 300, "train": 240, "val": 30, "test": 30}
    assert metrics["parameters"] > 0 and metrics["peak_memory_mb"] > 0 and metrics["wall_time_s"] > 0
    lines = (results / "history_lite.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,val_score,val_score_raw,kept,train_mae_gap,val_mae_gap,"
                                "val_mae_raw_gap,val_rmse_gap,lr") and len(lines) == 3
    assert [row["precision"] for row in history(lite_run)] == ["fp32", "fp32"]  # its steps': lite defaults to fp32
    split = splits.load_split(results / "split_lite.json")
    assert [len(split[k]) for k in ("train", "val", "test")] == [240, 30, 30]
    assert not list(results.glob(".*tmp*")) and not list((lite_run / "checkpoints").glob(".*tmp*"))


def test_checkpoint_reproduces_reported_test_mae(lite_run: Path, qm9) -> None:
    ckpt = torch.load(lite_run / "checkpoints" / "best_model_lite.pth", weights_only=True)
    assert ckpt["target"] == "gap" and ckpt["targets"] == [dict(name="gap", unit="eV", column=4, output="mean")]
    model = checkpoint.build_model(ckpt)  # constructor arguments and normalisation come from the file
    test = ckpt["split"]["test"]
    pred = batched_outputs(model, batching.Batcher(qm9), test, 64)
    assert pred.shape == (len(test), 1)
    mae = float((pred[:, 0] - qm9.y[test, 4]).abs().mean())
    reported = json.loads((lite_run / "results" / "metrics_lite.json").read_text())["test"]["gap"]["mae"]
    assert mae == pytest.approx(reported, rel=1e-5)
    assert checkpoint.test_mae(ckpt) == {"gap": pytest.approx(reported, rel=1e-9)}


@pytest.mark.slow
def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    args = [sys.executable, "train_lite.py", "--subset-size", "600", "--epochs", "3", "--tsne-samples", "25",
            "--device", "cpu", "--checkpoint-every", "0"]
    run(args, tmp_path / "clean")
    killed = tmp_path / "killed"
    cmd = args + ["--output-dir", str(killed / "results"), "--checkpoint-dir", str(killed / "checkpoints"),
                  "--data-dir", str(REPO / "data")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # wait until a mid-epoch state of epoch 2 is on disk, then kill -9
    state = wait_for_mid_epoch_state(killed / "checkpoints" / "last_lite.pth", proc, min_step=5, timeout=120)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state is not None and state["progress"]["epoch"] == 1 and state["progress"]["step_in_epoch"] > 0
    assert state["ema"] is not None  # the weight average is part of the resume state
    resumed = run(args + ["--resume"], killed)
    assert "Resuming" in resumed.stdout
    got = json.loads((killed / "results" / "metrics_lite.json").read_text())
    want = json.loads((tmp_path / "clean" / "results" / "metrics_lite.json").read_text())
    assert got["epochs_run"] == 3
    assert got["test"]["gap"]["mae"] == pytest.approx(want["test"]["gap"]["mae"], rel=1e-4)


@pytest.mark.parametrize("flags, message", [
    (["--target", "bandgap"], "unknown QM9 target 'bandgap'"),
    (["--subset-size", "200000"], "subset size must be between"),
    (["--subset-size", "0"], "subset size must be between"),
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--epochs", "-1"], "--epochs must be a positive integer"),
    (["--time-budget", "0"], "--time-budget must be a positive number of minutes"),
    (["--ema-decay", "1"], "--ema-decay must be in [0, 1)"),
    (["--target"], "expected one argument"),
    (["--target", "gap,GAP"], "--target names gap twice"),
    (["--target", "gap,bandgap"], "unknown QM9 target 'bandgap'"),
])
@pytest.mark.slow
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, flags: list[str], message: str) -> None:
    proc = run([sys.executable, "train_lite.py", *flags], tmp_path, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_cuda_asked_for_without_a_gpu(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = run([sys.executable, "train_lite.py", "--device", "cuda"], tmp_path, check=False)
    assert proc.returncode == 1 and "no CUDA GPU" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_resume_refuses_another_target_or_architecture(lite_run: Path) -> None:
    base = [sys.executable, "train_lite.py", *TINY, "--resume"]
    proc = run(base + ["--target", "U0"], lite_run, check=False)
    assert proc.returncode == 1 and "was trained for target 'gap'" in proc.stderr
    proc = run(base + ["--hidden", "32"], lite_run, check=False)
    assert proc.returncode == 1 and "another architecture" in proc.stderr
    proc = run(base + ["--batch-size", "8"], lite_run, check=False)
    assert proc.returncode == 1 and "same --batch-size" in proc.stderr
    proc = run(base + ["--ema-decay", "0.99"], lite_run, check=False)
    assert proc.returncode == 1 and "same --ema-decay" in proc.stderr
    proc = run(base + ["--time-budget", "5"], lite_run, check=False)
    assert proc.returncode == 1 and "same --time-budget" in proc.stderr


@pytest.mark.slow
def test_resume_refuses_an_optimiser_state_of_another_layout(lite_run: Path, tmp_path: Path) -> None:
    """A resume state whose optimiser is per-parameter Adam (this repo before FlatAdam) stops with one line."""
    import shutil

    shutil.copytree(lite_run / "checkpoints", tmp_path / "checkpoints")
    last = tmp_path / "checkpoints" / "last_lite.pth"
    state = torch.load(last, weights_only=True)
    model = checkpoint.build_model(state)
    state["optimizer"] = torch.optim.Adam(model.parameters(), lr=1e-3).state_dict()
    torch.save(state, last)
    proc = run([sys.executable, "train_lite.py", *TINY, "--resume"], tmp_path, check=False)
    assert proc.returncode == 1 and "does not fit this version's optimiser" in proc.stderr, proc.stderr
    assert str(last) in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_resume_refuses_a_state_whose_best_weights_are_missing(lite_run: Path, tmp_path: Path) -> None:
    """The end of a run tests the best weights from disk: a resume state moved without them stops at the start,
    with one line naming the missing file, rather than after the remaining epochs."""
    import shutil

    shutil.copytree(lite_run / "checkpoints", tmp_path / "checkpoints")
    (tmp_path / "checkpoints" / "best_model_lite.pth").unlink()
    proc = run([sys.executable, "train_lite.py", *TINY, "--epochs", "3", "--resume"], tmp_path, check=False)
    last_line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "best_model_lite.pth is missing" in last_line, proc.stderr
    assert "epoch" in last_line and "train loss" not in proc.stdout


@pytest.mark.slow
def test_a_loss_that_keeps_blowing_up_stops_with_a_message(tmp_path: Path) -> None:
    """lr 1e30: every window of steps spikes; each is rolled back with the learning rate halved, until it is cut
    to 1/1000 of --lr and the run stops with one line."""
    proc = run([sys.executable, "train_lite.py", *TINY, "--epochs", "20", "--lr", "1e30", "--clip-grad", "1e30"],
               tmp_path, check=False)
    assert proc.returncode == 1 and "the loss kept blowing up (10 spikes" in proc.stderr, proc.stderr
    assert proc.stdout.count("loss spike at epoch") == 9
    assert not (tmp_path / "results" / "metrics_lite.json").exists()


def test_flat_adam_takes_the_same_steps_as_adam(qm9) -> None:
    """FlatAdam (all parameters in one tensor) follows torch.optim.Adam over the model's parameters: the same
    weights after 5 clipped steps, and checkpoints of the weights still load into a plain SchNet."""
    from schnet_model import LITE_CONFIG, SchNet

    batches = [batching.Batcher(qm9)(torch.arange(16) + 16 * k) for k in range(5)]
    models = []
    for flat in (True, False):
        torch.manual_seed(0)
        model = SchNet(**LITE_CONFIG, mean=0.0, std=1.0)
        opt = optim.FlatAdam(model, 1e-3) if flat else torch.optim.Adam(model.parameters(), lr=1e-3)
        for b in batches:
            train_step(model, opt, b, Objective.single(4), clip_grad=0.5)  # small max norm: clipping is active
        models.append(model)
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name
    torch.manual_seed(0)
    assert not torch.allclose(models[0].lin2.weight, SchNet(**LITE_CONFIG).lin2.weight)  # it did train
    fresh = SchNet(**LITE_CONFIG)
    fresh.load_state_dict(models[0].state_dict())
    assert torch.equal(fresh.lin2.weight, models[0].lin2.weight)


def test_schedule_warms_up_then_decays_by_whichever_of_epochs_and_budget_comes_first() -> None:
    s = optim.Schedule(peak=1e-3, warmup=10, total_steps=1000)
    assert s.lr(0, 0.0) == pytest.approx(1e-4) and s.lr(9, 0.0) == pytest.approx(1e-3, rel=1e-4)
    assert s.lr(505, 1e9) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))  # no budget: time does not count
    assert s.lr(1000, 0.0) == pytest.approx(1e-5) and s.lr(5000, 0.0) == pytest.approx(1e-5)
    b = optim.Schedule(peak=1e-3, warmup=10, total_steps=1000, budget_s=60.0)
    assert b.progress(109, 30.0) == 0.5 and b.progress(802, 30.0) == 0.8  # the larger of the two fractions
    assert b.lr(100, 60.0) == pytest.approx(1e-5) and b.lr(100, 600.0) == pytest.approx(1e-5)
    lrs = [b.lr(20, t) for t in (0.0, 10.0, 20.0, 40.0, 59.0)]
    assert all(x > y for x, y in zip(lrs, lrs[1:]))  # decays monotonically with time after the warm-up
    assert b.lr(4, 60.0) == pytest.approx(1e-3 * 0.5 * 0.01)  # a budget spent within the warm-up: decayed too
    assert b.lr(4, 0.0) == pytest.approx(1e-3 * 0.5)  # and at its start the warm-up alone


@pytest.mark.slow
def test_time_budget_ends_the_run_like_a_finished_one(tmp_path: Path) -> None:
    """A 0.25-minute budget on a run that would take many epochs: it stops near the budget, on a decayed learning
    rate, with a partial last epoch, and still tests the best model and writes every output."""
    proc = run([sys.executable, "train_lite.py", "--subset-size", "2000", "--epochs", "200", "--tsne-samples", "25",
                "--device", "cpu", "--time-budget", "0.25"], tmp_path)
    assert "time budget of 0.25 min spent" in proc.stdout and "test gap (200 molecules" in proc.stdout
    metrics = json.loads((tmp_path / "results" / "metrics_lite.json").read_text())
    assert 0.1 < metrics["minutes"] < 0.25 + 0.1 and 0 < metrics["epochs_done"] < 200
    assert metrics["epochs_run"] == math.ceil(metrics["epochs_done"])
    last = (tmp_path / "results" / "history_lite.csv").read_text().splitlines()[-1].split(",")
    header = (tmp_path / "results" / "history_lite.csv").read_text().splitlines()[0].split(",")
    assert float(last[header.index("lr")]) < 0.1 * 3e-3  # the cosine reached (nearly) its end
    for name in ("predictions_lite.png", "loss_curve_lite.png", "tsne_lite.png"):
        assert (tmp_path / "results" / name).stat().st_size > 10_000
    best = torch.load(tmp_path / "checkpoints" / "best_model_lite.pth", weights_only=True)
    assert best["time_budget"] == 0.25 and best["minutes"] == pytest.approx(metrics["minutes"])
    assert "--time-budget 0.25" in best["command"] and best["command"].startswith("python train_lite.py")


def test_the_kept_weights_are_the_better_of_average_and_raw(lite_run: Path, qm9) -> None:
    """The best checkpoint holds whichever of the moving average and the raw weights validated better at its epoch,
    says which, and gives the recorded validation MAE."""
    state = torch.load(lite_run / "checkpoints" / "last_lite.pth", weights_only=True)
    best = torch.load(lite_run / "checkpoints" / "best_model_lite.pth", weights_only=True)
    assert state["ema_decay"] == 0.999 and state["ema"]["n_averaged"] == state["progress"]["step"]
    history = (lite_run / "results" / "history_lite.csv").read_text().splitlines()
    rows = [dict(zip(history[0].split(","), r.split(","))) for r in history[1:]]
    row = rows[best["epoch"] - 1]
    assert best["weights"] == row["kept"]
    assert (float(row["val_score"]) <= float(row["val_score_raw"])) == (row["kept"] == "average")
    if best["epoch"] == state["progress"]["epoch"]:  # the last epoch was the best: compare with the saved state
        for k, v in best["state_dict"].items():
            other = state["ema"][f"module.{k}"] if best["weights"] == "average" else state["state_dict"][k]
            torch.testing.assert_close(v, other)
    val = best["split"]["val"]
    pred = batched_outputs(checkpoint.build_model(best), batching.Batcher(qm9), val, 64)[:, 0]
    mae = best["metrics"]["val"]["gap"]["mae"]
    assert float((pred - qm9.y[val, 4]).abs().mean()) == pytest.approx(mae, rel=1e-4)
    column = "val_mae_gap" if best["weights"] == "average" else "val_mae_raw_gap"
    assert float(row[column]) == pytest.approx(mae, rel=1e-6)


def test_ema_decay_warms_up() -> None:
    """The average's decay grows with the updates, (1 + n) / (10 + n), up to --ema-decay."""
    decays = [float(optim.ema_decay(0.999, torch.tensor(n))) for n in (0, 1, 10, 100, 1000, 8990, 10**6)]
    assert decays[:5] == pytest.approx([0.1, 2 / 11, 11 / 20, 101 / 110, 1001 / 1010])
    assert decays[5] == pytest.approx(0.999) and decays[6] == 0.999
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = optim.make_ema(model, 0.999)
    ema.update_parameters(model)  # the first update copies
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update_parameters(model)  # n = 1: w_ema = b * 0 + (1 - b) * 1, b = 2 / 11
    torch.testing.assert_close(ema.module.weight, torch.full((1, 2), 9 / 11))


@pytest.mark.slow
def test_ema_decay_zero_keeps_the_raw_weights(tmp_path: Path) -> None:
    run([sys.executable, "train_lite.py", *TINY, "--ema-decay", "0"], tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last_lite.pth", weights_only=True)
    best = torch.load(tmp_path / "checkpoints" / "best_model_lite.pth", weights_only=True)
    assert state["ema"] is None and best["weights"] == "raw"
    history = (tmp_path / "results" / "history_lite.csv").read_text().splitlines()
    h = history[0].split(",")
    assert all(r.split(",")[h.index("val_mae_gap")] == r.split(",")[h.index("val_mae_raw_gap")]
               for r in history[1:])
    if best["epoch"] == state["progress"]["epoch"]:
        torch.testing.assert_close(best["state_dict"], state["state_dict"])


@pytest.mark.slow
def test_a_loss_spike_is_rolled_back_and_the_run_recovers(tmp_path: Path, monkeypatch, capsys, qm9) -> None:
    """Blow the weights up in the middle of a run (the output layer times 1e4, as an Adam blow-up would): the next
    check sees the loss jump against its running mean and holds it, the one after sees it stay, restores the last
    good state, halves the learning rate, says so in one line, and the run ends with a finite test MAE better than
    predicting the training mean."""
    from schnetqm9.training import trainer
    from train_lite import LITE_DEFAULTS

    real_step, calls = trainer.train_step, []

    def step_with_a_blow_up(model, *args, **kwargs):
        calls.append(1)
        if len(calls) == 75:
            with torch.no_grad():
                model.lin2.weight.mul_(1e4)
        return real_step(model, *args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", step_with_a_blow_up)
    monkeypatch.setattr(trainer.Trainer, "SNAPSHOT_EVERY", 20)
    metrics = train.main(["--subset-size", "1000", "--epochs", "3", "--tsne-samples", "25", "--device", "cpu",
                          "--output-dir", str(tmp_path / "results"), "--checkpoint-dir", str(tmp_path / "ck"),
                          "--data-dir", str(REPO / "data")], defaults=LITE_DEFAULTS)
    out = capsys.readouterr().out
    spikes = [line for line in out.splitlines() if line.startswith("loss spike")]
    assert len(spikes) == 1 and "epoch 2" in spikes[0] and "learning rate now 0.5 x the schedule" in spikes[0]
    lines = out.splitlines()
    assert lines[lines.index(spikes[0]) - 1].startswith("one window at epoch 2")  # held first, then it stayed up
    assert metrics["spikes"] == 1 and len(calls) == 150
    split = splits.split_indices(len(qm9), 1000, seed=0)
    baseline = float((qm9.y[split["test"], 4] - qm9.y[split["train"], 4].mean()).abs().mean())
    assert math.isfinite(metrics["test"]["gap"]["mae"]) and metrics["test"]["gap"]["mae"] < 0.8 * baseline


def test_loss_guard_flags_jumps_of_the_whole_loss_not_one_noisy_target() -> None:
    guard = optim.LossGuard(factor=10.0, decay=0.9)
    running = None
    for window in ([1.0, 2.0, 0.01], [0.9, 1.9, 0.01], [0.8, 1.7, 0.01]):
        assert not guard.is_spike(window, running)
        running = guard.update(window, running)
    assert guard.level([0.8, 1.7, 0.01], running) == pytest.approx(0.9, abs=0.1)  # about its usual level
    assert not guard.is_spike([0.8, 1.7, 0.16], running)  # one small target 16x up: outliers, not a blow-up
    assert guard.is_spike([20.0, 40.0, 0.2], running)  # everything 20x up: the representation blew up
    assert guard.is_spike([float("nan"), 1.0, 0.01], running) and guard.is_spike([float("inf"), 1.0, 1.0], None)
    w = optim.LossGuard.weights([1.0, 4.0], "balanced", 2)
    torch.testing.assert_close(w, torch.tensor([1.6, 0.4]))


def test_loss_guard_rolls_back_a_loss_that_stays_up_not_one_outlier_window() -> None:
    """One molecule with a huge error lifts one window and is gone at the next (QM9's largest alpha in the
    twelve-target run); a blow-up stays. Only the second window in a row above the factor, or a non-finite loss,
    is a spike."""
    guard, running = optim.LossGuard(factor=10.0), [1.0, 1.0, 1.0]
    outlier, ordinary, blown_up = [1.0, 1.0, 40.0], [1.0, 1.0, 1.0], [30.0, 20.0, 40.0]
    assert [guard.judge(w, running) for w in (ordinary, outlier, ordinary, outlier, ordinary)] == \
        ["ok", "held", "ok", "held", "ok"]
    assert [guard.judge(w, running) for w in (blown_up, blown_up, blown_up)] == ["held", "spike", "held"]
    assert guard.judge([float("nan"), 1.0, 1.0], running) == "spike"  # no second look at a non-finite loss
    assert guard.judge(ordinary, running) == "ok" and guard.judge([float("inf")] * 3, None) == "spike"
    assert torch.equal(optim.LossGuard.weights([1.0, 4.0], "equal", 2), torch.ones(2))


def history(folder: Path) -> list[dict]:
    import csv

    return list(csv.DictReader((folder / "results" / "history_lite.csv").open()))


@pytest.mark.slow
def test_split_reuses_an_earlier_runs_molecules(lite_run: Path, tmp_path: Path) -> None:
    """--split trains, validates and tests on an earlier run's molecules, whatever --seed says."""
    earlier = lite_run / "results" / "split_lite.json"
    run([sys.executable, "train_lite.py", *TINY, "--epochs", "1", "--seed", "5", "--split", str(earlier)], tmp_path)
    used = torch.load(tmp_path / "checkpoints" / "best_model_lite.pth", weights_only=True)["split"]
    for part, molecules in splits.load_split(earlier).items():
        torch.testing.assert_close(used[part], molecules)
    assert not torch.equal(splits.split_indices(len(used["train"]) * 10 // 8, None, seed=5)["train"], used["train"])


@pytest.mark.slow
def test_patience_stops_a_run_that_no_longer_improves(tmp_path: Path) -> None:
    """A learning rate too small to move a float32 weight leaves the validation score where it was: with
    --patience 1 the run stops after the second epoch of six."""
    proc = run([sys.executable, "train_lite.py", *TINY, "--epochs", "6", "--patience", "1", "--lr", "1e-30",
                "--ema-decay", "0"], tmp_path)
    assert "early stop: no better validation score for 1 epochs" in proc.stdout
    assert [row["epoch"] for row in history(tmp_path)] == ["1", "2"]


@pytest.mark.slow
def test_l1_loss_is_the_mean_absolute_error_in_units_of_the_spread(tmp_path: Path) -> None:
    """With --loss l1 the training loss of an epoch is its training MAE over the target's loss scale (240
    training molecules: 15 full batches of 16, so the mean over steps is the mean over molecules); with MSE not."""
    scale = {}
    for loss in ("l1", "mse"):
        run([sys.executable, "train_lite.py", *TINY, "--epochs", "1", "--loss", loss], tmp_path / loss)
        ckpt = torch.load(tmp_path / loss / "checkpoints" / "best_model_lite.pth", weights_only=True)
        scale[loss] = ckpt["normalisation"]["loss_scale"][0]
        row = history(tmp_path / loss)[0]
        scale[loss] = float(row["train_loss"]), float(row["train_mae_gap"]) / scale[loss]
    assert scale["l1"][0] == pytest.approx(scale["l1"][1], rel=1e-4)
    assert scale["mse"][0] != pytest.approx(scale["mse"][1], rel=0.05)


def test_task_weights_equal_or_balanced_by_the_running_losses() -> None:
    """equal: every target's standardised loss counts alike; balanced: each divided by its running mean (the
    gradient of sum_k log L_k), scaled to mean 1; before any running mean, both equal."""
    running = [0.5, 2.0, 0.25]
    torch.testing.assert_close(optim.LossGuard.weights(running, "equal", 3), torch.ones(3))
    balanced = optim.LossGuard.weights(running, "balanced", 3)
    torch.testing.assert_close(balanced * torch.tensor(running), torch.full((3,), float(balanced[0] * 0.5)))
    assert float(balanced.mean()) == pytest.approx(1.0)
    torch.testing.assert_close(optim.LossGuard.weights(None, "balanced", 3), torch.ones(3))
