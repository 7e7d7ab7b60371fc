"""The figures: test predictions, loss curves and t-SNE of molecule embeddings (train.py), per-atom contributions
and attributions (predict.py).

Each function takes plain arrays and a path, and writes the PNG atomically (a reader never sees half a file).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from schnetqm9.files import atomic_write  # noqa: E402


def save_figure(fig: plt.Figure, path: Path) -> None:
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=130, bbox_inches="tight")
    plt.close(fig)


def quantity(name: str, unit: str) -> str:
    """An axis label: 'gap (eV)', or the bare name for a label without a unit (--data without --unit)."""
    return f"{name} ({unit})" if unit else name


def _grid(k: int, size: tuple[float, float]) -> tuple[plt.Figure, list[plt.Axes]]:
    """A figure with k panels, at most four per row, each `size` inches."""
    cols = min(k, 4)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    for ax in axes.flat[k:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:k])


def plot_predictions(y_true: np.ndarray, y_pred: np.ndarray, metrics: dict[str, dict], path: Path,
                     title: str = "", reference: str = "DFT") -> None:
    """Predicted vs. reference value (`reference`: DFT for QM9) for every test molecule, one panel per target
    (columns of y_true, y_pred [M, K]; `metrics` maps each target's name, in order, to its mae, rmse, r2 and unit),
    with the y = x line."""
    fig, axes = _grid(len(metrics), (4.6, 4.4) if len(metrics) > 1 else (5.6, 5.2))
    for k, (ax, (target, m)) in enumerate(zip(axes, metrics.items())):
        t, p, unit = y_true[:, k], y_pred[:, k], m["unit"]
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        pad = 0.03 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.3", lw=1, ls="--", label="y = x", zorder=1)
        if len(t) <= 5000:
            ax.scatter(t, p, s=7, alpha=0.45, color="tab:blue", linewidths=0, zorder=2)
        else:  # too many points to see: show the density
            from matplotlib.colors import LogNorm

            hb = ax.hexbin(t, p, gridsize=70, norm=LogNorm(), cmap="viridis", mincnt=1, zorder=2)
            fig.colorbar(hb, ax=ax, label="molecules per hexagon", format="%d", shrink=0.8)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_aspect("equal")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))  # wide numbers (U0 ~ -10^4) must not collide
        ax.set_xlabel(f"{reference} {quantity(target, unit)}")
        ax.set_ylabel(f"SchNet {quantity(target, unit)}")
        text = f"MAE  {m['mae']:.4g} {unit}\nRMSE {m['rmse']:.4g} {unit}\nR$^2$   {m['r2']:.4f}"
        ax.text(0.04, 0.96, text, transform=ax.transAxes, va="top", family="monospace", fontsize=8,
                bbox=dict(boxstyle="round", fc="white", ec="0.7"))
        ax.legend(loc="lower right", fontsize=8)
        if len(metrics) > 1:
            ax.set_title(target)
    heading = (title or "QM9 test set") + f" ({len(y_true):,} molecules)"
    if len(metrics) > 1:
        fig.suptitle(heading)
        fig.tight_layout()
    else:
        axes[0].set_title(heading)
    save_figure(fig, path)


def plot_loss_curve(history: list[dict], units: dict[str, str], path: Path, title: str = "") -> None:
    """Per target (`units` maps its name to its unit), one panel: training MAE (running mean over each epoch,
    while the weights change) and validation MAE against epochs, on a log scale, with the learning rate on a
    second axis. When the validated weights are a moving average, the raw weights' validation MAE is drawn too,
    dashed; where the references were refitted at validation (training/references.py), the MAE before that refit,
    dotted."""
    x = [h["epochs_done"] for h in history]  # fractional when a time budget ended the last epoch early
    fig, axes = _grid(len(units), (4.6, 3.4) if len(units) > 1 else (6.6, 4.2))
    for ax, (name, unit) in zip(axes, units.items()):
        val = [h[f"val_mae_{name}"] for h in history]
        raw = [h[f"val_mae_raw_{name}"] for h in history]
        ax.plot(x, [h[f"train_mae_{name}"] for h in history], "o-", ms=3, color="tab:blue", label="train MAE")
        averaged = raw != val
        ax.plot(x, val, "s-", ms=3, color="tab:red",
                label="validation MAE" + (" (weight average)" if averaged else ""))
        if averaged:
            ax.plot(x, raw, "--", lw=1, color="tab:orange", label="validation MAE (raw weights)")
        unrefitted = [h.get(f"unrefitted_val_mae_{name}", np.nan) for h in history]
        if not np.isnan(unrefitted).all():
            ax.plot(x, unrefitted, ":", lw=1.2, color="tab:red", label="validation MAE before the references' refit")
        best = int(np.argmin(np.minimum(val, raw)))
        ax.axvline(x[best], color="0.6", ls=":", lw=1)
        left = best > len(x) / 2  # keep the label inside the axes
        shown = min(val[best], raw[best])
        ax.annotate(f"best {shown:.4g} {unit}", (x[best], shown), textcoords="offset points",
                    xytext=(-6 if left else 6, 10), ha="right" if left else "left", fontsize=8)
        ax.set_xlabel(f"epoch ({history[-1]['minutes']:.1f} min in all)")
        ax.set_ylabel(quantity(f"{name} MAE", unit))
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        lr_ax = ax.twinx()
        lr_ax.plot(x, [h["lr"] for h in history], color="0.55", lw=1, ls=":", label="learning rate")
        lr_ax.set_yscale("log")
        if ax is axes[0]:
            lr_ax.set_ylabel("learning rate at epoch end", color="0.45")
            lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")] + lr_ax.get_lines()
            ax.legend(lines, [line.get_label() for line in lines], loc="upper right", fontsize=7)
    if len(units) > 1:
        fig.suptitle(title or "Training")
        fig.tight_layout()
    else:
        axes[0].set_title(title or "Training")
    save_figure(fig, path)


def plot_tsne(embeddings: np.ndarray, values: np.ndarray, target: str, unit: str, path: Path,
              seed: int = 0, title: str = "") -> None:
    """2-D t-SNE of molecule embeddings [M, D], coloured by the target value [M]."""
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(embeddings) - 1) / 3)))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(embeddings)
    fig, ax = plt.subplots(figsize=(6.0, 5.0))
    lo, hi = np.percentile(values, [1, 99])
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=6, cmap="viridis", vmin=lo, vmax=hi, linewidths=0)
    fig.colorbar(sc, ax=ax, label=quantity(target, unit))
    ax.set_xlabel("t-SNE 1 (arbitrary units)")
    ax.set_ylabel("t-SNE 2 (arbitrary units)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"t-SNE of SchNet molecule embeddings ({len(values):,} test molecules)")
    save_figure(fig, path)


def _draw_molecule(fig: plt.Figure, ax: plt.Axes, z: np.ndarray, pos: np.ndarray, values: np.ndarray, label: str,
                   norm, cmap: str) -> None:
    """One molecule (z [n], pos [n, 3] in Angstrom) on its plane of largest extent: atoms sized by element and
    coloured by `values` [n] on `norm`, bonds between close pairs, a colour bar labelled `label`."""
    from ase.data import chemical_symbols, covalent_radii

    centred = pos - pos.mean(0)
    axes = np.linalg.svd(centred, full_matrices=False)[2] if len(z) > 1 else np.eye(3)
    xy = centred @ axes[:2].T if len(z) > 1 else np.zeros((1, 2))
    radii = covalent_radii[z]
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    for i, j in zip(*np.nonzero(np.triu(d < 1.2 * (radii[:, None] + radii[None]), k=1))):
        ax.plot(xy[[i, j], 0], xy[[i, j], 1], color="0.55", lw=2, zorder=1)
    sc = ax.scatter(xy[:, 0], xy[:, 1], s=900 * radii**2, c=values, cmap=cmap, norm=norm, edgecolors="k",
                    linewidths=0.8, zorder=2)
    for (x, y), zi in zip(xy, z):
        ax.text(x, y, chemical_symbols[zi], ha="center", va="center", fontsize=8, zorder=3)
    fig.colorbar(sc, ax=ax, shrink=0.75, label=label)
    ax.set_aspect("equal")
    ax.margins(0.15)
    ax.set_xlabel("Å (principal axis 1)")
    ax.set_ylabel("Å (principal axis 2)")


def _diverging(values: np.ndarray, centre: float):
    from matplotlib.colors import TwoSlopeNorm

    spread = float(np.abs(values - centre).max()) or 1e-9
    return TwoSlopeNorm(vcenter=centre, vmin=centre - spread, vmax=centre + spread)


def plot_contributions(z: np.ndarray, pos: np.ndarray, values: np.ndarray, label: str, unit: str, title: str,
                       path: Path) -> None:
    """One molecule coloured by `values` [n] on a diverging scale around their mean (predict.py --per-atom)."""
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    _draw_molecule(fig, ax, z, pos, values, f"{quantity(label, unit)}; white: molecule mean",
                   _diverging(values, float(values.mean())), "RdBu_r")
    ax.set_title(title)
    save_figure(fig, path)


def plot_attributions(z: np.ndarray, pos: np.ndarray, panels: list[tuple[str, np.ndarray, str]], title: str,
                      path: Path) -> None:
    """The same molecule once per attribution (predict.py --explain), each panel on its own colour scale:
    panels [(kind, values [n], unit)]. Signed kinds (integrated gradients, contributions) diverge around zero
    (contributions around their mean), non-negative ones (saliency, attention) run from zero up."""
    from matplotlib.colors import Normalize

    fig, axes = _grid(len(panels), (5.6, 4.8))
    for ax, (kind, values, unit) in zip(axes, panels):
        if kind in ("saliency", "attention"):
            norm, cmap, note = Normalize(0.0, float(values.max()) or 1e-9), "viridis", ""
        elif kind == "contribution":
            norm, cmap, note = _diverging(values, float(values.mean())), "RdBu_r", "; white: molecule mean"
        else:
            norm, cmap, note = _diverging(values, 0.0), "RdBu_r", "; white: 0"
        _draw_molecule(fig, ax, z, pos, values, quantity(kind.replace("_", " "), unit) + note, norm, cmap)
        ax.set_title(kind.replace("_", " "), fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
