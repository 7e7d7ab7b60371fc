"""The one training loop of the repo, for train.py and train_lite.py (which only changes the defaults): train on QM9
or your own structures, for one target or several; evaluate on the test split; write figures, metrics, checkpoints.

Batches are cut from flat tensors held on the training device (data/qm9.py's Batcher), so no DataLoader or
per-molecule collation is involved. Reading order: Trainer.fit (train_epoch, check_window, end_epoch), then finish;
run() sets them up. The flags and the combinations refused are in training/args.py, what a target is (unit, readout,
standardisation) in data/targets.py, the checkpoint format in model/checkpoint.py.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import resource
import shlex
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from schnet_model import FULL_CONFIG, SchNet, count_parameters
from schnetqm9.cli import UserError, resolve_device
from schnetqm9.data import sources, splits, targets
from schnetqm9.data.batch import Batcher
from schnetqm9.model import checkpoint, precision, transfer
from schnetqm9.model import kernels as cpu_kernels
from schnetqm9.model.evaluation import batched_outputs
from schnetqm9.potential import losses as potential
from schnetqm9.seeds import draw_seed
from schnetqm9.training import args as train_args
from schnetqm9.training import distributed, report
from schnetqm9.training.distributed import World
from schnetqm9.training.optim import FlatAdam, LossGuard, Schedule, make_ema
from schnetqm9.training.step import Objective, train_step

FULL_DEFAULTS = dict(
    subset_size=None, epochs=200, batch_size=32, lr=1e-3, patience=30, ema_decay=0.999, suffix="", precision="auto",
    **FULL_CONFIG,
)


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
    loss_sum: float = 0.0  # over the current epoch's checked steps, all ranks (Trainer.check_window)
    abs_err_sum: list[float] = field(default_factory=list)  # per target, likewise
    checked_steps: int = 0  # steps of this epoch in loss_sum
    running_loss: list[float] | None = None  # per target, the LossGuard's running mean
    lr_scale: float = 1.0  # halved at each loss spike
    spikes: int = 0
    best_val: float = math.inf  # best validation score (train.score)
    best_epoch: int = -1
    finished: bool = False
    history: list[dict] = field(default_factory=list)


class Trainer:
    """The model, its weight average and optimiser, and the loop's steps: train an epoch, check the loss, validate,
    save state.

    With several processes (training/distributed.py) every rank runs all of this on its share of each batch; only rank 0
    writes files.
    """
    SNAPSHOT_EVERY = 200  # steps between the in-memory good states a loss spike rolls back to
    FORCE_VALIDATION = 2000  # with --force-weight, forces are validated on the first this many validation molecules

    def __init__(self, args: argparse.Namespace, data: sources.Source, split: dict, meta: checkpoint.RunRecord,
                 device: torch.device, world: World = World(), start: tuple[dict, dict] | None = None) -> None:
        self.args, self.data, self.meta, self.world = args, data, meta, world
        self.names = meta.names
        self.units = {t["name"]: t["unit"] for t in meta.targets}
        self.columns = torch.tensor([t["column"] for t in meta.targets], device=device)
        self.train_idx, self.val_idx, self.test_idx = split["train"], split["val"], split["test"]
        norm = meta.normalisation
        self.scales = norm["loss_scale"]
        self.scale = torch.tensor(self.scales, device=device)
        refs = [torch.zeros(100) if r is None else torch.tensor(r) for r in norm["atomref"]]
        torch.manual_seed(args.seed)  # the same initial weights on every rank
        model = SchNet(**meta.model_config, mean=norm["mean"], std=norm["std"], atomref=torch.stack(refs, 1))
        if start is not None:  # --init-from (model/transfer.py): (its checkpoint, {new output: its output})
            meta.init_from = transfer.initialise(model, *start, args.init_from)
        if args.freeze_representation:
            transfer.freeze_representation(model)
        self.model = model.to(device)
        self.optimizer = FlatAdam(self.model, args.lr)
        self.ema = make_ema(self.model, args.ema_decay)
        self.guard = LossGuard()
        self.snapshots: deque[tuple[int, dict]] = deque(maxlen=2)
        self.batcher = Batcher(data, device)
        self.eval_bs = max(256, args.batch_size)
        self.steps_per_epoch = math.ceil(len(self.train_idx) / args.batch_size)
        budget = None if args.time_budget is None else 60 * args.time_budget
        self.schedule = Schedule(args.lr, min(1000, self.steps_per_epoch), args.epochs * self.steps_per_epoch, budget)
        self.last_path, self.best_path = state_paths(args)
        self.val_seconds = 0.0  # duration of the last validation: reserved at the end of a time budget
        self.t0 = time.perf_counter()
        k = len(self.names)
        self.window_loss = torch.zeros(k, device=device)  # per target, summed over the steps not yet checked
        self.window_err = torch.zeros(k, device=device)
        self.window_steps = 0
        self.precision = precision.resolve(args.precision, device, self.names,  # of the training steps
                                           forces=bool(args.force_weight or args.prior_weight))
        self.potential = None  # the energy as a potential: the force terms of potential/losses.py
        if args.force_weight or args.prior_weight:
            energy = self.names.index("U0") if args.data is None else 0  # with --data: the first target
            self.potential = potential.PotentialLoss(energy, self.scales[energy], args.force_weight,
                                                     args.prior_weight, args.prior_noise, args.seed,
                                                     args.precondition, args.prior_thermal)
        self.force_val_idx = self.val_idx[:self.FORCE_VALIDATION]
        self.objective = Objective(self.columns, self.scale, torch.ones(k, device=device), args.loss, self.potential)

    @property
    def eval_model(self) -> SchNet:
        """The weight average when there is one (validated beside the raw weights; the better one is kept)."""
        return self.model if self.ema is None else self.ema.module

    def restore(self, state: dict) -> Progress:
        saved = checkpoint.training_state(state)
        self.model.load_state_dict(saved["state_dict"])
        try:
            self.optimizer.load_state_dict(saved["optimizer"])
        except (ValueError, KeyError):
            raise UserError(f"the optimiser state in {self.last_path} does not fit this version's optimiser "
                            "(one flat parameter tensor): start without --resume") from None
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        return Progress(**checkpoint.progress(state))

    def training_state(self) -> dict:
        """The weights, optimiser and average, as tensors (a loss spike rolls back to a copy of this)."""
        return dict(state_dict=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    ema=None if self.ema is None else self.ema.state_dict())

    def save_state(self, p: Progress) -> None:
        p.elapsed = self.world.agree(time.perf_counter() - self.t0)[0]
        if self.world.main:
            checkpoint.save(checkpoint.resume_state(self.meta, self.training_state(), asdict(p)), self.last_path)

    def fit(self, p: Progress) -> None:
        """Epochs until --epochs, --patience or --time-budget ends the run; the clock resumes from p.elapsed."""
        self.t0 = time.perf_counter() - p.elapsed
        self.snapshots.append((p.step, copy.deepcopy(self.training_state())))
        self.set_task_weights(p)
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
        g = torch.Generator().manual_seed(draw_seed(args.seed, p.epoch))  # epoch order is a function of the epoch
        order = self.train_idx[torch.randperm(len(self.train_idx), generator=g)].split(args.batch_size)
        bar = tqdm(total=spe, initial=p.step_in_epoch, desc=f"epoch {p.epoch + 1}/{args.epochs}", leave=False,
                   unit="step", disable=None if world.main else True)
        last_save = time.perf_counter()
        for step in range(p.step_in_epoch, spe):
            if step % 10 == 0:  # one host synchronisation (and, with several processes, one agreement) per 10 steps
                self.check_window(p, bar)
            if not world.active or step % 10 == 0:
                stop, save = self.decide(p, last_save)
                if stop:
                    bar.close()
                    return True
                if save and step % 10 == 0:  # only checked steps go into the resume state
                    self.save_state(p)
                    last_save = time.perf_counter()
            for group in self.optimizer.param_groups:
                group["lr"] = self.schedule.lr(p.step, p.elapsed) * p.lr_scale
            b = self.batcher(world.shard(order[step]))
            loss, pred = train_step(self.model, self.optimizer, b, self.objective, step=p.step, mixed=self.precision,
                                    clip_grad=args.clip_grad, world=world, global_size=len(order[step]))
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.window_loss += loss
            self.window_err += (pred - b.y.index_select(1, self.columns)).abs().sum(0)
            self.window_steps += 1
            p.step, p.step_in_epoch = p.step + 1, step + 1
            bar.update(1)
        bar.close()
        return False

    def check_window(self, p: Progress, bar: tqdm | None = None) -> None:
        """Folds the steps since the last check into the epoch's sums, or, if their loss spiked (optim.LossGuard),
        rolls the weights, optimiser and average back to the last good state and halves the learning rate."""
        if not self.window_steps:
            return
        sums = self.world.sum_(torch.cat([self.window_loss, self.window_err]).double()).tolist()
        k, n = len(self.names), self.window_steps
        window = [v / n for v in sums[:k]]
        self.window_loss.zero_()
        self.window_err.zero_()
        self.window_steps = 0
        if self.guard.is_spike(window, p.running_loss):
            self.roll_back(p, window)
            return
        p.running_loss = self.guard.update(window, p.running_loss)
        self.set_task_weights(p)
        p.loss_sum += sum(window) / k * n
        p.abs_err_sum = [a + e for a, e in zip(p.abs_err_sum or [0.0] * k, sums[k:])]
        p.checked_steps += n
        if p.step - self.snapshots[-1][0] >= self.SNAPSHOT_EVERY:
            self.snapshots.append((p.step, copy.deepcopy(self.training_state())))
        if bar is not None:
            bar.set_postfix_str(f"loss {sum(window) / k:.4f}" + self.time_left(p))

    def set_task_weights(self, p: Progress) -> None:
        """The weights [K] of the targets' losses until the next check (--task-weights; optim.LossGuard)."""
        weights = self.guard.weights(p.running_loss, self.args.task_weights, len(self.names))
        self.objective.weights = weights.to(self.scale.device, self.scale.dtype)

    def roll_back(self, p: Progress, window: list[float]) -> None:
        """Restore the oldest good state kept (at most 2 * SNAPSHOT_EVERY steps back) and halve the learning rate;
        the steps and the data order go on."""
        level = self.guard.level(window, p.running_loss)
        worst = max(range(len(window)), key=lambda k: window[k] / max((p.running_loss or window)[k], 1e-12))
        p.lr_scale *= self.guard.cut
        p.spikes += 1
        if p.lr_scale < self.guard.min_lr_scale or not self.snapshots:
            raise UserError(f"the loss kept blowing up ({p.spikes} spikes, learning rate cut to {p.lr_scale:g} of "
                            f"--lr {self.args.lr:g}): lower --lr or --clip-grad")
        good_step, good = self.snapshots[0]
        self.model.load_state_dict(good["state_dict"])
        self.optimizer.load_state_dict(copy.deepcopy(good["optimizer"]))
        if self.ema is not None:
            self.ema.load_state_dict(good["ema"])
        self.snapshots.clear()
        self.snapshots.append((p.step, copy.deepcopy(good)))
        print(f"loss spike at epoch {p.epoch + 1}, step {p.step_in_epoch} (loss {level:.3g}x its running mean, "
              f"most in {self.names[worst]}): weights rolled back to step {good_step}, learning rate now "
              f"{p.lr_scale:g} x the schedule", flush=True)

    def time_left(self, p: Progress) -> str:
        if self.schedule.budget_s is None:
            return ""
        left = max(0, int(self.schedule.budget_s - p.elapsed))
        return f", {left // 60}:{left % 60:02d} left"

    def outputs(self, model: SchNet, mols: torch.Tensor, embeddings: bool = False) -> torch.Tensor:
        """batched_outputs() over `mols`, each rank on its share, gathered: every rank gets all [M, K] (or [M, D])
        rows."""
        part = batched_outputs(model, self.batcher, self.world.shard(mols), self.eval_bs, embeddings)
        return self.world.gather(part, len(mols))

    def force_errors(self, model: SchNet, mols: torch.Tensor) -> dict[str, float]:
        """MAE and RMSE (eV/A per component) of the potential's forces on `mols` against their labels (zero at
        QM9's minima), each rank on its share, summed."""
        sums = potential.force_error_sums(model, self.batcher, self.world.shard(mols), self.potential.output,
                                          self.eval_bs)
        return potential.force_metrics(self.world.sum_(sums))

    def validate(self) -> tuple[dict, dict]:
        """Per-target validation metrics of the averaged weights, and of the raw ones; with --force-weight, the
        forces' too, under 'forces'."""
        t = time.perf_counter()
        true = self.data.y[self.val_idx][:, self.columns.cpu()]
        found = []
        for model in (self.eval_model, self.model)[:1 if self.ema is None else 2]:
            metrics = report.regression_metrics(self.outputs(model, self.val_idx), true, self.names)
            if self.args.force_weight:
                metrics["forces"] = self.force_errors(model, self.force_val_idx)
            found.append(metrics)
        self.val_seconds = time.perf_counter() - t
        return found[0], found[-1]

    def score(self, metrics: dict) -> float:
        """The validation score (report.score) and, with --force-weight, that weight times the force MAE over the
        energy's loss scale per A: the loss's own balance of the two."""
        value = report.score({n: metrics[n] for n in self.names}, self.scales)
        if "forces" in metrics:
            value += self.args.force_weight * metrics["forces"]["mae"] / self.scales[self.potential.output]
        return value

    def record(self, p: Progress, val: dict, raw: dict) -> dict:
        """The epoch's row of history.csv, and its line on the screen (the score and up to four targets). `kept`
        says which weights validated better by the score: the average (ties included) or the raw ones."""
        seen = min(p.checked_steps * self.args.batch_size, len(self.train_idx))
        lr = self.optimizer.param_groups[0]["lr"]
        scores = self.score(val), self.score(raw)
        h = dict(epoch=p.epoch + 1, train_loss=p.loss_sum / max(1, p.checked_steps), val_score=scores[0],
                 val_score_raw=scores[1], kept="average" if self.ema is not None and scores[0] <= scores[1] else "raw")
        for k, name in enumerate(self.names):
            h[f"train_mae_{name}"] = p.abs_err_sum[k] / max(1, seen) if p.abs_err_sum else math.nan
            h[f"val_mae_{name}"], h[f"val_mae_raw_{name}"] = val[name]["mae"], raw[name]["mae"]
            h[f"val_rmse_{name}"] = val[name]["rmse"]
        h.update(lr=lr, epochs_done=p.step / self.steps_per_epoch, minutes=p.elapsed / 60, spikes=p.spikes)
        forces = ""
        if self.potential is not None:  # how far from a potential: forces against the labels, train and val
            h.update(self.potential.take())
            forces = f" | forces (eV/A): train rms {h['train_force_rms']:.3g}"
            if "forces" in val:
                h.update(val_force_mae=val["forces"]["mae"], val_force_mae_raw=raw["forces"]["mae"],
                         val_force_rmse=val["forces"]["rmse"])
                forces += f", val MAE {h['val_force_mae']:.3g}"
            if self.args.prior_weight:
                forces += f", prior rms {h['train_prior_rms']:.3g}"
            if self.args.data is None:  # QM9: DFT minima
                h["val_max_force_median"] = potential.max_force_median(
                    self.eval_model, self.batcher, self.val_idx[:1000], self.potential.output, self.eval_bs)
                forces += f", val median max {h['val_max_force_median']:.3g}"
        shown = self.names if len(self.names) <= 4 else [n for n in ("gap", "U0", "mu", "cv") if n in self.names]
        maes = " ".join(f"{n} {val[n]['mae']:.4g}" + (f" ({raw[n]['mae']:.4g})" if self.ema else "")
                        + f" {self.units[n]}" for n in shown)
        print(f"epoch {p.epoch + 1:4d}/{self.args.epochs} | train loss {h['train_loss']:.5f} | val "
              + ("" if len(self.names) == 1 else f"score {h['val_score']:.4f} | ") + f"MAE {maes}"
              + ("" if self.ema is None else " (raw weights in brackets)")
              + forces + f" | lr {lr:.2e} | {h['minutes']:.1f} min" + self.time_left(p), flush=True)
        return h

    def end_epoch(self, p: Progress, out_of_time: bool) -> None:
        """Check the last steps, validate, record, keep the best weights (the average or the raw ones, whichever
        validates better), decide whether the run is over, save the resume state."""
        args = self.args
        self.check_window(p)
        if p.step_in_epoch:
            val, raw = self.validate()
            p.elapsed = self.world.agree(time.perf_counter() - self.t0)[0]
            p.history.append(self.record(p, val, raw))
            best, kept = min(p.history[-1]["val_score"], p.history[-1]["val_score_raw"]), p.history[-1]["kept"]
            if best < p.best_val:
                p.best_val, p.best_epoch = best, p.epoch + 1
                weights = self.eval_model if kept == "average" else self.model
                if self.world.main:
                    checkpoint.save(checkpoint.best_weights(self.meta, weights.state_dict(), p.best_epoch, kept,
                                                            best, val if kept == "average" else raw), self.best_path)
            p.epoch += 1
        p.step_in_epoch, p.loss_sum, p.abs_err_sum, p.checked_steps = 0, 0.0, [], 0
        stalled = bool(args.patience) and p.epoch - p.best_epoch >= args.patience
        p.finished = out_of_time or p.epoch >= args.epochs or stalled
        if out_of_time:
            print(f"time budget of {args.time_budget:g} min spent after {p.step / self.steps_per_epoch:.2f} epochs")
        elif stalled and p.epoch < args.epochs:
            print(f"early stop: no better validation score for {args.patience} epochs")
        self.save_state(p)


