"""The fast engine of the layer-object networks (deep.Deep, and any model built the same way from
deep.py's Linear, BatchNorm1d, Tanh and flattening): deep.py's forward and backward, fused.

Same maths as the reference (Sequential of layer objects, train.sgd), held to it by the tests:
one step to 1e-12 relative in float64, 1,000-step trajectories to 1e-10 with the running
statistics. A student never needs to read this file.

Legend: B batch, n rows of a block (B times the positions left), I/O a block's in/out width,
V vocab size, P params.
The tricks, each said once where it is used:
  - the network is read once into a plan of blocks, Linear (-> BatchNorm) (-> tanh), and every
    activation is a 2-D (rows, width) array: flattening consecutive positions, (B, T, C) ->
    (B, T/k, C*k), is then a reshape of the same memory, made once as a view;
  - one flat parameter vector; the backward is seeded with dloss = -lr, so it writes the update
    itself, and one vector add applies it to every parameter;
  - BatchNorm keeps xmu = x - mean and scale = gamma / sqrt(var + eps): the forward is one
    multiply-add, and the backward needs no xhat (dgamma = sum(xmu * dout) / sqrt(var + eps));
  - every running statistic of every BatchNorm lives in one vector, and each step's batch
    statistics are written into a second one where they are computed: the momentum update of
    all of them is three calls a step;
  - the arrays of a batch size are made once; dC is a one-hot matmul (as engine.py's).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from ..layers import BN_EPS

MOMENTUM = 0.1     # deep.BatchNorm1d's


class Block(SimpleNamespace):
    """Linear W (with b or not), then optionally BatchNorm (gamma, beta, its running mean and var,
    unbiased), then optionally tanh; `fold`: how many consecutive rows of the input become one."""


def plan(model) -> list[Block]:
    """The model's net.layers as blocks. Raises ValueError for a layer the engine does not fuse."""
    blocks: list[Block] = []
    width = model.n_embd
    for layer in model.net.layers:
        kind = type(layer).__name__
        if kind == "Linear":
            I, O = model.params[layer.W].shape
            if I % width:
                raise ValueError(f"{layer.name}: {I} inputs do not fold {width}-wide rows")
            blocks.append(Block(W=layer.W, b=layer.b, fold=I // width, bn=None, tanh=False, I=I, O=O))
            width = O
        elif kind == "BatchNorm1d" and blocks and blocks[-1].bn is None and not blocks[-1].tanh:
            if getattr(layer, "over_batch_only", False):
                raise ValueError("the fast engine normalises over every row; the statistics over the batch "
                                 "dimension only (part 5's bug) train on the reference engine")
            blocks[-1].bn = SimpleNamespace(gamma=layer.gamma, beta=layer.beta, mean=layer.mean, var=layer.var,
                                            unbiased=layer.unbiased)
        elif kind == "Tanh" and blocks and not blocks[-1].tanh:
            blocks[-1].tanh = True
        elif kind != "FlattenConsecutive":          # folded into the next Linear's `fold`
            raise ValueError(f"the fast engine does not fuse a {kind} here ({layer.name})")
    return blocks


class StackEngine:
    """The flat parameter vector of one layer-object network, its running statistics, and the
    step's forward and backward (engine.Engine's contract: load, store, views, forward_loss, backward)."""

    chunked = False    # BatchNorm couples the rows of a batch: it is never cut into chunks

    def __init__(self, model):
        self.kind, self.V, self.T, self.E = model.kind, model.vocab_size, model.block_size, model.n_embd
        self.blocks = plan(model)
        self.shapes = {k: p.shape for k, p in model.params.items()}
        self.flat = np.zeros(sum(math.prod(s) for s in self.shapes.values()), model.dtype)   # (P,)
        self.w = self.views(self.flat)
        # running statistics: every BatchNorm's mean then var, end to end, and the step's batch
        # statistics laid out the same way (means, then sums of squared deviations)
        self.stats = [b.bn for b in self.blocks if b.bn is not None]
        widths = [b.O for b in self.blocks if b.bn is not None]
        self.running = np.zeros(2 * sum(widths), model.dtype)
        self.batch = np.zeros_like(self.running)
        self.run_views, self.batch_views, at = [], [], 0
        for O in widths:
            self.run_views.append((self.running[at:at + O], self.running[at + O:at + 2 * O]))
            self.batch_views.append((self.batch[at:at + O], self.batch[at + O:at + 2 * O]))
            at += 2 * O
        self._bufs = {}

    @property
    def dtype(self):
        return self.flat.dtype

    def views(self, flat):
        """Each parameter of a vector laid out like self.flat, by name."""
        v, i = {}, 0
        for k, shape in self.shapes.items():
            n = math.prod(shape)
            v[k], i = flat[i:i + n].reshape(shape), i + n
        return SimpleNamespace(**v)

    def load(self, model):
        for k in self.shapes:
            getattr(self.w, k)[...] = model.params[k]
        for bn, (mean, var) in zip(self.stats, self.run_views):
            mean[...], var[...] = model.buffers[bn.mean], model.buffers[bn.var]

    def store(self, model):
        for k in self.shapes:
            model.params[k][...] = getattr(self.w, k)
        for bn, (mean, var) in zip(self.stats, self.run_views):
            model.buffers[bn.mean][...], model.buffers[bn.var][...] = mean, var

    def _buffers(self, B: int):
        """The arrays of a batch of B rows, made once: per block its input (a view of the previous
        block's output, or of the embedding), pre-activation, output and scratch arrays."""
        bufs = self._bufs.get(B)
        if bufs is not None:
            return bufs
        dt, rows = self.dtype, B * self.T
        emb = np.empty((rows, self.E), dt)                           # (B*T, E) C[X], row by row
        x, dx, per = emb, np.empty_like(emb), []
        for blk in self.blocks:
            rows //= blk.fold
            a = SimpleNamespace(x=x.reshape(rows, blk.I), dx=dx.reshape(rows, blk.I),   # views: the fold
                                pre=np.empty((rows, blk.O), dt), t=np.empty((rows, blk.O), dt),
                                dpre=np.empty((rows, blk.O), dt))
            if blk.bn is not None:
                a.xmu, a.y = np.empty((rows, blk.O), dt), np.empty((rows, blk.O), dt)
                a.scale, a.vi, a.c1, a.c2 = (np.empty(blk.O, dt) for _ in range(4))
            a.out = np.empty((rows, blk.O), dt) if blk.tanh else (a.y if blk.bn is not None else a.pre)
            a.dout = np.empty((rows, blk.O), dt)                    # the gradient reaching the output
            per.append(a)
            x, dx = a.out, a.dout
        # the momentum of every running statistic, and the 1 / (n - 1) that turns a block's sum of
        # squared deviations into the unbiased variance
        coef = np.empty_like(self.batch)
        for (mean, ssq), a in zip(self.batch_views, (a for blk, a in zip(self.blocks, per) if blk.bn is not None)):
            coef[_span(self.batch, mean)] = MOMENTUM
            coef[_span(self.batch, ssq)] = MOMENTUM / (len(a.pre) - 1)
        bufs = self._bufs[B] = SimpleNamespace(
            emb=emb, coef=coef, demb=per[0].dx.reshape(B * self.T, self.E), blocks=per, logits=per[-1].out,
            dlogits=per[-1].dout, maxes=np.empty((B, 1), dt), sums=np.empty((B, 1), dt),
            counts=np.empty((B, self.V), dt), onehot=np.zeros((B * self.T, self.V), dt),
            rows=np.arange(B), rows_t=np.arange(B * self.T))
        return bufs

    def forward_loss(self, xb, yb) -> tuple[float, SimpleNamespace]:
        """The forward of rows xb (B, T), yb (B,) in training mode (batch statistics, and the
        running statistics moved as the reference's layers move them): (mean loss, the buffers)."""
        B, w = len(xb), self.w
        b = self._buffers(B)
        np.take(w.C, xb.reshape(-1), axis=0, out=b.emb)                 # (B*T, E)
        k = 0
        for blk, a in zip(self.blocks, b.blocks):
            np.matmul(a.x, getattr(w, blk.W), out=a.pre)                 # (n, O) x @ W
            if blk.b is not None:
                a.pre += getattr(w, blk.b)                               # (n, O) + b
            if blk.bn is not None:
                mean, ssq = self.batch_views[k]
                k += 1
                n = len(a.pre)
                np.add.reduce(a.pre, axis=0, out=mean)
                mean *= 1 / n                                            # (O,) the batch mean
                np.subtract(a.pre, mean, out=a.xmu)                      # (n, O) x - mean
                np.square(a.xmu, out=a.t)
                np.add.reduce(a.t, axis=0, out=ssq)                      # (O,) sum of squared deviations
                np.multiply(ssq, 1 / (n - 1 if blk.bn.unbiased else n), out=a.vi)
                a.vi += BN_EPS
                np.sqrt(a.vi, out=a.vi)
                np.divide(1, a.vi, out=a.vi)                             # (O,) 1 / sqrt(var + eps)
                np.multiply(a.vi, getattr(w, blk.bn.gamma), out=a.scale)  # (O,) gamma / sqrt(var + eps)
                np.multiply(a.xmu, a.scale, out=a.y)
                a.y += getattr(w, blk.bn.beta)                           # (n, O) gamma * xhat + beta
            if blk.tanh:
                np.tanh(a.y if blk.bn is not None else a.pre, out=a.out)  # (n, O)
        if self.stats:
            # running = (1 - momentum) * running + momentum * the batch's statistic, every BatchNorm
            # at once; the same multiply turns sums of squared deviations into unbiased variances
            self.running *= 1 - MOMENTUM
            np.multiply(self.batch, b.coef, out=self.batch)
            self.running += self.batch
        return self._cross_entropy(b, yb), b

    def _cross_entropy(self, b, yb) -> float:
        c = b.counts
        np.maximum.reduce(b.logits, axis=1, keepdims=True, out=b.maxes)    # (B, 1)
        np.subtract(b.logits, b.maxes, out=c)                           # (B, V) logits - max
        picked = c[b.rows, yb]                                          # (B,) the targets' shifted logits
        np.exp(c, out=c)                                                # (B, V) counts
        np.add.reduce(c, axis=1, keepdims=True, out=b.sums)             # (B, 1)
        nll = np.log(b.sums[:, 0])
        nll -= picked                                                   # (B,) -log softmax[y]
        return float(np.add.reduce(nll)) / len(yb)

    def backward(self, b, xb, yb, dloss: float, g) -> None:
        """After forward_loss(xb, yb) gave b: dloss * the gradient of the mean loss into g (views()
        of a gradient vector)."""
        B, w = len(yb), self.w
        np.multiply(b.counts, (dloss / B) / b.sums, out=b.dlogits)      # (B, V) dloss * softmax / B
        b.dlogits[b.rows, yb] -= dloss / B                              #   minus dloss * onehot(Y) / B
        for blk, a in zip(reversed(self.blocks), reversed(b.blocks)):
            d = a.dout
            if blk.tanh:                                                # through tanh: (1 - h^2) * dout
                np.square(a.out, out=a.t)
                np.subtract(1, a.t, out=a.t)
                a.t *= a.dout
                d = a.t
            if blk.bn is not None:
                n = len(a.pre)
                dgamma, dbeta = getattr(g, blk.bn.gamma), getattr(g, blk.bn.beta)
                np.add.reduce(d, axis=0, out=dbeta)                     # (O,)
                np.multiply(a.xmu, d, out=a.dpre)
                np.add.reduce(a.dpre, axis=0, out=dgamma)
                dgamma *= a.vi                                          # (O,) sum(xhat * dout)
                # dpre = scale * (dout - dbeta / n - xhat * dgamma * bessel / n), xhat = xmu * vi
                np.multiply(a.vi, dgamma, out=a.c2)
                a.c2 *= (1 / (n - 1)) if blk.bn.unbiased else (1 / n)   # bessel / n
                np.multiply(dbeta, 1 / n, out=a.c1)
                np.multiply(a.xmu, a.c2, out=a.dpre)
                a.dpre += a.c1
                np.subtract(d, a.dpre, out=a.dpre)
                a.dpre *= a.scale                                       # (n, O)
                d = a.dpre
            if blk.b is not None:
                np.add.reduce(d, axis=0, out=getattr(g, blk.b))         # (O,)
            np.matmul(a.x.T, d, out=getattr(g, blk.W))                  # (I, O) x.T @ dpre
            np.matmul(d, getattr(w, blk.W).T, out=a.dx)                 # (n, I), into the layer below
        # dC = onehot(X).T @ demb: BLAS adds the rows of repeated characters
        b.onehot.fill(0)
        b.onehot[b.rows_t, xb.reshape(-1)] = 1                          # (B*T, V)
        np.matmul(b.onehot.T, b.demb, out=g.C)                          # (V, E)


def _span(whole, part) -> slice:
    """Where the view `part` lies in the vector `whole`."""
    start = (part.__array_interface__["data"][0] - whole.__array_interface__["data"][0]) // whole.itemsize
    return slice(start, start + part.size)
