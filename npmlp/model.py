"""The MLP of makemore part 2 (Bengio et al. 2003): C[X] -> concat -> W1, b1 -> tanh -> W2, b2 -> cross-entropy.

Legend: B batch, T block_size, E n_embd, H n_hidden, V vocab size.
The forward names each intermediate and passes it to the next layer; the backward is the
forward read upside down, one layer per line.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .errors import UsageError
from .layers import (cross_entropy_backward, cross_entropy_forward, embedding_backward, embedding_forward,
                     linear_backward, linear_forward, tanh_backward, tanh_forward)

SEED = 2147483647  # the lecture's torch.Generator().manual_seed(2147483647): init and minibatches
PARAM_NAMES = ("C", "W1", "b1", "W2", "b2")
ACT_NAMES = ("logits", "h", "hpreact", "embcat", "emb")  # the intermediates, in backward order


def param_shapes(vocab_size, block_size, n_embd, n_hidden):
    V, T, E, H = vocab_size, block_size, n_embd, n_hidden
    return {"C": (V, E), "W1": (T * E, H), "b1": (H,), "W2": (H, V), "b2": (V,)}


def check_sizes(**sizes):
    for name, v in sizes.items():
        if int(v) < 1:
            raise UsageError(f"{name} must be >= 1, got {v}")


def float_params(params, names):
    """The arrays `names` of `params`, copied, in one float dtype (float32 or float64)."""
    missing = [k for k in names if k not in params]
    if missing:
        raise ValueError(f"params lack {missing}; need {names}")
    dtype = np.result_type(*(np.asarray(params[k]) for k in names))
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"params must be float32 or float64, got {dtype}")
    return {k: np.array(params[k], dtype) for k in names}


class Cache(NamedTuple):
    """What the forward computed and the backward reads."""
    emb: np.ndarray        # (B, T, E)
    embcat: np.ndarray     # (B, T*E)
    hpreact: np.ndarray    # (B, H)
    h: np.ndarray          # (B, H)
    logits: np.ndarray     # (B, V)
    emb_c: tuple
    lin1_c: tuple
    tanh_c: tuple
    lin2_c: tuple
    ce_c: tuple


class MLP:
    """params: a dict of arrays C (V, E), W1 (T*E, H), b1 (H,), W2 (H, V), b2 (V,), one float dtype
    (copied). Training updates them in place: `model.params["W1"] -= lr * grads["W1"]`."""

    kind = "mlp"
    DEFAULTS = {"block_size": 3, "n_embd": 10, "n_hidden": 200}   # the lecture's sizes
    param_names = PARAM_NAMES
    act_names = ACT_NAMES
    shapes = staticmethod(param_shapes)      # every array a checkpoint holds, by name

    def __init__(self, params):
        p = float_params(params, PARAM_NAMES)
        V, E = p["C"].shape
        TE, H = p["W1"].shape if p["W1"].ndim == 2 else (0, 0)
        if not E or TE % E:
            raise ValueError(f"W1 has {TE} rows, not a multiple of n_embd={E}")
        want = param_shapes(V, TE // E, E, H)
        bad = {k: a.shape for k, a in p.items() if a.shape != want[k]}
        if bad:
            raise ValueError(f"param shapes {bad} do not fit {want}")
        self.params = p
        self.vocab_size, self.block_size, self.n_embd, self.n_hidden = V, TE // E, E, H

    @classmethod
    def init(cls, vocab_size, block_size=None, n_embd=None, n_hidden=None, seed=SEED,
             dtype=np.float32, scheme="lecture"):
        """scheme 'lecture': standard normal, as in makemore part 2. 'kaiming': part 3's fix for a
        confidently wrong softmax and a saturated tanh: W1 * (5/3)/sqrt(T*E) (tanh's gain over
        the fan-in), b1 * 0.01, W2 * 0.01, b2 = 0. Sizes left None are the lecture's."""
        T, E, H = (d if v is None else v for v, d in zip((block_size, n_embd, n_hidden), cls.DEFAULTS.values()))
        check_sizes(vocab_size=vocab_size, block_size=T, n_embd=E, n_hidden=H)
        rng = np.random.default_rng(seed)
        p = {k: rng.standard_normal(s) for k, s in param_shapes(vocab_size, T, E, H).items()}
        if scheme == "kaiming":
            p["W1"] *= (5 / 3) / np.sqrt(T * E)
            p["b1"] *= 0.01
            p["W2"] *= 0.01
            p["b2"] *= 0
        elif scheme != "lecture":
            raise UsageError(f"unknown init scheme {scheme!r}; use 'lecture' or 'kaiming'")
        return cls({k: v.astype(dtype) for k, v in p.items()})   # float64 draws: one init for both dtypes

    @property
    def dtype(self):
        return self.params["C"].dtype

    @property
    def num_params(self) -> int:
        return sum(p.size for p in self.params.values())

    @property
    def sizes(self) -> dict:
        """What a checkpoint records to rebuild the model."""
        return {"block_size": self.block_size, "n_embd": self.n_embd, "n_hidden": self.n_hidden}

    # ------------------------------------------------------------------------- forward

    def forward(self, X, Y=None):
        """X (B, T) -> logits (B, V) if Y is None, else (loss, Cache)."""
        C, W1, b1, W2, b2 = (self.params[k] for k in PARAM_NAMES)
        B, T = X.shape
        if T != self.block_size:
            raise ValueError(f"X has {T} context columns, the model takes block_size={self.block_size}")
        emb, emb_c = embedding_forward(C, X)                     # (B, T, E)
        embcat = emb.reshape(B, -1)                              # (B, T*E) the T embeddings side by side
        hpreact, lin1_c = linear_forward(embcat, W1, b1)         # (B, H)
        h, tanh_c = tanh_forward(hpreact)                        # (B, H)
        logits, lin2_c = linear_forward(h, W2, b2)               # (B, V)
        if Y is None:
            return logits
        loss, ce_c = cross_entropy_forward(logits, Y)            # ()
        return loss, Cache(emb, embcat, hpreact, h, logits, emb_c, lin1_c, tanh_c, lin2_c, ce_c)

    # ------------------------------------------------------------------------- backward

    def backward(self, cache: Cache):
        """-> (grads, dacts): dloss/dparam for every parameter, and dloss/d(intermediate) for every
        name in ACT_NAMES, each dict in the order the gradients are computed."""
        dlogits = cross_entropy_backward(1.0, cache.ce_c)          # (B, V)
        dh, dW2, db2 = linear_backward(dlogits, cache.lin2_c)      # (B, H), (H, V), (V,)
        dhpreact = tanh_backward(dh, cache.tanh_c)                 # (B, H)
        dembcat, dW1, db1 = linear_backward(dhpreact, cache.lin1_c)  # (B, T*E), (T*E, H), (H,)
        demb = dembcat.reshape(cache.emb.shape)                    # (B, T, E) undo the concatenation
        dC = embedding_backward(demb, cache.emb_c)                 # (V, E)
        grads = {"W2": dW2, "b2": db2, "W1": dW1, "b1": db1, "C": dC}
        dacts = {"logits": dlogits, "h": dh, "hpreact": dhpreact, "embcat": dembcat, "emb": demb}
        return grads, dacts

    # ------------------------------------------------------------------------- conveniences

    def logits(self, X):
        """X (B, T) -> logits (B, V)."""
        return self.forward(np.asarray(X))

    def loss(self, X, Y) -> float:
        return self.forward(np.asarray(X), np.asarray(Y))[0]

    def loss_and_grads(self, X, Y):
        """(loss: float, grads: dict of arrays shaped and typed like params)."""
        loss, cache = self.forward(np.asarray(X), np.asarray(Y))
        return loss, self.backward(cache)[0]
