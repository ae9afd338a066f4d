"""The lecture's figures as PNG files: the loss curve, the 2-D embedding, dlogits and the
gradient histograms, and the learning-rate sweep.

Legend: B batch, T block_size, E n_embd, V vocab size.
Figures are built on matplotlib's object API (Figure, no pyplot), so nothing here needs a display
or changes the global backend: a notebook can show the returned Figure, the CLI saves it.
This module is imported only when a figure is drawn: `import npmlp` stays free of matplotlib.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from .fileio import atomic_open
from .model import PARAM_NAMES

DPI = 100
BAND_BINS = 3000   # loss curves longer than 2x this draw the per-step losses as a min..max band


def save(fig: Figure, path) -> Path:
    """Write `fig` as a PNG, atomically."""
    path = Path(path)
    with atomic_open(path, "wb") as f, warnings.catch_warnings():
        # characters the default font lacks (CJK names...) are drawn as boxes; one warning per
        # glyph per figure would flood stderr
        warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
        fig.savefig(f, format="png", dpi=DPI)
    return path


def smoothing_window(n: int) -> int:
    """The lecture averages lossi over 1000-step blocks; short runs get 20 blocks instead."""
    return 1000 if n >= 20_000 else max(1, n // 20)


# ----------------------------------------------------------------------------- loss curve

def loss_figure(lossi, decay_step: int | None = None, lr: float | None = None,
                lr_decayed: float | None = None, batch_size: int | None = None) -> Figure:
    """log10 of each step's minibatch loss (the lecture's `plt.plot(lossi)`), its block mean,
    and a dashed line where the learning rate drops."""
    lossi = np.asarray(lossi, np.float64)
    n = len(lossi)
    steps = np.arange(n)
    w = smoothing_window(n)
    m = n // w * w                                           # whole blocks only
    blocks = np.log10(lossi[:m]).reshape(-1, w).mean(axis=1)  # (n // w,)

    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.add_subplot()
    logl = np.log10(lossi)
    if n <= 2 * BAND_BINS:
        ax.plot(steps, logl, lw=0.4, alpha=0.35, color="tab:blue", label="each step's minibatch")
    else:
        # 200k steps are ~200 per pixel column: a line through all of them looks like the band of
        # each bin's min..max, and takes twice as long to draw (0.22 s vs 0.11 s for the lecture run)
        k = -(-n // BAND_BINS)                                                 # steps per bin
        pad = np.pad(logl, (0, -n % k), mode="edge").reshape(-1, k)           # (bins, k)
        x = np.minimum(np.arange(len(pad)) * k + (k - 1) / 2, n - 1)
        ax.fill_between(x, pad.min(axis=1), pad.max(axis=1), step="mid", lw=0, alpha=0.35, color="tab:blue",
                        label="each step's minibatch")
    ax.plot(np.arange(len(blocks)) * w + (w - 1) / 2, blocks, lw=2.2, color="tab:orange",
            label=f"mean over {w:,}-step blocks")
    if decay_step is not None and 0 < decay_step < n:
        ax.axvline(decay_step, color="k", ls="--", lw=1)
        text = "learning rate drops" if lr is None else f"lr {lr:g} \u2192 {lr_decayed:g}"
        ax.annotate(text, (decay_step, 0.97), xycoords=("data", "axes fraction"), xytext=(6, 0),
                    textcoords="offset points", va="top", fontsize=11)
    batch = f" (batch {batch_size})" if batch_size else ""
    final = f"; last block mean loss {10 ** blocks[-1]:.3f}" if len(blocks) else ""
    ax.set(title=f"Training loss per step{batch}{final}", xlabel="step", ylabel="log10(loss)")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    return fig


# ----------------------------------------------------------------------------- embedding

def embedding_2d(C, pca: bool = False):
    """C (V, E) -> (points (V, 2), x label, y label). Raw C[:, 0], C[:, 1] as the lecture, or the
    two principal components (SVD of the centred rows) when pca and E > 2."""
    C = np.asarray(C, np.float64)
    V, E = C.shape
    if pca and E > 2:
        Z = C - C.mean(axis=0)                               # (V, E)
        _, S, Vt = np.linalg.svd(Z, full_matrices=False)     # Vt (E, E): principal directions
        var = S ** 2 / (S ** 2).sum()
        return Z @ Vt[:2].T, f"PC 1 ({var[0]:.0%} of variance)", f"PC 2 ({var[1]:.0%} of variance)"
    if E == 1:
        return np.column_stack([C[:, 0], np.zeros(V)]), "C[:, 0]", "(n_embd = 1)"
    return C[:, :2], "C[:, 0]", "C[:, 1]"


def embedding_figure(C, itos, pca: bool = False) -> Figure:
    """Each character drawn at its embedding, labelled (the lecture's scatter, s=200)."""
    pts, xlabel, ylabel = embedding_2d(C, pca)
    E = np.asarray(C).shape[1]
    fig = Figure(figsize=(8, 8), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(pts[:, 0], pts[:, 1], s=400, color="tab:blue")
    for i, ch in enumerate(itos):
        ax.text(pts[i, 0], pts[i, 1], ch, ha="center", va="center", color="white", fontsize=13,
                fontweight="bold")
    how = "first two principal components" if pca and E > 2 else (
        "dimensions 0 and 1" + (f" of {E}" if E > 2 else ""))
    ax.set(title=f"Character embeddings C: {how}", xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.margins(0.08)
    return fig


# ----------------------------------------------------------------------------- gradients

def gradient_figure(model, X, Y, itos) -> Figure:
    """One minibatch X (B, T), Y (B,) through model.forward/backward:
    left, dlogits (B, V) as an image, one column per character (the target's entry is negative,
    every other entry is its probability / B); right, a histogram of each parameter's gradient
    with its grad:data ratio std(grad) / std(param)."""
    loss, cache = model.forward(X, Y)
    grads, dacts = model.backward(cache)
    dlogits = dacts["logits"]                                # (B, V)
    B, V = dlogits.shape

    fig = Figure(figsize=(15, 8), layout="constrained")
    gs = fig.add_gridspec(2, 5, width_ratios=(1.1, 1.1, 1, 1, 1), wspace=0.08)
    ax = fig.add_subplot(gs[:, :2])
    lim = float(np.abs(dlogits).max()) or 1.0
    im = ax.imshow(dlogits, cmap="RdBu", norm=TwoSlopeNorm(0, -lim, lim), aspect="auto",
                   interpolation="nearest")
    ax.set_xticks(range(V), list(itos), fontsize=9)
    ax.set(title=f"dlogits, one minibatch (loss {loss:.3f})\nred: the target (negative), blue: "
                 f"probability / {B}", xlabel="character", ylabel="example in the batch")
    fig.colorbar(im, ax=ax, shrink=0.8, label="dloss / dlogits")

    ratios = {}
    for i, k in enumerate(PARAM_NAMES):
        g, p = grads[k].ravel(), model.params[k].ravel()
        ratios[k] = float(g.std() / p.std()) if p.std() > 0 else float("nan")
        a = fig.add_subplot(gs[i // 3, 2 + i % 3])
        a.hist(g, bins=60, color="tab:blue", log=g.size > 1000)   # log counts: see the tails
        a.set_title(f"d{k} {tuple(grads[k].shape)}\ngrad:data {ratios[k]:.2e}", fontsize=11)
        a.set_xlabel("gradient value")
        a.tick_params(labelsize=8)
    a = fig.add_subplot(gs[1, 4])
    names = list(ratios)[::-1]
    a.barh(names, [ratios[k] for k in names], color="tab:orange")
    for i, k in enumerate(names):
        a.text(ratios[k], i, f" {ratios[k]:.1e}", va="center", fontsize=9)
    a.set_xlim(0, max(ratios.values()) * 1.45)
    a.set_title("grad:data ratio\nstd(grad) / std(param)", fontsize=11)
    a.tick_params(labelsize=8)
    a.grid(alpha=0.3, axis="x")
    fig.suptitle("Gradients of one minibatch: dlogits, and a histogram of each parameter's gradient (count)", fontsize=14)
    return fig


# ----------------------------------------------------------------------------- lr sweep

def lr_find_figure(lre, losses, smoothed, best: float, suggested: float) -> Figure:
    """Loss of each sweep step against the learning-rate exponent (the lecture's plot(lri, lossi))."""
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(lre, losses, lw=0.6, alpha=0.5, color="tab:blue", label="loss of each step")
    ax.plot(lre, smoothed, lw=2.2, color="tab:orange", label="smoothed")
    ax.axvline(best, color="k", ls=":", lw=1.2, label=f"lowest smoothed loss: lr {10 ** best:.3g}")
    ax.axvline(suggested, color="tab:green", ls="--", lw=1.5, label=f"suggested: lr {10 ** suggested:.3g}")
    ax.set(title="Learning-rate sweep: one SGD step per rate, from a fresh model",
           xlabel="learning-rate exponent x (lr = 10^x)", ylabel="minibatch loss")
    finite = np.asarray(smoothed)[np.isfinite(smoothed)]
    if finite.size:   # the first steps of a fresh model sit far above the rest; keep the valley readable
        ax.set_ylim(np.nanmin(losses) * 0.95, min(np.nanmax(losses), finite.max() * 1.15))
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    return fig


# ----------------------------------------------------------------------------- a run's figures

def write_run_figures(out, model, vocab, lossi=None, cfg=None, pca: bool = False, batch=None):
    """loss.png (if lossi has steps), embedding.png, and gradients.png if batch = (X, Y) is
    given, into the run directory `out`. -> the paths written."""
    out = Path(out)
    written = []
    if lossi is not None and len(lossi):
        decay = int(cfg.decay_at * cfg.steps) if cfg is not None and cfg.lr_decayed != cfg.lr else None
        written.append(save(loss_figure(lossi, decay, getattr(cfg, "lr", None), getattr(cfg, "lr_decayed", None),
                                        getattr(cfg, "batch_size", None)), out / "loss.png"))
    written.append(save(embedding_figure(model.params["C"], vocab.itos, pca), out / "embedding.png"))
    if batch is not None:
        written.append(save(gradient_figure(model, *batch, vocab.itos), out / "gradients.png"))
    return written
