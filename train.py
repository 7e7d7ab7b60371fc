"""Train SchNet on QM9 for one target; evaluate on the test split; write figures, metrics and checkpoints.

    python train.py --target gap                      # full QM9: 110,000 / 10,000 / 10,831 molecules
    python train.py --target U0 --epochs 50 --batch-size 32
    python train_lite.py                              # same loop, smaller defaults (10k subset, small model)

The one training loop of the repo lives here; train_lite.py only changes the defaults. Batches are cut from flat
tensors held on the training device (qm9_data.Batcher), so no DataLoader or per-molecule collation is involved.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import cpu_kernels
import plots
import qm9_data
from qm9_data import Batcher, QM9
from schnet_model import FULL_CONFIG, SchNet, count_parameters

CHECKPOINT_FORMAT = "schnet-qm9/1"
INTENSIVE = {"mu", "homo", "lumo", "gap", "A", "B", "C"}  # per-molecule properties: mean readout

FULL_DEFAULTS = dict(
    subset_size=None, epochs=200, batch_size=32, lr=5e-4, patience=30, suffix="", **FULL_CONFIG,
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
    p.add_argument("--epochs", type=int, default=defaults["epochs"], help="maximum number of epochs")
    p.add_argument("--batch-size", type=int, default=defaults["batch_size"], help="molecules per training step")
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


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 1% of the peak at step `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


class FlatAdam(torch.optim.Adam):
    """Adam (fused kernel) over one flat tensor that holds all of the model's parameters.

    Each parameter's data becomes a view into `flat`, and each one's .grad a view into `flat.grad`, so gradient
    clipping and the update are one operation each instead of one per parameter tensor (23 in the lite model, 51
    in the full one); the same arithmetic as torch.optim.Adam over model.parameters() (tests/test_train.py).
    Build it after the model is on its device: moving the model afterwards would undo the views.
    """

    def __init__(self, model: torch.nn.Module, lr: float) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
        flat.grad = torch.zeros_like(flat)
        self.flat, self._views, offset = flat, [], 0
        for p in params:
            n = p.numel()
            p.data = flat.data[offset:offset + n].view_as(p)
            self._views.append((p, flat.grad[offset:offset + n].view_as(p)))
            offset += n
        super().__init__([flat], lr=lr, fused=True)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zeroes the flat gradient in place and (re)attaches each parameter's .grad view of it; set_to_none is
        ignored, since gradients must accumulate into the views."""
        self.flat.grad.zero_()
        for p, g in self._views:
            p.grad = g