def state_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """(the resume state, the best weights) of a run, in --checkpoint-dir."""
    folder = Path(args.checkpoint_dir)
    return folder / f"last{args.suffix}.pth", folder / f"best_model{args.suffix}.pth"


def load_resume_state(args: argparse.Namespace, meta: checkpoint.RunRecord) -> dict:
    """The interrupted run's state, checked against the flags that must not change across a resume."""
    path, best = state_paths(args)
    state = checkpoint.load(path)
    progress = checkpoint.progress(state)
    if progress is None:
        raise UserError(f"{path} was written by an older version of train.py: start over without --resume")
    saved = checkpoint.RunRecord.of(state)
    key = saved.first_difference(meta)
    if key == "target":
        raise UserError(f"{path} was trained for target {saved.target!r}, not {meta.target!r}: "
                        f"resume with --target {saved.target}, or start over without --resume")
    if key == "data":
        raise UserError(f"{path} was trained on {saved.data}, not {meta.data}: resume with the same --data, or "
                        "start over without --resume")
    if key == "model_config":
        raise UserError(f"{path} holds another architecture ({saved.model_config}) than the flags "
                        "ask for: pass the same flags as the interrupted run, or start over without --resume")
    if key is not None:
        flag = "--" + key.replace("_", "-")
        raise UserError(f"{path} was trained with {flag} {getattr(saved, key)}: resume with the same {flag} "
                        "(the schedule, the average and the position in the epoch depend on it)")
    best_epoch = progress["best_epoch"]
    if best_epoch >= 1 and not best.exists():  # the end of the run tests these weights from disk
        raise UserError(f"{best} is missing, but {path} says epoch {best_epoch} validated best: copy it beside "
                        f"{path.name} (it travels with the resume state), or start over without --resume")
    return state


