"""makemore part 3's deeper network, built from layer objects in the style of torch.nn, each
calling the same forward/backward pairs as the lecture-2 model (layers.py):

    C[X] -> concat -> [Linear -> BatchNorm1d -> Tanh] x n_layers -> Linear -> BatchNorm1d -> cross-entropy

Legend: B batch, T block_size, E n_embd, H n_hidden, V vocab size, I/O a layer's in/out width.
A layer's forward(x, training) returns (out, cache); its backward(dout, cache) returns (dx, its
parameters' gradients), the cache's operands named on the line that uses them. Sequential runs
the layers in order and their backwards in reverse.
Without BatchNorm (`batchnorm=0`) it is part 3's plain stack: Linear (with b) -> Tanh.
"""
from __future__ import annotations

import itertools

import numpy as np

from .contract import SEED, Intermediates, Model, Option, Spec, own_params, running_stats, with_defaults
from .layers import (
    BN_EPS,
    BN_MIN_ROWS,
    BatchNormCache,
    CrossEntropyCache,
    EmbeddingCache,
    LinearCache,
    TanhCache,
    batchnorm_backward,
    batchnorm_forward,
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_backward,
    embedding_forward,
    linear_backward,
    linear_forward,
    tanh_backward,
    tanh_forward,
)


class Linear:
    """x (..., I) -> x @ W + b (..., O); without b before a BatchNorm (its beta does that job).
    W and b name the layer's arrays in the model's params."""

    def __init__(self, name, params, W, b=None):
        self.name, self.params, self.W, self.b = name, params, W, b

    def forward(self, x, training=True):
        out, _ = linear_forward(x, self.params[self.W], self.params[self.b] if self.b else None)
        return out, x                                                  # cache: the input

    def backward(self, dout, x):
        W = self.params[self.W]
        # dx = dout @ W.T, dW = x.T @ dout, db = dout summed over every row
        dx, dW, db = linear_backward(dout, LinearCache(x, W, self.b is not None))
        return dx, {self.W: dW, **({self.b: db} if self.b else {})}


class BatchNorm1d:
    """Training normalises each channel (the last axis) with the batch's mean and variance over
    every other axis, and updates running averages (momentum 0.1) of the mean and the unbiased
    variance; inference normalises with those running statistics.

    Which variance each model normalises with (the one place that says so):
      - deep (part 3): the biased one, unbiased=False, as torch.nn.BatchNorm1d does in training;
      - wavenet (part 5): the unbiased one, unbiased=True, as part 5's own layer (x.var(dim), torch's
        default) does, which also feeds that same variance to the running estimate;
      - bn (part 4, bn.py): Bessel's correction too, written atom by atom, with calibrated statistics.
    The running variance is the unbiased one in every case.

    over_batch_only=True is part 5's bug, kept to measure it: on a (B, T, C) input the statistics
    run over dim 0 alone, so each of the T positions' C channels is normalised as a channel of its
    own (T x C "channels"), and the running statistics (mean, var) are (T, C), one row per position."""

    def __init__(self, name, params, buffers, gamma, beta, mean, var, unbiased=False, momentum=0.1,
                 over_batch_only=False):
        self.name, self.params, self.buffers = name, params, buffers
        self.gamma, self.beta, self.mean, self.var = gamma, beta, mean, var
        self.unbiased, self.momentum, self.over_batch_only = unbiased, momentum, over_batch_only

    def forward(self, x, training=True):
        gamma, beta = self.params[self.gamma], self.params[self.beta]
        mean, var = self.buffers[self.mean], self.buffers[self.var]
        if not training:
            return gamma * (x - mean) / np.sqrt(var + BN_EPS) + beta, None       # (..., C)
        if self.over_batch_only and x.ndim == 3:
            B, T, C = x.shape
            # the bug: (B, T, C) seen as (B, T*C), gamma and beta repeated for each position
            out, (xhat, var_inv, _, _) = batchnorm_forward(x.reshape(B, T * C), np.tile(gamma, T),
                                                           np.tile(beta, T), BN_EPS, self.unbiased)  # (B, T*C)
            out, axes = out.reshape(B, T, C), (0,)                                # (B, T, C)
        else:
            out, (xhat, var_inv, _, _) = batchnorm_forward(x, gamma, beta, BN_EPS, self.unbiased)  # (..., C)
            axes = tuple(range(x.ndim - 1))
        m = self.momentum
        mean[...] = (1 - m) * mean + m * x.mean(axes)                             # (C,), or (T, C)
        var[...] = (1 - m) * var + m * x.var(axes, ddof=1)                        # (C,), or (T, C) unbiased, as torch
        return out, (xhat, var_inv)                                               # cache

    def backward(self, dout, cache):
        xhat, var_inv = cache
        gamma = self.params[self.gamma]
        if self.over_batch_only and dout.ndim == 3:    # the bug's forward: xhat (B, T*C), dout (B, T, C)
            B, T, C = dout.shape
            # dx: the fused formula over T*C channels; gamma and beta served every position,
            # so their gradients sum over the T positions
            dx, dgamma, dbeta = batchnorm_backward(dout.reshape(B, T * C),
                                                   BatchNormCache(xhat, var_inv, np.tile(gamma, T), self.unbiased))
            return dx.reshape(B, T, C), {self.gamma: dgamma.reshape(T, C).sum(0), self.beta: dbeta.reshape(T, C).sum(0)}
        # dgamma = (xhat * dout) summed, dbeta = dout summed, dx: the fused formula of layers.py
        dx, dgamma, dbeta = batchnorm_backward(dout, BatchNormCache(xhat, var_inv, gamma, self.unbiased))
        return dx, {self.gamma: dgamma, self.beta: dbeta}


