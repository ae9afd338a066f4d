"""The MLP of makemore part 2 (Bengio et al. 2003): C[X] -> concat -> W1, b1 -> tanh -> W2, b2 -> cross-entropy.

Legend: B batch, T block_size, E n_embd, H n_hidden, V vocab size.
The forward names each intermediate and passes it to the next layer; the backward is the
forward read upside down, one layer per line, each line naming the tensors its gradients come from.
"""
from __future__ import annotations

import numpy as np

from .layers import (CrossEntropyCache, EmbeddingCache, LinearCache, TanhCache, cross_entropy_backward,
                     cross_entropy_forward, embedding_backward, embedding_forward, linear_backward,
                     linear_forward, tanh_backward, tanh_forward)

SEED = 2147483647  # the lecture's torch.Generator().manual_seed(2147483647): init and minibatches
PARAM_NAMES = ("C", "W1", "b1", "W2", "b2")
ACT_NAMES = ("logits", "h", "hpreact", "embcat", "emb")  # the intermediates, in backward order


class Model:
    """What every model shares: its dtype and size, and the conveniences around its own params,
    forward, backward and logits (inference)."""

    @property
    def dtype(self):
        return self.params["C"].dtype

    @property
    def num_params(self) -> int:
        return sum(p.size for p in self.params.values())

    @classmethod
    def from_params(cls, params, sizes: dict):
        """The model holding `params`, given the sizes a checkpoint recorded. The arrays' shapes
        show every size but a flag such as wavenet's BatchNorm bug, which comes from `sizes`."""
        return cls(params)

    def like(self, params):
        """A model of the same kind and sizes holding other params (gradcheck's copies)."""
        return self.from_params(params, self.sizes)

    def loss(self, X, Y) -> float:
        """Inference: the mean loss of the rows X (N, T), Y (N,)."""
        return cross_entropy_forward(self.logits(X), np.asarray(Y))[0]

    def loss_and_grads(self, X, Y):
        """(loss: float, grads: dict of arrays shaped and typed like params), in training mode."""
        loss, cache = self.forward(np.asarray(X), np.asarray(Y))
        return loss, self.backward(cache)[0]


def param_shapes(vocab_size, block_size, n_embd, n_hidden):
    V, T, E, H = vocab_size, block_size, n_embd, n_hidden
    return {"C": (V, E), "W1": (T * E, H), "b1": (H,), "W2": (H, V), "b2": (V,)}