def finish(trainer: Trainer, p: Progress, device: torch.device, kernels: str) -> dict:
    """Test the best weights (reloaded from disk: what a user of the file gets); write figures, metrics, history.

    Every rank predicts its share of the test set and of the t-SNE sample; rank 0 writes.
    """
    args, meta, data, world, names = trainer.args, trainer.meta, trainer.data, trainer.world, trainer.names
    out_dir, test_idx = Path(args.output_dir), trainer.test_idx
    units = trainer.units
    world.barrier()  # rank 0 has written the best checkpoint
    best = checkpoint.load(trainer.best_path)
    model = checkpoint.build_model(best, device)
    pred, true = trainer.outputs(model, test_idx), data.y[test_idx][:, trainer.columns.cpu()]  # [M, K] each
    test = report.regression_metrics(pred, true, names)
    for name, m in test.items():
        m["unit"] = units[name]
    best_epoch, kept = checkpoint.best_epoch(best)
    report.print_test(test, f"{len(test_idx):,} molecules, best epoch {best_epoch}, {kept} weights")
    test_forces = trainer.force_errors(model, test_idx) if args.force_weight else None
    if test_forces is not None:
        print(f"test forces ({test_forces['atoms']:,} atoms with labels): MAE {test_forces['mae']:.4g} eV/A | "
              f"RMSE {test_forces['rmse']:.4g} eV/A (per Cartesian component)")
    raw = report.regression_metrics(trainer.outputs(trainer.model, test_idx), true, names)  # what the average bought
    g = torch.Generator().manual_seed(args.seed)
    shown = test_idx[torch.randperm(len(test_idx), generator=g)[: args.tsne_samples]]
    emb = trainer.outputs(model, shown, embeddings=True)
    minutes, epochs_done = p.elapsed / 60, p.step / trainer.steps_per_epoch
    split = meta.split
    metrics = dict(data=meta.data, target=meta.target, targets=names, test=test,
                   test_score=report.score(test, trainer.scales), test_forces=test_forces,
                   test_raw_final_weights=raw,
                   best_val_score=p.best_val, best_epoch=best_epoch,
                   weights=kept, epochs_run=len(p.history), epochs_done=epochs_done, minutes=minutes,
                   spikes=p.spikes, config=meta.model_config, args=vars(args), command=args.command,
                   processes=world.size, split=dict(seed=args.seed, subset_size=args.subset_size,
                                                    train=len(split["train"]), val=len(split["val"]),
                                                    test=len(split["test"])),
                   device=str(device), device_name=torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"CPU ({torch.get_num_threads()} threads per process)", wall_time_s=p.elapsed,
                   peak_memory_mb=peak_memory_mb(device), parameters=count_parameters(model), torch=torch.__version__,
                   kernels=kernels, precision=trainer.precision, checkpoint=str(trainer.best_path),
                   init_from=meta.init_from)
    if not world.main:
        return metrics
    checkpoint.save(checkpoint.tested(best, test, test_forces, command=args.command, args=vars(args),
                                      processes=world.size, epochs_done=epochs_done, minutes=minutes),
                    trainer.best_path)
    report.write(out_dir, args.suffix, metrics, p.history, true.numpy(), pred.numpy(), emb.numpy(),
                 data.y[shown, int(trainer.columns[0])].numpy())
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
        raise UserError(f"--batch-size {args.batch_size} is smaller than the {world.size} processes: it is the "
                            "global batch, split across them; use at least one molecule per process")
    if distributed.restarted() and state_paths(args)[0].is_file():
        args.resume = True
        print(f"torchrun restarted the workers (restart {os.environ['TORCHELASTIC_RESTART_COUNT']}): resuming")
    return world, device


