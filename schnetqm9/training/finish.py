"""The end of a training run: refit the best weights' per-element references (training/references.py), test them,
reloaded from disk (what a user of the file gets), and write the figures, metrics and history (training/report.py)
and the tested checkpoint.

Every rank predicts its share of the test set and of the t-SNE sample; rank 0 writes.
"""
from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path

import torch

from schnet_model import SchNet, count_parameters
from schnetqm9.model import checkpoint
from schnetqm9.training import references, report
from schnetqm9.training.trainer import Progress, Trainer


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclass
class TestResult:
    """The best weights on the test split: predictions and labels [M, K], per-target metrics, force errors."""
    best: dict  # the best checkpoint as loaded
    model: SchNet
    pred: torch.Tensor
    true: torch.Tensor
    metrics: dict
    forces: dict | None


def refit_best(trainer: Trainer, device: torch.device) -> None:
    """The best weights' per-element references refitted on the training molecules (training/references.py),
    written back to the best checkpoint with the record under metrics['references_refit']; nothing without
    --refit-references or a target read out as a sum."""
    trainer.world.barrier()  # rank 0 has written the best checkpoint
    best = checkpoint.load(trainer.best_path)
    outputs = references.sum_outputs(best["targets"])
    if not trainer.args.refit_references or not outputs:
        return
    model = checkpoint.build_model(best, device)
    record = references.refit(model, trainer.outputs, trainer.batcher, trainer.columns.tolist(), trainer.train_idx,
                              trainer.val_idx, trainer.names, outputs)
    references.print_record(record, trainer.units)
    if trainer.world.main:
        state = dict(best["state_dict"], atomref=model.atomref.detach().cpu())
        checkpoint.save({**best, "state_dict": state, "metrics": {**best["metrics"], "references_refit": record}},
                        trainer.best_path)


def test_best(trainer: Trainer, device: torch.device) -> TestResult:
    """Loads the best weights from disk and measures them on the test split; prints the table."""
    trainer.world.barrier()  # rank 0 has written the best checkpoint
    best = checkpoint.load(trainer.best_path)
    model = checkpoint.build_model(best, device)
    test_idx = trainer.test_idx
    pred, true = trainer.outputs(model, test_idx), trainer.data.y[test_idx][:, trainer.columns.cpu()]
    metrics = report.regression_metrics(pred, true, trainer.names)
    for name, m in metrics.items():
        m["unit"] = trainer.units[name]
    best_epoch, kept = checkpoint.best_epoch(best)
    report.print_test(metrics, f"{len(test_idx):,} molecules, best epoch {best_epoch}, {kept} weights")
    forces = trainer.force_errors(model, test_idx) if trainer.args.force_weight else None
    if forces is not None:
        print(f"test forces ({forces['atoms']:,} atoms with labels): MAE {forces['mae']:.4g} eV/A | "
              f"RMSE {forces['rmse']:.4g} eV/A (per Cartesian component)")
    return TestResult(best, model, pred, true, metrics, forces)


def run_metrics(trainer: Trainer, p: Progress, test: TestResult, device: torch.device, kernels: str) -> dict:
    """metrics.json: the test figures, the last raw weights' (what the average bought), the run's cost and setup."""
    args, meta, world = trainer.args, trainer.meta, trainer.world
    raw = report.regression_metrics(trainer.outputs(trainer.model, trainer.test_idx), test.true, trainer.names)
    best_epoch, kept = checkpoint.best_epoch(test.best)
    split = meta.split
    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"CPU ({torch.get_num_threads()} threads per process)")
    return dict(data=meta.data, target=meta.target, targets=trainer.names, test=test.metrics,
                test_score=report.score(test.metrics, trainer.scales), test_forces=test.forces,
                test_raw_final_weights=raw, best_val_score=p.best_val, best_epoch=best_epoch, weights=kept,
                epochs_run=len(p.history), epochs_done=p.step / trainer.steps_per_epoch, minutes=p.elapsed / 60,
                spikes=p.spikes, held_windows=p.held_windows, config=meta.model_config, args=vars(args),
                command=args.command, processes=world.size,
                split=dict(seed=args.seed, subset_size=args.subset_size, train=len(split["train"]),
                           val=len(split["val"]), test=len(split["test"])),
                device=str(device), device_name=device_name, wall_time_s=p.elapsed,
                peak_memory_mb=peak_memory_mb(device), parameters=count_parameters(test.model),
                torch=torch.__version__, kernels=kernels, precision=trainer.precision,
                checkpoint=str(trainer.best_path), init_from=meta.init_from,
                references_refit=test.best["metrics"].get("references_refit"))


def finish(trainer: Trainer, p: Progress, device: torch.device, kernels: str) -> dict:
    """Tests the best weights, writes results/ and the tested checkpoint (rank 0), returns metrics.json's dict."""
    args = trainer.args
    refit_best(trainer, device)
    test = test_best(trainer, device)
    metrics = run_metrics(trainer, p, test, device, kernels)
    g = torch.Generator().manual_seed(args.seed)
    shown = trainer.test_idx[torch.randperm(len(trainer.test_idx), generator=g)[: args.tsne_samples]]
    emb = trainer.outputs(test.model, shown, embeddings=True)
    if not trainer.world.main:
        return metrics
    minutes, epochs_done = metrics["minutes"], metrics["epochs_done"]
    checkpoint.save(checkpoint.tested(test.best, test.metrics, test.forces, command=args.command, args=vars(args),
                                      processes=trainer.world.size, epochs_done=epochs_done, minutes=minutes),
                    trainer.best_path)
    out_dir = Path(args.output_dir)
    report.write(out_dir, args.suffix, metrics, p.history, test.true.numpy(), test.pred.numpy(), emb.numpy(),
                 trainer.data.y[shown, int(trainer.columns[0])].numpy())
    print(f"wrote {out_dir}/{{predictions,loss_curve,tsne}}{args.suffix}.png, metrics{args.suffix}.json, "
          f"history{args.suffix}.csv and {trainer.best_path} after {minutes:.1f} min and {epochs_done:.2f} epochs")
    return metrics
