"""The MLP of makemore part 2 (Bengio et al. 2003): C[X] -> concat -> W1,b1 -> tanh -> W2,b2 -> cross-entropy.

Legend: B batch, T block_size, E n_embd, H n_hidden, V vocab size.
The backward is the forward read upside down: one layer call per line, in reverse.
"""
from __future__ import annotations

import math
from types import SimpleNamespace
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
        self._bundles: dict = {}                     # key -> make(self, key), made once

    def bundle(self, key, make):
        """make(self, key) once per key (e.g. all the views of one batch size), then a dict hit."""
        b = self._bundles.get(key)
        if b is None:
            b = self._bundles[key] = make(self, key)
        return b

    def get(self, name, shape, dtype):
        view = self._views.get((name, shape, dtype))
        if view is None:                              # first use of this shape: a dict hit from now on
            n = math.prod(shape)
            buf = self._bufs.get(name)
            if buf is None or buf.size < n or buf.dtype != dtype:
                buf = self._bufs[name] = np.empty(n, dtype)
                self._views = {k: v for k, v in self._views.items() if k[0] != name}  # old buffer's
                self._bundles.clear()                 # they may hold views of the old buffer
            view = self._views[(name, shape, dtype)] = buf[:n].reshape(shape)
        return view


class _Fresh:
    """The no-workspace case: every buffer is a new array, so results never alias."""

    @staticmethod
    def get(name, shape, dtype):
        return np.empty(shape, dtype)

    def bundle(self, key, make):
        return make(self, key)


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

    The arrays are views into one flat vector `self.flat` laid out C, W1, b1, W2, b2, so an SGD
    update is one vector op, and each b follows its W: `self.W1b` (T*E+1, H) and `self.W2b`
    (H+1, V) are views of W with b as an extra last row, what the linear layers take (the bias
    trick, see layers.linear_forward). Assign into the arrays (`params['W1'][...] = x`), don't
    rebind them.
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
        self.shape = (V, TE // E, E, H)                  # tells workspaces of different models apart
        self.flat = np.zeros(sum(math.prod(s) for s in want.values()), dtype)
        self._views_cache = {}                           # id(vector) -> (vector, its views)
        self.params, self.W1b, self.W2b = self._views_of(self.flat)
        for k in PARAM_NAMES:
            self.params[k][...] = arrays[k]

    def _views_of(self, flat, keep=True):
        """Views of a flat vector laid out like self.flat: (dict name -> view shaped like that
        param, W1|b1 (T*E+1, H), W2|b2 (H+1, V)). Made once per vector (training passes the same
        few gradient vectors every step); the cache holds the vector, so its id stays its own."""
        cache = self._views_cache
        hit = cache.get(id(flat))
        if hit is not None and hit[0] is flat:
            return hit[1]
        if len(cache) >= 64:
            cache.clear()
        shapes = param_shapes(self.vocab_size, self.block_size, self.n_embd, self.n_hidden)
        views, start, i = {}, {}, 0
        for k in PARAM_NAMES:
            n = math.prod(shapes[k])
            views[k], start[k] = flat[i:i + n].reshape(shapes[k]), i
            i += n
        TE, H, V = self.block_size * self.n_embd, self.n_hidden, self.vocab_size
        W1b = flat[start["W1"]:start["b1"] + H].reshape(TE + 1, H)     # W1 rows, then b1
        W2b = flat[start["W2"]:start["b2"] + V].reshape(H + 1, V)      # W2 rows, then b2
        if keep:
            cache[id(flat)] = (flat, (views, W1b, W2b))
        return views, W1b, W2b

    def forget_views(self, flat):
        """Drop the cached views of a vector no longer used (e.g. a closed ChunkPool's rows)."""
        hit = self._views_cache.get(id(flat))
        if hit is not None and hit[0] is flat:
            del self._views_cache[id(flat)]

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
        """(flat, dict): a zeroed gradient vector laid out like self.flat and views into it shaped
        like params. Pass the flat vector to backward()."""
        gflat = np.zeros_like(self.flat)
        return gflat, self._views_of(gflat)[0]

    # ------------------------------------------------------------------------- buffers

    def _forward_buffers(self, ws, key):
        """The forward's arrays for one batch size. The inputs of the two linear layers are made
        with a last column for the bias trick's ones: emb and h are written into the others."""
        B, dt = key[1:3]
        T, E, H, V = self.block_size, self.n_embd, self.n_hidden, self.vocab_size
        # one buffer per batch size and width for these two, so their ones columns are written once
        embcat1 = ws.get(("embcat1", B, T * E), (B, T * E + 1), dt)      # (B, T*E+1) [embcat, 1]
        h1 = ws.get(("h1", B, H), (B, H + 1), dt)                        # (B, H+1) [h, 1]
        embcat1[:, -1] = 1
        h1[:, -1] = 1
        return SimpleNamespace(
            embcat1=embcat1, embcat=embcat1[:, :-1], emb=embcat1[:, :-1].reshape(B, T, E),
            hpreact=ws.get("hpreact", (B, H), dt), h1=h1, h=h1[:, :-1],
            logits=ws.get("logits", (B, V), dt),
            counts=ws.get("counts", (V, B), dt).T)   # (B, V) stored as (V, B): see cross_entropy_forward

    def _backward_buffers(self, ws, key):
        B, dt = key[1:3]
        T, E, H, V = self.block_size, self.n_embd, self.n_hidden, self.vocab_size
        return SimpleNamespace(
            dlogits=ws.get("dlogits", (V, B), dt).T, dh=ws.get("dh", (B, H), dt),  # dlogits like counts
            dhpreact=ws.get("dhpreact", (B, H), dt), dembcat=ws.get("dembcat", (B, T * E), dt),
            onehot=ws.get("onehot", (B * T, V), dt))

    # ------------------------------------------------------------------------- forward

    def forward(self, X, Y=None, ws=FRESH):
        """X (B, T) -> logits (B, V) if Y is None, else (loss, Cache)."""
        B, T = X.shape
        if T != self.block_size:
            raise ValueError(f"X has {T} context columns, the model takes block_size={self.block_size}")
        buf = ws.bundle(("fwd", B, self.dtype, self.shape), self._forward_buffers)
        emb, emb_c = embedding_forward(self.params["C"], X, out=buf.emb)                  # (B, T, E) C[X]
        # embcat = emb.view(B, T*E) is embcat1[:, :-1]; embcat1's last column is ones (the bias trick)
        hpreact, lin1_c = linear_forward(buf.embcat1, self.W1b, out=buf.hpreact)         # (B, H) embcat @ W1 + b1
        h, tanh_c = tanh_forward(hpreact, out=buf.h)                                     # (B, H) = h1[:, :-1]
        logits, lin2_c = linear_forward(buf.h1, self.W2b, out=buf.logits)                # (B, V) h @ W2 + b2
        if Y is None:
            return logits
        loss, ce_c = cross_entropy_forward(logits, Y, out=buf.counts)                    # ()
        return loss, Cache(emb, buf.embcat, hpreact, h, logits, emb_c, lin1_c, tanh_c, lin2_c, ce_c)

    # ------------------------------------------------------------------------- backward

    def backward(self, cache: Cache, gflat=None, ws=FRESH, dloss=1.0):
        """-> (grads, dacts): grads a dict of views shaped like params into `gflat` (a vector laid
        out like self.flat, e.g. new_grads()[0]; None: a new one), dacts the gradients of the
        intermediates keyed by ACT_NAMES (dacts["logits"] is stored transposed, as (V, B), like
        counts). dloss scales everything: these are the gradients of dloss * loss; training passes
        dloss = -lr, see train.sgd."""
        fresh = gflat is None
        gflat = np.zeros_like(self.flat) if fresh else gflat
        g, dW1b, dW2b = self._views_of(gflat, keep=not fresh)     # a fresh vector is not cached
        B = cache.h.shape[0]
        buf = ws.bundle(("bwd", B, self.dtype, self.shape), self._backward_buffers)
        dlogits = cross_entropy_backward(cache.ce_c, out=buf.dlogits, dloss=dloss)       # (B, V)
        dh, _ = linear_backward(dlogits, cache.lin2_c, buf.dh, dW2b)                     # (B, H), [dW2; db2]
        dhpreact = tanh_backward(dh, cache.tanh_c, out=buf.dhpreact)                     # (B, H)
        dembcat, _ = linear_backward(dhpreact, cache.lin1_c, buf.dembcat, dW1b)          # (B, T*E), [dW1; db1]
        demb = dembcat.reshape(cache.emb.shape)                                          # (B, T, E)
        embedding_backward(demb, cache.emb_c, out=g["C"], onehot=buf.onehot)            # (V, E) dC
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