def check_shares(split: dict, batch_size: int, world: World) -> None:
    """Every process must get molecules from every batch, the last one of an epoch included, and from each set."""
    rest = len(split["train"]) % batch_size
    if 0 < rest < world.size or min(len(split["val"]), len(split["test"])) < world.size:
        raise UserError(f"with {world.size} processes, --batch-size {batch_size} leaves the last batch of "
                            f"{len(split['train']):,} training molecules with {rest}, or a set is smaller than the "
                            "number of processes: pick a batch size that divides the training set, or fewer processes")


def announce(trainer: Trainer, config: dict, device: torch.device, kernels: str) -> None:
    """The run's banner: model, device and precision; targets; data, split and schedule; where it started from."""
    args, meta, world, names = trainer.args, trainer.meta, trainer.world, trainer.names
    fitted = " + per-element references fitted on the training structures" if args.data else ""
    what = ", ".join(f"{t['name']} ({t['unit'] + ', ' if t['unit'] else ''}{t['output']}"
                     + (fitted if t["output"] == "add" else "") + ")" for t in meta.targets)
    print(f"SchNet {config} | {count_parameters(trainer.model):,} parameters | device {device} | {kernels} | "
          f"training steps in {trainer.precision}")
    if world.main and (warning := precision.emulation_warning(args.precision, device)):  # once, not per rank
        print(warning, file=sys.stderr)
    print(f"target{'s' if len(names) > 1 else ''}: {what}"
          + ("" if len(names) == 1 else f" | task weights {args.task_weights}"))
    print(f"{'molecules' if args.data is None else Path(args.data).name}: {len(trainer.train_idx):,} train / "
          f"{len(trainer.val_idx):,} val / {len(trainer.test_idx):,} test | "
          f"batch {args.batch_size}, {trainer.steps_per_epoch} steps per epoch | weight average "
          + (f"decay {args.ema_decay:g}" if args.ema_decay else "off")
          + ("" if args.time_budget is None else f" | time budget {args.time_budget:g} min")
          + ("" if not world.active else f" | {world.size} processes, {torch.get_num_threads()} thread(s) each"))
    if meta.init_from is not None:
        init = meta.init_from
        print(f"started from {init['checkpoint']}: embedding of elements {init['elements']} and the interaction "
              "blocks" + (f", output layers of {', '.join(init['outputs_copied'])}" if init["outputs_copied"] else "")
              + (" (frozen: only the output layers train)" if args.freeze_representation else ""))


