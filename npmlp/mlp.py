"""The MLP of makemore part 2 (Bengio et al. 2003): C[X] -> concat -> W1, b1 -> tanh -> W2, b2 -> cross-entropy.

Legend: B batch, T block_size, E n_embd, H n_hidden, V vocab size.
The forward names each intermediate and passes it to the next layer; the backward is the
forward read upside down, one layer per line, each line naming the tensors its gradients come from.
"""
from __future__ import annotations

import numpy as np

from .contract import SEED, Intermediates, Model, Option, Spec, check_shapes, float_params, with_defaults
from .layers import (
    CrossEntropyCache,
    EmbeddingCache,
    LinearCache,
    TanhCache,
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_backward,
    embedding_forward,
    linear_backward,
    linear_forward,
    tanh_backward,
    tanh_forward,
)

PARAM_NAMES: tuple[str, ...] = ("C", "W1", "b1", "W2", "b2")
ACT_NAMES: tuple[str, ...] = ("logits", "h", "hpreact", "embcat", "emb")  # the intermediates, in backward order

SPEC = Spec(
    kind="mlp", title="lecture 2's MLP (makemore part 2, Bengio et al. 2003)",
    options=(Option("block_size", 3, "context length T"),
             Option("n_embd", 10, "embedding size E"),
             Option("n_hidden", 200, "hidden units H")),
    inits=("lecture", "kaiming"),
    init_help="lecture: plain standard normal (default); kaiming: scaled for tanh (part 3)",
    engine="mlp", mirror="mlp_forward")


def param_shapes(vocab_size, block_size, n_embd, n_hidden):
    V, T, E, H = vocab_size, block_size, n_embd, n_hidden
    return {"C": (V, E), "W1": (T * E, H), "b1": (H,), "W2": (H, V), "b2": (V,)}


class MLP(Model):
    """params: a dict of arrays C (V, E), W1 (T*E, H), b1 (H,), W2 (H, V), b2 (V,), one float dtype
    (copied). Training updates them in place: `model.params["W1"] -= lr * grads["W1"]`."""

    spec = SPEC
    param_names = PARAM_NAMES
    act_names = ACT_NAMES
    tanh_names = ("h",)

    @staticmethod
    def shapes(vocab_size, block_size, n_embd, n_hidden, **_):
        return param_shapes(vocab_size, block_size, n_embd, n_hidden)   # every array a checkpoint holds, by name

    @staticmethod
    def activation_shapes(batch, vocab_size, block_size, n_embd, n_hidden, **_):
        B, T, E, H, V = batch, block_size, n_embd, n_hidden, vocab_size
        return {"emb": (B, T, E), "embcat": (B, T * E), "hpreact": (B, H), "h": (B, H), "logits": (B, V),
                "probs": (B, V)}

    def __init__(self, params, buffers=None):
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
        if scheme not in cls.spec.inits:
            raise ValueError(f"unknown init scheme {scheme!r}; use one of {', '.join(cls.spec.inits)}")
        rng = np.random.default_rng(seed)
        p = {k: rng.standard_normal(s) for k, s in param_shapes(vocab_size, T, E, H).items()}
        if scheme == "kaiming":
            p["W1"] *= (5 / 3) / np.sqrt(T * E)
            p["b1"] *= 0.01
            p["W2"] *= 0.01
            p["b2"] *= 0
        return cls({k: v.astype(dtype) for k, v in p.items()})   # float64 draws: one init for both dtypes

    # ------------------------------------------------------------------------- forward

    def forward(self, X, Y=None, at=None, training=True):
        """X (B, T) -> logits (B, V) if Y is None, else (loss, c): c holds every intermediate by
        name (c.emb, c.h...). at: {name: array} puts that array in place of the intermediate
        (gradcheck's finite differences perturb one and run the rest)."""
        X, Y = self.check_inputs(X, Y)                           # indices in 0..V-1 (contract.py)
        C, W1, b1, W2, b2 = (self.params[k] for k in PARAM_NAMES)
        B = len(X)
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
