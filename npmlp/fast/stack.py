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
  - the arrays of a batch size are made once; dC is a one-hot matmul (as engine.py's);
  - the step's constants and its seed are 0-d arrays of the dtype, not Python numbers (as
    engine.py's);
  - each block's forward and backward are two closures made with its arrays (_program), every
    array bound once, as engine.py's step is: the step looks nothing up by name in its blocks;
  - tanh is the one this CPU runs fastest (tanh.py, as engine.py's).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from ..layers import BN_EPS
from .flat import FlatParams
from .tanh import pick
from .windows import distinct_rows

MOMENTUM = 0.1     # deep.BatchNorm1d's
EVAL_ROWS = 1024, 65536   # rows inference_loss takes at once, at least and at most (more rows: more repeats)
EVAL_BYTES = 2 ** 28       # ... and between those, as many as fit here when no window repeats


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
            if layer.over_batch_only:
                raise ValueError("the fast engine normalises over every row; the statistics over the batch "
                                 "dimension only (part 5's bug) train on the reference engine")
            blocks[-1].bn = SimpleNamespace(gamma=layer.gamma, beta=layer.beta, mean=layer.mean, var=layer.var,
                                            unbiased=layer.unbiased)
        elif kind == "Tanh" and blocks and not blocks[-1].tanh:
            blocks[-1].tanh = True
        elif kind != "FlattenConsecutive":          # folded into the next Linear's `fold`
            raise ValueError(f"the fast engine does not fuse a {kind} here ({layer.name})")
    return blocks


class StackEngine(FlatParams):
    """The flat parameter vector of one layer-object network (FlatParams), its running statistics,
    and the step's forward and backward (engine.Engine's contract: load, store, views, forward_loss,
    backward)."""

    chunked = False    # BatchNorm couples the rows of a batch: it is never cut into chunks

    def __init__(self, model, tanh: str | None = None):
        self.V, self.T, self.E = model.vocab_size, model.block_size, model.n_embd
        self.blocks = plan(model)
        super().__init__(model)
        self.tanh_form, self.tanh = pick(self.flat.dtype, tanh)      # engine.Engine's, from the CPU
        # running statistics: every BatchNorm's mean then var, end to end, and the step's batch
        # statistics laid out the same way (means, then sums of squared deviations)
        self.stats = [b.bn for b in self.blocks if b.bn is not None]
        widths = [b.O for b in self.blocks if b.bn is not None]
        self.running = np.zeros(2 * sum(widths), model.dtype)
        self.batch = np.zeros_like(self.running)
        self.spans, at = [], 0                                          # each BatchNorm's (mean, var) slices
        for O in widths:
            self.spans.append((slice(at, at + O), slice(at + O, at + 2 * O)))
            at += 2 * O
        self.run_views = [(self.running[m], self.running[v]) for m, v in self.spans]
        self.batch_views = [(self.batch[m], self.batch[v]) for m, v in self.spans]
        self._bufs: dict[int, SimpleNamespace] = {}

    def load(self, model):
        super().load(model)
        for bn, (mean, var) in zip(self.stats, self.run_views, strict=True):
            mean[...], var[...] = model.buffers[bn.mean], model.buffers[bn.var]

    def store(self, model):
        super().store(model)
        for bn, (mean, var) in zip(self.stats, self.run_views, strict=True):
            model.buffers[bn.mean][...], model.buffers[bn.var][...] = mean, var

    def _buffers(self, B: int):
        """The arrays of a batch of B rows, made once: per block its input (a view of the previous
        block's output, or of the embedding), pre-activation, output and scratch arrays."""
        bufs = self._bufs.get(B)
        if bufs is not None:
            return bufs
        dt, rows = self.dtype, B * self.T
        emb = np.empty((rows, self.E), dt)                           # (B*T, E) C[X], row by row
        x, dx, per, w, k = emb, np.empty_like(emb), [], self.w, 0
        for blk in self.blocks:
            rows //= blk.fold
            # every array a step reads, bound here once (a lookup by name costs a call each step)
            W = getattr(w, blk.W)
            a = SimpleNamespace(x=x.reshape(rows, blk.I), dx=dx.reshape(rows, blk.I),   # views: the fold
                                xT=x.reshape(rows, blk.I).T, W=W, WT=W.T,
                                b=getattr(w, blk.b) if blk.b is not None else None,
                                pre=np.empty((rows, blk.O), dt), t=np.empty((rows, blk.O), dt),
                                dpre=np.empty((rows, blk.O), dt), n=rows,
                                # a sum over the rows is a product with ones: BLAS's gemv beats
                                # np.add.reduce(axis=0) several times on these shapes
                                ones=np.ones(rows, dt), ones_n=np.full(rows, 1 / rows, dt))
            if blk.bn is not None:
                a.xmu, a.y = np.empty((rows, blk.O), dt), np.empty((rows, blk.O), dt)
                a.scale, a.vi, a.c1, a.c2 = (np.empty(blk.O, dt) for _ in range(4))
                a.gamma, a.beta = getattr(w, blk.bn.gamma), getattr(w, blk.bn.beta)
                a.mean, a.ssq = self.batch_views[k]
                k += 1
                a.m = rows - 1 if blk.bn.unbiased else rows                 # var = ssq / m
                a.sqrt_m, a.eps_m, a.inv_n, a.bessel_n = (np.array(c, dt) for c in (
                    math.sqrt(a.m), a.m * BN_EPS, 1 / rows, 1 / a.m))
            a.out = np.empty((rows, blk.O), dt) if blk.tanh else (a.y if blk.bn is not None else a.pre)
            a.dout = np.empty((rows, blk.O), dt)                    # the gradient reaching the output
            per.append(a)
            x, dx = a.out, a.dout
        # the momentum of every running statistic, and the 1 / (n - 1) that turns a block's sum of
        # squared deviations into the unbiased variance
        onehot, counts = np.zeros((B * self.T, self.V), dt), np.empty((B, self.V), dt)
        programs = [self._program(blk, a) for blk, a in zip(self.blocks, per, strict=True)]
        momentum = np.empty_like(self.batch)
        normed = [a for blk, a in zip(self.blocks, per, strict=True) if blk.bn is not None]
        for (m, v), a in zip(self.spans, normed, strict=True):
            momentum[m] = MOMENTUM
            momentum[v] = MOMENTUM / (a.n - 1)
        coef = np.empty((B, 1), dt)                                  # dloss / B / each row's sum
        bufs = self._bufs[B] = SimpleNamespace(
            emb=emb, momentum=momentum, keep=np.array(1 - MOMENTUM, dt), demb=per[0].dx.reshape(B * self.T, self.E),
            forwards=[f for f, _ in programs], backwards=[b for _, b in reversed(programs)],
            logits=per[-1].out, dlogits=per[-1].dout, dlogits_flat=per[-1].dout.reshape(-1),
            maxes=np.empty((B, 1), dt), seed=np.empty((), dt), coef=coef, coef_row=coef.reshape(B),
            sums=np.empty(B, dt), counts=counts, counts_flat=counts.reshape(-1), ones_V=np.ones(self.V, dt),
            rows_V=np.arange(B) * self.V, target=None, onehot=onehot, onehot_t=onehot.T, onehot_flat=onehot.reshape(-1),
            rows_v=np.arange(B * self.T) * self.V, hot=None)
        return bufs

    def _program(self, blk: Block, a: SimpleNamespace):
        """Block blk's block_forward() and block_backward(g) (g: views() of a gradient vector),
        closures over its arrays a. Every array they read is bound once here: looking them up by
        name each step took about 15 µs of a WaveNet step and 40 µs of a deep one (benchmarks/
        README.md). The backward reads what the forward left in a."""
        dot, add, subtract, multiply, divide, square, sqrt = (np.dot, np.add, np.subtract, np.multiply,
                                                              np.divide, np.square, np.sqrt)
        x, xT, W, WT, bias, pre, out, t = a.x, a.xT, a.W, a.WT, a.b, a.pre, a.out, a.t
        dx, dpre, dout, ones, ones_n = a.dx, a.dpre, a.dout, a.ones, a.ones_n
        bn, tanh = blk.bn, (self.tanh if blk.tanh else None)
        tanh_in, one = (a.y if bn is not None else pre), np.ones((), self.dtype)
        if bn is not None:
            xmu, y, mean, ssq, vi, scale, gamma, beta = a.xmu, a.y, a.mean, a.ssq, a.vi, a.scale, a.gamma, a.beta
            eps_m, sqrt_m, c1, c2, inv_n, bessel_n = a.eps_m, a.sqrt_m, a.c1, a.c2, a.inv_n, a.bessel_n
        # ufuncs take `out` by position: a keyword costs more than the arithmetic on these arrays

        def block_forward():
            dot(x, W, pre)                                              # (n, O) x @ W
            if bias is not None:
                add(pre, bias, pre)                                     # (n, O) + b
            if bn is not None:
                dot(ones_n, pre, mean)                                  # (O,) the batch mean
                subtract(pre, mean, xmu)                                # (n, O) x - mean
                square(xmu, t)
                dot(ones, t, ssq)                                       # (O,) sum of squared deviations
                add(ssq, eps_m, vi)                                     # 1 / sqrt(ssq / m + eps) is
                sqrt(vi, vi)                                            #   sqrt(m) / sqrt(ssq + m * eps):
                divide(sqrt_m, vi, vi)                                  #   (O,) one call fewer
                multiply(vi, gamma, scale)                              # (O,) gamma / sqrt(var + eps)
                multiply(xmu, scale, y)
                add(y, beta, y)                                         # (n, O) gamma * xhat + beta
            if tanh is not None:
                tanh(tanh_in, out)                                      # (n, O)

        def block_backward(g):
            d = dout
            if tanh is not None:                                        # through tanh: (1 - h^2) * dout
                square(out, t)
                subtract(one, t, t)
                multiply(t, d, t)
                d = t
            if bn is not None:
                dgamma, dbeta = getattr(g, bn.gamma), getattr(g, bn.beta)
                dot(ones, d, dbeta)                                     # (O,)
                multiply(xmu, d, dpre)
                dot(ones, dpre, dgamma)
                multiply(dgamma, vi, dgamma)                            # (O,) sum(xhat * dout)
                # dpre = scale * (dout - dbeta / n - xhat * dgamma * bessel / n), xhat = xmu * vi
                multiply(vi, dgamma, c2)
                multiply(c2, bessel_n, c2)                              # bessel / n = 1 / m
                multiply(dbeta, inv_n, c1)
                multiply(xmu, c2, dpre)
                add(dpre, c1, dpre)
                subtract(d, dpre, dpre)
                multiply(dpre, scale, dpre)                             # (n, O)
                d = dpre
            if bias is not None:
                dot(ones, d, getattr(g, blk.b))                         # (O,)
            dot(xT, d, getattr(g, blk.W))                               # (I, O) x.T @ dpre
            dot(d, WT, dx)                                              # (n, I), into the layer below
        return block_forward, block_backward

    def picks(self, y, n: int, out) -> None:
        """Where the targets y (..., n) of n rows sit in counts_flat, (n, V) flattened: row * V + y."""
        np.add(y, np.arange(n) * self.V, out)

    def forward_loss(self, xb, yb, pick=None, hot=None) -> tuple[float, SimpleNamespace]:
        """The forward of rows xb (B, T), yb (B,) in training mode (batch statistics, and the
        running statistics moved as the reference's layers move them): (mean loss, the buffers).
        pick (B,) and hot (B*T,): where the targets sit in counts_flat (picks) and where onehot(X)
        has its ones ((row * T + t) * V + x), kept for the backward (Chunks.gather makes them for
        many steps at once; None: made here)."""
        B = len(xb)
        bufs = self._buffers(B)
        bufs.target = yb + bufs.rows_V if pick is None else pick
        bufs.hot = xb.reshape(-1) + bufs.rows_v if hot is None else hot
        self.w.C.take(xb.reshape(-1), 0, bufs.emb)                         # (B*T, E)
        for forward in bufs.forwards:                                  # the blocks, bottom up (_program)
            forward()
        if self.stats:
            # running = (1 - momentum) * running + momentum * the batch's statistic, every BatchNorm
            # at once; the same multiply turns sums of squared deviations into unbiased variances
            self.running *= bufs.keep
            np.multiply(self.batch, bufs.momentum, self.batch)
            self.running += self.batch
        return self._cross_entropy(bufs, yb), bufs

    def _cross_entropy(self, bufs, yb) -> float:
        c = bufs.counts
        np.maximum.reduce(bufs.logits, 1, None, bufs.maxes, keepdims=True)    # (B, 1)
        np.subtract(bufs.logits, bufs.maxes, c)                               # (B, V) logits - max
        picked = bufs.counts_flat.take(bufs.target)                           # (B,) the targets' shifted logits
        np.exp(c, c)                                                    # (B, V) counts
        np.dot(c, bufs.ones_V, bufs.sums)                                     # (B,) counts.sum(1), by BLAS
        nll = np.log(bufs.sums)
        nll -= picked                                                   # (B,) -log softmax[y]
        return float(np.add.reduce(nll)) / len(yb)

    def backward(self, bufs, xb, yb, dloss: float, g) -> None:
        """After forward_loss(xb, yb) gave bufs: dloss * the gradient of the mean loss into g (views()
        of a gradient vector)."""
        B = len(yb)
        seed = bufs.seed
        seed[()] = dloss / B                                            # () dloss / B
        np.divide(seed, bufs.sums, bufs.coef_row)                       # (B, 1) dloss / B / sum
        np.multiply(bufs.counts, bufs.coef, bufs.dlogits)              # (B, V) dloss * softmax / B
        bufs.dlogits_flat[bufs.target] -= seed                          #   minus dloss * onehot(Y) / B
        for backward in bufs.backwards:                                # top down
            backward(g)
        # dC = onehot(X).T @ demb: BLAS adds the rows of repeated characters
        bufs.onehot.fill(0)
        bufs.onehot_flat[bufs.hot] = 1                                        # (B*T, V)
        np.dot(bufs.onehot_t, bufs.demb, g.C)                                 # (V, E)


def inference_loss(model, X, Y, chunk: int | None = None) -> float:
    """The mean loss of the rows X (N, T), Y (N,) in inference mode, as train.evaluate(model, ...)
    computes it, faster, by two tricks:
      - each BatchNorm, which at inference is a fixed affine map of its input (running statistics),
        is folded into the Linear before it, W' = W * s and b' = (b - mean) * s + beta with
        s = gamma / sqrt(running var + eps), so a block is one product, one add and tanh;
      - a block's output depends only on the characters under it, and the names repeat them (the
        wavenet's 730,500 training pairs hold 595 distinct ones, its 365,250 windows of four 20,243):
        each block runs once per distinct window of the chunk, and the rows above index its results.
    chunk: rows at once (None: as many as EVAL_BYTES holds, within EVAL_ROWS)."""
    blocks = []
    for blk in plan(model):
        W = model.params[blk.W]                                         # (I, O)
        b = model.params[blk.b] if blk.b is not None else np.zeros(W.shape[1], W.dtype)
        if blk.bn is not None:
            s = model.params[blk.bn.gamma] / np.sqrt(model.buffers[blk.bn.var] + BN_EPS)   # (O,)
            W, b = W * s, (b - model.buffers[blk.bn.mean]) * s + model.params[blk.bn.beta]
        blocks.append((W.astype(model.dtype), b.astype(model.dtype), blk.fold, blk.tanh))
    if chunk is None:
        positions, widest = model.block_size, 0                         # a row's arrays at its widest level:
        for W, _, fold, _ in blocks:                                    #   the groups' inputs and outputs
            positions //= fold
            widest = max(widest, positions * sum(W.shape))
        row = widest * np.dtype(model.dtype).itemsize + 4 * model.block_size * np.dtype(np.intp).itemsize
        chunk = min(max(EVAL_BYTES // row, EVAL_ROWS[0]), EVAL_ROWS[1])
    C, total = model.params["C"], 0.0
    for i in range(0, len(X), chunk):
        xb, yb = np.asarray(X[i:i + chunk], np.intp), np.asarray(Y[i:i + chunk], np.intp)
        # x (U, width): the distinct rows of this level; at (rows,): which of them each row is
        x, at = C, xb.reshape(-1)                                       # level 0: every character
        for W, b, fold, tanh in blocks:
            groups = at.reshape(-1, fold)                               # (rows, fold) the rows it fuses
            count, at, first = distinct_rows(groups, len(x))            # at (rows,): which group; first (count,)
            x = np.dot(x[groups[first]].reshape(count, -1), W)          # (count, O) each group once
            x += b
            if tanh:
                np.tanh(x, x)
        x -= x.max(1, keepdims=True)                                    # (U, V) logits - max
        nll = np.log(np.exp(x).sum(1))[at] - x[at, yb]                  # (n,) -log softmax[y]
        total += float(np.sum(nll, dtype=np.float64))
    return total / len(X) if len(X) else float("nan")

