"""makemore part 4's network: the lecture's MLP with BatchNorm between the first linear layer and
tanh, and its backward written atom by atom, as the lecture's exercise 1 does.

    C[X] -> concat -> W1, b1 -> BatchNorm (bngain, bnbias) -> tanh -> W2, b2 -> cross-entropy

Legend: B batch (the lecture's n), T block_size, E n_embd, H n_hidden, V vocab size.
Training normalises with the batch's statistics, the variance Bessel-corrected (divided by B - 1)
as the lecture does; after training, `calibrate` measures the same statistics over the whole
training split, and inference (loss, logits: eval and sampling) uses those.
layers.batchnorm_backward is the same backward fused into one formula; the tests hold the two equal.
"""
from __future__ import annotations

import numpy as np

from .contract import SEED, Intermediates, Spec, check_shapes, float_params, running_stats, with_defaults
from .layers import (
    BN_EPS,
    BN_MIN_ROWS,
    CrossEntropyCache,
    EmbeddingCache,
    LinearCache,
    TanhCache,
    batchnorm_rows,
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_backward,
    embedding_forward,
    linear_backward,
    linear_forward,
    tanh_backward,
    tanh_forward,
)
from .mlp import MLP, param_shapes

PARAM_NAMES: tuple[str, ...] = ("C", "W1", "b1", "bngain", "bnbias", "W2", "b2")
ACT_NAMES: tuple[str, ...] = ("logits", "h", "hpreact", "bnraw", "bnvar_inv", "bnvar", "bndiff2", "bndiff", "bnmeani",
             "hprebn", "embcat", "emb")   # the intermediates, in backward order


SPEC = Spec(
    kind="bn", title="makemore part 4's MLP with BatchNorm before tanh, its backward atom by atom",
    options=MLP.spec.options, engine="mlp-batchnorm", mirror="bn_forward")


