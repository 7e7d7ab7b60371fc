"""The flags of train.py and train_lite.py: what each one means (`--help`), and the combinations refused before
any data is read, each as one line saying what to change.

    python train.py --help
"""
from __future__ import annotations

import argparse
import math

from schnetqm9.cli import Parser, UserError
from schnetqm9.data import qm9 as qm9_data
from schnetqm9.data import splits, structure_file, targets
from schnetqm9.model import precision, transfer

TARGET_HELP = ("QM9 target: a name (" + ", ".join(targets.TARGET_NAMES) + "; case-insensitive) or index 0-18, a "
               "comma list of them (one shared representation, one output each), or 'all' (the twelve standard "
               "properties mu ... cv). Each target is standardised from the training molecules only; the loss is "
               "the mean over targets of the loss on each standardised target")


def build_parser(defaults: dict, description: str) -> argparse.ArgumentParser:
    """Every flag of training, in groups (`--help` shows them so), with `defaults` (loop.FULL_DEFAULTS or
    train_lite.LITE_DEFAULTS) for the ones the two scripts set differently."""
    p = Parser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for title, what, add in (
            ("data", "what to learn: the targets and the structures (QM9 or your file), the split, the readout",
             data_flags),
            ("model", "the architecture, and where its weights start", model_flags),
            ("optimisation", "the schedule, the loss and the weight average", optimisation_flags),
            ("potential", "forces: the energy trained as a potential (potential/losses.py)", potential_flags),
            ("run", "device, files and resuming", run_flags)):
        add(p.add_argument_group(title, what), defaults)
    return p


def data_flags(p: argparse._ArgumentGroup, defaults: dict) -> None:
    p.add_argument("--target", default="gap", help=TARGET_HELP)
    p.add_argument("--data", metavar="FILE", help="train on your own labelled structures instead of QM9: any file "
                   "ase.io.read reads (extended XYZ, ASE .db, ...); --target then names the label key(s) (a comma "
                   "list for several): an extended-XYZ comment-line key, an ASE database key-value pair, or a "
                   "calculator result such as energy. Split 80/10/10 (seeded) unless --split is given; parsed "
                   "once and cached beside the file (data/structure_file.py)")
    p.add_argument("--unit", default="", help="with --data: the unit of the label(s), shown on outputs and figures")
    p.add_argument("--split", metavar="JSON", help="the train/val/test split of an earlier run (its "
                   "results/split*.json) instead of a new seeded one")
    p.add_argument("--subset-size", type=int, default=defaults["subset_size"],
                   help="use this many molecules, split 80/10/10 (default: all of QM9, split 110k/10k/rest)")
    p.add_argument("--readout", choices=["auto", "plain", "add", "mean", "attention"], default="auto",
                   help="output module per target; auto: the dipole from latent charges for mu, the spatial extent "
                        "from squared distances for r2, mean for homo, lumo, gap, A, B, C, sum for the rest; "
                        "plain: sum or mean only (extensive or intensive); add or mean: that for every target; "
                        "attention: for the intensive targets a weighted mean, the weights a softmax over the "
                        "molecule's atoms of a small network of their features (the others as auto). "
                        "With --data: add (extensive labels such as energies: a sum over atoms, on top of "
                        "per-element references fitted by least squares on the training structures) unless "
                        "mean (intensive labels: the mean over atoms) is given")
    p.add_argument("--data-dir", default="data", help="QM9 cache folder")


def model_flags(p: argparse._ArgumentGroup, defaults: dict) -> None:
    p.add_argument("--hidden-channels", "--hidden", type=int, default=defaults["hidden_channels"],
                   help="atom feature size")
    p.add_argument("--num-filters", "--filters", type=int, default=defaults["num_filters"], help="filter size")
    p.add_argument("--num-interactions", "--interactions", type=int, default=defaults["num_interactions"],
                   help="number of interaction blocks")
    p.add_argument("--num-gaussians", "--gaussians", type=int, default=defaults["num_gaussians"],
                   help="number of Gaussian radial basis functions")
    p.add_argument("--cutoff", type=float, default=defaults["cutoff"], help="interaction cutoff (Angstrom)")
    p.add_argument("--init-from", metavar="CHECKPOINT", help="start from a checkpoint of this project (a shipped "
                   "model in models/, or any best_model*.pth): its embedding and interaction blocks are copied, "
                   "the output layers too for each target of the same name and unit; elements it never saw start "
                   "fresh (model/transfer.py)")
    p.add_argument("--init-output", metavar="NEW=OLD", help="with --init-from: start target NEW from the "
                   "checkpoint's output OLD (same unit; e.g. energy=U0), its per-element references refitted to the "
                   "new labels (model/transfer.py)")
    p.add_argument("--freeze-representation", action="store_true",
                   help="with --init-from: train only the output layers")


