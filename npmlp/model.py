"""The MLP of makemore part 2 (Bengio et al. 2003): C[X] -> concat -> W1,b1 -> tanh -> W2,b2 -> cross-entropy.

Legend: B batch, T block_size, E n_embd, H n_hidden, V vocab size.
The backward is the forward read upside down: one layer call per line, in reverse.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .errors import UsageError
from .layers import (cross_entropy_backward, cross_entropy_forward, embedding_backward,
                     embedding_forward, linear_backward, linear_forward, tanh_backward,
                     tanh_forward)

PARAM_NAMES = ("C", "W1", "b1", "W2", "b2")
ACT_NAMES = ("logits", "h", "hpreact", "embcat", "emb")  # intermediates, in backward order


def param_shapes(vocab_size, block_size, n_embd, n_hidden):
    V, T, E, H = vocab_size, block_size, n_embd, n_hidden
    return {"C": (V, E), "W1": (T * E, H), "b1": (H,), "W2": (H, V), "b2": (V,)}


class Workspace:
    """Reusable buffers, one per name, grown to the largest batch seen and handed out as
    contiguous views: a training step then allocates no large array. Buffers handed out are
    overwritten by the next call with this workspace."""

    def __init__(self):
        self._bufs: dict[str, np.ndarray] = {}       # name -> flat buffer
        self._views: dict[tuple, np.ndarray] = {}    # (name, shape, dtype) -> view, made once

    def get(self, name, shape, dtype):
        view = self._views.get((name, shape, dtype))
        if view is None:                              # first use of this shape: a dict hit from now on
            n = math.prod(shape)
            buf = self._bufs.get(name)
            if buf is None or buf.size < n or buf.dtype != dtype:
                buf = self._bufs[name] = np.empty(n, dtype)
                self._views = {k: v for k, v in self._views.items() if k[0] != name}  # old buffer's
            view = self._views[(name, shape, dtype)] = buf[:n].reshape(shape)
        return view


class _Fresh:
    """The no-workspace case: every buffer is a new array, so results never alias."""

    @staticmethod
    def get(name, shape, dtype):
        return np.empty(shape, dtype)


FRESH = _Fresh()


class Cache(NamedTuple):
    """Everything the forward computed that the backward (and the gradcheck report) reads."""
    emb: np.ndarray      # (B, T, E)
    embcat: np.ndarray   # (B, T*E) a view of emb: concatenation is a reshape
    hpreact: np.ndarray  # (B, H)
    h: np.ndarray        # (B, H)
    logits: np.ndarray   # (B, V)
    emb_c: tuple
    lin1_c: tuple
    tanh_c: tuple
    lin2_c: tuple
    ce_c: tuple


class MLP:
    """`params`: dict of arrays C (V, E), W1 (T*E, H), b1 (H,), W2 (H, V), b2 (V,), one dtype.

    The arrays are views into one flat vector `self.flat`, so an SGD update is one vector op.
    Assign into them (`params['W1'][...] = x`), don't rebind them.
    """

    def __init__(self, params):
        missing = [k for k in PARAM_NAMES if k not in params]
        if missing:
            raise ValueError(f"params lack {missing}; need {PARAM_NAMES}")
        arrays = {k: np.asarray(params[k]) for k in PARAM_NAMES}
        dtype = np.result_type(*arrays.values())
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"params must be float32 or float64, got {dtype}")
        V, E = arrays["C"].shape
        H = arrays["b1"].shape[0]
        TE = arrays["W1"].shape[0]
        if TE % E:
            raise ValueError(f"W1 has {TE} rows, not a multiple of n_embd={E}")
        want = param_shapes(V, TE // E, E, H)
        bad = {k: a.shape for k, a in arrays.items() if a.shape != want[k]}
        if bad:
            raise ValueError(f"param shapes {bad} do not fit {want}")
        self.vocab_size, self.block_size, self.n_embd, self.n_hidden = V, TE // E, E, H
        self.flat, self.params = self._flat_views(dtype)
        for k in PARAM_NAMES:
            self.params[k][...] = arrays[k]

    def _flat_views(self, dtype):
        """A zeroed flat vector and a dict of views into it, shaped like the params."""
        shapes = param_shapes(self.vocab_size, self.block_size, self.n_embd, self.n_hidden)
        flat = np.zeros(sum(int(np.prod(s)) for s in shapes.values()), dtype)
        views, i = {}, 0
        for k in PARAM_NAMES:
            n = int(np.prod(shapes[k]))
            views[k] = flat[i:i + n].reshape(shapes[k])
            i += n
        return flat, views

    @classmethod
    def init(cls, vocab_size, block_size=3, n_embd=10, n_hidden=200, seed=2147483647,
             dtype=np.float32, scheme="lecture"):
        """scheme='lecture': plain standard normal, as in makemore part 2.
        scheme='kaiming': W1 scaled by (5/3)/sqrt(fan_in) (tanh gain), W2 by 0.01, b2 = 0,
        b1 by 0.01 (makemore part 3's fix for a saturated tanh and a hockey-stick loss)."""
        shapes = param_shapes(vocab_size, block_size, n_embd, n_hidden)
        for name, v in (("vocab_size", vocab_size), ("block_size", block_size),
                        ("n_embd", n_embd), ("n_hidden", n_hidden)):
            if int(v) < 1:
                raise UsageError(f"{name} must be >= 1, got {v}")
        rng = np.random.default_rng(seed)
        p = {k: rng.standard_normal(s) for k, s in shapes.items()}  # float64 draws: same for both dtypes
        if scheme == "kaiming":
            p["W1"] *= (5 / 3) / np.sqrt(block_size * n_embd)
            p["b1"] *= 0.01
            p["W2"] *= 0.01
            p["b2"] *= 0
        elif scheme != "lecture":
            raise UsageError(f"unknown init scheme {scheme!r}; use 'lecture' or 'kaiming'")
        return cls({k: v.astype(dtype) for k, v in p.items()})

    @property
    def dtype(self):
        return self.flat.dtype

    @property
    def num_params(self) -> int:
        return self.flat.size

    def new_grads(self):
        """(flat, dict): a zeroed gradient vector and views into it shaped like params."""
        return self._flat_views(self.dtype)

    # ------------------------------------------------------------------------- forward

    def forward(self, X, Y=None, ws=FRESH):
        """X (B, T) -> logits (B, V) if Y is None, else (loss, Cache)."""
        P = self.params
        B, T = X.shape
        E, H, V, dt = self.n_embd, self.n_hidden, self.vocab_size, self.dtype
        if T != self.block_size:
            raise ValueError(f"X has {T} context columns, the model takes block_size={self.block_size}")
        emb, emb_c = embedding_forward(P["C"], X, out=ws.get("emb", (B, T, E), dt))            # (B, T, E)
        embcat = emb.reshape(B, T * E)                                                         # (B, T*E)
        hpreact, lin1_c = linear_forward(embcat, P["W1"], P["b1"], out=ws.get("hpreact", (B, H), dt))  # (B, H)
        h, tanh_c = tanh_forward(hpreact, out=ws.get("h", (B, H), dt))                        # (B, H)
        logits, lin2_c = linear_forward(h, P["W2"], P["b2"], out=ws.get("logits", (B, V), dt))  # (B, V)
        if Y is None:
            return logits
        # counts (B, V) is stored transposed, as (V, B): see cross_entropy_forward
        loss, ce_c = cross_entropy_forward(logits, Y, out=ws.get("counts", (V, B), dt).T)     # ()
        return float(loss), Cache(emb, embcat, hpreact, h, logits, emb_c, lin1_c, tanh_c, lin2_c, ce_c)

    # ------------------------------------------------------------------------- backward

    def backward(self, cache: Cache, grads=None, ws=FRESH, dloss=1.0):
        """-> (grads, dacts): grads keyed like params (written into `grads` if given),
        dacts the gradients of the intermediates keyed by ACT_NAMES (dacts["logits"] is stored
        transposed, as (V, B), like counts). dloss scales everything: these are the gradients of
        dloss * loss; training passes dloss = -lr, see train.sgd."""
        g = grads if grads is not None else self.new_grads()[1]
        B = cache.h.shape[0]
        T, E, H, V, dt = self.block_size, self.n_embd, self.n_hidden, self.vocab_size, self.dtype
        dlogits = cross_entropy_backward(cache.ce_c, out=ws.get("dlogits", (V, B), dt).T, dloss=dloss)  # (B, V)
        dh, _, _ = linear_backward(dlogits, cache.lin2_c, ws.get("dh", (B, H), dt), g["W2"], g["b2"])  # (B, H)
        dhpreact = tanh_backward(dh, cache.tanh_c, out=ws.get("dhpreact", (B, H), dt))             # (B, H)
        dembcat, _, _ = linear_backward(dhpreact, cache.lin1_c, ws.get("dembcat", (B, T * E), dt),
                                        g["W1"], g["b1"])                                          # (B, T*E)
        demb = dembcat.reshape(B, T, E)                                                            # (B, T, E)
        embedding_backward(demb, cache.emb_c, out=g["C"], onehot=ws.get("onehot", (B * T, V), dt))  # (V, E)
        dacts = {"logits": dlogits, "h": dh, "hpreact": dhpreact, "embcat": dembcat, "emb": demb}
        return g, dacts

    # ------------------------------------------------------------------------- conveniences

    def logits(self, X):
        """X (B, T) -> logits (B, V), a new array."""
        return self.forward(np.asarray(X))

    def loss(self, X, Y) -> float:
        return self.forward(np.asarray(X), np.asarray(Y))[0]

    def loss_and_grads(self, X, Y):
        """(loss: float, grads: dict of new arrays shaped and typed like params)."""
        loss, cache = self.forward(np.asarray(X), np.asarray(Y))
        return loss, self.backward(cache)[0]
