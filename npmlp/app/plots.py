"""The lecture's figures as PNG files: the loss curve, the 2-D embedding, dlogits and the
gradient histograms, and the learning-rate sweep.

Legend: B batch, T block_size, E n_embd, V vocab size.
Figures are built on matplotlib's object API (Figure, no pyplot), so nothing here needs a display
or changes the global backend: a notebook can show the returned Figure, the CLI saves it.
This module is imported only when a figure is drawn: `import npmlp` stays free of matplotlib.
"""
from __future__ import annotations

import re
import warnings
from functools import cache
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import cbook, font_manager
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font
from matplotlib.text import Text
from matplotlib.ticker import LogFormatter, MaxNLocator

from .diagnose import EVERY, GUIDE, SATURATED, Readings, UpdateRatios, grad_data
from .files import atomic_open, cannot_write

DPI = 100
BAND_BINS = 3000   # loss curves longer than 2x this draw the per-step losses as a min..max band
GLYPH_WARNING = re.compile(r"Glyph (\d+) .*missing from")


def save(fig: Figure, path, notes: list[str] | None = None) -> Path:
    """Write `fig` as a PNG, atomically. Characters the font lacks are drawn as boxes; the figure
    says so in a line of its own (note_missing_glyphs), and `notes` gets one sentence about it
    naming the file, for the CLI to print as `npmlp: note: ...`."""
    path = Path(path)
    missing = note_missing_glyphs(fig)
    try:
        with atomic_open(path, "wb") as f, warnings.catch_warnings(record=True) as caught:
            # one warning per glyph per figure would flood stderr: the note says it once
            warnings.filterwarnings("always", message="Glyph .* missing from", category=UserWarning)
            fig.savefig(f, format="png", dpi=DPI)
    except OSError as e:                 # the folder passed make_out_dir: a full disk, or made read-only since
        raise cannot_write(path, e) from None
    for w in caught:
        m = GLYPH_WARNING.match(str(w.message))
        if m is None:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)   # not ours to hide
        elif chr(int(m.group(1))) not in missing:
            missing.append(chr(int(m.group(1))))   # a text the check did not see (mathtext...)
    if missing and notes is not None:
        notes.append(f"{path.name}: {glyph_sentence(missing, with_chars=True)}")
    return path


