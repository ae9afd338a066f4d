"""makemore part 3's deeper network, built from layer objects in the style of torch.nn, each
calling the same forward/backward pairs as the lecture-2 model (layers.py):

    C[X] -> concat -> [Linear -> BatchNorm1d -> Tanh] x n_layers -> Linear -> BatchNorm1d -> cross-entropy

Legend: B batch, T block_size, E n_embd, H n_hidden, V vocab size, I/O a layer's in/out width.
A layer's forward(x, training) returns (out, cache); its backward(dout, cache) returns (dx, its
parameters' gradients). Sequential runs the layers in order and their backwards in reverse.
Without BatchNorm (`batchnorm=0`) it is part 3's plain stack: Linear (with b) -> Tanh.
"""
from __future__ import annotations

import itertools

import numpy as np

from .errors import UsageError
from .layers import (batchnorm_backward, batchnorm_forward, cross_entropy_backward, cross_entropy_forward,
                     embedding_backward, embedding_forward, linear_backward, linear_forward, tanh_backward,
                     tanh_forward)
from .model import SEED, check_sizes, float_params


class Linear:
    """x (B, I) -> x @ W + b (B, O); without b before a BatchNorm (its beta does that job)."""

    def __init__(self, name, params, i):
        self.name, self.W, self.b = name, f"W{i}", f"b{i}" if f"b{i}" in params else None
        self.params = params

    def forward(self, x, training=True):
        return linear_forward(x, self.params[self.W], self.params[self.b] if self.b else None)

    def backward(self, dout, cache):
        dx, dW, db = linear_backward(dout, cache)
        return dx, {self.W: dW, **({self.b: db} if self.b else {})}


class BatchNorm1d:
    """torch.nn.BatchNorm1d: training normalises with the batch's mean and biased variance and
    updates running averages (momentum 0.1) of the mean and the unbiased variance; inference
    normalises with those running statistics."""

    def __init__(self, name, params, buffers, i, eps=1e-5, momentum=0.1):
        self.name, self.gamma, self.beta = name, f"gamma{i}", f"beta{i}"
        self.mean, self.var = f"running_mean{i}", f"running_var{i}"
        self.params, self.buffers, self.eps, self.momentum = params, buffers, eps, momentum

    def forward(self, x, training=True):
        gamma, beta = self.params[self.gamma], self.params[self.beta]
        mean, var = self.buffers[self.mean], self.buffers[self.var]
        if not training:
            return gamma * (x - mean) / np.sqrt(var + self.eps) + beta, None     # (B, O)
        out, cache = batchnorm_forward(x, gamma, beta, self.eps)                 # (B, O)
        m = self.momentum
        mean[...] = (1 - m) * mean + m * x.mean(0)                               # (O,)
        var[...] = (1 - m) * var + m * x.var(0, ddof=1)                          # (O,) unbiased, as torch
        return out, cache

    def backward(self, dout, cache):
        dx, dgamma, dbeta = batchnorm_backward(dout, cache)
        return dx, {self.gamma: dgamma, self.beta: dbeta}


class Tanh:
    def __init__(self, name):
        self.name = name

    def forward(self, x, training=True):
        return tanh_forward(x)

    def backward(self, dout, cache):
        return tanh_backward(dout, cache), {}


class Sequential:
    def __init__(self, layers):
        self.layers = layers

    def forward(self, x, training=True, at=None):
        """-> (output, caches, {layer name: its output}). at: {layer name: array} puts that value in
        place of the layer's output (gradcheck perturbs one and runs the rest)."""
        caches, outs = [], {}
        for layer in self.layers:
            x, cache = layer.forward(x, training)
            x = outs[layer.name] = (at or {}).get(layer.name, x)
            caches.append(cache)
        return x, caches, outs

    def backward(self, dout, caches):
        """-> (dx, the parameters' gradients, {layer name: the gradient of its output}), each dict in
        the order computed (the last layer first)."""
        grads, douts = {}, {}
        for layer, cache in zip(reversed(self.layers), reversed(caches)):
            douts[layer.name] = dout
            dout, g = layer.backward(dout, cache)
            grads.update(g)
        return dout, grads, douts


