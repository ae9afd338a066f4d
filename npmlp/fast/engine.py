"""The fast engines of lecture 2's MLP and part 4's BatchNorm MLP: mlp.MLP and bn.BNMLP with
train.sgd, their training step rearranged for speed.

Same maths, same minibatches, same divergence rule (train.check_loss); only the order of the
floating-point operations differs, so the tests hold it to the reference: float64 to 1e-12
relative per step, 1e-10 over 1,000 steps. A student never needs to read this file.

Legend: B batch, n rows of one chunk, T block_size, E n_embd, H n_hidden, V vocab size, P params.
The tricks, each said once where it is used:
  - one flat parameter vector (C, W1, b1, W2, b2 end to end, a checkpoint's order): the SGD
    update of all five is one vector add;
  - the bias trick: b is stored as the last row of W (W1b, W2b are views of the flat vector) and
    the layer input carries a ones column, so one matmul gives x @ W + b and one gives [dW; db];
  - the backward is seeded with dloss = -lr * (share of the batch) instead of 1: every gradient
    is linear in it, so the backward writes the update itself;
  - buffers allocated once per chunk size; the intermediates live where the next call reads them
    (emb is written into the input of the first linear layer, h into that of the second);
  - NumPy's own cost per call is most of a small step, so the step makes few calls and cheap
    ones: np.dot (not the matmul ufunc), ufuncs with positional out, array methods (C.take), no
    views or two-dimensional indices made per step, and no Python numbers: each constant and the
    seed is a 0-d array of the dtype (NumPy resolves a Python number's type on every call, which
    costs more than the pass itself on these arrays); a sum over V is a gemv with ones;
  - the step is two closures per chunk size (Engine._program) with every array bound once, and
    each step's chunks are views made once (Chunks.views): no lookups by name in the step;
  - the hidden layer and the logits are made transposed, (H, n) and (V, n): tanh writes h
    straight into the second layer's input, softmax reduces over V along contiguous rows, and
    OpenBLAS's products run faster in this layout; shifted logits are floored (EXP_FLOOR);
  - the rows of many steps are gathered at once (Chunks.gather), with the flat positions of
    their targets and one-hot ones;
  - tanh is NumPy's where it is vectorised with AVX-512, else an exp form (tanh.py);
  - a batch of more than CHUNK rows runs as chunks whose updates are summed (in chunk order), and
    parallel.py can run some chunks in helper processes;
  - a batch of DISTINCT_FROM rows or more runs each distinct window of characters once (a row's
    logits depend on its window alone): the softmax term of dlogits is weighted by how many rows
    share the window, and the one-hot term is the count of each (window, target) pair.
"""
from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
from threadpoolctl import threadpool_limits

from .. import train
from ..contract import SEQUENCES, Model
from ..layers import BN_EPS as EPS_BN
from ..mlp import MLP
from ..train import BLOCK, AdamW, TrainConfig, check_loss, step_block
from .counts import CountsEngine
from .flat import FlatParams
from .recurrent import GRUEngine, LSTMEngine, RNNEngine
from .stack import StackEngine
from .tanh import TANH, pick
from .transformer import BoWEngine, TransformerEngine
from .windows import distinct_rows, tally

CHUNK = 128     # rows per chunk: a chunk's (n, H) arrays stay in the L2 cache, and a batch of 256
                # is already shared by two processes (see benchmarks/README.md)
GATHER = 32768  # rows of several steps' minibatches gathered in one `take`
# batches of at least this many rows train on their distinct windows (the lecture's batch of 4,096
# holds about 1,340; one of 32 about 28, too few repeats to pay for finding them): see
# benchmarks/README.md for the measurement
DISTINCT_FROM = 256

# exp() of a shifted logit below log(smallest normal float) is a denormal number, and x86 CPUs take
# far longer for each multiply that touches one (the lecture's init at H=1000 makes some of the
# softmax denormal). So shifted logits are floored 40 above that limit: only probabilities below
# exp(-47) (float32; 1e-290 in float64) change, by less than themselves, far below the resolution.
EXP_FLOOR = {np.dtype(t): np.array(np.log(np.finfo(t).tiny) + 40, t) for t in (np.float32, np.float64)}


# changes when the fast step's rounding changes, and names the tanh chosen for this CPU; runs
# record it, so --resume can say when a run will not continue bit-identically
ARITHMETIC = (f"5 (tanh: float32 {TANH[np.dtype(np.float32)]}, float64 {TANH[np.dtype(np.float64)]}; "
              f"distinct windows from {DISTINCT_FROM} rows)")