class MLP(Model):
    """params: a dict of arrays C (V, E), W1 (T*E, H), b1 (H,), W2 (H, V), b2 (V,), one float dtype
    (copied). Training updates them in place: `model.params["W1"] -= lr * grads["W1"]`."""

    kind = "mlp"
    DEFAULTS = {"block_size": 3, "n_embd": 10, "n_hidden": 200}   # the lecture's sizes
    INITS = ("lecture", "kaiming")
    param_names = PARAM_NAMES
    act_names = ACT_NAMES
    min_batch = 1                            # the smallest batch training takes
    shapes = staticmethod(param_shapes)      # every array a checkpoint holds, by name

    @staticmethod
    def buffer_shapes(vocab_size, **sizes):
        return {}                            # no running statistics

    def __init__(self, params):
        p = float_params(params, PARAM_NAMES)
        V, E = p["C"].shape
        TE, H = p["W1"].shape if p["W1"].ndim == 2 else (0, 0)
        if not E or TE % E:
            raise ValueError(f"W1 has {TE} rows, not a multiple of n_embd={E}")
        check_shapes(p, param_shapes(V, TE // E, E, H))
        self.params, self.buffers = p, {}
        self.vocab_size, self.block_size, self.n_embd, self.n_hidden = V, TE // E, E, H

    @classmethod
    def init(cls, vocab_size, block_size=None, n_embd=None, n_hidden=None, seed=SEED,
             dtype=np.float32, scheme="lecture"):
        """scheme 'lecture': standard normal, as in makemore part 2. 'kaiming': part 3's fix for a
        confidently wrong softmax and a saturated tanh: W1 * (5/3)/sqrt(T*E) (tanh's gain over
        the fan-in), b1 * 0.01, W2 * 0.01, b2 = 0. Sizes left None are the lecture's."""
        T, E, H = with_defaults(cls, vocab_size, block_size=block_size, n_embd=n_embd, n_hidden=n_hidden).values()
        if scheme not in cls.INITS:
            raise ValueError(f"unknown init scheme {scheme!r}; use one of {', '.join(cls.INITS)}")
        rng = np.random.default_rng(seed)
        p = {k: rng.standard_normal(s) for k, s in param_shapes(vocab_size, T, E, H).items()}
        if scheme == "kaiming":
            p["W1"] *= (5 / 3) / np.sqrt(T * E)
            p["b1"] *= 0.01
            p["W2"] *= 0.01
            p["b2"] *= 0
        return cls({k: v.astype(dtype) for k, v in p.items()})   # float64 draws: one init for both dtypes

    @property
    def sizes(self) -> dict:
        """What a checkpoint records to rebuild the model."""
        return {"block_size": self.block_size, "n_embd": self.n_embd, "n_hidden": self.n_hidden}

    # ------------------------------------------------------------------------- forward

    def forward(self, X, Y=None, at=None):
        """X (B, T) -> logits (B, V) if Y is None, else (loss, c): c holds every intermediate by
        name (c.emb, c.h...). at: {name: array} puts that array in place of the intermediate
        (gradcheck's finite differences perturb one and run the rest)."""
        C, W1, b1, W2, b2 = (self.params[k] for k in PARAM_NAMES)
        B, T = X.shape
        if T != self.block_size:
            raise ValueError(f"X has {T} context columns, the model takes block_size={self.block_size}")
        c = Intermediates(at, X=X, Y=Y)
        c.emb, _ = embedding_forward(C, X)                       # (B, T, E)
        c.embcat = c.emb.reshape(B, -1)                          # (B, T*E) the T embeddings side by side
        c.hpreact, _ = linear_forward(c.embcat, W1, b1)          # (B, H)
        c.h, _ = tanh_forward(c.hpreact)                         # (B, H)
        c.logits, _ = linear_forward(c.h, W2, b2)                # (B, V)
        if Y is None:
            return c.logits
        loss, ce = cross_entropy_forward(c.logits, Y)            # ()
        c.probs = ce.probs                                       # (B, V) softmax(logits)
        return loss, c

    # ------------------------------------------------------------------------- backward

    def backward(self, c):
        """-> (grads, dacts): dloss/dparam for every parameter, and dloss/d(intermediate) for every
        name in ACT_NAMES, each dict in the order the gradients are computed."""
        C, W1, W2 = self.params["C"], self.params["W1"], self.params["W2"]
        # dlogits = (probs - onehot(Y)) / B
        dlogits = cross_entropy_backward(1.0, CrossEntropyCache(c.probs, c.Y))     # (B, V)
        # dh = dlogits @ W2.T, dW2 = h.T @ dlogits, db2 = dlogits summed over the batch
        dh, dW2, db2 = linear_backward(dlogits, LinearCache(c.h, W2))              # (B, H), (H, V), (V,)
        # dhpreact = (1 - h**2) * dh
        dhpreact = tanh_backward(dh, TanhCache(c.h))                               # (B, H)
        # dembcat = dhpreact @ W1.T, dW1 = embcat.T @ dhpreact, db1 = dhpreact summed over the batch
        dembcat, dW1, db1 = linear_backward(dhpreact, LinearCache(c.embcat, W1))   # (B, T*E), (T*E, H), (H,)
        demb = dembcat.reshape(c.emb.shape)                                        # (B, T, E) undo the concat
        # dC[i] = the sum of demb over every place where X is i
        dC = embedding_backward(demb, EmbeddingCache(c.X, len(C)))                 # (V, E)
        grads = {"W2": dW2, "b2": db2, "W1": dW1, "b1": db1, "C": dC}
        dacts = {"logits": dlogits, "h": dh, "hpreact": dhpreact, "embcat": dembcat, "emb": demb}
        return grads, dacts

    def logits(self, X):
        """Inference: X (N, T) -> logits (N, V)."""
        return self.forward(np.asarray(X))


# ----------------------------------------------------------------------------- shared by the models

class Intermediates(dict):
    """A forward's intermediates by name: set as attributes (`c.h = ...`) so the forward reads like
    the lecture, read by the backward (`c.h`), and by gradcheck and diagnose by name (`c["h"]`).
    A name given in `at` keeps that array instead of the one computed, so the rest of the
    forward runs from it: the one way every model lets gradcheck perturb an intermediate."""

    def __init__(self, at=None, **given):
        super().__init__(given)
        object.__setattr__(self, "_at", at or {})

    def __setattr__(self, name, value):
        self[name] = self._at.get(name, value)

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def with_defaults(cls, vocab_size, **sizes) -> dict:
    """The sizes a model class is built with: each one given, else the class's DEFAULTS; every
    size must be a whole number >= 1 (a flag such as deep's batchnorm may be 0)."""
    sizes = {k: d if sizes.get(k) is None else sizes[k] for k, d in cls.DEFAULTS.items()}
    for name, v in {"vocab_size": vocab_size, **sizes}.items():
        if int(v) != v or v < (0 if name in getattr(cls, "FLAGS", ()) else 1):
            raise ValueError(f"{name} must be a whole number >= 1, got {v}")
    return sizes


def float_params(params, names):
    """The arrays `names` of `params`, copied, in one float dtype (float32 or float64)."""
    missing = [k for k in names if k not in params]
    if missing:
        raise ValueError(f"params lack {missing}; need {list(names)}")
    dtype = np.result_type(*(np.asarray(params[k]) for k in names))
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"params must be float32 or float64, got {dtype}")
    return {k: np.array(params[k], dtype) for k in names}


def check_shapes(params, want) -> None:
    bad = {k: a.shape for k, a in params.items() if a.shape != tuple(want[k])}
    if bad:
        raise ValueError(f"param shapes {bad} do not fit {want}")


def own_params(params, want: dict) -> dict:
    """Copies of params, which must be exactly the arrays `want` names, of its shapes, in one
    float dtype."""
    if set(params) != set(want):
        raise ValueError(f"params {sorted(params)} do not fit {list(want)}")
    p = float_params(params, list(want))
    check_shapes(p, want)
    return p


def running_stats(shapes: dict, dtype, given=None) -> dict:
    """BatchNorm running statistics of these shapes: each mean 0 and variance 1 until training
    moves them, or the values `given` (a checkpoint's)."""
    stats = {k: (np.zeros if "mean" in k else np.ones)(s, dtype) for k, s in shapes.items()}
    for k, v in (given or {}).items():
        stats[k][...] = v
    return stats