class Tanh:
    def __init__(self, name):
        self.name = name

    def forward(self, x, training=True):
        h, _ = tanh_forward(x)
        return h, h                                                    # cache: the output

    def backward(self, dout, h):
        return tanh_backward(dout, TanhCache(h)), {}                   # (1 - h**2) * dout


class Sequential:
    def __init__(self, layers):
        self.layers = layers

    def forward(self, x, c: Intermediates, training=True):
        """Each layer's output into c under the layer's name (c's `at` may replace it: the next
        layer then reads that), its cache into c.caches. -> the last layer's output."""
        for layer in self.layers:
            out, c.caches[layer.name] = layer.forward(x, training)
            setattr(c, layer.name, out)
            x = c[layer.name]
        return x

    def backward(self, dout, c: Intermediates):
        """-> (dx, the parameters' gradients, {layer name: the gradient of its output}), each dict in
        the order computed (the last layer first)."""
        grads, douts = {}, {}
        for layer in reversed(self.layers):
            douts[layer.name] = dout
            dout, g = layer.backward(dout, c.caches[layer.name])
            grads.update(g)
        return dout, grads, douts


def n_linear(params) -> int:
    """How many Linear layers a stack's params hold (W1, W2, ...)."""
    return sum(1 for k in params if k[0] == "W" and k[1:].isdigit())


def layer_init(shapes: dict, rng) -> dict:
    """The layer objects' own init, drawn in the order of `shapes` from rng (float64): C standard
    normal (Embedding), each W randn / sqrt(fan_in) (Linear), gamma 1 (BatchNorm1d), b and beta 0."""
    p = {}
    for k, s in shapes.items():
        if k == "C":
            p[k] = rng.standard_normal(s)
        elif k[0] == "W":
            p[k] = rng.standard_normal(s) / np.sqrt(s[0])
        else:
            p[k] = (np.ones if k.startswith("gamma") else np.zeros)(s)
    return p


SPEC = Spec(
    kind="deep", title="makemore part 3's stack of layers: Linear -> BatchNorm1d -> Tanh, n_layers deep",
    options=(Option("block_size", 3, "context length T"),
             Option("n_embd", 10, "embedding size E"),
             Option("n_hidden", 100, "hidden units H"),
             Option("n_layers", 5, "hidden layers", repeats=True),
             Option("batchnorm", 1, "part 3's plain stack, Linear (with b) -> Tanh, no BatchNorm1d",
                    flag="--no-batchnorm", const=0, minimum=0, states=("none", "BatchNorm"))),
    train={"decay_at": 0.75},            # part 3: lr 0.1, then 0.01 from 150,000 of 200,000 steps
    engine="stack", mirror="deep_forward")


