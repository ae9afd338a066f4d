"""makemore part 1's neural bigram: each character predicted from the one before it alone, by one
(V, V) weight matrix read as log-counts.

    X (B, 1) -> logits = W[X[:, 0]] (B, V) -> cross-entropy

Legend: B batch, V vocab size.
Row x of W holds the logits of every character that may follow x: `xenc @ W` for a one-hot xenc,
which the lecture writes out and which is the row lookup of an embedding (layers.py's pair).
`loss_and_grads` is the data loss only: the lecture's 0.01 * mean(W**2), which pulls every row
towards the uniform distribution (the counting model's + 1), is a training option (--reg), on
by default with the rest of the lecture's recipe: standard normal init, every pair in every
step, lr 50. makemore.py's bigram is the same table, initialised to zeros (--init zeros).
"""
from __future__ import annotations

import numpy as np

from .contract import SEED, Intermediates, Makemore, Model, Spec, own_params, with_defaults
from .layers import (
    CrossEntropyCache,
    EmbeddingCache,
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_backward,
    embedding_forward,
    masked_cross_entropy_backward,
    masked_cross_entropy_forward,
)

SPEC = Spec(
    kind="bigram", title="makemore part 1's neural bigram: one (V, V) matrix of logits",
    inits=("lecture", "zeros"),
    init_help="lecture: standard normal (default); zeros: makemore.py's",
    # the lecture's recipe: gradient descent on every pair (the full batch), lr 50, never decayed,
    # with 0.01 * mean(W**2) added to the loss
    train={"steps": 100, "batch_size": None, "lr": 50.0, "decay_at": 1.0, "reg": 0.01},
    engine="counts", mirror="bigram_forward", embedding=None, context=1,
    makemore=Makemore(type="bigram", keys={"W": "logits"}))


class Bigram(Model):
    """params: W (V, V), one float dtype (copied)."""

    spec = SPEC
    param_names = ("W",)
    act_names = ("logits",)
    block_size = SPEC.context                # one character of context

    @staticmethod
    def shapes(vocab_size, **_):
        return {"W": (vocab_size, vocab_size)}

    @staticmethod
    def activation_shapes(batch, vocab_size, **_):
        return {"logits": (batch, vocab_size), "probs": (batch, vocab_size)}

    def __init__(self, params, buffers=None):
        V = np.shape(params.get("W", ()))[:1] or (0,)
        self.params = own_params(params, self.shapes(V[0]))
        self.buffers = {}
        self.vocab_size = V[0]

    @classmethod
    def init(cls, vocab_size, block_size=None, seed=SEED, dtype=np.float32, scheme="lecture"):
        """scheme 'lecture': W standard normal (part 1's torch.randn((27, 27), generator=g));
        'zeros': makemore.py's, every character equally likely at the start."""
        with_defaults(cls, vocab_size)
        if block_size not in (None, 1):
            raise ValueError(f"a bigram reads one character of context, not block_size={block_size}")
        if scheme not in cls.spec.inits:
            raise ValueError(f"unknown init scheme {scheme!r}; use one of {', '.join(cls.spec.inits)}")
        V = vocab_size
        W = np.random.default_rng(seed).standard_normal((V, V)) if scheme == "lecture" else np.zeros((V, V))
        return cls({"W": W.astype(dtype)})

    def check_inputs(self, X, Y=None, sequences=None):
        """contract.Model.check_inputs: the bigram takes rows of one character of context (B, 1),
        targets (B,), or makemore.py's sequences (B, T) of any length, targets (B, T)."""
        if sequences is None:
            sequences = np.ndim(X) == 2 and (np.shape(X)[1] > 1 if Y is None else np.ndim(Y) == 2)
        return super().check_inputs(X, Y, sequences)

    def forward(self, X, Y=None, at=None, training=True):
        """Rows of context X (B, 1) -> logits (B, V); or makemore.py's sequences X (B, T), with
        targets Y (B, T) (-1 masked), -> logits (B, T, V), each position's the row of its own
        character. With Y, (loss, c: the intermediates by name)."""
        X, Y = self.check_inputs(X, Y)                              # indices in 0..V-1 (contract.py)
        sequences = X.shape[1] > 1 if Y is None else Y.ndim == 2
        c = Intermediates(at, X=X, Y=Y, sequences=sequences)
        emb, _ = embedding_forward(self.params["W"], X)             # (B, T, V) row X[b, t] of W
        c.logits = emb if sequences else emb[:, 0]                  # (B, T, V), or (B, V)
        if Y is None:
            return c.logits
        if sequences:
            loss, c.ce = masked_cross_entropy_forward(c.logits, Y)  # () over the unmasked targets
        else:
            loss, ce = cross_entropy_forward(c.logits, Y)           # ()
            c.probs = ce.probs                                      # (B, V)
        return loss, c

    def backward(self, c):
        """-> (grads, dacts): dW is dlogits summed into the row of each pair's first character."""
        W = self.params["W"]
        if c.sequences:
            # dlogits = (probs - onehot(Y)) / (unmasked targets), 0 where masked
            dlogits = masked_cross_entropy_backward(1.0, c.ce)                        # (B, T, V)
        else:
            # dlogits = (probs - onehot(Y)) / B
            dlogits = cross_entropy_backward(1.0, CrossEntropyCache(c.probs, c.Y))    # (B, V)
        # dW = xenc.T @ dlogits: row x adds the dlogits of every pair that starts with x
        dW = embedding_backward(dlogits.reshape(c.X.shape + (-1,)), EmbeddingCache(c.X, len(W)))  # (V, V)
        return {"W": dW}, {"logits": dlogits}
