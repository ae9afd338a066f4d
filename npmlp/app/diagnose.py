"""makemore part 3's readings of a network's health, as numbers and figures:

  - each tanh layer's outputs: mean, std, and the share saturated (|h| > 0.97, where tanh's
    gradient 1 - h^2 is below 0.06 and the unit barely learns);
  - the gradients reaching those outputs: mean and std per layer (do they shrink or grow with depth?);
  - each weight matrix's gradient: std(grad) / std(weight), the grad:data ratio;
  - over training, log10(std(lr * grad) / std(param)) per parameter, the update:data ratio:
    about -3 is healthy (an update changes a weight by a thousandth of its spread);
  - of makemore.py's models, what their spec's model reads of itself: a recurrent model's
    saturation and gradient size per position through time (vanishing gradients), a
    Transformer's attention patterns, the residual stream's size block by block.

Legend: B batch. All readings come from the reference tier's forward and backward of one minibatch
(training mode), with any running statistics left as they were; plots.py draws them.
"""
from __future__ import annotations

import contextlib
import itertools
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..train import batch_rows
from .errors import NpmlpError
from .files import atomic_open

SATURATED = 0.97
EVERY = 100                  # `npmlp train --diagnose`: steps between update:data samples
RATIOS = "update_ratio.npz"  # ... kept in the run directory
GUIDE = -3.0


@contextlib.contextmanager
def frozen(model):
    """Run the training forward without moving running statistics (deep.BatchNorm1d updates them)."""
    saved = {k: a.copy() for k, a in model.buffers.items()}
    try:
        yield model
    finally:
        for k, a in model.buffers.items():
            a[...] = saved[k]


def grad_data(grad, param) -> float:
    """The grad:data ratio std(grad) / std(param): how large a step along the gradient is next to
    the parameter's own spread (NaN for a constant parameter)."""
    spread = float(np.std(param, dtype=np.float64))
    return float(np.std(grad, dtype=np.float64)) / spread if spread > 0 else float("nan")


class Layer(NamedTuple):
    name: str
    values: np.ndarray     # flattened
    mean: float
    std: float
    saturated: float       # share with |value| > SATURATED (activations only)


class Weight(NamedTuple):
    name: str
    shape: tuple
    grad: np.ndarray       # flattened
    mean: float
    std: float
    ratio: float           # std(grad) / std(weight)


class Readings(NamedTuple):
    loss: float
    activations: list      # [Layer], each tanh layer's output
    gradients: list        # [Layer], the gradient reaching each tanh layer's output
    weights: list          # [Weight], each weight matrix (the parameters with 2 dimensions)
    through_time: dict | None = None    # Model.readings_through_time's, of a recurrent model
    attention: dict | None = None       # {block: (k, n_head, T, T)} of the first k names, of a Transformer
    names: np.ndarray | None = None     # (k, T) those names' inputs
    residual: np.ndarray | None = None  # Model.residual_norms', (blocks + 1,)


ATTENTION_NAMES = 3        # the names whose attention patterns are drawn


def _layer(name, a, saturated=True, keep=None):
    a = np.asarray(a, np.float64)
    if keep is not None and a.shape[:keep.ndim] == keep.shape:   # a sequence's padded positions: left out
        a = a[keep]
    a = a.ravel()
    return Layer(name, a, float(a.mean()), float(a.std()),
                 float((np.abs(a) > SATURATED).mean()) if saturated else float("nan"))


