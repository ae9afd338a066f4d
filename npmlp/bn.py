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

from .errors import UsageError
from .layers import (cross_entropy_backward, cross_entropy_forward, embedding_backward, embedding_forward,
                     linear_backward, linear_forward, tanh_backward, tanh_forward)
from .model import MLP, SEED, check_sizes, float_params, param_shapes

EPS = 1e-5
PARAM_NAMES = ("C", "W1", "b1", "bngain", "bnbias", "W2", "b2")
BUFFER_NAMES = ("bnmean", "bnvar")    # calibrated statistics, for inference
ACT_NAMES = ("logits", "h", "hpreact", "bnraw", "bnvar_inv", "bnvar", "bndiff2", "bndiff", "bnmeani",
             "hprebn", "embcat", "emb")   # the intermediates, in backward order


class Atoms(dict):
    """The forward's intermediates by name, set and read as attributes (`a.bndiff = ...`), so the
    forward reads like the lecture and this dict is its cache. A name given in `at` keeps that
    value instead of the one computed: gradcheck perturbs one intermediate and runs the rest."""

    def __init__(self, at=None):
        super().__init__()
        object.__setattr__(self, "_at", at or {})

    def __setattr__(self, name, value):
        self[name] = self._at.get(name, value)

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class BNMLP(MLP):
    """params: C (V, E), W1 (T*E, H), b1 (H,), bngain (H,), bnbias (H,), W2 (H, V), b2 (V,);
    buffers: bnmean (H,), bnvar (H,), the statistics inference normalises with."""

    kind = "bn"
    param_names = PARAM_NAMES
    act_names = ACT_NAMES
    min_batch = 2                         # a batch's variance needs two rows

    @staticmethod
    def shapes(vocab_size, block_size, n_embd, n_hidden):
        s = param_shapes(vocab_size, block_size, n_embd, n_hidden)
        s["bngain"] = s["bnbias"] = (n_hidden,)
        return {k: s[k] for k in PARAM_NAMES}

    @staticmethod
    def buffer_shapes(vocab_size, block_size, n_embd, n_hidden):
        return {"bnmean": (n_hidden,), "bnvar": (n_hidden,)}

    def __init__(self, params, buffers=None):
        super().__init__({k: params[k] for k in MLP.param_names if k in params})
        p = float_params(params, PARAM_NAMES)
        want = self.shapes(self.vocab_size, self.block_size, self.n_embd, self.n_hidden)
        bad = {k: a.shape for k, a in p.items() if a.shape != want[k]}
        if bad:
            raise ValueError(f"param shapes {bad} do not fit {want}")
        self.params = p
        H, dt = self.n_hidden, self.dtype
        self.buffers = {"bnmean": np.zeros(H, dt), "bnvar": np.ones(H, dt)}   # until calibrate()
        for k, v in (buffers or {}).items():
            self.buffers[k][...] = v

    @classmethod
    def init(cls, vocab_size, block_size=None, n_embd=None, n_hidden=None, seed=SEED, dtype=np.float32):
        """Part 4's init, all from one seeded generator: W1 * (5/3)/sqrt(T*E), b1, W2, b2 * 0.1,
        bngain = 1 + 0.1 * randn, bnbias = 0.1 * randn (not 1 and 0: a wrong backward can hide
        behind round numbers)."""
        T, E, H = (d if v is None else v for v, d in zip((block_size, n_embd, n_hidden), cls.DEFAULTS.values()))
        check_sizes(vocab_size=vocab_size, block_size=T, n_embd=E, n_hidden=H)
        rng = np.random.default_rng(seed)
        shapes = cls.shapes(vocab_size, T, E, H)
        p = {k: rng.standard_normal(shapes[k]) for k in ("C", "W1", "b1", "W2", "b2", "bngain", "bnbias")}  # lecture's order
        p["W1"] *= (5 / 3) / np.sqrt(T * E)
        for k in ("b1", "W2", "b2", "bnbias"):
            p[k] *= 0.1
        p["bngain"] = 1 + 0.1 * p["bngain"]
        return cls({k: p[k].astype(dtype) for k in PARAM_NAMES})

    # ------------------------------------------------------------------------- training

    def forward(self, X, Y=None, at=None):
        """Training mode (batch statistics). X (B, T) -> logits (B, V) if Y is None, else
        (loss, the Atoms of every intermediate and layer cache)."""
        C, W1, b1, bngain, bnbias, W2, b2 = (self.params[k] for k in PARAM_NAMES)
        n = X.shape[0]
        if n < 2:
            raise UsageError("the bn model normalises with a batch's own statistics: training needs "
                             "batches of at least 2 rows")
        a = Atoms(at)
        a.emb, a.emb_c = embedding_forward(C, X)                  # (B, T, E)
        a.embcat = a.emb.reshape(n, -1)                           # (B, T*E)
        a.hprebn, a.lin1_c = linear_forward(a.embcat, W1, b1)     # (B, H)
        # BatchNorm, one atom per line
        a.bnmeani = 1 / n * a.hprebn.sum(0, keepdims=True)        # (1, H)
        a.bndiff = a.hprebn - a.bnmeani                           # (B, H)
        a.bndiff2 = a.bndiff ** 2                                 # (B, H)
        a.bnvar = 1 / (n - 1) * a.bndiff2.sum(0, keepdims=True)   # (1, H) Bessel's correction: n - 1
        a.bnvar_inv = (a.bnvar + EPS) ** -0.5                     # (1, H)
        a.bnraw = a.bndiff * a.bnvar_inv                          # (B, H)
        a.hpreact = bngain * a.bnraw + bnbias                     # (B, H)
        a.h, a.tanh_c = tanh_forward(a.hpreact)                   # (B, H)
        a.logits, a.lin2_c = linear_forward(a.h, W2, b2)          # (B, V)
        if Y is None:
            return a.logits
        loss, a.ce_c = cross_entropy_forward(a.logits, Y)         # ()
        return loss, a

    def backward(self, c):
        """-> (grads, dacts), each in the order computed: the forward upside down, atom by atom."""
        bngain = self.params["bngain"]
        n = c.h.shape[0]
        dlogits = cross_entropy_backward(1.0, c.ce_c)             # (B, V)
        dh, dW2, db2 = linear_backward(dlogits, c.lin2_c)         # (B, H), (H, V), (V,)
        dhpreact = tanh_backward(dh, c.tanh_c)                    # (B, H)
        dbngain = (c.bnraw * dhpreact).sum(0)                     # (H,)
        dbnbias = dhpreact.sum(0)                                 # (H,)
        dbnraw = bngain * dhpreact                                # (B, H)
        dbnvar_inv = (c.bndiff * dbnraw).sum(0, keepdims=True)   # (1, H)
        dbnvar = -0.5 * (c.bnvar + EPS) ** -1.5 * dbnvar_inv      # (1, H)
        dbndiff2 = 1 / (n - 1) * np.ones_like(c.bndiff2) * dbnvar  # (B, H)
        dbndiff = c.bnvar_inv * dbnraw + 2 * c.bndiff * dbndiff2  # (B, H) via bnraw, and via bndiff2
        dbnmeani = -dbndiff.sum(0, keepdims=True)                 # (1, H)
        dhprebn = dbndiff + 1 / n * np.ones_like(c.hprebn) * dbnmeani  # (B, H) directly, and via the mean
        dembcat, dW1, db1 = linear_backward(dhprebn, c.lin1_c)    # (B, T*E), (T*E, H), (H,)
        demb = dembcat.reshape(c.emb.shape)                       # (B, T, E)
        dC = embedding_backward(demb, c.emb_c)                    # (V, E)
        grads = {"W2": dW2, "b2": db2, "bngain": dbngain, "bnbias": dbnbias, "W1": dW1, "b1": db1, "C": dC}
        dacts = {"logits": dlogits, "h": dh, "hpreact": dhpreact, "bnraw": dbnraw, "bnvar_inv": dbnvar_inv,
                 "bnvar": dbnvar, "bndiff2": dbndiff2, "bndiff": dbndiff, "bnmeani": dbnmeani,
                 "hprebn": dhprebn, "embcat": dembcat, "emb": demb}
        return grads, dacts

    # ------------------------------------------------------------------------- inference

    def _hprebn(self, X):
        emb = self.params["C"][X]                                 # (N, T, E)
        return emb.reshape(len(X), -1) @ self.params["W1"] + self.params["b1"]  # (N, H)

    def calibrate(self, X, chunk: int = 16384):
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
        X = np.asarray(X)
        p, s = self.params, self.buffers
        hpreact = p["bngain"] * (self._hprebn(X) - s["bnmean"]) * (s["bnvar"] + EPS) ** -0.5 + p["bnbias"]
        return np.tanh(hpreact) @ p["W2"] + p["b2"]               # (N, V)

    def loss(self, X, Y) -> float:
        return cross_entropy_forward(self.logits(X), np.asarray(Y))[0]
