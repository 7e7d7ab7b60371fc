"""Train SchNet on QM9 for one target; evaluate on the test split; write figures, metrics and checkpoints.

    python train.py --target gap                      # full QM9: 110,000 / 10,000 / 10,831 molecules
    python train.py --target gap --time-budget 60     # the same in one hour: the schedule spans the budget
    python train_lite.py                              # same loop, smaller defaults (10k subset, small model)
    torchrun --nproc_per_node 2 train_lite.py         # data-parallel, same steps (distributed.py)

The one training loop of the repo lives here; train_lite.py only changes the defaults. Batches are cut from flat
tensors held on the training device (qm9_data.Batcher), so no DataLoader or per-molecule collation is involved.
Reading order: Trainer.fit (train_epoch, end_epoch), then finish; run() sets them up.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

import cpu_kernels
import distributed
import plots
import qm9_data
from distributed import World
from optim import FlatAdam, Schedule, make_ema
from qm9_data import Batcher, QM9
from schnet_model import FULL_CONFIG, SchNet, count_parameters

CHECKPOINT_FORMAT = "schnet-qm9/1"
INTENSIVE = {"mu", "homo", "lumo", "gap", "A", "B", "C"}  # per-molecule properties: mean readout

FULL_DEFAULTS = dict(
    subset_size=None, epochs=200, batch_size=32, lr=1e-3, patience=30, ema_decay=0.999, suffix="", **FULL_CONFIG,
)


class TrainingError(Exception):
    """A problem the user can fix; reported as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(defaults: dict, description: str) -> argparse.ArgumentParser:
    p = _Parser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--target", default="gap", help="QM9 target, by name (" + ", ".join(qm9_data.TARGET_NAMES)
                   + "; case-insensitive) or by index 0-18")
    p.add_argument("--epochs", type=int, default=defaults["epochs"],
                   help="number of epochs; with --time-budget, only a cap")
    p.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="stop after this many minutes of wall clock and fit the learning-rate schedule to them; "
                        "validation counts (the run ends within about one validation pass of the budget), the "
                        "final test and figures come after it")
    p.add_argument("--ema-decay", type=float, default=defaults["ema_decay"],
                   help="decay of the exponential moving average of the weights, which are the ones validated, "
                        "kept and tested (0: no average)")
    p.add_argument("--batch-size", type=int, default=defaults["batch_size"],
                   help="molecules per training step (under torchrun: in all processes together)")
    p.add_argument("--lr", type=float, default=defaults["lr"], help="peak learning rate of Adam (cosine decay)")
    p.add_argument("--subset-size", type=int, default=defaults["subset_size"],
                   help="use this many molecules, split 80/10/10 (default: all of QM9, split 110k/10k/rest)")
    p.add_argument("--hidden-channels", "--hidden", type=int, default=defaults["hidden_channels"],
                   help="atom feature size")
    p.add_argument("--num-filters", "--filters", type=int, default=defaults["num_filters"], help="filter size")
    p.add_argument("--num-interactions", "--interactions", type=int, default=defaults["num_interactions"],
                   help="number of interaction blocks")
    p.add_argument("--num-gaussians", "--gaussians", type=int, default=defaults["num_gaussians"],
                   help="number of Gaussian radial basis functions")
    p.add_argument("--cutoff", type=float, default=defaults["cutoff"], help="interaction cutoff (Angstrom)")
    p.add_argument("--readout", choices=["auto", "add", "mean"], default="auto",
                   help="sum or mean of atom contributions; auto: mean for mu, homo, lumo, gap, A, B, C, else sum")
    p.add_argument("--loss", choices=["mse", "l1"], default="mse", help="loss on the standardised target")
    p.add_argument("--patience", type=int, default=defaults["patience"],
                   help="stop early after this many epochs without a better validation MAE (0: never)")
    p.add_argument("--clip-grad", type=float, default=10.0, help="clip the gradient norm to this value")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the initialisation and the shuffling")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="auto: CUDA when present")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matrix products on CUDA (faster, less exact)")
    p.add_argument("--data-dir", default="data", help="QM9 cache folder")
    p.add_argument("--output-dir", default="results", help="figures, metrics.json, history.csv, split")
    p.add_argument("--checkpoint-dir", default="checkpoints", help="best model and resume state")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run from its last saved state")
    p.add_argument("--checkpoint-every", type=float, default=120.0,
                   help="also save the resume state every this many seconds within an epoch")
    p.add_argument("--tsne-samples", type=int, default=2000, help="test molecules shown in the t-SNE plot")
    p.add_argument("--suffix", default=defaults["suffix"], help="appended to every output file name")
    return p