def train_step(model: SchNet, optimizer: torch.optim.Optimizer, b: qm9_data.Batch, target: int,
               scale: float, loss: str = "mse", clip_grad: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a batch; the loss is taken on targets divided by `scale`.

    Returns (loss [], predictions [B]) as tensors, detached, without a host synchronisation.
    """
    pred = model(b.z, b.pos, b.batch)[:, 0]  # [B]
    loss_fn = torch.nn.functional.mse_loss if loss == "mse" else torch.nn.functional.l1_loss
    value = loss_fn(pred / scale, b.y[:, target] / scale)
    optimizer.zero_grad()
    value.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]  # FlatAdam: the one flat tensor
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


def run(args: argparse.Namespace) -> dict:
    check_args(args)
    device = resolve_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    target, t = args.target, qm9_data.target_index(args.target)
    unit = qm9_data.target_unit(target)
    readout = args.readout if args.readout != "auto" else ("mean" if target in INTENSIVE else "add")
    config = dict(hidden_channels=args.hidden_channels, num_filters=args.num_filters,
                  num_interactions=args.num_interactions, num_gaussians=args.num_gaussians,
                  cutoff=float(args.cutoff), readout=readout)
    out_dir, ckpt_dir = Path(args.output_dir), Path(args.checkpoint_dir)
    best_path, last_path = ckpt_dir / f"best_model{args.suffix}.pth", ckpt_dir / f"last{args.suffix}.pth"

    try:
        data = QM9(args.data_dir)
    except (FileNotFoundError, ValueError) as err:
        raise TrainingError(str(err)) from None

    state = None
    if args.resume:
        state = load_checkpoint(last_path)
        if state["target"] != target:
            raise TrainingError(f"{last_path} was trained for target {state['target']!r}, not {target!r}: "
                                f"resume with --target {state['target']}, or start over without --resume")
        if state["model_config"] != config:
            raise TrainingError(f"{last_path} holds another architecture ({state['model_config']}) than the flags "
                                "ask for: pass the same flags as the interrupted run, or start over without --resume")
        if state["batch_size"] != args.batch_size:
            raise TrainingError(f"{last_path} was trained with --batch-size {state['batch_size']}: resume with the "
                                "same batch size (its position within the epoch counts batches)")
        split = {k: state["split"][k] for k in ("train", "val", "test")}
        print(f"Resuming {last_path}: epoch {state['epoch'] + 1}, step {state['step_in_epoch']}")
    else:
        split = qm9_data.split_indices(len(data), args.subset_size, seed=args.seed)
    train_idx, val_idx, test_idx = split["train"], split["val"], split["test"]
    norm = state["normalisation"] if state else normalisation(data, train_idx, t, readout)

    torch.manual_seed(args.seed)
    model = SchNet(**config, mean=norm["mean"], std=norm["std"],
                   atomref=None if norm["atomref"] is None else torch.tensor(norm["atomref"]).view(100, 1))
    model = model.to(device)
    optimizer = FlatAdam(model, args.lr)
    if state:
        model.load_state_dict(state["state_dict"])
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError):
            raise TrainingError(f"the optimiser state in {last_path} does not fit this version's optimiser "
                                "(one flat parameter tensor): start without --resume") from None
    batcher = Batcher(data, device)
    eval_bs = max(256, args.batch_size)
    steps_per_epoch = math.ceil(len(train_idx) / args.batch_size)
    total_steps, warmup = args.epochs * steps_per_epoch, min(1000, steps_per_epoch)

    n_params = count_parameters(model)
    kernels = cpu_kernels.backend() if device.type == "cpu" else "pure PyTorch"
    print(f"SchNet {config} | {n_params:,} parameters | target {target} ({unit}) | device {device} | "
          f"{kernels}")
    print(f"molecules: {len(train_idx):,} train / {len(val_idx):,} val / {len(test_idx):,} test | "
          f"batch {args.batch_size}, {steps_per_epoch} steps per epoch")

    history: list[dict] = state["history"] if state else []
    best_val = state["best_val"] if state else math.inf
    best_epoch = state["best_epoch"] if state else -1
    start_epoch = state["epoch"] if state else 0
    start_step = state["step_in_epoch"] if state else 0
    loss_sum = state["loss_sum"] if state else 0.0
    abs_err_sum = state["abs_err_sum"] if state else 0.0
    elapsed0 = state["elapsed"] if state else 0.0
    finished = bool(state and state["finished"])
    train_elements = Batcher(data)(train_idx).z.unique().tolist()  # what predict.py accepts
    meta = dict(format=CHECKPOINT_FORMAT, target=target, target_index=t, unit=unit, model_config=config,
                normalisation=norm, seed=args.seed, subset_size=args.subset_size, batch_size=args.batch_size,
                elements=train_elements,
                split={"train": train_idx, "val": val_idx, "test": test_idx})

    def save_state(epoch: int, step: int, done: bool) -> None:
        save_checkpoint({**meta, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "epoch": epoch, "step_in_epoch": step, "loss_sum": loss_sum, "abs_err_sum": abs_err_sum,
                     "history": history, "best_val": best_val, "best_epoch": best_epoch, "finished": done,
                     "elapsed": elapsed0 + time.perf_counter() - t0}, last_path)

    if not args.resume:
        qm9_data.save_split(split, out_dir / f"split{args.suffix}.json", seed=args.seed,
                            subset_size=args.subset_size)
    t0 = time.perf_counter()
    model.train()
    scale = norm["loss_scale"]
    epoch = start_epoch
    while not finished and epoch < args.epochs:
        t_epoch, last_save = time.perf_counter(), time.perf_counter()
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + epoch)  # epoch order is a function of the epoch
        order = train_idx[torch.randperm(len(train_idx), generator=g)].split(args.batch_size)
        bar = tqdm(total=steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}/{args.epochs}",
                   leave=False, unit="step", disable=None)
        for step in range(start_step, steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch * steps_per_epoch + step, total_steps, args.lr, warmup)
            b = batcher(order[step])
            loss, pred = train_step(model, optimizer, b, t, scale, args.loss, args.clip_grad)
            if step % 10 == 0 or step == steps_per_epoch - 1:  # one host sync every 10 steps
                value = loss.item()
                if not math.isfinite(value):
                    raise TrainingError(f"the loss became {value} at epoch {epoch + 1}, step {step}: lower --lr "
                                        f"(now {args.lr:g}) or --clip-grad, or --resume from the last good state")
                bar.set_postfix(loss=f"{value:.4f}")
            loss_sum += loss
            abs_err_sum += (pred - b.y[:, t]).abs().sum()
            bar.update(1)
            if time.perf_counter() - last_save > args.checkpoint_every:
                loss_sum, abs_err_sum = float(loss_sum), float(abs_err_sum)
                save_state(epoch, step + 1, False)
                last_save = time.perf_counter()
        bar.close()
        train_loss = float(loss_sum) / steps_per_epoch
        train_mae = float(abs_err_sum) / len(train_idx)
        val = regression_metrics(predict(model, batcher, val_idx, eval_bs), data.y[val_idx, t])
        seconds = time.perf_counter() - t_epoch
        history.append(dict(epoch=epoch + 1, train_loss=train_loss, train_mae=train_mae, val_mae=val["mae"],
                            val_rmse=val["rmse"], lr=optimizer.param_groups[0]["lr"], seconds=seconds))
        print(f"epoch {epoch + 1:4d}/{args.epochs} | train loss {train_loss:.5f} | train MAE {train_mae:.5g} | "
              f"val MAE {val['mae']:.5g} {unit} | lr {optimizer.param_groups[0]['lr']:.2e} | {seconds:.1f} s",
              flush=True)
        if val["mae"] < best_val:
            best_val, best_epoch = val["mae"], epoch + 1
            save_checkpoint({**meta, "state_dict": model.state_dict(), "epoch": best_epoch,
                             "metrics": {"val_mae": best_val}}, best_path)
        epoch, start_step, loss_sum, abs_err_sum = epoch + 1, 0, 0.0, 0.0
        finished = epoch >= args.epochs or (args.patience and epoch - best_epoch >= args.patience)
        save_state(epoch, 0, bool(finished))
        if finished and epoch < args.epochs:
            print(f"early stop: no better validation MAE for {args.patience} epochs")
    train_seconds = elapsed0 + time.perf_counter() - t0

    # Test with the best checkpoint, reloaded from disk: what a user of the file gets.
    best = load_checkpoint(best_path)
    model = model_from_checkpoint(best, device)
    pred, true = predict(model, batcher, test_idx, eval_bs), data.y[test_idx, t]
    test = regression_metrics(pred, true)
    if unit == "eV":
        test["mae_meV"] = 1000 * test["mae"]
    print(f"test ({len(test_idx):,} molecules, best epoch {best['epoch']}): MAE {test['mae']:.5g} {unit}"
          + (f" ({test['mae_meV']:.1f} meV)" if unit == "eV" else "")
          + f" | RMSE {test['rmse']:.5g} {unit} | R2 {test['r2']:.5f}")

    best["metrics"] = {**best["metrics"], **{f"test_{k}": v for k, v in test.items()}}
    save_checkpoint(best, best_path)
    tag = f" ({args.suffix.strip('_')})" if args.suffix else ""
    plots.plot_predictions(true.numpy(), pred.numpy(), test, target, unit, out_dir / f"predictions{args.suffix}.png",
                           title=f"QM9 {target}: {len(test_idx):,} test molecules{tag}")
    plots.plot_loss_curve(history, unit, out_dir / f"loss_curve{args.suffix}.png", title=f"SchNet on QM9 {target}{tag}")
    g = torch.Generator().manual_seed(args.seed)
    shown = test_idx[torch.randperm(len(test_idx), generator=g)[: args.tsne_samples]]
    emb = predict(model, batcher, shown, eval_bs, embeddings=True)
    plots.plot_tsne(emb.numpy(), data.y[shown, t].numpy(), target, unit, out_dir / f"tsne{args.suffix}.png",
                    seed=args.seed)
    metrics = dict(target=target, unit=unit, test=test, best_val_mae=best_val, best_epoch=best["epoch"],
                   epochs_run=len(history), config=config, args={k: v for k, v in vars(args).items()},
                   split=dict(seed=args.seed, subset_size=args.subset_size, train=len(train_idx),
                              val=len(val_idx), test=len(test_idx)),
                   device=str(device), device_name=torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"CPU ({torch.get_num_threads()} threads)", wall_time_s=train_seconds,
                   peak_memory_mb=peak_memory_mb(device), parameters=n_params, torch=torch.__version__,
                   kernels=kernels, checkpoint=str(best_path))
    with qm9_data.atomic_write(out_dir / f"metrics{args.suffix}.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    rows = [",".join(history[0])] + [",".join(f"{v}" for v in h.values()) for h in history]
    with qm9_data.atomic_write(out_dir / f"history{args.suffix}.csv") as tmp:
        tmp.write_text("\n".join(rows) + "\n")
    print(f"wrote {out_dir}/{{predictions,loss_curve,tsne}}{args.suffix}.png, metrics{args.suffix}.json, "
          f"history{args.suffix}.csv and {best_path} in {train_seconds:.0f} s of training")
    return metrics


def main(argv: list[str] | None = None, defaults: dict = FULL_DEFAULTS,
         description: str = "Train SchNet on all of QM9 (110k/10k/rest split).") -> dict:
    args = build_parser(defaults, description).parse_args(argv)
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