class Deep(Model):
    """params: C (V, E), then per Linear layer i = 1 .. n_layers + 1: Wi, and gammai, betai (with
    BatchNorm) or bi (without); buffers: running_meani, running_vari of each BatchNorm1d."""

    spec = SPEC

    @staticmethod
    def shapes(vocab_size, block_size, n_embd, n_hidden, n_layers, batchnorm):
        """The parameters' shapes, in the order the lecture lists them."""
        widths = [block_size * n_embd] + [n_hidden] * n_layers + [vocab_size]
        s = {"C": (vocab_size, n_embd)}
        for i, (I, O) in enumerate(itertools.pairwise(widths), 1):
            s[f"W{i}"] = (I, O)
            if batchnorm:
                s[f"gamma{i}"] = s[f"beta{i}"] = (O,)
            else:
                s[f"b{i}"] = (O,)
        return s

    @staticmethod
    def buffer_shapes(vocab_size, block_size, n_embd, n_hidden, n_layers, batchnorm):
        """The BatchNorm1d layers' running statistics."""
        widths = [n_hidden] * n_layers + [vocab_size]
        return {f"running_{k}{i}": (O,) for i, O in enumerate(widths, 1) for k in ("mean", "var")} if batchnorm else {}

    @staticmethod
    def activation_shapes(batch, vocab_size, block_size, n_embd, n_hidden, n_layers, batchnorm, **_):
        """Every layer's output (and, with BatchNorm, its normalised input), per hidden layer and the last."""
        B, H, L = batch, n_hidden, n_layers
        s = {"emb": (B, block_size, n_embd), "embcat": (B, block_size * n_embd), "logits": (B, vocab_size),
             "probs": (B, vocab_size)}
        per_layer = 3 + 2 * bool(batchnorm)                  # linear, (batchnorm, xhat), tanh, its gradient
        s["hidden"] = (L * per_layer, B, H)
        return s

    def __init__(self, params, buffers=None):
        n = n_linear(params)
        batchnorm = "gamma1" in params
        V, E = np.shape(params["C"])
        TE, H = np.shape(params["W1"])
        if n < 2 or TE % E:
            raise ValueError(f"a deep model has at least W1 and W2, and W1's {TE} rows are T * n_embd={E}")
        self.params = p = own_params(params, self.shapes(V, TE // E, E, H, n - 1, batchnorm))
        self.buffers = running_stats(self.buffer_shapes(V, TE // E, E, H, n - 1, batchnorm), p["C"].dtype, buffers)
        self.vocab_size, self.block_size, self.n_embd, self.n_hidden = V, TE // E, E, H
        self.n_layers, self.batchnorm = n - 1, int(batchnorm)
        layers = []
        for i in range(1, n + 1):
            last = i == n
            layers.append(Linear("logits" if last and not batchnorm else f"linear{i}", p, f"W{i}",
                                 None if batchnorm else f"b{i}"))
            if batchnorm:
                layers.append(BatchNorm1d("logits" if last else f"batchnorm{i}", p, self.buffers, f"gamma{i}",
                                          f"beta{i}", f"running_mean{i}", f"running_var{i}"))
            if not last:
                layers.append(Tanh(f"tanh{i}"))
        self.net = Sequential(layers)
        self.param_names = tuple(p)
        self.act_names = tuple(reversed([layer.name for layer in layers])) + ("embcat", "emb")
        self.tanh_names = tuple(layer.name for layer in layers if isinstance(layer, Tanh))
        self.min_batch = BN_MIN_ROWS if batchnorm else 1

    @classmethod
    def init(cls, vocab_size, block_size=None, n_embd=None, n_hidden=None, n_layers=None, batchnorm=None,
             seed=SEED, dtype=np.float32):
        """Part 3's init: C standard normal; each W randn / sqrt(fan_in) (drawn in layer order from
        one generator). With BatchNorm: b none, gamma 1 (the last one 0.1: a less confident
        softmax at the start), beta 0. Without: b 0, W * 5/3 (tanh's gain), the last W * 0.1."""
        d = with_defaults(cls, vocab_size, block_size=block_size, n_embd=n_embd, n_hidden=n_hidden,
                          n_layers=n_layers, batchnorm=batchnorm)
        p = layer_init(cls.shapes(vocab_size, **d), np.random.default_rng(seed))
        last = d["n_layers"] + 1
        if d["batchnorm"]:
            p[f"gamma{last}"] *= 0.1
        else:
            for i in range(1, last):
                p[f"W{i}"] *= 5 / 3
            p[f"W{last}"] *= 0.1
        return cls({k: v.astype(dtype) for k, v in p.items()})

    def forward(self, X, Y=None, at=None, training=True):
        """X (B, T) -> logits (B, V) if Y is None, else (loss, c: every intermediate by name).
        Training mode uses (and updates, as torch does) the BatchNorm1d layers' running
        statistics. at: as MLP.forward's."""
        X, Y = self.check_inputs(X, Y)                                  # indices in 0..V-1 (contract.py)
        B = X.shape[0]
        c = Intermediates(at, X=X, Y=Y, caches={})
        c.emb, _ = embedding_forward(self.params["C"], X)               # (B, T, E)
        c.embcat = c.emb.reshape(B, -1)                                 # (B, T*E)
        logits = self.net.forward(c.embcat, c, training)                # (B, V)
        if Y is None:
            return logits
        loss, ce = cross_entropy_forward(logits, Y)                     # ()
        c.probs = ce.probs                                              # (B, V)
        return loss, c

    def backward(self, c):
        """-> (grads, dacts), each in the order computed."""
        dlogits = cross_entropy_backward(1.0, CrossEntropyCache(c.probs, c.Y))   # (B, V)
        dembcat, grads, dacts = self.net.backward(dlogits, c)                    # (B, T*E)
        demb = dembcat.reshape(c.emb.shape)                                      # (B, T, E)
        grads["C"] = embedding_backward(demb, EmbeddingCache(c.X, len(self.params["C"])))  # (V, E)
        return grads, {**dacts, "embcat": dembcat, "emb": demb}