def run(args: argparse.Namespace) -> dict:
    train_args.check_args(args)
    world, device = join_processes(args, resolve_device(args.device))
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    data, specs = sources.open_data(args.data, args.targets, args.unit, args.readout, args.data_dir)
    if (args.force_weight or args.prior_weight) and args.data is not None and data.forces is None:
        raise UserError(f"--force-weight and --prior-weight with --data need forces, and no structure of {args.data} "
                        "has them: give each structure a per-atom 'forces' array (eV/A; extended XYZ: a forces:R:3 "
                        "column)")
    readouts = targets.readouts(specs, args.readout)
    config = dict(hidden_channels=args.hidden_channels, num_filters=args.num_filters,
                  num_interactions=args.num_interactions, num_gaussians=args.num_gaussians,
                  cutoff=float(args.cutoff), readout=readouts[0] if len(readouts) == 1 else readouts)
    meta = checkpoint.RunRecord(
        target=args.target, model_config=config, seed=args.seed, subset_size=args.subset_size,
        targets=[dict(name=t.name, unit=t.unit, column=t.column, output=r) for t, r in zip(specs, readouts)],
        batch_size=args.batch_size, ema_decay=args.ema_decay, time_budget=args.time_budget,
        data="QM9" if args.data is None else str(Path(args.data).resolve()))

    state = load_resume_state(args, meta) if args.resume else None
    saved = checkpoint.RunRecord.of(state) if state else None
    if saved:
        split = {k: saved.split[k] for k in ("train", "val", "test")}
    else:
        split = sources.make_split(data, args.data, args.split, args.subset_size, args.seed)
    check_shares(split, args.batch_size, world)
    train_mols = Batcher(data)(split["train"])
    columns = [t.column for t in specs]
    y = train_mols.y[:, columns]
    refs = targets.references(specs, readouts, train_mols.z, train_mols.batch, y, fit=args.data is not None)
    meta.normalisation = targets.normalisation(readouts, refs, train_mols.z, train_mols.pos, train_mols.batch, y)
    start = None
    if args.init_from and not state:
        src = transfer.load_source(args.init_from, config)
        renames = transfer.parse_renames(args.init_output) if args.init_output else {}
        matches = transfer.matching_outputs(src, meta.targets, renames)
        meta.normalisation = transfer.carry_normalisation(src, matches, meta.normalisation)
        renamed = {k: j for k, j in matches.items() if meta.names[k] in renames}
        if renamed:
            meta.normalisation = transfer.refit_references(
                src, renamed, lambda m: batched_outputs(m, Batcher(data), split["train"], 512), y,
                train_mols.z, train_mols.batch, meta.normalisation)
        start = (src, matches)
    if saved:
        meta.normalisation, meta.init_from = saved.normalisation, saved.init_from
    meta.split = split
    meta.elements = train_mols.z.unique().tolist()  # what predict.py accepts
    heavy = torch.zeros(len(split["train"]), dtype=torch.long).index_add_(0, train_mols.batch,
                                                                       (train_mols.z > 1).long())
    meta.max_heavy_atoms = int(heavy.max())  # predict.py notes larger molecules (inference/domain.py)
    trainer = Trainer(args, data, split, meta, device, world, start)
    p = trainer.restore(state) if state else Progress()

    kernels = cpu_kernels.backend() if device.type == "cpu" else "pure PyTorch"
    announce(trainer, config, device, kernels)
    if state:
        print(f"Resuming {trainer.last_path}: epoch {p.epoch + 1}, step {p.step_in_epoch}, "
              f"{p.elapsed / 60:.1f} min spent")
    elif world.main:
        splits.save_split(split, Path(args.output_dir) / f"split{args.suffix}.json", seed=args.seed,
                            subset_size=args.subset_size)
    trainer.fit(p)
    metrics = finish(trainer, p, device, kernels)
    distributed.close(world)  # not on errors: tearing down a group with a dead peer can hang
    return metrics


def main(argv: list[str] | None = None, defaults: dict = FULL_DEFAULTS,
         description: str = "Train SchNet on all of QM9 (110k/10k/rest split).") -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = train_args.build_parser(defaults, description).parse_args(argv)
    script = Path(sys.argv[0]).name if sys.argv[0].endswith(".py") else "train.py"
    args.command = shlex.join(["python", script, *argv])  # recorded in the checkpoint and metrics
    try:
        return run(args)
    except UserError as err:
        sys.exit(f"error: {err}")
    except torch.OutOfMemoryError:
        sys.exit(f"error: CUDA ran out of memory with --batch-size {args.batch_size}: lower it, or use --device cpu")
    except KeyboardInterrupt:
        sys.exit(f"interrupted: continue with the same command and --resume (state in {args.checkpoint_dir})")


if __name__ == "__main__":
    main()
