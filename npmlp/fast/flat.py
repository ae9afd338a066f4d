"""What every fast engine keeps: a model's parameters end to end in one vector, in the model's
order (a checkpoint's), and views of it by name, so that the SGD update of all of them is one
vector add."""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import ClassVar

import numpy as np


class FlatParams:
    """self.flat (P,) and self.w, its views by name; load/store copy a model's params in and out.
    An engine that keeps copies of its parameters (a transposed W, say) makes them in its forward.

    An engine is a FlatParams that also writes the step (engine.run_chunks calls them):
    picks(y, n, out), forward_loss(xb, yb, pick, hot) -> (mean loss, buffers) and
    backward(buffers, xb, yb, dloss, g); V and T are the model's vocabulary and rows' context,
    and `chunked` says whether a batch may run as chunks (each row's gradient its own), `windows`
    whether as its distinct windows of characters."""

    chunked: ClassVar[bool] = False
    windows: ClassVar[bool] = False   # a batch may run its distinct windows (engine.Engine's forward_windows)
    V: int
    T: int

    def __init__(self, model):
        self.shapes = {k: p.shape for k, p in model.params.items()}   # the model's order: each b after its W
        self.offset, at = {}, 0                                        # where each parameter starts
        for k, shape in self.shapes.items():
            self.offset[k], at = at, at + math.prod(shape)
        self.flat = np.zeros(at, model.dtype)                          # (P,)
        self.w = self.views(self.flat)

    @property
    def dtype(self):
        return self.flat.dtype

    def views(self, flat) -> SimpleNamespace:
        """Each parameter of a vector laid out like self.flat, by name."""
        return SimpleNamespace(**{k: flat[self.offset[k]:self.offset[k] + math.prod(s)].reshape(s)
                                  for k, s in self.shapes.items()})

    def load(self, model):
        for k in self.shapes:
            getattr(self.w, k)[...] = model.params[k]

    def store(self, model):
        for k in self.shapes:
            model.params[k][...] = getattr(self.w, k)

    def picks(self, y, n: int, out) -> None:
        raise NotImplementedError

    def forward_loss(self, xb, yb, pick=None, hot=None) -> tuple[float, SimpleNamespace]:
        raise NotImplementedError

    def backward(self, b, xb, yb, dloss: float, g) -> None:
        raise NotImplementedError