def optimisation_flags(p: argparse._ArgumentGroup, defaults: dict) -> None:
    p.add_argument("--epochs", type=int, default=defaults["epochs"],
                   help="number of epochs; with --time-budget, only a cap")
    p.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="stop after this many minutes of wall clock and fit the learning-rate schedule to them; "
                        "validation counts (the run ends within about one validation pass of the budget), the "
                        "final test and figures come after it")
    p.add_argument("--batch-size", type=int, default=defaults["batch_size"],
                   help="molecules per training step (under torchrun: in all processes together)")
    p.add_argument("--lr", type=float, default=argparse.SUPPRESS,
                   help=f"peak learning rate of Adam (cosine decay); halved after each loss spike, which also rolls "
                        f"the weights back to the last good state (default: {defaults['lr']:g}, or "
                        f"{transfer.FINETUNE_LR:g} with --init-from: docs/TRANSFER.md)")
    p.set_defaults(default_lr=defaults["lr"])
    p.add_argument("--ema-decay", type=float, default=defaults["ema_decay"],
                   help="decay of the exponential moving average of the weights, with a warm-up "
                        "(min(decay, (1+n)/(10+n)) after n steps); at each validation the better of the average "
                        "and the raw weights is kept (0: no average)")
    p.add_argument("--refit-references", action=argparse.BooleanOptionalAction, default=True,
                   help="refit the per-element references of each target read out as a sum (the energies, "
                        "extensive labels): at every validation on 5,000 training molecules (each epoch validated and "
                        "saved with them), and at the end on all, kept where the validation MAE falls "
                        "(training/references.py)")
    p.add_argument("--loss", choices=["mse", "l1"], default="mse", help="loss on each standardised target")
    p.add_argument("--task-weights", choices=["equal", "balanced"], default="balanced",
                   help="with several targets: balanced (each target's standardised loss divided by its running "
                        "mean: better on r2, zpve and the energies, and over the twelve by the mean MAE relative to "
                        "SchNetPack's) or equal (the mean of the standardised losses: better on the orbital energies, "
                        "mu and alpha); docs/MULTITASK.md")
    p.add_argument("--patience", type=int, default=defaults["patience"],
                   help="stop early after this many epochs without a better validation score (0: never)")
    p.add_argument("--clip-grad", type=float, default=10.0, help="clip the gradient norm to this value")
    p.add_argument("--precision", choices=list(precision.CHOICES), default=defaults["precision"],
                   help="bf16: the linear layers of the training steps in bfloat16 (torch.autocast), sums, readout, "
                        "loss, optimiser and weight average in float32; auto: bf16 only on hardware with native "
                        "bfloat16 and for targets measured not to lose accuracy per epoch ("
                        + ", ".join(sorted(precision.MEASURED_SAFE)) + ", without force terms; the rest fp32: "
                        "docs/PERFORMANCE.md); "
                        "validation and test always in float32 (model/precision.py)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the initialisation and the shuffling")


def potential_flags(p: argparse._ArgumentGroup, defaults: dict) -> None:
    p.add_argument("--force-weight", type=float, default=0.0, help="train the energy as a potential: weight of a "
                   "force term mean_i |F_i - F*_i|^2 / s^2, F = -dE/dr by autograd, s the energy's loss scale per A. "
                   "On QM9 (--target U0) F* = 0, its geometries being DFT minima; with --data, F* are the file's "
                   "forces (eV/A) and E the first --target (potential/losses.py; second derivatives: a step costs "
                   "more than twice as much)")
    p.add_argument("--prior-weight", type=float, default=0.0, help="weight of the curvature term: forces at the "
                   "geometry displaced by --prior-noise trained towards MMFF94's, shifted to vanish at the DFT "
                   "geometry (with --data: to equal the file's forces there; potential/losses.py)")
    p.add_argument("--prior-noise", type=float, default=0.05, help="displacement of the curvature term, A per "
                   "coordinate (Gaussian)")
    p.add_argument("--prior-noise-min", type=float, default=0.0, metavar="A", help="draw each molecule's "
                   "displacement scale of the curvature term log-uniformly between A and --prior-noise, its residual "
                   "weighted by (prior-noise / scale)^2: the small scales fit the curvature at the minimum, which one "
                   "scale leaves flat (potential/losses.py; 0: one scale, --prior-noise)")
    p.add_argument("--prior-thermal", type=float, default=0.0, metavar="E", help="draw the curvature term's "
                   "displacements along MMFF94's normal modes at the DFT geometry, each with a mean harmonic energy "
                   "E/2 eV (E = k_B T; 0.025: 290 K), so that the soft modes move most, instead of --prior-noise on "
                   "every coordinate (potential/losses.py; 0: off)")
    p.add_argument("--precondition", type=float, default=0.0, metavar="K", help="measure both force terms' "
                   "residuals through MMFF94's normal modes at the DFT geometry: along modes softer than K eV/A^2 "
                   "the residual is weighted by K / max(|curvature|, 0.1), the displacement it causes times K "
                   "(potential/losses.py; 0: off, plain squared forces)")


