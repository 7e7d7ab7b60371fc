"""The training loop's state and steps: `Progress` (where a run stands, saved whole for --resume) and `Trainer` (the
model, its weight average and optimiser; train an epoch, check the loss, validate, save state).

Reading order: Trainer.fit, then train_epoch, check_window and end_epoch. One step's arithmetic (the loss, its
gradient, the update) is training/step.py's train_step; the run is set up in training/loop.py and ends in
training/finish.py.
"""
from __future__ import annotations

import argparse
import copy
import math
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from schnet_model import SchNet
from schnetqm9.cli import UserError
from schnetqm9.data import sources
from schnetqm9.data.batch import Batcher
from schnetqm9.model import checkpoint, precision, transfer
from schnetqm9.model.evaluation import batched_outputs
from schnetqm9.potential import losses as potential
from schnetqm9.seeds import draw_seed
from schnetqm9.training import references, report
from schnetqm9.training.distributed import World
from schnetqm9.training.optim import FlatAdam, LossGuard, Schedule, make_ema
from schnetqm9.training.step import Objective, train_step


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
    held_windows: int = 0  # single windows above the loss guard's factor, kept out of its running mean
    best_val: float = math.inf  # best validation score (Trainer.score)
    best_epoch: int = -1
    finished: bool = False
    history: list[dict] = field(default_factory=list)



def state_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """(the resume state, the best weights) of a run, in --checkpoint-dir."""
    folder = Path(args.checkpoint_dir)
    return folder / f"last{args.suffix}.pth", folder / f"best_model{args.suffix}.pth"


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
                                                     args.precondition, args.prior_thermal, args.prior_noise_min)
        self.force_val_idx = self.val_idx[:self.FORCE_VALIDATION]
        refit = references.sum_outputs(meta.targets) if args.refit_references else []
        self.refit = (references.ValidationRefit(self.batcher, self.columns.tolist(), self.train_idx, self.val_idx,
                                                 refit) if refit else None)  # validated with refitted references
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
        rolls the weights, optimiser and average back to the last good state and halves the learning rate. A first
        window above the guard's factor is held: counted in the epoch's sums, kept out of the running mean (and its
        task weights), and no good state is kept from it."""
        if not self.window_steps:
            return
        sums = self.world.sum_(torch.cat([self.window_loss, self.window_err]).double()).tolist()
        k, n = len(self.names), self.window_steps
        window = [v / n for v in sums[:k]]
        self.window_loss.zero_()
        self.window_err.zero_()
        self.window_steps = 0
        verdict = self.guard.judge(window, p.running_loss)
        if verdict == "spike":
            self.roll_back(p, window)
            return
        if verdict == "held":
            p.held_windows += 1
            print(f"one window at epoch {p.epoch + 1}, step {p.step_in_epoch} at {self.describe(window, p)}: "
                  f"held out of the running mean until the next window shows whether it was an outlier", flush=True)
        else:
            p.running_loss = self.guard.update(window, p.running_loss)
            self.set_task_weights(p)
        p.loss_sum += sum(window) / k * n
        p.abs_err_sum = [a + e for a, e in zip(p.abs_err_sum or [0.0] * k, sums[k:])]
        p.checked_steps += n
        if verdict == "ok" and p.step - self.snapshots[-1][0] >= self.SNAPSHOT_EVERY:
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
        print(f"loss spike at epoch {p.epoch + 1}, step {p.step_in_epoch} ({self.describe(window, p)}): weights "
              f"rolled back to step {good_step}, learning rate now {p.lr_scale:g} x the schedule", flush=True)

    def describe(self, window: list[float], p: Progress) -> str:
        """'loss 17.3x its running mean, most in alpha' for a window of per-target losses [K]."""
        level = self.guard.level(window, p.running_loss)
        worst = max(range(len(window)), key=lambda k: window[k] / max((p.running_loss or window)[k], 1e-12))
        return f"loss {level:.3g}x its running mean, most in {self.names[worst]}"

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
        forces' too, under 'forces'. With references refitted at validation (training/references.py), the metrics
        are the refitted model's, and 'references' holds the correction [100, K] to its atomref and 'unrefitted'
        the MAE per target without it."""
        t = time.perf_counter()
        true = self.data.y[self.val_idx][:, self.columns.cpu()]
        found = []
        for model in (self.eval_model, self.model)[:1 if self.ema is None else 2]:
            pred = self.outputs(model, self.val_idx)
            if self.refit is None:
                metrics = report.regression_metrics(pred, true, self.names)
            else:
                unrefitted = report.regression_metrics(pred, true, self.names)
                pred, delta = self.refit(lambda mols: self.outputs(model, mols), pred)
                metrics = report.regression_metrics(pred, true, self.names)
                metrics.update(references=delta, unrefitted={n: unrefitted[n]["mae"] for n in self.names})
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
            if "unrefitted" in val:
                h[f"unrefitted_val_mae_{name}"] = val["unrefitted"][name]
        # precision: of the steps that ended this epoch; a run resumed on other hardware may change it (auto)
        h.update(lr=lr, epochs_done=p.step / self.steps_per_epoch, minutes=p.elapsed / 60, spikes=p.spikes,
                 held_windows=p.held_windows, precision=self.precision)
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
        print(f"epoch {p.epoch + 1:4d}/{self.args.epochs} | train loss {h['train_loss']:.4g} | val "
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
                weights, metrics = (self.eval_model, val) if kept == "average" else (self.model, raw)
                state = weights.state_dict()
                if "references" in metrics:  # saved as validated: with the refitted references
                    atomref = state["atomref"]
                    state = dict(state, atomref=atomref + metrics["references"].reshape(atomref.shape).to(atomref))
                metrics = {k: v for k, v in metrics.items() if k not in ("references", "unrefitted")}
                if self.world.main:
                    checkpoint.save(checkpoint.best_weights(self.meta, state, p.best_epoch, kept, best, metrics),
                                    self.best_path)
            p.epoch += 1
        p.step_in_epoch, p.loss_sum, p.abs_err_sum, p.checked_steps = 0, 0.0, [], 0
        stalled = bool(args.patience) and p.epoch - p.best_epoch >= args.patience
        p.finished = out_of_time or p.epoch >= args.epochs or stalled
        if out_of_time:
            print(f"time budget of {args.time_budget:g} min spent after {p.step / self.steps_per_epoch:.2f} epochs")
        elif stalled and p.epoch < args.epochs:
            print(f"early stop: no better validation score for {args.patience} epochs")
        self.save_state(p)