def check_args(args: argparse.Namespace) -> None:
    for flag in ("epochs", "batch_size", "hidden_channels", "num_filters", "num_interactions", "tsne_samples"):
        if getattr(args, flag) <= 0:
            raise TrainingError(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    if args.num_gaussians < 2:
        raise TrainingError(f"--num-gaussians must be at least 2, got {args.num_gaussians}")
    if args.time_budget is not None and not (args.time_budget > 0 and math.isfinite(args.time_budget)):
        raise TrainingError(f"--time-budget must be a positive number of minutes, got {args.time_budget:g}")
    if not 0 <= args.ema_decay < 1:
        raise TrainingError(f"--ema-decay must be in [0, 1), got {args.ema_decay:g}")
    if not (args.lr > 0 and math.isfinite(args.lr)) or not args.cutoff > 0 or args.patience < 0:
        raise TrainingError("--lr and --cutoff must be positive and --patience non-negative")
    try:
        args.target = qm9_data.target_name(args.target)
        qm9_data.split_sizes(qm9_data.NUM_MOLECULES, args.subset_size)
    except ValueError as err:
        raise TrainingError(str(err)) from None


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for, but PyTorch sees no CUDA GPU: use --device cpu or auto")
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def normalisation(data: QM9, train: torch.Tensor, target: int, readout: str) -> dict:
    """Standardisation from the training molecules only.

    mean/std are those of the atom-wise output: per atom of (y - sum of atomrefs) for the 'add' readout, per
    molecule for 'mean'. loss_scale is the std of the molecule-level target; the loss is measured in it.
    """
    ref = qm9_data.atomref(target)
    y = data.y[train, target].double()
    n = data.num_atoms[train].double()
    if ref is not None:
        mols = Batcher(data)(train)
        y = y - torch.zeros(len(train), dtype=torch.float64).index_add_(0, mols.batch, ref[mols.z, 0].double())
    per_atom = y / n if readout == "add" else y
    return dict(mean=float(per_atom.mean()), std=float(per_atom.std()), loss_scale=float(y.std()),
                atomref=None if ref is None else ref.flatten().tolist())


def train_step(model: SchNet, optimizer: torch.optim.Optimizer, b: qm9_data.Batch, target: int,
               scale: float, loss: str = "mse", clip_grad: float = 10.0, world: World = World(),
               global_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a batch; the loss is taken on targets divided by `scale`.

    With several processes, `b` is this rank's share of a global batch of `global_size` molecules: the rank
    back-propagates its share's summed loss / global_size and the gradients are summed over the ranks, which gives
    every rank the gradient of the global batch's mean loss (distributed.py). Returns (this rank's part of the
    loss [], predictions [b]) as tensors, detached, without a host synchronisation.
    """
    pred = model(b.z, b.pos, b.batch)[:, 0]  # [b]
    loss_fn = torch.nn.functional.mse_loss if loss == "mse" else torch.nn.functional.l1_loss
    if world.active:
        value = loss_fn(pred / scale, b.y[:, target] / scale, reduction="sum") / global_size
    else:
        value = loss_fn(pred / scale, b.y[:, target] / scale)
    optimizer.zero_grad()
    value.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]  # FlatAdam: the one flat tensor
    for p in params:
        world.sum_(p.grad)
    torch.nn.utils.clip_grad_norm_(params, clip_grad, foreach=True)
    optimizer.step()
    return value.detach(), pred.detach()


@torch.no_grad()
def predict(model: SchNet, batcher: Batcher, mols: torch.Tensor, batch_size: int,
            embeddings: bool = False) -> torch.Tensor:
    """Predictions [M] (or embeddings [M, D]) for molecules `mols`, in batches, on the batcher's device."""
    model.eval()
    out = []
    for chunk in mols.split(batch_size):
        b = batcher(chunk)
        out.append(model.embedding(b.z, b.pos, b.batch) if embeddings else model(b.z, b.pos, b.batch)[:, 0])
    model.train()
    return torch.cat(out).float().cpu()


def regression_metrics(pred: torch.Tensor, true: torch.Tensor) -> dict:
    err = (pred.double() - true.double())
    mae, rmse = float(err.abs().mean()), float(err.square().mean().sqrt())
    r2 = 1.0 - float(err.square().sum() / (true.double() - true.double().mean()).square().sum())
    return dict(mae=mae, rmse=rmse, r2=r2)


def save_checkpoint(obj: dict, path: Path) -> None:
    with qm9_data.atomic_write(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint of this project, or a one-line TrainingError saying why not."""
    if not path.is_file():
        raise TrainingError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise TrainingError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}): "
                            "it is corrupt or was not written by this project") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path} is not a checkpoint of this project (format {CHECKPOINT_FORMAT})")
    return ckpt


def model_from_checkpoint(ckpt: dict, device: torch.device | str = "cpu") -> SchNet:
    model = SchNet(**ckpt["model_config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclass
class Progress:
    """Where a run stands. Saved whole in the resume state, so --resume continues from exactly here."""
    epoch: int = 0  # epochs begun and ended (the last one may be partial when the time budget ran out)
    step_in_epoch: int = 0  # steps taken in the current epoch
    step: int = 0  # optimisation steps taken in all
    elapsed: float = 0.0  # seconds of wall clock spent training and validating, over all sessions of the run
    loss_sum: float = 0.0  # over the current epoch's steps, all ranks, up to the last sync (Trainer.sync)
    abs_err_sum: float = 0.0
    best_val: float = math.inf
    best_epoch: int = -1
    finished: bool = False
    history: list[dict] = field(default_factory=list)


class Trainer:
    """The model, its weight average and optimiser, and the loop's steps: train an epoch, validate, save state.

    With several processes (distributed.py) every rank runs all of this on its share of each batch; only rank 0
    writes files.
    """

    def __init__(self, args: argparse.Namespace, data: QM9, split: dict, meta: dict, device: torch.device,
                 world: World = World()) -> None:
        self.args, self.data, self.meta, self.t, self.world = args, data, meta, meta["target_index"], world
        self.train_idx, self.val_idx, self.test_idx = split["train"], split["val"], split["test"]
        norm = meta["normalisation"]
        torch.manual_seed(args.seed)  # the same initial weights on every rank
        model = SchNet(**meta["model_config"], mean=norm["mean"], std=norm["std"],
                       atomref=None if norm["atomref"] is None else torch.tensor(norm["atomref"]).view(100, 1))
        self.model = model.to(device)
        self.optimizer = FlatAdam(self.model, args.lr)
        self.ema = make_ema(self.model, args.ema_decay)
        self.batcher = Batcher(data, device)
        self.eval_bs = max(256, args.batch_size)
        self.steps_per_epoch = math.ceil(len(self.train_idx) / args.batch_size)
        budget = None if args.time_budget is None else 60 * args.time_budget
        self.schedule = Schedule(args.lr, min(1000, self.steps_per_epoch), args.epochs * self.steps_per_epoch, budget)
        self.last_path = Path(args.checkpoint_dir) / f"last{args.suffix}.pth"
        self.best_path = Path(args.checkpoint_dir) / f"best_model{args.suffix}.pth"
        self.val_seconds = 0.0  # duration of the last validation: reserved at the end of a time budget
        self.t0 = time.perf_counter()
        self.loss_part, self.err_part = torch.zeros((), device=device), torch.zeros((), device=device)

    @property
    def eval_model(self) -> SchNet:
        """The weights that are validated, kept as best and tested: the average when there is one."""
        return self.model if self.ema is None else self.ema.module

    def restore(self, state: dict) -> Progress:
        self.model.load_state_dict(state["state_dict"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError):
            raise TrainingError(f"the optimiser state in {self.last_path} does not fit this version's optimiser "
                                "(one flat parameter tensor): start without --resume") from None
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        return Progress(**state["progress"])

    def sync(self, p: Progress) -> None:
        """Folds this epoch's per-rank loss and error sums, summed over the ranks, into p; agrees on p.elapsed."""
        parts = self.world.sum_(torch.stack([self.loss_part, self.err_part]).double()).tolist()
        p.loss_sum, p.abs_err_sum = p.loss_sum + parts[0], p.abs_err_sum + parts[1]
        self.loss_part.zero_()
        self.err_part.zero_()
        p.elapsed = self.world.agree(time.perf_counter() - self.t0)[0]

    def save_state(self, p: Progress) -> None:
        self.sync(p)
        if self.world.main:
            save_checkpoint({**self.meta, "state_dict": self.model.state_dict(),
                             "optimizer": self.optimizer.state_dict(),
                             "ema": None if self.ema is None else self.ema.state_dict(), "progress": asdict(p)},
                            self.last_path)

    def fit(self, p: Progress) -> None:
        """Epochs until --epochs, --patience or --time-budget ends the run; the clock resumes from p.elapsed."""
        self.t0 = time.perf_counter() - p.elapsed
        while not p.finished:
            out_of_time = self.train_epoch(p)
            self.end_epoch(p, out_of_time)

    def out_of_time(self, p: Progress) -> bool:
        """True when the rest of the budget is needed for the final validation."""
        return self.schedule.budget_s is not None and p.elapsed + self.val_seconds >= self.schedule.budget_s

    def decide(self, p: Progress, last_save: float) -> tuple[bool, bool]:
        """(stop for the time budget, save the resume state now), the same on every rank; sets p.elapsed, the
        clock the learning rate follows, to the slowest rank's."""
        p.elapsed, stop, save = self.world.agree(time.perf_counter() - self.t0, self.out_of_time(p),
                                                 time.perf_counter() - last_save > self.args.checkpoint_every)
        return bool(stop), bool(save)

    def train_epoch(self, p: Progress) -> bool:
        """Steps of epoch p.epoch from p.step_in_epoch on; returns True if the time budget ended it early."""
        args, spe, world = self.args, self.steps_per_epoch, self.world
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + p.epoch)  # epoch order is a function of the epoch
        order = self.train_idx[torch.randperm(len(self.train_idx), generator=g)].split(args.batch_size)
        bar = tqdm(total=spe, initial=p.step_in_epoch, desc=f"epoch {p.epoch + 1}/{args.epochs}", leave=False,
                   unit="step", disable=None if world.main else True)
        last_save = time.perf_counter()
        for step in range(p.step_in_epoch, spe):
            if not world.active or step % 10 == 0:  # several processes: agree every 10 steps, not every step
                stop, save = self.decide(p, last_save)
                if stop:
                    bar.close()
                    return True
                if save:
                    self.save_state(p)
                    last_save = time.perf_counter()
            for group in self.optimizer.param_groups:
                group["lr"] = self.schedule.lr(p.step, p.elapsed)
            b = self.batcher(world.shard(order[step]))
            loss, pred = train_step(self.model, self.optimizer, b, self.t, self.meta["normalisation"]["loss_scale"],
                                    args.loss, args.clip_grad, world, len(order[step]))
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.loss_part += loss
            self.err_part += (pred - b.y[:, self.t]).abs().sum()
            p.step, p.step_in_epoch = p.step + 1, step + 1
            if step % 10 == 0 or step == spe - 1:  # one host sync every 10 steps
                self.check_finite(loss.item(), p)
                bar.set_postfix_str(f"loss {loss.item() * world.size:.4f}" + self.time_left(p))
            bar.update(1)
        bar.close()
        return False

    def check_finite(self, value: float, p: Progress) -> None:
        if not math.isfinite(value):
            raise TrainingError(f"the loss became {value} at epoch {p.epoch + 1}, step {p.step_in_epoch}: lower --lr "
                                f"(now {self.args.lr:g}) or --clip-grad, or --resume from the last good state")

    def time_left(self, p: Progress) -> str:
        if self.schedule.budget_s is None:
            return ""
        left = max(0, int(self.schedule.budget_s - p.elapsed))
        return f", {left // 60}:{left % 60:02d} left"

    def predict(self, model: SchNet, mols: torch.Tensor, embeddings: bool = False) -> torch.Tensor:
        """predict() over `mols`, each rank on its share, gathered: every rank gets all [M] (or [M, D]) rows."""
        part = predict(model, self.batcher, self.world.shard(mols), self.eval_bs, embeddings)
        return self.world.gather(part, len(mols))

    def validate(self) -> tuple[dict, dict]:
        """Validation metrics of the evaluated weights, and of the raw (not averaged) ones."""
        t = time.perf_counter()
        true = self.data.y[self.val_idx, self.t]
        val = regression_metrics(self.predict(self.eval_model, self.val_idx), true)
        raw = val if self.ema is None else regression_metrics(self.predict(self.model, self.val_idx), true)
        self.val_seconds = time.perf_counter() - t
        return val, raw

    def end_epoch(self, p: Progress, out_of_time: bool) -> None:
        """Validate, record, keep the best weights, decide whether the run is over, save the resume state."""
        args, unit = self.args, self.meta["unit"]
        if p.step_in_epoch:
            val, raw = self.validate()
            self.sync(p)
            seen = min(p.step_in_epoch * args.batch_size, len(self.train_idx))
            lr = self.optimizer.param_groups[0]["lr"]
            p.history.append(dict(epoch=p.epoch + 1, train_loss=p.loss_sum / p.step_in_epoch,
                                  train_mae=p.abs_err_sum / seen, val_mae=val["mae"], val_mae_raw=raw["mae"],
                                  val_rmse=val["rmse"], lr=lr, epochs_done=p.step / self.steps_per_epoch,
                                  minutes=p.elapsed / 60))
            h = p.history[-1]
            print(f"epoch {p.epoch + 1:4d}/{args.epochs} | train loss {h['train_loss']:.5f} | train MAE "
                  f"{h['train_mae']:.5g} | val MAE {val['mae']:.5g} {unit}"
                  + ("" if self.ema is None else f" (raw weights {raw['mae']:.5g})")
                  + f" | lr {lr:.2e} | {h['minutes']:.1f} min" + self.time_left(p), flush=True)
            if val["mae"] < p.best_val:
                p.best_val, p.best_epoch = val["mae"], p.epoch + 1
                if self.world.main:
                    save_checkpoint({**self.meta, "state_dict": self.eval_model.state_dict(),
                                     "epoch": p.best_epoch, "metrics": {"val_mae": p.best_val}}, self.best_path)
            p.epoch += 1
        p.step_in_epoch, p.loss_sum, p.abs_err_sum = 0, 0.0, 0.0
        stalled = bool(args.patience) and p.epoch - p.best_epoch >= args.patience
        p.finished = out_of_time or p.epoch >= args.epochs or stalled
        if out_of_time:
            print(f"time budget of {args.time_budget:g} min spent after {p.step / self.steps_per_epoch:.2f} epochs")
        elif stalled and p.epoch < args.epochs:
            print(f"early stop: no better validation MAE for {args.patience} epochs")
        self.save_state(p)


def load_resume_state(args: argparse.Namespace, meta: dict) -> dict:
    """The interrupted run's state, checked against the flags that must not change across a resume."""
    path = Path(args.checkpoint_dir) / f"last{args.suffix}.pth"
    state = load_checkpoint(path)
    if "progress" not in state:
        raise TrainingError(f"{path} was written by an older version of train.py: start over without --resume")
    if state["target"] != meta["target"]:
        raise TrainingError(f"{path} was trained for target {state['target']!r}, not {meta['target']!r}: "
                            f"resume with --target {state['target']}, or start over without --resume")
    if state["model_config"] != meta["model_config"]:
        raise TrainingError(f"{path} holds another architecture ({state['model_config']}) than the flags "
                            "ask for: pass the same flags as the interrupted run, or start over without --resume")
    for key in ("batch_size", "ema_decay", "time_budget"):
        if state[key] != meta[key]:
            flag = "--" + key.replace("_", "-")
            raise TrainingError(f"{path} was trained with {flag} {state[key]}: resume with the same {flag} "
                                "(the schedule, the average and the position in the epoch depend on it)")
    return state


def finish(trainer: Trainer, p: Progress, device: torch.device, kernels: str) -> dict:
    """Test the best weights (reloaded from disk: what a user of the file gets); write figures, metrics, history.

    Every rank predicts its share of the test set and of the t-SNE sample; rank 0 writes.
    """
    args, meta, data, t, world = trainer.args, trainer.meta, trainer.data, trainer.t, trainer.world
    target, unit, out_dir, test_idx = meta["target"], meta["unit"], Path(args.output_dir), trainer.test_idx
    world.barrier()  # rank 0 has written the best checkpoint
    best = load_checkpoint(trainer.best_path)
    model = model_from_checkpoint(best, device)
    pred, true = trainer.predict(model, test_idx), data.y[test_idx, t]
    test = regression_metrics(pred, true)
    if unit == "eV":
        test["mae_meV"] = 1000 * test["mae"]
    print(f"test ({len(test_idx):,} molecules, best epoch {best['epoch']}): MAE {test['mae']:.5g} {unit}"
          + (f" ({test['mae_meV']:.1f} meV)" if unit == "eV" else "")
          + f" | RMSE {test['rmse']:.5g} {unit} | R2 {test['r2']:.5f}")
    raw = regression_metrics(trainer.predict(trainer.model, test_idx), true)  # what the average bought
    g = torch.Generator().manual_seed(args.seed)
    shown = test_idx[torch.randperm(len(test_idx), generator=g)[: args.tsne_samples]]
    emb = trainer.predict(model, shown, embeddings=True)
    minutes, epochs_done = p.elapsed / 60, p.step / trainer.steps_per_epoch
    split = meta["split"]
    metrics = dict(target=target, unit=unit, test=test, test_raw_final_weights=raw, best_val_mae=p.best_val,
                   best_epoch=best["epoch"], epochs_run=len(p.history), epochs_done=epochs_done, minutes=minutes,
                   config=meta["model_config"], args=vars(args), command=args.command, processes=world.size,
                   split=dict(seed=args.seed, subset_size=args.subset_size, train=len(split["train"]),
                              val=len(split["val"]), test=len(split["test"])),
                   device=str(device), device_name=torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"CPU ({torch.get_num_threads()} threads per process)", wall_time_s=p.elapsed,
                   peak_memory_mb=peak_memory_mb(device), parameters=count_parameters(model), torch=torch.__version__,
                   kernels=kernels, checkpoint=str(trainer.best_path))
    if not world.main:
        return metrics
    best["metrics"] = {**best["metrics"], **{f"test_{k}": v for k, v in test.items()}}
    best.update(command=args.command, args=vars(args), processes=world.size, epochs_done=epochs_done,
                minutes=minutes)
    save_checkpoint(best, trainer.best_path)
    tag = f" ({args.suffix.strip('_')})" if args.suffix else ""
    plots.plot_predictions(true.numpy(), pred.numpy(), test, target, unit, out_dir / f"predictions{args.suffix}.png",
                           title=f"QM9 {target}: {len(test_idx):,} test molecules{tag}")
    plots.plot_loss_curve(p.history, unit, out_dir / f"loss_curve{args.suffix}.png",
                          title=f"SchNet on QM9 {target}{tag}")
    plots.plot_tsne(emb.numpy(), data.y[shown, t].numpy(), target, unit, out_dir / f"tsne{args.suffix}.png",
                    seed=args.seed)
    with qm9_data.atomic_write(out_dir / f"metrics{args.suffix}.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    rows = [",".join(p.history[0])] + [",".join(f"{v}" for v in h.values()) for h in p.history]
    with qm9_data.atomic_write(out_dir / f"history{args.suffix}.csv") as tmp:
        tmp.write_text("\n".join(rows) + "\n")
    print(f"wrote {out_dir}/{{predictions,loss_curve,tsne}}{args.suffix}.png, metrics{args.suffix}.json, "
          f"history{args.suffix}.csv and {trainer.best_path} after {minutes:.1f} min and {epochs_done:.2f} epochs")
    return metrics


def join_processes(args: argparse.Namespace, device: torch.device) -> tuple[World, torch.device]:
    """Under torchrun, this process's place in the run and its device; ranks other than 0 print nothing. A
    worker group that torchrun restarted after a failure resumes from the last saved state by itself."""
    world = distributed.init(use_cuda=device.type == "cuda")
    if world.device.type == "cuda":
        device = world.device  # one GPU per process
    if not world.main:
        sys.stdout = open(os.devnull, "w")  # errors still reach stderr
    if args.batch_size < world.size:
        raise TrainingError(f"--batch-size {args.batch_size} is smaller than the {world.size} processes: it is the "
                            "global batch, split across them; use at least one molecule per process")
    if distributed.restarted() and (Path(args.checkpoint_dir) / f"last{args.suffix}.pth").is_file():
        args.resume = True
        print(f"torchrun restarted the workers (restart {os.environ['TORCHELASTIC_RESTART_COUNT']}): resuming")
    return world, device


def check_shares(split: dict, batch_size: int, world: World) -> None:
    """Every process must get molecules from every batch, the last one of an epoch included, and from each set."""
    rest = len(split["train"]) % batch_size
    if 0 < rest < world.size or min(len(split["val"]), len(split["test"])) < world.size:
        raise TrainingError(f"with {world.size} processes, --batch-size {batch_size} leaves the last batch of "
                            f"{len(split['train']):,} training molecules with {rest}, or a set is smaller than the "
                            "number of processes: pick a batch size that divides the training set, or fewer processes")


def run(args: argparse.Namespace) -> dict:
    check_args(args)
    world, device = join_processes(args, resolve_device(args.device))
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    target, t = args.target, qm9_data.target_index(args.target)
    readout = args.readout if args.readout != "auto" else ("mean" if target in INTENSIVE else "add")
    config = dict(hidden_channels=args.hidden_channels, num_filters=args.num_filters,
                  num_interactions=args.num_interactions, num_gaussians=args.num_gaussians,
                  cutoff=float(args.cutoff), readout=readout)
    meta = dict(format=CHECKPOINT_FORMAT, target=target, target_index=t, unit=qm9_data.target_unit(target),
                model_config=config, seed=args.seed, subset_size=args.subset_size, batch_size=args.batch_size,
                ema_decay=args.ema_decay, time_budget=args.time_budget)
    try:
        data = QM9(args.data_dir)
    except (FileNotFoundError, ValueError) as err:
        raise TrainingError(str(err)) from None

    state = load_resume_state(args, meta) if args.resume else None
    if state:
        split = {k: state["split"][k] for k in ("train", "val", "test")}
        meta["normalisation"] = state["normalisation"]
    else:
        split = qm9_data.split_indices(len(data), args.subset_size, seed=args.seed)
        meta["normalisation"] = normalisation(data, split["train"], t, readout)
    check_shares(split, args.batch_size, world)
    meta["split"] = split
    meta["elements"] = Batcher(data)(split["train"]).z.unique().tolist()  # what predict.py accepts
    trainer = Trainer(args, data, split, meta, device, world)
    p = trainer.restore(state) if state else Progress()

    kernels = cpu_kernels.backend() if device.type == "cpu" else "pure PyTorch"
    print(f"SchNet {config} | {count_parameters(trainer.model):,} parameters | target {target} ({meta['unit']}) | "
          f"device {device} | {kernels}")
    print(f"molecules: {len(split['train']):,} train / {len(split['val']):,} val / {len(split['test']):,} test | "
          f"batch {args.batch_size}, {trainer.steps_per_epoch} steps per epoch | weight average "
          + (f"decay {args.ema_decay:g}" if args.ema_decay else "off")
          + ("" if args.time_budget is None else f" | time budget {args.time_budget:g} min")
          + ("" if not world.active else f" | {world.size} processes, {torch.get_num_threads()} thread(s) each"))
    if state:
        print(f"Resuming {trainer.last_path}: epoch {p.epoch + 1}, step {p.step_in_epoch}, "
              f"{p.elapsed / 60:.1f} min spent")
    elif world.main:
        qm9_data.save_split(split, Path(args.output_dir) / f"split{args.suffix}.json", seed=args.seed,
                            subset_size=args.subset_size)
    trainer.fit(p)
    metrics = finish(trainer, p, device, kernels)
    distributed.close(world)  # not on errors: tearing down a group with a dead peer can hang
    return metrics


def main(argv: list[str] | None = None, defaults: dict = FULL_DEFAULTS,
         description: str = "Train SchNet on all of QM9 (110k/10k/rest split).") -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(defaults, description).parse_args(argv)
    script = Path(sys.argv[0]).name if sys.argv[0].endswith(".py") else "train.py"
    args.command = shlex.join(["python", script, *argv])  # recorded in the checkpoint and metrics
    try:
        return run(args)
    except TrainingError as err:
        sys.exit(f"error: {err}")
    except torch.OutOfMemoryError:
        sys.exit(f"error: CUDA ran out of memory with --batch-size {args.batch_size}: lower it, or use --device cpu")
    except KeyboardInterrupt:
        sys.exit(f"interrupted: continue with the same command and --resume (state in {args.checkpoint_dir})")


if __name__ == "__main__":
    main()