def batch_chunks(batch_size: int):
    """[(first row, end, share of the batch)]: the batch cut into the fewest chunks of at most
    CHUNK rows, of equal size (+-1 row)."""
    n = -(-batch_size // CHUNK)
    edges = [batch_size * k // n for k in range(n + 1)]
    return [(a, b, (b - a) / batch_size) for a, b in itertools.pairwise(edges)]


def gather_group(batch_size: int) -> int:
    """How many steps' minibatch rows are copied out of X, Y at once."""
    return max(1, min(BLOCK, GATHER // batch_size))


class Engine(FlatParams):
    """The flat parameter vector of one MLP shape (FlatParams), views of it, and a chunk's
    forward/backward (two closures per chunk size, _program)."""

    chunked = True      # a batch may run as chunks: each row's gradient depends on that row alone
    windows = True      # ... and its logits on its window alone: a batch may run its distinct windows

    def __init__(self, model: MLP, tanh: str | None = None):
        V, T, E, H = model.vocab_size, model.block_size, model.n_embd, model.n_hidden
        self.V, self.T, self.E, self.H = V, T, E, H
        super().__init__(model)                       # flat, w (views() below needs the sizes above)
        w = self.w
        self.tanh_form, self.tanh = pick(self.flat.dtype, tanh)
        # the views the products read, made once (a view costs a call each time)
        self.W1bT, self.W1T = w.W1b.T, w.W1b[:-1].T               # (H, T*E+1), (H, T*E)
        self.W2, self.W2bT = w.W2b[:-1], w.W2b.T                  # (H, V), (V, H+1)
        self.one, self.ones_V = np.ones((), model.dtype), np.ones(V, model.dtype)   # (), (V,)
        self._bufs: dict[int, SimpleNamespace] = {}   # chunk rows -> buffers

    def views(self, flat):
        """FlatParams' views, and W1b (T*E+1, H) = [W1; b1], W2b (H+1, V) = [W2; b2] (b directly
        follows its W in the vector)."""
        v, at = super().views(flat), self.offset
        v.W1b = flat[at["W1"]:at["b1"] + self.H].reshape(self.T * self.E + 1, self.H)
        v.W2b = flat[at["W2"]:at["b2"] + self.V].reshape(self.H + 1, self.V)
        return v

    @staticmethod
    def picks(y, n: int, out) -> None:
        """Where the targets y (..., n) of n rows sit in counts_flat, (V, n) flattened: y * n + row."""
        np.multiply(y, n, out)
        out += np.arange(n)

    def _buffers(self, n: int):
        """The arrays of a chunk of n rows, made once. embcat1 = [embcat, 1] and h1_t = [h.T; 1]
        carry the bias trick's ones, written once here."""
        b = self._bufs.get(n)
        if b is not None:
            return b
        T, E, H, V, dt = self.T, self.E, self.H, self.V, self.dtype
        embcat1 = np.ones((n, T * E + 1), dt)                     # (n, T*E+1)
        # transposed (see the legend): h_t is a contiguous block of h1_t, and OpenBLAS runs
        # [dW2; db2] = h1_t @ dlogits 1.5x faster with h1_t C-ordered than as a transposed view
        # (8.0 µs against 11.7 at B=32; benchmarks/README.md)
        h1_t = np.ones((H + 1, n), dt)                            # (H+1, n)
        logits_t, dlogits_t = np.empty((V, n), dt), np.empty((V, n), dt)
        onehot, dembcat = np.zeros((n * T, V), dt), np.empty((n, T * E), dt)
        b = self._bufs[n] = SimpleNamespace(
            embcat1=embcat1, embcat1_t=embcat1.T, emb=embcat1[:, :-1].reshape(n, T, E),
            h1_t=h1_t, h_t=h1_t[:-1], hpreact_t=np.empty((H, n), dt),
            counts_t=logits_t, counts=logits_t.T, counts_flat=logits_t.reshape(-1),   # (V, n), (n, V), (V*n,)
            maxes=np.empty(n, dt), sums=np.empty(n, dt), nll=np.empty(n, dt), coef=np.empty(n, dt), d=np.empty((), dt),
            dlogits_t=dlogits_t, dlogits=dlogits_t.T, dlogits_flat=dlogits_t.reshape(-1),
            dh_t=np.empty((H, n), dt), dhpreact_t=np.empty((H, n), dt),
            dembcat=dembcat, demb=dembcat.reshape(n * T, E),
            onehot=onehot, onehot_t=onehot.T, onehot_flat=onehot.reshape(-1),
            rows=np.arange(n), rows_v=np.arange(n * T) * V)
        b.forward, b.backward = self._program(b)
        return b

    def forward_loss(self, xb, yb, pick=None, hot=None) -> tuple[float, SimpleNamespace]:
        """The forward of rows xb (n, T), yb (n,): (their mean loss, the buffers holding it all).
        pick (n,) and hot (n*T,): where the targets sit in counts_flat (y * n + row) and where
        onehot(X) has its ones in onehot_flat ((row * T + t) * V + x), kept for the backward
        (Chunks.gather makes them for many steps at once; None: made here)."""
        n = len(xb)
        b = self._bufs.get(n) or self._buffers(n)
        pick = yb * n + b.rows if pick is None else pick
        hot = xb.reshape(-1) + b.rows_v if hot is None else hot
        b.n = n                                                   # the mean's rows, for backward
        return b.forward(xb, pick, hot, None, None) / n, b

    def forward_windows(self, xb, count, pos, pc, hot, B: int) -> tuple[float, SimpleNamespace]:
        """forward_loss for n distinct windows xb (n, T) of a batch of B rows: count (n,) rows have
        each window; the distinct (window, target) pairs sit at pos (p,) in counts_flat (y * n +
        window), pc (p,) rows each; hot as forward_loss's. -> (these rows' share of the batch's
        mean loss, the buffers)."""
        n = len(xb)
        b = self._bufs.get(n) or self._buffers(n)
        b.n = B
        return b.forward(xb, pos, hot, count, pc) / B, b

    def backward(self, b, xb, yb, dloss: float, g) -> None:
        """After forward_loss(xb, yb) gave b: dloss * the gradient of the chunk's mean loss into g
        (views() of a gradient vector); after forward_windows, of its share of the batch's."""
        b.backward(dloss / b.n, g)

    def _program(self, b):
        """The forward and backward of a chunk, as two closures over its buffers b: every array
        they read is bound once here (looking one up by name each step costs about as much as
        a pass over it). forward(xb, pick, hot, count, pc) -> the sum of the rows' -log softmax[y]
        (count, pc: forward_windows', or None); backward(d, g): d * its gradient into g."""
        dot, take, tanh, hidden, hidden_backward = np.dot, self.w.C.take, self.tanh, self.hidden, self.hidden_backward
        W2bT, W2, W1T, floor, ones_V, one = self.W2bT, self.W2, self.W1T, EXP_FLOOR[self.dtype], self.ones_V, self.one
        emb, hpreact_t, h_t, h1_t, embcat1_t = b.emb, b.hpreact_t, b.h_t, b.h1_t, b.embcat1_t
        c, counts_flat, maxes, sums, nll, seed, coef = b.counts_t, b.counts_flat, b.maxes, b.sums, b.nll, b.d, b.coef
        dl_t, dl_flat, dlogits, dh_t, dhpreact_t = b.dlogits_t, b.dlogits_flat, b.dlogits, b.dh_t, b.dhpreact_t
        dembcat, onehot, onehot_flat, onehot_t, demb = b.dembcat, b.onehot, b.onehot_flat, b.onehot_t, b.demb
        at = hot_at = counts = pcs = None                           # the forward's rows, for the backward

        def forward(xb, pick, hot, count, pc):
            nonlocal at, hot_at, counts, pcs
            at, hot_at, counts, pcs = pick, hot, count, pc
            take(xb, 0, emb)                                        # (n, T, E) C[X], into embcat1
            hidden(b)                                               # (H, n) hpreact.T
            tanh(hpreact_t, h_t)                                    # (H, n) h.T, into h1_t
            dot(W2bT, h1_t, c)                                      # (V, n) (h @ W2 + b2).T
            np.maximum.reduce(c, 0, None, maxes)                    # (n,)
            np.subtract(c, maxes, c)                                # (V, n) logits - max
            picked = counts_flat[pick]                              # the targets' shifted logits
            np.maximum(c, floor, out=c)                             # no denormals (see EXP_FLOOR)
            np.exp(c, c)                                            # (V, n) counts
            dot(ones_V, c, sums)                                    # (n,) counts.sum(1)
            np.log(sums, nll)                                       # (n,) log(sum) of each row
            if count is None:                                       # -log softmax[y] = log(sum) - (logit[y] - max)
                np.subtract(nll, picked, nll)
                return float(np.add.reduce(nll))
            # a window's rows: count * log(sum) - pair count * (logit[y] - max)
            return float(dot(count, nll)) - float(dot(pc, picked))

        def backward(d, g):
            seed[()] = d                                            # () the seed, as an array
            np.divide(seed, sums, coef)                             # (n,) dloss / n / sum
            if counts is not None:
                np.multiply(coef, counts, coef)                     #   times the rows of each window
            np.multiply(c, coef, dl_t)                              # (V, n) dloss * softmax / n
            if pcs is None:
                dl_flat[at] -= seed                                 #   minus dloss * onehot(Y) / n
            else:
                dl_flat[at] -= seed * pcs                           #   minus dloss * pair counts / n
            dot(W2, dl_t, dh_t)                                     # (H, n) (dlogits @ W2.T).T
            dot(h1_t, dlogits, g.W2b)                               # (H+1, V) [dW2; db2]
            np.square(h_t, dhpreact_t)                              # (H, n) h^2
            np.subtract(one, dhpreact_t, dhpreact_t)                # (H, n) 1 - h^2
            np.multiply(dhpreact_t, dh_t, dhpreact_t)               # (H, n) dhpreact.T
            dhprebn = hidden_backward(b, g)                         # (n, H) a transposed view
            dot(dhprebn, W1T, dembcat)                              # (n, T*E)
            dot(embcat1_t, dhprebn, g.W1b)                          # (T*E+1, H) [dW1; db1]
            # dC = onehot(X).T @ demb: the one-hot matmul adds the rows of repeated characters
            # with BLAS (np.add.at is correct but several times slower)
            onehot.fill(0)
            onehot_flat[hot_at] = one                               # (n*T, V)
            dot(onehot_t, demb, g.C)                                # (V, E)
        return forward, backward

    def hidden(self, b):
        np.dot(self.W1bT, b.embcat1_t, b.hpreact_t)               # (H, n) (embcat @ W1 + b1).T

    def hidden_backward(self, b, g):
        return b.dhpreact_t.T                                     # (n, H) no layer between


class BNEngine(Engine):
    """The bn model (bn.BNMLP): a BatchNorm with the batch's Bessel-corrected variance between
    the first linear layer and tanh, forward and backward fused (layers.batchnorm_backward's
    formula). Its statistics couple the rows of a batch, so a batch is never cut into chunks."""

    chunked = windows = False

    def _buffers(self, n: int):
        b = self._bufs.get(n)
        if b is None:
            b = super()._buffers(n)
            dt, H = self.dtype, self.H
            b.hprebn_t, b.xhat_t, b.tmp_t = (np.empty((H, n), dt) for _ in range(3))   # (H, n) as hpreact_t
            b.stat, b.var_inv, b.scale = (np.empty((H, 1), dt) for _ in range(3))      # (H, 1) per unit
            b.gain, b.bias = self.w.bngain.reshape(H, 1), self.w.bnbias.reshape(H, 1)  # (H, 1) views
            b.inv_n, b.bessel, b.eps = (np.array(c, dt) for c in (1 / n, 1 / (n - 1), EPS_BN))   # (), as Engine's
        return b

    def hidden(self, b):
        np.dot(self.W1bT, b.embcat1_t, b.hprebn_t)                # (H, n) (embcat @ W1 + b1).T
        np.add.reduce(b.hprebn_t, 1, None, b.stat, True)          # (H, 1)
        b.stat *= b.inv_n                                         # (H, 1) the batch mean
        np.subtract(b.hprebn_t, b.stat, b.xhat_t)                 # (H, n) x - mean
        np.square(b.xhat_t, b.tmp_t)
        np.add.reduce(b.tmp_t, 1, None, b.var_inv, True)          # (H, 1) sum of squares
        b.var_inv *= b.bessel                                     # Bessel's correction, as bn.py
        b.var_inv += b.eps
        np.sqrt(b.var_inv, b.var_inv)
        np.divide(self.one, b.var_inv, b.var_inv)                 # (H, 1) 1 / sqrt(var + eps)
        b.xhat_t *= b.var_inv                                     # (H, n) bnraw
        np.multiply(b.xhat_t, b.gain, b.hpreact_t)
        b.hpreact_t += b.bias                                     # (H, n)

    def hidden_backward(self, b, g):
        """dhpreact -> dhprebn = gain * var_inv * (dhpreact - dbnbias / n - xhat * dbngain / (n - 1))."""
        H, dhpreact_t, tmp_t = self.H, b.dhpreact_t, b.tmp_t
        dbias, dgain = g.bnbias.reshape(H, 1), g.bngain.reshape(H, 1)
        np.add.reduce(dhpreact_t, 1, None, dbias, True)          # (H, 1) dbnbias
        np.multiply(b.xhat_t, dhpreact_t, tmp_t)
        np.add.reduce(tmp_t, 1, None, dgain, True)               # (H, 1) dbngain
        np.multiply(b.xhat_t, dgain, tmp_t)
        tmp_t *= b.bessel
        np.multiply(dbias, b.inv_n, b.stat)
        tmp_t += b.stat                                           # (H, n)
        np.subtract(dhpreact_t, tmp_t, tmp_t)
        np.multiply(b.gain, b.var_inv, b.scale)
        tmp_t *= b.scale                                          # (H, n) dhprebn.T
        return tmp_t.T                                            # (n, H)


# by the name a spec's `engine` gives: one hidden layer; one with BatchNorm before tanh; layer objects;
# a bigram's pair counts; makemore.py's recurrent cells
ENGINE_CLASS: dict[str, type[FlatParams]] = {"mlp": Engine, "mlp-batchnorm": BNEngine, "stack": StackEngine,
                                             "counts": CountsEngine,
                                             "rnn": RNNEngine, "gru": GRUEngine, "lstm": LSTMEngine,
                                             "bow": BoWEngine, "transformer": TransformerEngine}


def run_chunks(eng: FlatParams, batches, ks, g: int, lr: float):
    """Forward and backward of the chunks ks of the rows batches.Xg[g], batches.Yg[g]: chunk k's share
    of the SGD update into batches.grad_views[k], its mean loss into batches.parts[k]. A chunk whose
    loss is not finite gets no backward: the step is refused before its update (train.check_loss)."""
    if batches.distinct:
        return run_windows(eng, batches, ks, g, lr)
    views, chunks, parts, grad_views = batches.views[g], batches.chunks, batches.parts, batches.grad_views
    for k in ks:
        xk, yk, pk, hk = views[k]
        part, b = eng.forward_loss(xk, yk, pk, hk)
        parts[k] = part
        if math.isfinite(part):
            # dloss = -lr * share: the chunk's gradient comes out as its part of -lr * p.grad
            eng.backward(b, xk, yk, -lr * chunks[k][2], grad_views[k])


def run_windows(eng, batches, ks, g: int, lr: float):
    """run_chunks for a batch gathered as its distinct windows (Chunks.gather_windows): chunk k
    is the windows edges[g, k]:edges[g, k+1] and the pairs pedges[g, k]:pedges[g, k+1]; its part
    is its share of the batch's mean loss."""
    xg, count, pos, pc, hot = batches.Xg[g], batches.count[g], batches.pick[g], batches.pc[g], batches.hot[g]
    edges, pedges, T, B = batches.edges[g], batches.pedges[g], eng.T, batches.batch_size
    for k in ks:
        a, e, pa, pe = edges[k], edges[k + 1], pedges[k], pedges[k + 1]
        part, b = eng.forward_windows(xg[a:e], count[a:e], pos[pa:pe], pc[pa:pe], hot[a * T:e * T], B)
        batches.parts[k] = part
        if math.isfinite(part):
            eng.backward(b, None, None, -lr, batches.grad_views[k])


_BLAS: dict = {"open": 0, "limit": None}   # one BLAS-thread limit shared by every open Chunks


class Chunks:
    """The arrays one training step needs, for batches of `batch_size` rows run as `chunks` in
    this process: each chunk's update (n, P) and loss (n,), the gathered rows of `group` steps,
    Xg (G, B, T) and Yg (G, B) (a sequence model's (G, B, T)), and where each chunk's targets and
    characters sit in its flat buffers, pick (Yg's shape) and hot (G, B*T) (see gather).
    parallel.ChunkPool is the same with helper processes.
    Use as a context manager, or close() it."""

    def __init__(self, model: Model, batch_size: int, distinct: bool | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if model.spec.engine not in ENGINE_CLASS:
            raise ValueError(f"the {model.kind} model has no fast engine")
        self.engine: FlatParams = ENGINE_CLASS[model.spec.engine](model)
        self.batch_size = batch_size
        self.chunks = batch_chunks(batch_size) if self.engine.chunked else [(0, batch_size, 1.0)]
        n, P, G = len(self.chunks), self.engine.flat.size, gather_group(batch_size)
        self.grads = self.array((n, P), model.dtype)
        self.parts = self.array((n,), np.float64)
        tail = (model.block_size,) if model.spec.data == SEQUENCES else ()   # a sequence's targets, (T,)
        self.Xg = self.array((G, batch_size, model.block_size), np.intp)
        self.Yg = self.array((G, batch_size, *tail), np.intp)
        self.pick = self.array((G, batch_size, *tail), np.intp)
        self.hot = self.array((G, batch_size * model.block_size), np.intp)
        self.grad_views = [self.engine.views(row) for row in self.grads]
        # each step's chunks as views (xk, yk, pick, hot) of the arrays above, made once: slicing
        # them every step costs more than a chunk's smallest passes
        T = model.block_size
        self.views = [[(self.Xg[g, a:e], self.Yg[g, a:e], self.pick[g, a:e], self.hot[g, a * T:e * T])
                       for a, e, _ in self.chunks] for g in range(G)]
        self.processes = 1            # the processes a step's chunks are cut between (cut)
        # distinct (None: from DISTINCT_FROM rows, where the engine can): each step's distinct
        # windows, edges[g] of its nchunk[g] chunks, each window's rows count[g], and its distinct
        # (window, target) pairs: their places pick[g], rows pc[g], the edges pedges[g] of each chunk's
        can = self.engine.windows and self.engine.chunked
        self.distinct = can and (batch_size >= DISTINCT_FROM if distinct is None else distinct)
        self.nchunk = self.array((G,), np.intp)
        self.nchunk[:] = n
        if self.distinct:
            self.edges, self.pedges = self.array((G, n + 1), np.intp), self.array((G, n + 1), np.intp)
            self.count, self.pc = self.array((G, batch_size), model.dtype), self.array((G, batch_size), model.dtype)
        self.closed = False
        # One BLAS thread while open (forked helpers inherit it): a chunk's products are too small
        # for two, and beside helper processes OpenBLAS's idle threads spin on the cores the
        # helpers need. Open Chunks share one limit: the first sets it, the last to close
        # restores the library's threads. Taken last: a Chunks that failed to build holds none.
        if _BLAS["open"] == 0:
            _BLAS["limit"] = threadpool_limits(1, user_api="blas")
        _BLAS["open"] += 1

    @staticmethod
    def array(shape, dtype):
        return np.zeros(shape, dtype)

    def gather(self, X, Y, ix):
        """The rows ix (m, B) of X, Y for the next m <= G steps into Xg[:m], Yg[:m], with each
        chunk's pick (where counts_flat holds the target: the engine's picks) and hot ((row * T + t) * V
        + x: where onehot_flat holds a one), so that a step indexes flat arrays once instead of
        building two-dimensional indices."""
        if self.distinct:
            return self.gather_windows(X, Y, ix)
        m, T, V = len(ix), self.engine.T, self.engine.V
        Xg, Yg = self.Xg[:m], self.Yg[:m]
        np.copyto(Xg, X.take(ix, axis=0))                         # (m, B, T) (take: faster than
        np.copyto(Yg, Y.take(ix, axis=0))                         #   X[ix]), (m, B) or (m, B, T)
        for a, e, _ in self.chunks:
            n = e - a
            self.engine.picks(Yg[:, a:e], n, self.pick[:m, a:e])  # (m, n)
            hot = self.hot[:m, a * T:e * T]                       # (m, n*T)
            np.multiply(np.arange(n * T), V, hot)
            hot += Xg[:, a:e].reshape(m, n * T)

    def gather_windows(self, X, Y, ix):
        """gather for a batch run as its distinct windows: step g's U distinct windows into
        Xg[g, :U] (ranked by their characters), cut into nchunk[g] chunks of about CHUNK windows
        at edges[g]; the rows of each in count[g]; its distinct (window, target) pairs, ranked
        by window then target, at pick[g] (y * n + window within its chunk of n), their rows in
        pc[g], each chunk's at pedges[g]; hot as gather's, within each window's chunk. All m
        steps at once: S windows and P pairs over the m steps, numbered step by step."""
        m, B, T, V, nmax = len(ix), self.batch_size, self.engine.T, self.engine.V, len(self.chunks)
        Xr, Yr = X.take(ix.reshape(-1), axis=0), Y.take(ix.reshape(-1))   # (m*B, T), (m*B,)
        W, window, first = distinct_rows(Xr, V)                             # every row's window, ranked
        key, count, at = tally(np.repeat(np.arange(m) * W, B) + window, m * W)   # (step, window): (S,)
        wstep, chars = key // W, Xr[first[key % W]]                         # (S,) ascending, (S, T)
        S = len(key)
        U = np.bincount(wstep, minlength=m)                                 # (m,) windows of each step
        u = np.arange(S) - (np.cumsum(U) - U)[wstep]                        # (S,) each one's place in its step
        n = np.maximum(1, -(-U // CHUNK))                                   # (m,) chunks of each step
        self.nchunk[:m] = n
        k = np.arange(nmax + 1)
        self.edges[:m] = np.minimum(U[:, None] * k // n[:, None], U[:, None])   # (m, nmax+1)
        Uw, nw = U[wstep], n[wstep]
        kw = ((u + 1) * nw - 1) // Uw                                       # (S,) each window's chunk
        a = Uw * kw // nw                                                   # (S,) its chunk's first window
        size = Uw * (kw + 1) // nw - a                                      # (S,) and its windows
        slot = wstep * B + u                                                # (S,) where it goes in (m*B,)
        self.Xg[:m].reshape(m * B, T)[slot] = chars
        self.count[:m].reshape(-1)[slot] = count
        self.hot[:m].reshape(m * B, T)[slot] = ((u - a)[:, None] * T + np.arange(T)) * V + chars
        pair, pc, _ = tally(at * V + Yr, S * V, False)                      # (window, target): (P,)
        pw = pair // V                                                      # (P,) each pair's window
        pstep = wstep[pw]
        npairs = np.bincount(pstep, minlength=m)                            # (m,)
        pslot = pstep * B + np.arange(len(pair)) - (np.cumsum(npairs) - npairs)[pstep]
        self.pick[:m].reshape(-1)[pslot] = pair % V * size[pw] + u[pw] - a[pw]
        self.pc[:m].reshape(-1)[pslot] = pc
        per_chunk = np.bincount(pstep * nmax + kw[pw], minlength=m * nmax).reshape(m, nmax)
        self.pedges[:m, 0] = 0
        np.cumsum(per_chunk, 1, out=self.pedges[:m, 1:])

    def runner(self):
        """-> (run, update): run(g, seed) runs step g's chunks, here and in the helpers (start,
        cut, wait), each seeded with -seed * its share of the batch, sums their updates in chunk
        order into update (P,) and returns the batch's mean loss. A chunk whose loss is not finite
        gets no backward (run_chunks)."""
        eng, parts, grads, nchunk, nmax, distinct = (self.engine, self.parts, self.grads, self.nchunk,
                                                     len(self.chunks), self.distinct)
        update = grads[0] if nmax == 1 else np.empty_like(eng.flat)
        flat, start, wait, cut = eng.flat, self.start, self.wait, self.cut
        shares = [1.0] * nmax if distinct else [c[2] for c in self.chunks]   # distinct: parts are shares

        def run(g, seed):
            start(g, seed, flat)                                # helpers run their chunks ...
            run_chunks(eng, self, cut(g), g, seed)
            wait()                                              # ... while we run ours
            n, loss = int(nchunk[g]) if distinct else nmax, 0.0   # distinct: this step's chunks
            for k in range(n):
                loss += float(parts[k]) * shares[k]             # the batch mean, chunk by chunk
            if nmax > 1:                                        # row by row in chunk order,
                np.add.reduce(grads[:n], 0, None, update)       #   whoever ran the chunk
            return loss
        return run, update

    def cut(self, g: int, p: int = 0) -> range:
        """The chunks of step g that process p (0: this one) runs: a contiguous share of them (of
        a batch of distinct windows, that step's; else the same every step)."""
        n = int(self.nchunk[g])
        return range(n * p // self.processes, n * (p + 1) // self.processes)

    def fits(self, model: MLP, batch_size: int) -> None:
        if self.closed:
            raise ValueError("these batches are closed")
        if batch_size != self.batch_size or self.engine.dtype != model.dtype or self.engine.shapes != {
                k: p.shape for k, p in model.params.items()}:
            raise ValueError("these batches were made for another batch size, dtype or model")

    def start(self, g: int, lr: float, flat):
        """Helpers (parallel.ChunkPool) start on the rows Xg[g]; here nothing to do."""

    def wait(self):
        """Until the helpers have written their chunks; here nothing to wait for."""

    def close(self):
        if self.closed:
            return
        self.closed = True
        _BLAS["open"] -= 1
        if _BLAS["open"] == 0:
            _BLAS["limit"].restore_original_limits()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FlatAdamW:
    """train.AdamW on an engine's flat parameter vector: its moments end to end in the same order,
    so a step is a few vector operations; loaded from and stored to the AdamW object the run keeps
    (its moments by name, and t), so both engines continue each other's runs."""

    def __init__(self, eng, opt: AdamW):
        self.opt, self.m, self.v = opt, np.empty_like(eng.flat), np.empty_like(eng.flat)
        self.mw, self.vw = eng.views(self.m), eng.views(self.v)
        self.decay = np.concatenate([np.full(math.prod(s), float(k in opt.decay), eng.dtype)
                                     for k, s in eng.shapes.items()])        # (P,) 1 where weight decay applies
        self.tmp = np.empty_like(eng.flat)

    def load(self):
        for k in self.opt.m:
            getattr(self.mw, k)[...], getattr(self.vw, k)[...] = self.opt.m[k], self.opt.v[k]

    def store(self):
        for k in self.opt.m:
            self.opt.m[k][...], self.opt.v[k][...] = getattr(self.mw, k), getattr(self.vw, k)

    def step(self, flat, g, lr: float):
        """AdamW's step on flat with gradient g (P,), in train.AdamW's order."""
        o, m, v, tmp = self.opt, self.m, self.v, self.tmp
        o.t += 1
        if o.weight_decay:
            np.multiply(self.decay, lr * o.weight_decay, tmp)
            np.multiply(flat, tmp, tmp)
            flat -= tmp                                           # p *= 1 - lr * wd, where it applies
        m *= o.beta1
        np.multiply(g, 1 - o.beta1, tmp)
        m += tmp                                                  # m = b1 m + (1 - b1) g
        v *= o.beta2
        np.multiply(g, g, tmp)
        tmp *= 1 - o.beta2
        v += tmp                                                  # v = b2 v + (1 - b2) g^2
        np.sqrt(v, tmp)
        tmp *= 1 / math.sqrt(1 - o.beta2 ** o.t)
        tmp += o.eps
        np.divide(m, tmp, tmp)
        tmp *= lr / (1 - o.beta1 ** o.t)
        flat -= tmp                                               # p -= step * m / (sqrt(v) / root + eps)


def sgd(model: MLP, X, Y, cfg: TrainConfig, lossi=None, start: int = 0, stop: int | None = None,
        on_step=None, batches: Chunks | None = None, opt=None):
    """train.sgd's steps, faster: same contract, same minibatches, results equal to round-off.

    batches: a Chunks (or parallel.ChunkPool, whose helper processes run some chunks) made for this
    model's shape and the batch's rows (cfg.rows), to reuse across calls; None makes a Chunks for this call.
    opt: train.sgd's (an AdamW keeps its moments across calls), None for cfg's.
    The model's params are copied into the engine's flat vector and back when the call ends
    (also by an exception: a Diverged step's update is never applied)."""
    if batches is None:
        with Chunks(model, cfg.rows(len(X))) as own:
            return sgd(model, X, Y, cfg, lossi, start, stop, on_step, own, opt)
    batches.fits(model, cfg.rows(len(X)))
    eng, N, G = batches.engine, len(X), len(batches.Xg)
    stop = cfg.steps if stop is None else stop
    lossi = np.zeros(cfg.steps, np.float32) if lossi is None else lossi
    run, update = batches.runner()                                      # update: the chunks' summed update
    lr_at, flat, reg, V = cfg.lr_at, eng.flat, cfg.reg, eng.V
    opt = train.optimizer(cfg, model.params) if opt is None else opt
    # AdamW needs the gradient itself: the backward is seeded with dloss = -1, so update = -grad
    adam = FlatAdamW(eng, opt) if isinstance(opt, AdamW) else None
    if cfg.reg:     # reg * mean(p**2) of each parameter is reg * sum(flat**2 * inv_size): one dot, one axpy
        inv_size = np.concatenate([np.full(math.prod(s), 1 / math.prod(s)) for s in eng.shapes.values()])
        decay = (2 * cfg.reg * inv_size).astype(flat.dtype)                  # (P,) d(penalty) / d(flat) / flat
    eng.load(model)
    if adam is not None:
        adam.load()
    # exp(2x) in the exp form of tanh overflows to inf on purpose
    with np.errstate(over="ignore"):
        try:
            for step in range(start, stop):
                i = step % BLOCK
                if step == start or i % G == 0:
                    if step == start or i == 0:
                        block = step_block(cfg, step // BLOCK, N)              # (BLOCK, B) row indices
                    batches.gather(X, Y, block[i - i % G: i - i % G + G])      # the next G steps' rows
                g = i % G
                lr = lr_at(step)
                seed = 1.0 if adam is not None else lr                     # the backward's -seed * grad
                loss = run(g, seed)                                        # the update into `update`
                if reg:
                    loss += reg * float(np.dot(np.square(flat, dtype=np.float64), inv_size))
                check_loss(lossi, step, loss, cfg, V)
                if reg:
                    update -= seed * decay * flat                          # the penalty's share of -seed * grad
                if adam is not None:
                    np.negative(update, update)                            # grad
                    adam.step(flat, update, lr)
                else:
                    flat += update                                         # p.data += -lr * p.grad, all five
                lossi[step] = loss
                if on_step is not None and on_step(step, loss):
                    return lossi, step + 1
            return lossi, stop
        finally:
            eng.store(model)
            if adam is not None:
                adam.store()


def gradients(model: MLP, X, Y, lr: float = 0.1) -> dict:
    """The fast engine's gradient of the mean loss over rows X (B, T), Y (B,) for each parameter:
    the update it computes at rate lr, divided by -lr (for `npmlp gradcheck`'s fast column).
    NaN everywhere when the loss is not finite (training never runs that backward)."""
    with Chunks(model, len(X)) as batches, np.errstate(over="ignore"):
        eng = batches.engine
        eng.load(model)
        batches.gather(np.asarray(X), np.asarray(Y), np.arange(len(X))[None])
        run_chunks(eng, batches, batches.cut(0), 0, lr)
    total = np.add.reduce(batches.grads[:batches.nchunk[0]], axis=0) / -lr
    if not np.isfinite(batches.parts[:batches.nchunk[0]]).all():
        total.fill(np.nan)
    v = eng.views(total)
    return {k: getattr(v, k) for k in eng.shapes}