def read(model, X, Y) -> Readings:
    """The readings of one minibatch X (B, T), Y (B,) (a sequence model's (B, T), whose padded
    positions are left out). A diverged run's NaN/inf are read as they are (the tables print nan,
    the figures leave them out), without NumPy's warnings."""
    Y = np.asarray(Y)
    keep = Y != -1 if Y.ndim > 1 else None            # (B, T) the positions whose target counts
    with frozen(model), np.errstate(all="ignore"):
        loss, cache = model.forward(X, Y)
        grads, dacts = model.backward(cache)
        names = model.tanh_names
        acts = [_layer(n, cache[n], keep=keep) for n in names]
        grads_in = [_layer(n, dacts[n], saturated=False, keep=keep) for n in names]
        weights = []
        for k, p in model.params.items():
            if p.ndim == 2:
                g = np.asarray(grads[k], np.float64).ravel()
                weights.append(Weight(k, p.shape, g, float(g.mean()), float(g.std()), grad_data(g, p)))
        through_time = model.readings_through_time(X, Y, SATURATED)
        attention = model.attention_patterns(X[:ATTENTION_NAMES])
        residual = model.residual_norms(X)
    return Readings(loss, acts, grads_in, weights, through_time, attention,
                    None if attention is None else np.asarray(X[:ATTENTION_NAMES]), residual)