def run_flags(p: argparse._ArgumentGroup, defaults: dict) -> None:
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="auto: CUDA when present")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matrix products on CUDA (faster, less exact)")
    p.add_argument("--output-dir", default="results", help="figures, metrics.json, history.csv, split")
    p.add_argument("--checkpoint-dir", default="checkpoints", help="best model and resume state")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run from its last saved state")
    p.add_argument("--checkpoint-every", type=float, default=120.0,
                   help="also save the resume state every this many seconds within an epoch")
    p.add_argument("--tsne-samples", type=int, default=2000, help="test molecules shown in the t-SNE plot")
    p.add_argument("--suffix", default=defaults["suffix"], help="appended to every output file name")


def check_args(args: argparse.Namespace) -> None:
    """Refuse what cannot run (a UserError naming the flag), and fill in what depends on other flags: the learning
    rate (the fine-tuning one with --init-from), `args.targets` (the parsed list) and `args.target` (its canonical
    comma form)."""
    for flag in ("epochs", "batch_size", "hidden_channels", "num_filters", "num_interactions", "tsne_samples"):
        if getattr(args, flag) <= 0:
            raise UserError(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    if args.num_gaussians < 2:
        raise UserError(f"--num-gaussians must be at least 2, got {args.num_gaussians}")
    if args.time_budget is not None and not (args.time_budget > 0 and math.isfinite(args.time_budget)):
        raise UserError(f"--time-budget must be a positive number of minutes, got {args.time_budget:g}")
    if not 0 <= args.ema_decay < 1:
        raise UserError(f"--ema-decay must be in [0, 1), got {args.ema_decay:g}")
    if "lr" not in vars(args):  # not given: the default, or the fine-tuning one
        args.lr = transfer.FINETUNE_LR if args.init_from else args.default_lr
    if not (args.lr > 0 and math.isfinite(args.lr)) or not args.cutoff > 0 or args.patience < 0:
        raise UserError("--lr and --cutoff must be positive and --patience non-negative")
    if args.force_weight or args.prior_weight:
        if args.data is None and "U0" not in targets.parse(args.target):
            raise UserError("--force-weight and --prior-weight train QM9's U0 as a potential: use them with "
                            "--target U0 (or a list with U0) on QM9, or with --data and a file with forces")
        if min(args.force_weight, args.prior_weight, args.precondition, args.prior_thermal) < 0 \
                or not args.prior_noise > 0:
            raise UserError("--force-weight, --prior-weight, --precondition and --prior-thermal must be "
                            "non-negative and --prior-noise positive")
    elif args.precondition:
        raise UserError("--precondition weights the force terms: give --force-weight or --prior-weight too")
    if args.prior_noise_min and not (0 < args.prior_noise_min < args.prior_noise and args.prior_weight
                                     and not args.prior_thermal):
        raise UserError("--prior-noise-min must lie between 0 and --prior-noise, with --prior-weight and without "
                        "--prior-thermal (it draws the noise's scale)")
    if args.prior_thermal and not args.prior_weight:
        raise UserError("--prior-thermal draws the curvature term's displacements: give --prior-weight too")
    if args.init_output and not args.init_from:
        raise UserError("--init-output names outputs of the --init-from checkpoint: give --init-from too")
    if args.init_output:
        transfer.parse_renames(args.init_output)  # refused here, before any data is read
    if args.freeze_representation and not args.init_from:
        raise UserError("--freeze-representation keeps the representation of --init-from: give --init-from too")
    try:
        args.targets = targets.parse(args.target) if args.data is None else structure_file.keys(args.target)
        args.target = ",".join(args.targets)
        if args.data is None:
            splits.split_sizes(qm9_data.NUM_MOLECULES, args.subset_size)
    except ValueError as err:
        raise UserError(str(err)) from None