class BNMLP(MLP):
    """params: C (V, E), W1 (T*E, H), b1 (H,), bngain (H,), bnbias (H,), W2 (H, V), b2 (V,);
    buffers: bnmean (H,), bnvar (H,), the statistics inference normalises with."""

    spec = SPEC
    param_names = PARAM_NAMES
    act_names = ACT_NAMES
    min_batch = BN_MIN_ROWS               # the batch's statistics need two rows

    @staticmethod
    def shapes(vocab_size, block_size, n_embd, n_hidden):
        s = param_shapes(vocab_size, block_size, n_embd, n_hidden)
        s["bngain"] = s["bnbias"] = (n_hidden,)
        return {k: s[k] for k in PARAM_NAMES}

    @staticmethod
    def buffer_shapes(vocab_size, block_size, n_embd, n_hidden):
        return {"bnmean": (n_hidden,), "bnvar": (n_hidden,)}       # calibrated statistics, for inference

    @staticmethod
    def activation_shapes(batch, vocab_size, block_size, n_embd, n_hidden, **_):
        s = MLP.activation_shapes(batch, vocab_size, block_size, n_embd, n_hidden)
        return {**s, **{k: (batch, n_hidden) for k in ("hprebn", "bndiff", "bndiff2", "bnraw")}}

    def __init__(self, params, buffers=None):
        super().__init__({k: params[k] for k in MLP.param_names if k in params})
        p = float_params(params, PARAM_NAMES)
        check_shapes(p, self.shapes(self.vocab_size, self.block_size, self.n_embd, self.n_hidden))
        self.params = p
        self.buffers = running_stats(self.buffer_shapes(self.vocab_size, self.block_size, self.n_embd, self.n_hidden),
                                     self.dtype, buffers)                # until calibrate()

    @classmethod
    def init(cls, vocab_size, block_size=None, n_embd=None, n_hidden=None, seed=SEED, dtype=np.float32):
        """Part 4's init, all from one seeded generator: W1 * (5/3)/sqrt(T*E), b1, W2, b2 * 0.1,
        bngain = 1 + 0.1 * randn, bnbias = 0.1 * randn (not 1 and 0: a wrong backward can hide
        behind round numbers)."""
        T, E, H = with_defaults(cls, vocab_size, block_size=block_size, n_embd=n_embd, n_hidden=n_hidden).values()
        rng = np.random.default_rng(seed)
        shapes = cls.shapes(vocab_size, T, E, H)
        lecture_order = ("C", "W1", "b1", "W2", "b2", "bngain", "bnbias")
        p = {k: rng.standard_normal(shapes[k]) for k in lecture_order}
        p["W1"] *= (5 / 3) / np.sqrt(T * E)
        for k in ("b1", "W2", "b2", "bnbias"):
            p[k] *= 0.1
        p["bngain"] = 1 + 0.1 * p["bngain"]
        return cls({k: p[k].astype(dtype) for k in PARAM_NAMES})

    # ------------------------------------------------------------------------- training

    def forward(self, X, Y=None, at=None, training=True):
        """Training mode (batch statistics; logits() is inference). X (B, T) -> logits (B, V) if Y is None, else
        (loss, c: every intermediate by name). at: as MLP.forward's."""
        X, Y = self.check_inputs(X, Y)                            # indices in 0..V-1 (contract.py)
        C, W1, b1, bngain, bnbias, W2, b2 = (self.params[k] for k in PARAM_NAMES)
        n = X.shape[0]
        c = Intermediates(at, X=X, Y=Y)
        c.emb, _ = embedding_forward(C, X)                        # (B, T, E)
        c.embcat = c.emb.reshape(n, -1)                           # (B, T*E)
        c.hprebn, _ = linear_forward(c.embcat, W1, b1)            # (B, H)
        batchnorm_rows(c.hprebn)                                  # a batch of one row has no variance
        # BatchNorm, one atom per line
        c.bnmeani = 1 / n * c.hprebn.sum(0, keepdims=True)        # (1, H)
        c.bndiff = c.hprebn - c.bnmeani                           # (B, H)
        c.bndiff2 = c.bndiff ** 2                                 # (B, H)
        c.bnvar = 1 / (n - 1) * c.bndiff2.sum(0, keepdims=True)   # (1, H) Bessel's correction: n - 1
        c.bnvar_inv = (c.bnvar + BN_EPS) ** -0.5                  # (1, H)
        c.bnraw = c.bndiff * c.bnvar_inv                          # (B, H)
        c.hpreact = bngain * c.bnraw + bnbias                     # (B, H)
        c.h, _ = tanh_forward(c.hpreact)                          # (B, H)
        c.logits, _ = linear_forward(c.h, W2, b2)                 # (B, V)
        if Y is None:
            return c.logits
        loss, ce = cross_entropy_forward(c.logits, Y)             # ()
        c.probs = ce.probs                                        # (B, V)
        return loss, c

    def backward(self, c):
        """-> (grads, dacts), each in the order computed: the forward upside down, atom by atom."""
        C, W1, bngain, W2 = (self.params[k] for k in ("C", "W1", "bngain", "W2"))
        n = c.h.shape[0]
        dlogits = cross_entropy_backward(1.0, CrossEntropyCache(c.probs, c.Y))      # (B, V)
        dh, dW2, db2 = linear_backward(dlogits, LinearCache(c.h, W2))               # dW2 = h.T @ dlogits
        dhpreact = tanh_backward(dh, TanhCache(c.h))                                # (1 - h**2) * dh
        dbngain = (c.bnraw * dhpreact).sum(0)                     # (H,)
        dbnbias = dhpreact.sum(0)                                 # (H,)
        dbnraw = bngain * dhpreact                                # (B, H)
        dbnvar_inv = (c.bndiff * dbnraw).sum(0, keepdims=True)    # (1, H)
        dbnvar = -0.5 * (c.bnvar + BN_EPS) ** -1.5 * dbnvar_inv   # (1, H)
        dbndiff2 = 1 / (n - 1) * np.ones_like(c.bndiff2) * dbnvar  # (B, H)
        dbndiff = c.bnvar_inv * dbnraw + 2 * c.bndiff * dbndiff2  # (B, H) via bnraw, and via bndiff2
        dbnmeani = -dbndiff.sum(0, keepdims=True)                 # (1, H)
        dhprebn = dbndiff + 1 / n * np.ones_like(c.hprebn) * dbnmeani  # (B, H) directly, and via the mean
        dembcat, dW1, db1 = linear_backward(dhprebn, LinearCache(c.embcat, W1))     # dW1 = embcat.T @ dhprebn
        demb = dembcat.reshape(c.emb.shape)                       # (B, T, E)
        dC = embedding_backward(demb, EmbeddingCache(c.X, len(C)))  # (V, E) demb summed per character
        grads = {"W2": dW2, "b2": db2, "bngain": dbngain, "bnbias": dbnbias, "W1": dW1, "b1": db1, "C": dC}
        dacts = {"logits": dlogits, "h": dh, "hpreact": dhpreact, "bnraw": dbnraw, "bnvar_inv": dbnvar_inv,
                 "bnvar": dbnvar, "bndiff2": dbndiff2, "bndiff": dbndiff, "bnmeani": dbnmeani,
                 "hprebn": dhprebn, "embcat": dembcat, "emb": demb}
        return grads, dacts

    # ------------------------------------------------------------------------- inference

    def _hprebn(self, X):
        emb = self.params["C"][X]                                 # (N, T, E)
        return emb.reshape(len(X), -1) @ self.params["W1"] + self.params["b1"]  # (N, H)

    calibrate_rows = 16384                # rows calibrate() runs through the first layer at once

    def calibrate(self, X, chunk: int = calibrate_rows):
        """bnmean, bnvar: the mean and the Bessel-corrected variance of hprebn over all rows X
        (the training split), as the lecture measures them after training; two passes in float64."""
        N = len(X)
        parts = range(0, N, chunk)
        mean = sum(self._hprebn(X[i:i + chunk]).sum(0, dtype=np.float64) for i in parts) / N
        var = sum(((self._hprebn(X[i:i + chunk]) - mean) ** 2).sum(0) for i in parts) / max(N - 1, 1)
        self.buffers["bnmean"][...] = mean
        self.buffers["bnvar"][...] = var

    def logits(self, X):
        """Inference: X (N, T) -> logits (N, V), normalised with the calibrated statistics."""
        X, _ = self.check_inputs(X)
        p, s = self.params, self.buffers
        hpreact = p["bngain"] * (self._hprebn(X) - s["bnmean"]) * (s["bnvar"] + BN_EPS) ** -0.5 + p["bnbias"]
        return np.tanh(hpreact) @ p["W2"] + p["b2"]               # (N, V)