def tables(r: Readings) -> str:
    """The readings as the lecture prints them."""
    lines = [f"loss of the minibatch {r.loss:.4f}", "", "activations (tanh outputs)"]
    lines += [f"  {a.name:8s}  mean {a.mean:+.2f}  std {a.std:.2f}  saturated (|h| > {SATURATED}) "
              f"{100 * a.saturated:5.2f}%" for a in r.activations] or ["  none: the model has no tanh layer read here"]
    lines += ["", "gradients reaching them"]
    lines += [f"  {g.name:8s}  mean {g.mean:+.6f}  std {g.std:.6e}" for g in r.gradients] or ["  none"]
    lines += ["", "weights"]
    lines += [f"  {w.name:8s}  {w.shape!s:11s}  grad mean {w.mean:+.6f}  std {w.std:.6e}  grad:data {w.ratio:.3e}"
              for w in r.weights]
    if r.through_time is not None:
        t = r.through_time
        lines += ["", f"through time (position t: the share of tanh outputs with |h| > {SATURATED}, and "
                      f"||dloss/dh_t||, the gradient reaching h_t from its output and every later step)"]
        lines += [f"  t={i:<3d} saturated {100 * s:6.2f}%  |dh| {d:.4e}  ({int(n)} targets)" if n else
                  f"  t={i:<3d} no target counts here" for i, (s, d, n) in
                  enumerate(zip(t["saturation"], t["dh_norm"], t["targets"], strict=True))]
    if r.residual is not None:
        lines += ["", "residual stream: the mean length of a position's vector before the first block and after each"]
        lines += [f"  {'embeddings' if i == 0 else f'after block {i - 1}':16s} {v:.4f}"
                  for i, v in enumerate(r.residual)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- update:data over training

class UpdateRatios:
    """log10(std(lr * grad) / std(param)) of every parameter at the steps it was sampled: the grad
    of that step's minibatch at the params that step starts from, i.e. the update about to be made."""

    def __init__(self, names, steps=(), ratios=None):
        self.names = list(names)
        self.steps = list(steps)
        self.ratios = [] if ratios is None else [np.asarray(r, np.float64) for r in ratios]

    def record(self, model, X, Y, cfg, step: int):
        rows = batch_rows(cfg, step, len(X))
        with frozen(model):
            _, grads = model.loss_and_grads(X[rows], Y[rows])
        lr = cfg.lr_at(step)
        with np.errstate(divide="ignore", invalid="ignore"):   # a zero spread gives no ratio: NaN
            r = [np.log10(np.std(lr * grads[k], dtype=np.float64) / np.std(model.params[k], dtype=np.float64))
                 for k in self.names]
        self.steps.append(step)
        self.ratios.append(np.where(np.isfinite(r), r, np.nan))

    def until(self, step: int) -> UpdateRatios:
        keep = [i for i, s in enumerate(self.steps) if s < step]
        return UpdateRatios(self.names, [self.steps[i] for i in keep], [self.ratios[i] for i in keep])

    def save(self, path):
        with atomic_open(path, "wb") as f:
            np.savez(f, names=np.array(self.names), steps=np.array(self.steps, np.int64),
                     ratios=np.array(self.ratios, np.float64).reshape(len(self.steps), len(self.names)))

    @classmethod
    def load(cls, path, names=None, step: int | None = None) -> UpdateRatios | None:
        """The ratios saved in `path`, None if there is no such file; checked as a checkpoint is
        (checkpoint.read_npz, then every field): NpmlpError naming what is wrong, never samples
        silently dropped. names: the model's parameters, which the file must list; step: the
        checkpoint's, which the samples must reach (every EVERY steps up to the last before it)."""
        from .checkpoint import read_npz
        path = Path(path)
        if not path.exists():
            return None
        fix = "restore it from a copy, or move it away to go on without the update:data ratios recorded so far"
        a = read_npz(path, "update:data ratios file", fix)

        def bad(what):
            return NpmlpError(f"update:data ratios file {path} {what}; {fix}")

        if set(a) != {"names", "steps", "ratios"}:
            raise bad(f"holds arrays {', '.join(sorted(a)) or 'none'}, not names, steps and ratios")
        names_, steps, ratios = a["names"], a["steps"], a["ratios"]
        if names_.ndim != 1 or names_.dtype.kind != "U":
            raise bad(f"has names of shape {names_.shape} and dtype {names_.dtype}, not a list of parameter names")
        if names is not None and list(names_) != list(names):
            raise bad(f"names the parameters {', '.join(map(str, names_[:6]))}"
                      f"{'...' if len(names_) > 6 else ''}, not the model's {', '.join(list(names)[:6])}"
                      f"{'...' if len(names) > 6 else ''}")
        if steps.ndim != 1 or steps.dtype.kind not in "iu":
            raise bad(f"has steps of shape {steps.shape} and dtype {steps.dtype}, not a list of step numbers")
        if ratios.shape != (len(steps), len(names_)) or ratios.dtype.kind != "f":
            raise bad(f"has ratios of shape {ratios.shape} and dtype {ratios.dtype}, expected float "
                      f"({len(steps)}, {len(names_)}) for {len(steps)} samples of {len(names_)} parameters")
        if np.isinf(ratios).any():
            raise bad("holds infinite ratios (a zero spread is saved as NaN, never inf)")
        steps = steps.tolist()
        if any(s < 0 or s % EVERY for s in steps) or any(b <= a_ for a_, b in itertools.pairwise(steps)):
            raise bad(f"has steps {steps[:4]}...; samples are taken every {EVERY} steps, in order")
        u = cls([str(n) for n in names_], steps, list(ratios.astype(np.float64)))
        if step is not None:
            kept = u.until(step).steps
            last = (step - 1) // EVERY * EVERY             # the last sample before the checkpoint's step
            if kept and kept != list(range(kept[0], last + 1, EVERY)):
                raise bad(f"has samples from step {kept[0]:,} to {kept[-1]:,} with gaps or ending early, while "
                          f"the checkpoint is at step {step:,} (one sample every {EVERY} steps up to {last:,})")
        return u


def ratio_summary(u: UpdateRatios, params: dict, last: int = 10) -> str:
    """Each weight matrix's update:data ratio: the mean of its last `last` samples."""
    if not u.steps:
        return ""
    ratios = np.array(u.ratios).reshape(len(u.steps), len(u.names))[-last:]
    lines = [(f"update:data, log10, mean of the last {len(ratios)} samples (every {EVERY} steps, to step "
             f"{u.steps[-1]:,}); healthy near {GUIDE:g}")]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # a 1-wide layer's ratios are all NaN: its mean is nan
        lines += [f"  {k:8s}  {np.nanmean(ratios[:, j]):+.2f}" for j, k in enumerate(u.names)
                  if k in params and np.ndim(params[k]) == 2]
    return "\n".join(lines)
