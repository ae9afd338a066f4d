"""The lecture's learning-rate sweep: from a fresh model, one SGD step per rate, the rate growing
exponentially (lre = linspace(-3, 0, 1000), lr = 10**lre), and the loss of each step recorded.

The loss falls while the rate is useful and climbs once steps overshoot. Each step is a training
step of the chosen engine (fast.steps), so the update and the minibatches are training's.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..contract import SEED
from ..train import Diverged, TrainConfig, nonfinite

MARGIN = 0.2  # suggested exponent = exponent of the smoothed minimum minus this (rate / 1.6)


def sweep_range(lr: float) -> tuple[float, float]:
    """The exponents a sweep runs between: from 1/100 to 10 times a model's default rate, the
    lecture's -3 to 0 around its 0.1."""
    e = round(float(np.log10(lr)), 2)
    return e - 2, e + 1


def sweep(steps, X, Y, lre, base: TrainConfig | None = None, on_step=None, model=None):
    """Train a model in place with `steps` (fast.steps of it, its optimiser bound), step i at rate
    10**lre[i] with the rest of `base` (default: the lecture's SGD, batch 32); -> losses (len(lre),),
    NaN from a divergence on (the sweep stops there: the model is ruined). A divergence is a
    NaN/inf loss, or (given the model) params or running statistics that turn NaN/inf while the
    loss stays finite (train.nonfinite). on_step(i, loss, lr) is optional."""
    n = len(lre)
    base = TrainConfig(steps=n, seed=SEED) if base is None else base
    losses = np.full(n, np.nan, np.float32)     # the lecture's `lossi` against `lri`
    for i, e in enumerate(lre):
        lr = float(10.0 ** e)
        cfg = dataclasses.replace(base, steps=n, lr=lr, lr_decayed=lr, decay_at=1.0, schedule="step")
        try:
            steps(X, Y, cfg, losses, i, i + 1, None)
        except Diverged:
            losses[i] = np.nan
            break
        if model is not None and nonfinite(model) is not None:     # this step's rate ruined the model
            losses[i] = np.nan
            break
        if on_step is not None:
            on_step(i, float(losses[i]), lr)
    return losses


def smooth(losses, window: int):
    """Centred moving average (window steps); NaNs (after a divergence) stay NaN."""
    w = max(1, min(window, len(losses)))
    kernel = np.ones(w) / w
    padded = np.pad(np.asarray(losses, np.float64), (w // 2, w - 1 - w // 2), mode="edge")
    return np.convolve(padded, kernel, mode="valid")  # (n,)


def suggest(lre, losses, window: int | None = None, margin: float = MARGIN):
    """-> (suggested exponent, exponent at the smoothed minimum, smoothed losses).

    Rule: smooth the noisy per-step losses (window = 5% of the sweep), take the exponent where
    the smoothed loss is lowest, and step back `margin` in exponent (divide the rate by 1.6):
    at the minimum the rate is already close to overshooting. On names.txt the minimum sits near
    10**-0.85 and the rule gives ~0.09, the lecture's pick of 0.1 read off the same plot."""
    lre = np.asarray(lre, np.float64)
    window = window or max(1, len(lre) // 20)
    sm = smooth(losses, window)
    best = float(lre[np.nanargmin(sm)])
    return max(float(lre[0]), best - margin), best, sm