def smoothing_window(n: int) -> int:
    """The lecture averages lossi over 1000-step blocks; short runs get 20 blocks instead."""
    return 1000 if n >= 20_000 else max(1, n // 20)


def plural(n: int, word: str) -> str:
    """'1 step', '2 steps', '1,000 steps'."""
    return f"{n:,} {word}{'s' * (n != 1)}"


# ----------------------------------------------------------------------------- fonts

@cache
def _charmap(path: str) -> tuple[str, frozenset[int]]:
    font = FT2Font(path)
    return font.family_name, frozenset(font.get_charmap())


def _fonts(prop) -> list[str]:
    """The font files matplotlib draws `prop` with: since matplotlib 3.6 a glyph missing from the
    first family is looked up in the next ones of the family list (font.sans-serif...)."""
    find_all = getattr(font_manager.fontManager, "_find_fonts_by_props", None)
    if find_all is not None:
        return [str(f) for f in find_all(prop)]
    return [font_manager.findfont(prop)]


def missing_glyphs(text: str, fontproperties=None) -> list[str]:
    """The characters of `text` that none of the fonts drawing it has (matplotlib draws each as an
    empty box), in order of first appearance. `fontproperties`: a FontProperties, default the
    rcParams font (the one every figure here uses)."""
    prop = font_manager.FontProperties() if fontproperties is None else fontproperties
    maps = [_charmap(f)[1] for f in _fonts(prop)]
    chars = dict.fromkeys(c for c in text if c not in "\n\r")     # distinct, in order
    return [c for c in chars if not any(ord(c) in m for m in maps)]


def font_name(fontproperties=None) -> str:
    prop = font_manager.FontProperties() if fontproperties is None else fontproperties
    return _charmap(_fonts(prop)[0])[0]


def glyph_sentence(chars, with_chars: bool = False) -> str:
    """'2 characters (U+5317, U+4EAC) are not in the font DejaVu Sans and show as boxes'. The
    figure's own note names them by code only: drawn, the characters would be boxes too."""
    listed = [f"U+{ord(c):04X}" + (f" {c!r}" if with_chars else "") for c in chars[:6]]
    more = f" and {len(chars) - 6} more" if len(chars) > 6 else ""
    one = len(chars) == 1
    sentence = (f"{'character' if one else f'{len(chars)} characters'} ({', '.join(listed)}{more}) "
                f"{'is' if one else 'are'} not in the font {font_name()} and show{'s' * one} as boxes")
    if with_chars:   # the figure has no room for the remedy; the terminal has
        sentence += "; add a font that has them to matplotlib's font.sans-serif to draw them"
    return sentence


def note_missing_glyphs(fig: Figure) -> list[str]:
    """Check every text of `fig` against its font; if characters are missing, write one line about
    it at the bottom of the figure (once). -> the missing characters."""
    if hasattr(fig, "npmlp_missing_glyphs"):
        return list(fig.npmlp_missing_glyphs)
    missing: dict[str, None] = {}
    for t in fig.findobj(Text):
        text = t.get_text()
        if text and not cbook.is_math_text(text) and not t.get_usetex():
            missing.update(dict.fromkeys(missing_glyphs(text, t.get_fontproperties())))
    fig.npmlp_missing_glyphs = tuple(missing)  # type: ignore[attr-defined]  # for save() to say which
    if missing:
        # supxlabel: constrained layout makes room for it below everything else
        fig.supxlabel(f"note: {glyph_sentence(list(missing))}", x=0.01, ha="left", fontsize=9, color="0.35")
    return list(missing)


# ----------------------------------------------------------------------------- loss curve

def loss_figure(lossi, decay_step: int | None = None, lr: float | None = None,
                lr_decayed: float | None = None, batch_size: int | None = None) -> Figure:
    """Each step's minibatch loss on a log axis (the lecture plots log10 of lossi), the arithmetic
    mean of each block of steps, and a dashed line where the learning rate drops."""
    lossi = np.asarray(lossi, np.float64)                    # (n,)
    n = len(lossi)
    steps = np.arange(n)
    w = smoothing_window(n)
    blocks = lossi[:n // w * w].reshape(-1, w).mean(axis=1)  # (n // w,) whole blocks only
    # float32 losses of a confident model round to exactly 0 (seen with --batch-size 1); a log axis
    # has no 0, so they are drawn at a floor below the smallest loss and marked
    zero = lossi <= 0                                        # (n,)
    pos = lossi[~zero]
    floor = pos.min() / 2 if pos.size else 1e-8
    shown = np.where(zero, floor, lossi)                     # (n,)

    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.set_yscale("log")
    if n <= 2 * BAND_BINS:
        short = n <= 100   # a short run, or a single step, shows its points
        ax.plot(steps, shown, lw=1 if short else 0.4, alpha=0.8 if short else 0.35, color="tab:blue",
                marker="o" if short else None, ms=5 if n <= 10 else 3, label="each step's minibatch loss")
        zx = steps[zero]
    else:
        # 200k steps are ~200 per pixel column: a line through all of them looks like the band of
        # each bin's min..max, and takes twice as long to draw (0.22 s vs 0.11 s for the lecture run)
        k = -(-n // BAND_BINS)                                                 # steps per bin
        pad = np.pad(shown, (0, -n % k), mode="edge").reshape(-1, k)          # (bins, k)
        x = np.minimum(np.arange(len(pad)) * k + (k - 1) / 2, n - 1)           # (bins,)
        ax.fill_between(x, pad.min(axis=1), pad.max(axis=1), step="mid", lw=0, alpha=0.35, color="tab:blue",
                        label="each step's minibatch loss (min..max)")
        zx = x[np.unique(steps[zero] // k)]                                    # one mark per bin with a 0
    if zero.any():
        ax.plot(zx, np.full(len(zx), floor), ls="none", marker="v", ms=5, color="tab:red",
                label=f"{plural(int(zero.sum()), 'step')} with loss exactly 0 (float32), drawn at {floor:.2g}")
    if w > 1:
        ax.plot(np.arange(len(blocks)) * w + (w - 1) / 2, np.maximum(blocks, floor), lw=2.2,
                color="tab:orange", marker="o" if len(blocks) == 1 else None,
                label=f"mean over {w:,}-step blocks")
    if decay_step is not None and 0 < decay_step < n:
        ax.axvline(decay_step, color="k", ls="--", lw=1)
        text = "learning rate drops" if lr is None else f"lr {lr:g} \u2192 {lr_decayed:g}"
        ax.annotate(text, (decay_step, 0.97), xycoords=("data", "axes fraction"), xytext=(6, 0),
                    textcoords="offset points", va="top", fontsize=11)
    batch = f" (batch {batch_size})" if batch_size else ""
    if n == 0:
        final = ""
    elif w == 1:
        final = f": loss of the last step {lossi[-1]:.3f}"
    else:
        final = f": mean loss of the last {w:,} steps {lossi[-w:].mean():.3f}"
    ax.set(title=f"Training loss, {plural(n, 'step')}{batch}{final}", xlabel="step", ylabel="loss (log scale)")
    # plain numbers (2, 3, 10) on the log axis, minor ticks labelled when the curve spans few decades
    ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if 0 < n <= 100:
        ax.set_xlim(-0.5, n - 0.5)
    if 0 < n <= 10:
        ax.set_xticks(steps)   # MaxNLocator would show -0.4 .. 0.4 around a single step
    if n:   # below the axes: noisy runs (batch 1) fill the whole plot, up to its top corners
        fig.legend(loc="outside lower center", ncols=2 if zero.any() else 3, fontsize=9, frameon=False)
    ax.grid(alpha=0.3, which="both")
    return fig


# ----------------------------------------------------------------------------- embedding

def embedding_2d(C, pca: bool = False):
    """C (V, E) -> (points (V, 2), x label, y label). Raw C[:, 0], C[:, 1] as the lecture, or the
    two principal components (SVD of the centred rows) when pca (E >= 2: of two dimensions, the
    rotation that puts the most variance on the x axis). E == 1: C[:, 0] on a line."""
    C = np.asarray(C, np.float64)
    V, E = C.shape
    if pca and E >= 2:
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
    how = ("first two principal components" if pca and E >= 2 else "its one dimension" if E == 1 else
           "dimensions 0 and 1" + (f" of {E}" if E > 2 else ""))
    ax.set(title=f"Character embeddings C: {how}", xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.margins(0.08)
    note_missing_glyphs(fig)   # CJK or other characters the font lacks: say so in the figure
    return fig


# ----------------------------------------------------------------------------- gradients

HISTOGRAMS = 7    # the gradient figure's histogram panels at most: a deeper net shows 7 of its matrices


def gradient_figure(model, X, Y, itos) -> Figure:
    """One minibatch X (B, T), Y (B,) through model.forward/backward:
    left, dlogits (B, V) as an image, one column per character (the target's entry is negative,
    every other entry is its probability / B); right, a histogram of each parameter's gradient
    (of a deeper network, of HISTOGRAMS weight matrices spread over its depth) and every one's
    grad:data ratio std(grad) / std(param). NaN/inf gradients (a diverged run's) are left out and counted."""
    with np.errstate(all="ignore"):                          # a diverged run's NaN/inf are shown, not warned
        loss, cache = model.forward(X, Y)
        grads, dacts = model.backward(cache)
        dlogits = dacts["logits"]                            # (B, V)
        B, V = dlogits.shape
        # every parameter of the lecture's models; of a deeper one, its weight matrices
        every = [k for k in model.params if len(model.params) <= 7 or model.params[k].ndim == 2]
        ratios = {k: grad_data(g, model.params[k]) if g.size else float("nan")
                  for k, g in ((k, _finite(grads[k])[0]) for k in every)}
    pick = np.unique(np.linspace(0, len(every) - 1, min(len(every), HISTOGRAMS)).round().astype(int))
    names = [every[i] for i in pick]
    cols = -(-(len(names) + 1) // 2)                         # two rows: the histograms, then the ratios

    fig = Figure(figsize=(9 + 3 * cols, 8), layout="constrained")
    gs = fig.add_gridspec(2, 2 + cols, width_ratios=(1.1, 1.1) + (1,) * cols, wspace=0.08)
    ax = fig.add_subplot(gs[:, :2])
    shown, dropped = _finite(dlogits)
    lim = float(np.abs(shown).max(initial=0.0)) or 1.0
    im = ax.imshow(dlogits, cmap="RdBu", norm=TwoSlopeNorm(0, -lim, lim), aspect="auto",
                   interpolation="nearest")
    ax.set_xticks(range(V), list(itos), fontsize=9)
    ax.set(title=f"dlogits, one minibatch (loss {loss:.3f}){dropped}\nred: the target (negative), blue: "
                 f"probability / {B}", xlabel="character", ylabel="example in the batch")
    fig.colorbar(im, ax=ax, shrink=0.8, label="dloss / dlogits")

    for i, k in enumerate(names):
        g, dropped = _finite(grads[k])
        a = fig.add_subplot(gs[i // cols, 2 + i % cols])
        if g.size:
            a.hist(g, bins=60, color="tab:blue", log=g.size > 1000)   # log counts: see the tails
        a.set_title(f"d{k} {tuple(grads[k].shape)}\ngrad:data {ratios[k]:.2e}" + (
            f"\n{dropped.strip(' ()')}" if dropped else ""), fontsize=11)   # a line of its own: the columns are narrow
        a.set_xlabel("gradient value")
        a.tick_params(labelsize=8)
    a = fig.add_subplot(gs[1, 1 + cols])
    values = [ratios[k] for k in every]
    if len(every) <= 12:
        a.barh(every[::-1], values[::-1], color="tab:orange")
        for i, v in enumerate(values[::-1]):
            a.text(v if np.isfinite(v) else 0, i, f" {v:.1e}", va="center", fontsize=9, clip_on=True)
        a.set_xlim(0, np.nanmax(values + [1e-12]) * 1.45)
        a.set_ylim(-0.5, len(every) - 0.5)                   # every bar, NaN ones (no width) too
        a.grid(alpha=0.3, axis="x")
    else:                                                    # a deep net: the ratio along its depth
        a.plot(range(1, len(every) + 1), values, color="tab:orange", marker="o", ms=2, lw=1)
        if np.nanmin(values + [np.inf]) > 0:
            a.set_yscale("log")                              # ratios across a deep net span decades
        a.set_xlabel(f"weight matrix, {every[0]} to {every[-1]}")
        a.grid(alpha=0.3)
    a.set_title("grad:data ratio\nstd(grad) / std(param)", fontsize=11)
    a.tick_params(labelsize=8)
    of = "" if len(names) == len(every) else f" ({len(names)} of its {len(every)} matrices, spread over depth)"
    fig.suptitle(f"Gradients of one minibatch: dlogits, and a histogram of each parameter's gradient (count){of}",
                 fontsize=14)
    note_missing_glyphs(fig)
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


# ----------------------------------------------------------------------------- diagnose: part 3's figures

LEGEND_MAX = 10   # more curves than this are coloured by depth, with a colorbar instead of a legend


def _curves(ax, fig, curves, draw, noun: str = "layers"):
    """Draw each (x, y, label) of `curves` with draw(ax, x, y, color, label): up to LEGEND_MAX in
    tab10's colours with a legend (outside the axes, below), more in a colour map by depth with a
    colorbar naming the first and the last, so a 100-layer network keeps its plot readable."""
    if len(curves) <= LEGEND_MAX:
        colors = matplotlib.colormaps["tab10"].colors  # type: ignore[attr-defined]
        for (x, y, label), color in zip(curves, colors, strict=False):           # fewer curves than colours
            draw(ax, x, y, color, label)
        if curves:
            fig.legend(loc="outside lower center", ncols=min(len(curves), 2 if len(curves[0][2]) > 30 else 5),
                       fontsize=9, frameon=False)
        return
    cmap = matplotlib.colormaps["viridis"]
    for i, (x, y, _) in enumerate(curves):
        draw(ax, x, y, cmap(i / (len(curves) - 1)), None)
    bar = fig.colorbar(matplotlib.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(0, len(curves) - 1)),
                       ax=ax, pad=0.01)
    bar.set_ticks([0, len(curves) - 1], labels=[curves[0][2].split(":")[0], curves[-1][2].split(":")[0]])
    bar.set_label(f"{len(curves)} {noun}, first to last")


def _finite(values):
    """The finite values, and a note for the label if some were not (a diverged run's NaN/inf)."""
    values = np.asarray(values, np.float64).ravel()
    ok = np.isfinite(values)
    return values[ok], "" if ok.all() else f" ({int((~ok).sum()):,} NaN/inf left out)"


def _histograms(title: str, xlabel: str, curves, xlim=None, noun: str = "layers"):
    """One axes with a density curve (100 bins) per (values, label) of `curves`; values that are
    not finite are left out (and counted in the label), a constant or empty layer is a spike or nothing."""
    fig = Figure(figsize=(12, 5.5), layout="constrained")
    ax = fig.add_subplot()
    lines = []
    for values, label in curves:
        values, dropped = _finite(values)
        if values.size:
            hy, hx = np.histogram(values, bins=100, density=True, range=xlim)
            x = (hx[:-1] + hx[1:]) / 2
        else:
            x = hy = np.zeros(0)
        lines.append((x, hy, label + dropped))
    _curves(ax, fig, lines, lambda ax, x, y, color, label: ax.plot(x, y, lw=1.4, color=color, label=label), noun)
    ax.set(title=title, xlabel=xlabel, ylabel="density")
    ax.grid(alpha=0.3)
    return fig, ax


def activations_figure(r: Readings):
    fig, ax = _histograms("activation distribution (forward): each tanh layer's outputs", "tanh output", [
        (a.values, f"{a.name}: mean {a.mean:+.2f}, std {a.std:.2f}, saturated {100 * a.saturated:.2f}%")
        for a in r.activations], xlim=(-1, 1))
    ax.axvspan(SATURATED, 1, color="tab:red", alpha=0.08)
    ax.axvspan(-1, -SATURATED, color="tab:red", alpha=0.08)
    ax.text(0.995, 0.98, f"shaded: saturated, |h| > {SATURATED}", transform=ax.transAxes, ha="right", va="top",
            fontsize=9, color="tab:red")
    ax.set_xlim(-1.05, 1.05)
    return fig


def activation_grads_figure(r: Readings):
    fig, _ = _histograms("gradient distribution (backward): the gradient reaching each tanh layer's output",
                         "gradient", [(g.values, f"{g.name}: mean {g.mean:+.2e}, std {g.std:.2e}")
                                      for g in r.gradients])
    return fig


def weight_grads_figure(r: Readings):
    fig, _ = _histograms("weights gradient distribution, with each matrix's grad:data ratio std(grad) / std(weight)",
                         "gradient", [(w.grad, f"{w.name} {w.shape}: std {w.std:.2e}, grad:data {w.ratio:.2e}")
                                      for w in r.weights], noun="weight matrices")
    return fig


def update_ratio_figure(u: UpdateRatios, params: dict):
    """log10 update:data of each weight matrix over training (the other parameters faint), with
    the -3 guide line; each sample marked when there are few (a single one is a point)."""
    fig = Figure(figsize=(12, 5.5), layout="constrained")
    ax = fig.add_subplot()
    ratios = np.array(u.ratios).reshape(len(u.steps), len(u.names))
    marker = "o" if len(u.steps) <= 20 else None
    for j, k in enumerate(u.names):
        if k not in params or np.ndim(params[k]) != 2:
            ax.plot(u.steps, ratios[:, j], lw=0.6, color="0.6", alpha=0.5, marker=marker, ms=3)
    weights = [(u.steps, ratios[:, j], k) for j, k in enumerate(u.names) if k in params and np.ndim(params[k]) == 2]
    _curves(ax, fig, weights, lambda ax, x, y, color, label: ax.plot(x, y, lw=1.5, color=color, label=label,
                                                                      marker=marker, ms=5), "weight matrices")
    ax.axhline(GUIDE, color="k", lw=1.2)
    ax.text(0.005, GUIDE, " -3: updates of a thousandth", transform=ax.get_yaxis_transform(), va="bottom", fontsize=9)
    if len(u.steps) == 1:
        ax.set_xlim(u.steps[0] - EVERY, u.steps[0] + EVERY)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title=f"update:data ratio, log10(std(lr * grad) / std(param)), every {EVERY} steps "
                 f"(weight matrices in colour, the other parameters grey)", xlabel="step", ylabel="log10 ratio")
    ax.grid(alpha=0.3)
    return fig


def through_time_figure(t: dict) -> Figure:
    """A recurrent model per position: the share of saturated tanh outputs, and the size of the
    gradient reaching each hidden state through time (log scale: a vanishing gradient falls
    towards the first positions)."""
    fig = Figure(figsize=(11, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    pos = np.arange(len(t["saturation"]))
    counted = np.asarray(t["targets"]) > 0
    top.bar(pos[counted], 100 * np.asarray(t["saturation"])[counted], color="tab:red", alpha=0.7)
    top.set(ylabel=f"% saturated (|h| > {SATURATED})", title="tanh outputs per position (the rows whose target counts)")
    top.grid(alpha=0.3, axis="y")
    dh = np.asarray(t["dh_norm"], np.float64)
    bottom.plot(pos, dh, marker="o", color="tab:blue")
    if np.all(dh[np.isfinite(dh)] > 0):
        bottom.set_yscale("log")
    bottom.set(xlabel="position t (0: the start token)", ylabel="||dloss / dh_t||",
               title="the gradient reaching h_t: from position t's output and from every later step")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.grid(alpha=0.3)
    fig.suptitle("Through time: saturation and gradient size per position", fontsize=14)
    return fig


def attention_figure(patterns: dict, X, itos) -> Figure:
    """Each head's attention pattern, block by block, for the names X (k, T): row t is the position
    attending (its character), column j the position attended (0 above the diagonal: causal)."""
    k = len(X)
    blocks = sorted(patterns)
    n_head = patterns[blocks[0]].shape[1]
    fig = Figure(figsize=(2.2 * n_head * k + 1, 2.2 * len(blocks) + 1), layout="constrained")
    axes = fig.subplots(len(blocks), n_head * k, squeeze=False)
    for b, block in enumerate(blocks):
        for i in range(k):
            ids = list(X[i])
            T = (ids.index(0, 1) + 1) if 0 in ids[1:] else len(ids)      # the name and its closing '.'
            chars = [itos[int(c)] for c in ids[:T]]
            for h in range(n_head):
                ax = axes[b, i * n_head + h]
                ax.imshow(patterns[block][i, h, :T, :T], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks(range(T), chars, fontsize=7)
                ax.set_yticks(range(T), chars, fontsize=7)
                if b == 0:
                    ax.set_title(f"{''.join(chars[1:]).rstrip('.')!r}, head {h}", fontsize=9)
                if i == 0 and h == 0:
                    ax.set_ylabel(f"block {block}\nattending")
    fig.suptitle("Attention patterns: each row a position's softmax over the positions before it (yellow: 1)",
                 fontsize=13)
    note_missing_glyphs(fig)
    return fig


def residual_figure(norms) -> Figure:
    """The residual stream's size, block by block: the mean length of a position's vector."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(range(len(norms)), norms, marker="o", color="tab:purple")
    ax.set_xticks(range(len(norms)), ["emb"] + [f"block {i}" for i in range(len(norms) - 1)])
    ax.set(ylabel="mean ||x|| of a position", title="The residual stream's size, before and after each block")
    ax.grid(alpha=0.3)
    return fig


def write_diagnose_figures(out, readings: Readings, ratios: UpdateRatios | None, params: dict,
                           notes=None, itos=None) -> list[Path]:
    """activations.png and activation_grads.png (a model with tanh layers), weight_grads.png, and
    (if recorded) update_ratio.png (params: the model's, by name: which are weight matrices); of a
    recurrent model through_time.png, of a Transformer attention.png (itos: its characters) and
    residual.png."""
    out = Path(out)
    written = []
    if readings.activations:
        written += [save(activations_figure(readings), out / "activations.png", notes),
                    save(activation_grads_figure(readings), out / "activation_grads.png", notes)]
    written.append(save(weight_grads_figure(readings), out / "weight_grads.png", notes))
    if ratios is not None and ratios.steps:
        written.append(save(update_ratio_figure(ratios, params), out / "update_ratio.png", notes))
    if readings.through_time is not None:
        written.append(save(through_time_figure(readings.through_time), out / "through_time.png", notes))
    if readings.attention is not None and itos is not None:
        written.append(save(attention_figure(readings.attention, readings.names, itos), out / "attention.png", notes))
    if readings.residual is not None:
        written.append(save(residual_figure(readings.residual), out / "residual.png", notes))
    return written


# ----------------------------------------------------------------------------- a run's figures

def write_run_figures(out, model, vocab, lossi=None, cfg=None, pca: bool = False, batch=None,
                      notes: list[str] | None = None):
    """loss.png (if lossi has steps), embedding.png, and gradients.png if batch = (X, Y) is
    given, into the run directory `out`. -> the paths written. A figure drawing characters the
    font lacks appends one sentence to `notes` (see save)."""
    out = Path(out)
    written = []
    if lossi is not None and len(lossi):
        decay = cfg.decay_step if cfg is not None and cfg.lr_decayed != cfg.lr else None
        lr, lr_decayed, rows = (cfg.lr, cfg.lr_decayed, cfg.batch_size) if cfg is not None else (None, None, None)
        written.append(save(loss_figure(lossi, decay, lr, lr_decayed, rows), out / "loss.png", notes))
    if model.spec.embedding is not None:       # the bigram embeds nothing: its rows are logits
        written.append(save(embedding_figure(model.params[model.spec.embedding], vocab.itos, pca),
                            out / "embedding.png", notes))
    if batch is not None:
        X, Y = batch
        written.append(save(gradient_figure(model, X, Y, vocab.itos), out / "gradients.png", notes))
    return written