class Deep:
    """params: C (V, E), then per Linear layer i = 1 .. n_layers + 1: Wi, and gammai, betai (with
    BatchNorm) or bi (without); buffers: running_meani, running_vari of each BatchNorm1d."""

    kind = "deep"
    DEFAULTS = {"block_size": 3, "n_embd": 10, "n_hidden": 100, "n_layers": 5, "batchnorm": 1}
    TRAIN_DEFAULTS = {"decay_at": 0.75}   # part 3: lr 0.1, then 0.01 from 150,000 of 200,000 steps

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

    def __init__(self, params, buffers=None):
        n = sum(1 for k in params if k[0] == "W" and k[1:].isdigit())
        batchnorm = "gamma1" in params
        V, E = np.shape(params["C"])
        TE, H = np.shape(params["W1"])
        if n < 2 or TE % E:
            raise ValueError(f"a deep model has at least W1 and W2, and W1's {TE} rows are T * n_embd={E}")
        want = self.shapes(V, TE // E, E, H, n - 1, batchnorm)
        p = float_params(params, list(want))
        bad = {k: a.shape for k, a in p.items() if a.shape != want[k]}
        if bad or set(params) != set(want):
            raise ValueError(f"params {sorted(params)} with shapes {bad} do not fit {want}")
        self.params, dt = p, p["C"].dtype
        self.buffers = {k: (np.zeros if "mean" in k else np.ones)(s, dt)
                        for k, s in self.buffer_shapes(V, TE // E, E, H, n - 1, batchnorm).items()}
        for k, v in (buffers or {}).items():
            self.buffers[k][...] = v
        self.vocab_size, self.block_size, self.n_embd, self.n_hidden = V, TE // E, E, H
        self.n_layers, self.batchnorm = n - 1, int(batchnorm)
        layers = []
        for i in range(1, n + 1):
            last = i == n
            layers.append(Linear("logits" if last and not batchnorm else f"linear{i}", p, i))
            if batchnorm:
                layers.append(BatchNorm1d("logits" if last else f"batchnorm{i}", p, self.buffers, i))
            if not last:
                layers.append(Tanh(f"tanh{i}"))
        self.net = Sequential(layers)
        self.param_names = tuple(p)
        self.act_names = tuple(reversed([layer.name for layer in layers])) + ("embcat", "emb")
        self.tanh_names = tuple(layer.name for layer in layers if isinstance(layer, Tanh))
        self.min_batch = 2 if batchnorm else 1

    @classmethod
    def init(cls, vocab_size, block_size=None, n_embd=None, n_hidden=None, n_layers=None, batchnorm=None,
             seed=SEED, dtype=np.float32):
        """Part 3's init: C standard normal; each W randn / sqrt(fan_in) (drawn in layer order from
        one generator). With BatchNorm: b none, gamma 1 (the last one 0.1: a less confident
        softmax at the start), beta 0. Without: b 0, W * 5/3 (tanh's gain), the last W * 0.1."""
        d = dict(cls.DEFAULTS)
        d.update({k: v for k, v in {"block_size": block_size, "n_embd": n_embd, "n_hidden": n_hidden,
                                        "n_layers": n_layers, "batchnorm": batchnorm}.items() if v is not None})
        check_sizes(vocab_size=vocab_size, **{k: v for k, v in d.items() if k != "batchnorm"})
        rng = np.random.default_rng(seed)
        p = {}
        for k, s in cls.shapes(vocab_size, **d).items():
            if k == "C":
                p[k] = rng.standard_normal(s)
            elif k[0] == "W":
                p[k] = rng.standard_normal(s) / np.sqrt(s[0])
            else:                                                     # b, gamma, beta
                p[k] = (np.ones if k.startswith("gamma") else np.zeros)(s)
        last = d["n_layers"] + 1
        if d["batchnorm"]:
            p[f"gamma{last}"] *= 0.1
        else:
            for i in range(1, last):
                p[f"W{i}"] *= 5 / 3
            p[f"W{last}"] *= 0.1
        return cls({k: v.astype(dtype) for k, v in p.items()})

    @property
    def dtype(self):
        return self.params["C"].dtype

    @property
    def num_params(self) -> int:
        return sum(p.size for p in self.params.values())

    @property
    def sizes(self) -> dict:
        return {"block_size": self.block_size, "n_embd": self.n_embd, "n_hidden": self.n_hidden,
                "n_layers": self.n_layers, "batchnorm": self.batchnorm}

    def forward(self, X, Y=None, at=None, training=True):
        """X (B, T) -> logits (B, V) if Y is None, else (loss, cache). Training mode uses (and
        updates, as torch does) the BatchNorm1d layers' running statistics; at: as Sequential's."""
        B = X.shape[0]
        if training and B < self.min_batch:
            raise UsageError("the deep model's BatchNorm1d layers normalise with a batch's own statistics: "
                             "training needs batches of at least 2 rows")
        at = at or {}
        emb, emb_c = embedding_forward(self.params["C"], X)          # (B, T, E)
        emb = at.get("emb", emb)
        embcat = at.get("embcat", emb.reshape(B, -1))                # (B, T*E)
        logits, caches, outs = self.net.forward(embcat, training, at)  # (B, V)
        if Y is None:
            return logits
        loss, ce_c = cross_entropy_forward(logits, Y)                # ()
        return loss, {**outs, "embcat": embcat, "emb": emb, "emb_c": emb_c, "caches": caches, "ce_c": ce_c}

    def backward(self, cache):
        """-> (grads, dacts), each in the order computed."""
        dlogits = cross_entropy_backward(1.0, cache["ce_c"])              # (B, V)
        dembcat, grads, dacts = self.net.backward(dlogits, cache["caches"])  # (B, T*E)
        demb = dembcat.reshape(cache["emb"].shape)                        # (B, T, E)
        grads["C"] = embedding_backward(demb, cache["emb_c"])             # (V, E)
        return grads, {**dacts, "embcat": dembcat, "emb": demb}

    def logits(self, X):
        """Inference (running statistics): X (N, T) -> logits (N, V)."""
        return self.forward(np.asarray(X), training=False)

    def loss(self, X, Y) -> float:
        return cross_entropy_forward(self.logits(X), np.asarray(Y))[0]

    def loss_and_grads(self, X, Y):
        loss, cache = self.forward(np.asarray(X), np.asarray(Y))
        return loss, self.backward(cache)[0]
