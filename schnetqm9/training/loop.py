"""The one training loop of the repo, for train.py and train_lite.py (which only changes the defaults): train on QM9
or your own structures, for one target or several; evaluate on the test split; write figures, metrics, checkpoints.

Batches are cut from flat tensors held on the training device (data/batch.py's Batcher), so no DataLoader or
per-molecule collation is involved. Reading order: run() below sets the run up (its data, its record, its starting
weights); training/trainer.py's Trainer.fit trains it; training/finish.py tests and writes it. The flags and the
combinations refused are in training/args.py, what a target is (unit, readout, standardisation) in
data/targets.py, the checkpoint format in model/checkpoint.py.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import torch

from schnet_model import FULL_CONFIG, count_parameters
from schnetqm9.cli import UserError, resolve_device
from schnetqm9.data import sources, splits, targets
from schnetqm9.data.batch import Batch, Batcher
from schnetqm9.model import checkpoint, precision, transfer
from schnetqm9.model import kernels as cpu_kernels
from schnetqm9.model.evaluation import batched_outputs
from schnetqm9.training import args as train_args
from schnetqm9.training import distributed
from schnetqm9.training.distributed import World
from schnetqm9.training.finish import finish
from schnetqm9.training.trainer import Progress, Trainer, state_paths

FULL_DEFAULTS = dict(
    subset_size=None, epochs=200, batch_size=32, lr=1e-3, patience=30, ema_decay=0.999, suffix="", precision="auto",
    **FULL_CONFIG,
)


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


def open_data(args: argparse.Namespace) -> tuple[sources.Source, list[targets.Target], checkpoint.RunRecord]:
    """The molecules (QM9 or --data), the targets, and the run's record so far: the targets' units and readouts, the
    architecture and the flags a resume must repeat."""
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
    return data, specs, meta


def normalise(args: argparse.Namespace, meta: checkpoint.RunRecord, specs: list[targets.Target],
              train_mols: Batch) -> torch.Tensor:
    """Sets meta.normalisation (per-element references, mean, std, loss scales) from the training molecules; returns
    their labels [M, K] of the run's targets."""
    readouts = [t["output"] for t in meta.targets]
    y = train_mols.y[:, [t.column for t in specs]]
    refs = targets.references(specs, readouts, train_mols.z, train_mols.batch, y, fit=args.data is not None)
    meta.normalisation = targets.normalisation(readouts, refs, train_mols.z, train_mols.pos, train_mols.batch, y)
    return y


def starting_point(args: argparse.Namespace, meta: checkpoint.RunRecord, data: sources.Source, split: dict,
                   train_mols: Batch, y: torch.Tensor) -> tuple[dict, dict] | None:
    """With --init-from: (its checkpoint, {new output: its output}), the normalisation carried over from it, and the
    references of renamed outputs (--init-output NEW=OLD) refitted to the new labels y [M, K]."""
    if not args.init_from:
        return None
    src = transfer.load_source(args.init_from, meta.model_config)
    renames = transfer.parse_renames(args.init_output) if args.init_output else {}
    matches = transfer.matching_outputs(src, meta.targets, renames)
    meta.normalisation = transfer.carry_normalisation(src, matches, meta.normalisation)
    renamed = {k: j for k, j in matches.items() if meta.names[k] in renames}
    if renamed:
        meta.normalisation = transfer.refit_references(
            src, renamed, lambda m: batched_outputs(m, Batcher(data), split["train"], 512), y,
            train_mols.z, train_mols.batch, meta.normalisation)
    return src, matches


def run(args: argparse.Namespace) -> dict:
    """Set up (data, record, split, normalisation, starting weights or resume state), train, test, write."""
    train_args.check_args(args)
    world, device = join_processes(args, resolve_device(args.device))
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    data, specs, meta = open_data(args)
    state = load_resume_state(args, meta) if args.resume else None
    saved = checkpoint.RunRecord.of(state) if state else None
    if saved:
        split = {k: saved.split[k] for k in ("train", "val", "test")}
    else:
        split = sources.make_split(data, args.data, args.split, args.subset_size, args.seed)
    check_shares(split, args.batch_size, world)
    train_mols = Batcher(data)(split["train"])
    if saved:  # the normalisation the weights were trained with, not one refitted
        meta.normalisation, meta.init_from = saved.normalisation, saved.init_from
        start = None
    else:
        y = normalise(args, meta, specs, train_mols)
        start = starting_point(args, meta, data, split, train_mols, y)
    meta.split = split
    meta.elements = train_mols.z.unique().tolist()  # what predict.py accepts
    heavy = torch.zeros(len(split["train"]), dtype=torch.long).index_add_(0, train_mols.batch,
                                                                       (train_mols.z > 1).long())
    meta.max_heavy_atoms = int(heavy.max())  # predict.py notes larger molecules (inference/domain.py)
    trainer = Trainer(args, data, split, meta, device, world, start)
    p = trainer.restore(state) if state else Progress()

    kernels = cpu_kernels.backend() if device.type == "cpu" else "pure PyTorch"
    announce(trainer, meta.model_config, device, kernels)
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
