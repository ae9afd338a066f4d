"""The fast engines of makemore.py's recurrent models (recurrent.RNN, GRU and LSTM) with train.sgd:
their training step rearranged for speed.

Same maths, same minibatches, same divergence rule (engine.sgd runs them); only the order of the
floating-point operations differs, so the tests hold them to the reference: float64 to 1e-12
relative per step, 1e-10 over 1,000 steps. A student never needs to read this file.

Legend: n rows of the batch, T positions (block_size), U the positions a step runs (below), R = U*n,
E n_embd, H n_hidden, K a cell's pre-activation width (RNN H; GRU 3H: r, z, hbar; LSTM 4H: i, f,
g, o), V vocab size.
The tricks, each said once where it is used:
  - only the first U positions run, U = 1 + the last position where some row's target counts: a
    state after it reaches no target (the recurrence runs forwards), so its loss and gradients are
    exactly those of all T (names.txt's batches of 32 need 10.5 of 16 positions on average);
  - time-major: every per-position array is (T, n, ...), so each step reads and writes contiguous
    (n, H) blocks, and the first U of them are one (R, ...) array for the products over positions;
  - a cell's product with its input, x_t @ W_x + b, reads x_t only as a character: it is a row of
    the table wte @ W_x + b (V, K), made once a step and gathered for every position with one take
    (the input half of every cell's product, done up front for all positions, from V rows instead
    of R); in the backward dW_x, db and dwte all follow from G = onehot(X).T @ dpre (V, K);
  - the loop over positions does only hprev @ W_h and elementwise work, on buffers made once per
    batch size (and views of them once per U), with ufuncs taking `out` by position;
  - sigmoid(x) = 1 / (1 + exp(-x)) with the sign folded into copies of the weights and the table
    (exact: a power of two), and where the tanh is the exp form (tanh.py), tanh(x) =
    2 / (1 + exp(-2x)) - 1 with its -2 folded the same way: three and four passes;
  - what the backward multiplies by and the forward already knows (tanh', the gates' derivatives)
    is computed for all positions at once after the loop, not position by position;
  - each recurrent weight's gradient is one product over all positions after the BPTT loop: the
    stacked hprevs (the forward's states, where they are) against the stacked dpre;
  - the output layer, softmax and its backward run once over all R positions, the logits made as
    their transpose (V, R) (as engine.py does); the masked mean is a dot with the mask;
  - the backward is seeded with dloss (engine.sgd's -lr, or -1 for AdamW) and writes into the
    gradient vector's views directly.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import ClassVar

import numpy as np

from ..layers import IGNORE
from ..train import EVAL_CHUNK
from .flat import FlatParams
from .tanh import pick


class RecurrentEngine(FlatParams):
    """The flat parameter vector of one recurrent model (FlatParams) and its step (engine.Engine's
    contract: picks, forward_loss, backward). The output layer and the masked mean over the
    positions are shared; the table, the loop over positions and the inputs' gradients are the
    cell's (a subclass: cell_buffers, cell_views, cell_slabs, cells, cells_backward, input_backward)."""

    chunked = False     # the mean is over the whole batch's unmasked targets: its rows are coupled
    gates: ClassVar[int] = 1          # K = gates * H

    def __init__(self, model, tanh: str | None = None):
        V, T, E, H = model.vocab_size, model.block_size, model.n_embd, model.n_hidden
        self.V, self.T, self.E, self.H, self.K = V, T, E, H, self.gates * H
        super().__init__(model)
        self.tanh_form, _ = pick(self.dtype, tanh)                # this CPU's (tanh.py), or `tanh`
        self.exp_form = self.tanh_form == "exp"
        w, dt = self.w, self.dtype
        # the loops' constants as 0-d arrays of the dtype: a Python number is converted on every
        # call, which costs more than the arithmetic on these arrays
        self.one, self.two, self.minus_two = (np.full((), c, dt) for c in (1, 2, -2))
        self.tanh = self.exp_tanh if self.exp_form else np.tanh
        self.wte, self.W_lm, self.b_lm = (getattr(w, k) for k in ("wte.weight", "lm_head.weight", "lm_head.bias"))
        self.b_lm_col, self.W_lmT = self.b_lm[:, None], self.W_lm.T   # (V, 1), (V, H) views
        self.table = np.empty((V, self.K), dt)
        self._bufs: dict[int, SimpleNamespace] = {}               # batch rows -> buffers
        self._slabs: tuple = (None, None)                         # (g, its slabs by name)

    def picks(self, y, n: int, out) -> None:
        """Where the targets y (..., n, T) sit in counts_flat, the logits (V, R) flattened, R = U * n
        (U: the batch's positions up to its last target that counts), positions time-major:
        y * R + t * n + row. A masked target (-1) picks its own position's logit of character 0
        (the mask weighs it 0), so that no two picks share a place."""
        T = self.T
        upto = np.max((y != IGNORE) * np.arange(1, T + 1), axis=(-2, -1), keepdims=True)   # (..., 1, 1) U
        np.maximum(y, 0, out=out)
        out *= upto * n
        out += np.arange(T) * n + np.arange(n)[:, None]           # (n, T) t * n + row

    def _buffers(self, n: int) -> SimpleNamespace:
        """The arrays of a batch of n rows for all T positions, made once; _views(b, U) holds views
        of their first U positions. hs_t[t] (n, H) is the state step t reads, hs_t[t + 1] the one it
        writes (lists of views: a view costs a call each time it is made)."""
        T, H, V, K, dt = self.T, self.H, self.V, self.K, self.dtype
        hs = np.zeros((T + 1, n, H), dt)                          # start, then h_0 .. h_T-1
        xin, dhidden = np.empty((T, n, K), dt), np.empty((T, n, H), dt)
        b = self._bufs[n] = SimpleNamespace(
            n=n, at={}, hs=hs, hs_t=list(hs), xin=xin, xin_t=list(xin), dhidden=dhidden, dhid_t=list(dhidden),
            counts=np.empty(V * T * n, dt), dlogits=np.empty(V * T * n, dt), onehot=np.zeros(V * T * n, dt),
            maxes=np.empty(T * n, dt), sums=np.empty(T * n, dt), rowscale=np.empty(T * n, dt),
            mask=np.empty((T, n), dt), per_t=np.empty(T, dt), nll=np.empty((T, n), dt), picked=np.empty((T, n), dt),
            mvals=np.empty((T, n), dt), hot=np.empty((T, n), np.intp), positions=np.arange(T * n).reshape(T, n),
            own_pick=np.empty((n, T), np.intp), tmp=np.empty((n, H), dt), colsum=np.empty(K, dt))
        self.cell_buffers(b)
        return b

    def _views(self, b: SimpleNamespace, U: int) -> SimpleNamespace:
        """Views of b's first U positions (R = U * n rows), made once per U."""
        n, H, V = b.n, self.H, self.V
        R = U * n
        counts_t, dlogits_t = b.counts[:V * R].reshape(V, R), b.dlogits[:V * R].reshape(V, R)
        v = b.at[U] = SimpleNamespace(
            U=U, R=R, count=0.0, pick_t=None, xT=None,
            hidden=b.hs[1:U + 1].reshape(R, H), hprev=b.hs[:U].reshape(R, H), xin=b.xin[:U],
            counts_t=counts_t, counts_flat=b.counts[:V * R], maxes=b.maxes[:R], sums=b.sums[:R],
            sums_tn=b.sums[:R].reshape(U, n), mask=b.mask[:U], mask_flat=b.mask[:U].reshape(R), nll=b.nll[:U],
            nll_flat=b.nll[:U].reshape(R), picked=b.picked[:U], rowscale=b.rowscale[:R], mvals=b.mvals[:U],
            dlogits_t=dlogits_t, dlogits=dlogits_t.T, dlogits_flat=b.dlogits[:V * R],
            dhidden=b.dhidden[:U].reshape(R, H),
            onehot_t=b.onehot[:V * R].reshape(V, R), onehot_flat=b.onehot[:V * R], hot=b.hot[:U],
            positions=b.positions[:U])
        self.cell_views(b, v)
        return v

    def forward_loss(self, xb, yb, pick=None, hot=None) -> tuple[float, SimpleNamespace]:
        """The forward of rows xb (n, T), yb (n, T) (-1 masked): (the mean loss over the targets
        that count, the buffers holding it all). pick (n, T): where the targets sit in counts_flat
        (picks; None: made here). hot is not read: this engine's one-hot of X is time-major and
        U positions long (made in the backward), not Chunks.gather's."""
        n = len(xb)
        b = self._bufs.get(n) or self._buffers(n)
        np.not_equal(yb.T, IGNORE, b.mask)                        # (T, n) 1 where a target counts
        np.add.reduce(b.mask, 1, None, b.per_t)                   # (T,) targets at each position
        count = float(np.add.reduce(b.per_t))
        if not count:
            raise ValueError(f"every one of the {yb.size} targets is -1 (masked): the mean over no targets is "
                             f"undefined")
        U = int(np.flatnonzero(b.per_t)[-1]) + 1                  # the positions that reach a target
        v = b.at.get(U) or self._views(b, U)
        if pick is None:
            pick = b.own_pick
            self.picks(yb, n, pick)
        if xb.dtype != np.intp:                                   # the one-hot's positions: x * R + ...
            xb = xb.astype(np.intp)
        v.count, v.pick_t, v.xT = count, pick.T[:U], xb.T[:U]     # (U, n) in the positions' order
        self.cells(b, v)                                          # (R, H) hidden, every position
        c, maxes = v.counts_t, v.maxes
        # the logits are made as their transpose (V, R): each reduction over V then adds whole
        # contiguous rows of R numbers instead of R short rows of V
        np.dot(self.W_lmT, v.hidden.T, c)                         # (V, R) (hidden @ W_lm).T
        np.add(c, self.b_lm_col, c)                               #   + b_lm
        np.maximum.reduce(c, 0, None, maxes)                      # (R,)
        np.subtract(c, maxes, c)                                  # (V, R) logits - max
        # take with `out` copies the whole output first in its default mode ("raise"); "clip" does
        # not, and every pick is in range by construction
        v.counts_flat.take(v.pick_t, 0, v.picked, "clip")         # (U, n) the targets' shifted logits
        np.exp(c, c)                                              # (V, R) counts
        np.add.reduce(c, 0, None, v.sums)                         # (R,) counts.sum(1)
        np.log(v.sums_tn, v.nll)                                  # (U, n) -log softmax[y] =
        np.subtract(v.nll, v.picked, v.nll)                       #   log(sum) - (logit[y] - max)
        # the masked mean: a dot with the mask (a masked position's nll is finite, weighed 0)
        return float(np.dot(v.mask_flat, v.nll_flat)) / count, v

    def backward(self, v, xb, yb, dloss: float, g) -> None:
        """After forward_loss(xb, yb) gave v: dloss * the gradient of the mean loss into g (views()
        of a gradient vector)."""
        b, s = self._bufs[len(xb)], self._grad_slabs(g)
        d = dloss / v.count
        # dlogits = dloss * (softmax - onehot(Y)) / count at the positions that count, 0 elsewhere
        np.divide(d, v.sums, v.rowscale)                          # (R,) dloss / count / sum
        np.multiply(v.rowscale, v.mask_flat, v.rowscale)          #   0 where masked
        np.multiply(v.counts_t, v.rowscale, v.dlogits_t)              # (V, R) dloss * softmax * mask / count
        np.multiply(v.mask, d, v.mvals)                           # (U, n)
        v.dlogits_flat[v.pick_t] -= v.mvals                       #   minus dloss * onehot(Y) * mask / count
        np.dot(v.dlogits, self.W_lmT, v.dhidden)                  # (R, H) dlogits @ W_lm.T
        np.dot(v.hidden.T, v.dlogits, s.W_lm)                     # (H, V) hidden.T @ dlogits
        np.add.reduce(v.dlogits_t, 1, None, s.b_lm)               # (V,)
        self.cells_backward(b, v, s)
        # the one-hot of X, time-major: onehot_t[x, t * n + row] = 1, for G = onehot(X).T @ dpre
        # (V, K), which sums the rows of repeated characters with BLAS (np.add.at is correct but slower)
        v.onehot_flat.fill(0)
        np.multiply(v.xT, v.R, v.hot)
        np.add(v.hot, v.positions, v.hot)                         # (U, n) x * R + t * n + row
        v.onehot_flat[v.hot] = 1                                  # (V, R)
        self.input_backward(b, v, s)

    def exp_tanh(self, x, out) -> None:
        """tanh(x) = 2 / (1 + exp(-2x)) - 1 into out: tanh.py's exp form (exp(-2x) overflows to inf
        for x << 0, which gives -1; sgd runs with overflow warnings off)."""
        np.multiply(x, self.minus_two, out)
        np.exp(out, out)
        np.add(out, self.one, out)
        np.divide(self.two, out, out)
        np.subtract(out, self.one, out)

    def _grad_slabs(self, g) -> SimpleNamespace:
        """The gradient arrays the backward writes, as views of g, made once per g (run_chunks
        passes the same views every step)."""
        if self._slabs[0] is not g:
            s = SimpleNamespace(wte=getattr(g, "wte.weight"), W_lm=getattr(g, "lm_head.weight"),
                                b_lm=getattr(g, "lm_head.bias"))
            self.cell_slabs(g, s)
            self._slabs = (g, s)
        return self._slabs[1]

    # ------------------------------------------------------------------------- what a cell writes

    def cell_buffers(self, b: SimpleNamespace) -> None:
        """The cell's arrays for all T positions, into b."""
        raise NotImplementedError

    def cell_views(self, b: SimpleNamespace, v: SimpleNamespace) -> None:
        """Views of their first v.U positions, into v."""
        raise NotImplementedError

    def cell_slabs(self, g, s: SimpleNamespace) -> None:
        """The cell's gradient views of g, into s."""
        raise NotImplementedError

    def cells(self, b: SimpleNamespace, v: SimpleNamespace) -> None:
        """The table, then the loop over v.U positions: every hidden state into b.hs."""
        raise NotImplementedError

    def cells_backward(self, b: SimpleNamespace, v: SimpleNamespace, s: SimpleNamespace) -> None:
        """Backprop through time from v.dhidden: every dpre, the starts' and recurrent weights' gradients."""
        raise NotImplementedError

    def input_backward(self, b: SimpleNamespace, v: SimpleNamespace, s: SimpleNamespace) -> None:
        """With v.onehot_t made: the gradients of the input weights, the biases and wte."""
        raise NotImplementedError


def inference_loss(eng: RecurrentEngine, model, X, Y, chunk: int = EVAL_CHUNK) -> float:
    """train.evaluate's mean loss over every target of X (N, T), Y (N, T) that is not -1 (NaN for
    none), by the engine's forward (no dropout or batch statistics: inference is training's
    forward), `chunk` rows at a time. The rows are taken in the order of how far their targets
    reach, so that each chunk runs only as many positions as its own longest name needs."""
    X, Y = np.asarray(X, np.intp), np.asarray(Y, np.intp)
    counts = Y != IGNORE                                          # (N, T)
    reach = np.max(counts * np.arange(1, Y.shape[1] + 1), axis=1, initial=0)   # (N,) 1 + the last target
    order = np.argsort(reach, kind="stable")
    eng.load(model)
    total, count = 0.0, 0
    with np.errstate(over="ignore"):                              # the exp forms overflow to inf on purpose
        for i in range(0, len(order), chunk):
            rows = order[i:i + chunk]
            n = int(np.count_nonzero(counts[rows]))
            if n:
                total += eng.forward_loss(X[rows], Y[rows])[0] * n
                count += n
    return total / count if count else float("nan")


def stacked(a, U: int):
    """The first U positions of a (T, n, k) array as one (U * n, k) array (the same memory)."""
    return a[:U].reshape(-1, a.shape[-1])


# ----------------------------------------------------------------------------- makemore.py's RNNCell

class RNNEngine(RecurrentEngine):
    """makemore.py's RNN (recurrent.RNN): h_t = tanh(x_t @ W_x + b + h_t-1 @ W_h), W = [W_x; W_h]."""

    gates = 1

    def __init__(self, model, tanh: str | None = None):
        super().__init__(model, tanh)
        w, E, H, dt = self.w, self.E, self.H, self.dtype
        W = getattr(w, "cell.xh_to_h.weight")                     # (E+H, H)
        self.Wx, self.Wh, self.b, self.start = W[:E], W[E:], getattr(w, "cell.xh_to_h.bias"), w.start
        # the exp form's tanh(u) = 2 / (1 + exp(-2u)) - 1 reads -2u: the -2 goes into the table and
        # a copy of W_h, so the loop makes -2u itself
        self.Wh_s = np.empty((H, H), dt) if self.exp_form else self.Wh      # -2 W_h, or W_h
        # BLAS runs the loop's small products with a C-ordered right operand faster than with a
        # transposed view (the LSTM's by a third): the backward's W_h.T is a copy, made in the
        # forward each step
        self.WhT = np.empty((H, H), dt)                           # W_h.T

    def cell_buffers(self, b):
        T, n, H, dt = self.T, b.n, self.H, self.dtype
        b.dpre, b.dtanh = np.empty((T, n, H), dt), np.empty((T, n, H), dt)     # dhpreact, 1 - h^2
        b.dpre_t, b.dtanh_t = list(b.dpre), list(b.dtanh)
        b.G = np.empty((self.V, H), dt)

    def cell_views(self, b, v):
        v.dpre, v.dtanh = stacked(b.dpre, v.U), stacked(b.dtanh, v.U)

    def cell_slabs(self, g, s):
        W = getattr(g, "cell.xh_to_h.weight")
        s.Wx, s.Wh, s.b, s.start = W[:self.E], W[self.E:], getattr(g, "cell.xh_to_h.bias"), g.start[0]

    def cells(self, b, v):
        table, Wh_s, one, two, exp_form = self.table, self.Wh_s, self.one, self.two, self.exp_form
        np.dot(self.wte, self.Wx, table)                          # (V, H) wte @ W_x
        np.add(table, self.b, table)                              #   + b
        if exp_form:
            np.multiply(table, self.minus_two, table)
            np.multiply(self.Wh, self.minus_two, Wh_s)
        np.copyto(self.WhT, self.Wh.T)                            # for the backward
        table.take(v.xT, 0, v.xin, "clip")                        # (U, n, H) x_t @ W_x + b, every position
        hs, xin = b.hs_t, b.xin_t
        np.copyto(hs[0], self.start)                              # (n, H) h_-1 = start
        for t in range(v.U):
            h = hs[t + 1]
            np.dot(hs[t], Wh_s, h)                                # (n, H) h_t-1 @ W_h
            np.add(h, xin[t], h)                                  #   + x_t @ W_x + b (both -2x in the exp form)
            if exp_form:
                np.exp(h, h)
                np.add(h, one, h)
                np.divide(two, h, h)
                np.subtract(h, one, h)                            # (n, H) h_t = tanh(hpreact)
            else:
                self.tanh(h, h)

    def cells_backward(self, b, v, s):
        U, dpre, dh, dtanh, tmp, WhT = v.U, b.dpre_t, b.dhid_t, b.dtanh_t, b.tmp, self.WhT
        np.square(v.hidden, v.dtanh)
        np.subtract(1, v.dtanh, v.dtanh)                          # (R, H) tanh' = 1 - h^2, every position
        np.multiply(dtanh[U - 1], dh[U - 1], dpre[U - 1])         # (n, H) dhpreact of the last position
        for t in range(U - 1, 0, -1):
            np.dot(dpre[t], WhT, tmp)                             # (n, H) dhprev = dhpreact_t @ W_h.T
            np.add(dh[t - 1], tmp, dh[t - 1])                     #   + dhidden from position t-1's output
            np.multiply(dtanh[t - 1], dh[t - 1], dpre[t - 1])     # (n, H) dhpreact_t-1
        # dstart = (dhpreact_0 @ W_h.T) summed over the rows = (dhpreact_0 summed) @ W_h.T
        np.add.reduce(dpre[0], 0, None, b.colsum)                 # (H,)
        np.dot(b.colsum, WhT, s.start)                            # (H,)
        np.dot(v.hprev.T, v.dpre, s.Wh)                           # (H, H) dW_h = hprev.T @ dhpreact, all positions

    def input_backward(self, b, v, s):
        np.dot(v.onehot_t, v.dpre, b.G)                           # (V, H) G = onehot(X).T @ dhpreact
        np.dot(self.wte.T, b.G, s.Wx)                             # (E, H) dW_x = emb.T @ dhpreact = wte.T @ G
        np.add.reduce(b.G, 0, None, s.b)                          # (H,) db
        np.dot(b.G, self.Wx.T, s.wte)                             # (V, E) dwte = onehot.T @ (dhpreact @ W_x.T)


# ----------------------------------------------------------------------------- makemore.py's GRUCell

class GRUEngine(RecurrentEngine):
    """makemore.py's GRU (recurrent.GRU): r, z = sigmoid(x_t @ W_x + b + h_t-1 @ W_h) of xh_to_r,
    xh_to_z; hbar = tanh(x_t @ Wh_x + bh + (r * h_t-1) @ Wh_h); h_t = h_t-1 + z * (hbar - h_t-1)
    (makemore.py's (1 - z) * hprev + z * hbar). The table's columns are r, z, hbar (V, 3H)."""

    gates = 3

    def __init__(self, model, tanh: str | None = None):
        super().__init__(model, tanh)
        w, E, H, dt = self.w, self.E, self.H, self.dtype
        Wr, Wz, Wh = (getattr(w, f"cell.xh_to_{k}.weight") for k in ("r", "z", "hbar"))   # (E+H, H) each
        self.br, self.bz, self.bh = (getattr(w, f"cell.xh_to_{k}.bias") for k in ("r", "z", "hbar"))
        self.Wr_x, self.Wr_h, self.Wz_x, self.Wz_h = Wr[:E], Wr[E:], Wz[:E], Wz[E:]
        self.Wh_x, self.Wh_h, self.start = Wh[:E], Wh[E:], w.start
        # sigmoid reads -x and the exp form's tanh -2x (see RNNEngine): the signs and the 2 go into
        # the copies of the weights the products read; both gates read hprev in one product
        self.scale = -2.0 if self.exp_form else 1.0
        self.Wx_s = np.empty((E, 3 * H), dt)                      # [-Wr_x, -Wz_x, scale * Wh_x]
        self.bx_s = np.empty(3 * H, dt)                           # [-br, -bz, scale * bh]
        self.Wrz_s = np.empty((H, 2 * H), dt)                     # [-Wr_h, -Wz_h]
        self.Wh_s = np.empty((H, H), dt) if self.exp_form else self.Wh_h    # scale * Wh_h
        self.WrzT = np.empty((2 * H, H), dt)                      # [Wr_h, Wz_h].T, copies (see RNNEngine)
        self.WhT = np.empty((H, H), dt)                           # Wh_h.T
        self.table_rz, self.table_h = self.table[:, :2 * H], self.table[:, 2 * H:]

    def cell_buffers(self, b):
        T, n, H, dt = self.T, b.n, self.H, self.dtype
        b.rz = np.empty((T, n, 2 * H), dt)                        # [r, z] of each position
        b.rz_t, b.r_t, b.z_t = list(b.rz), list(b.rz[:, :, :H]), list(b.rz[:, :, H:])
        b.xrz, b.xh = np.empty((T, n, 2 * H), dt), np.empty((T, n, H), dt)  # the table's r, z and hbar columns
        b.xrz_t, b.xh_t = list(b.xrz), list(b.xh)
        # hr = r * hprev (hprev_reset), hbar, dif = hbar - hprev, and what the backward multiplies
        # by: A = (hbar - hprev) z (1 - z), Bc = z (1 - hbar^2), Cc = hprev r (1 - r), Dc = 1 - z
        for k in ("hr", "hbar", "dif", "A", "Bc", "Cc", "Dc", "dhb"):   # dhb: dhbarpreact
            setattr(b, k, np.empty((T, n, H), dt))
            setattr(b, k + "_t", list(getattr(b, k)))
        b.drz = np.empty((T, n, 2 * H), dt)                       # [drpreact, dzpreact]
        b.drz_t, b.dr_t, b.dz_t = list(b.drz), list(b.drz[:, :, :H]), list(b.drz[:, :, H:])
        b.dhr, b.dxh = np.empty((n, H), dt), np.empty((n, H), dt)
        b.G_rz, b.G_h = np.empty((self.V, 2 * H), dt), np.empty((self.V, H), dt)
        b.tmp_VE = np.empty((self.V, self.E), dt)

    def cell_views(self, b, v):
        H, U = self.H, v.U
        for k in ("hr", "hbar", "dif", "A", "Bc", "Cc", "Dc", "dhb"):
            setattr(v, k, stacked(getattr(b, k), U))                # (R, H)
        v.rz, v.drz = stacked(b.rz, U), stacked(b.drz, U)             # (R, 2H)
        v.r, v.z, v.dr, v.dz = v.rz[:, :H], v.rz[:, H:], v.drz[:, :H], v.drz[:, H:]

    def cell_slabs(self, g, s):
        E = self.E
        Wr, Wz, Wh = (getattr(g, f"cell.xh_to_{k}.weight") for k in ("r", "z", "hbar"))
        s.br, s.bz, s.bh = (getattr(g, f"cell.xh_to_{k}.bias") for k in ("r", "z", "hbar"))
        s.Wr_x, s.Wr_h, s.Wz_x, s.Wz_h, s.Wh_x, s.Wh_h = Wr[:E], Wr[E:], Wz[:E], Wz[E:], Wh[:E], Wh[E:]
        s.start = g.start[0]

    def cells(self, b, v):
        H, Wx_s, bx_s, Wrz_s, Wh_s = self.H, self.Wx_s, self.bx_s, self.Wrz_s, self.Wh_s
        np.negative(self.Wr_x, Wx_s[:, :H])
        np.negative(self.Wz_x, Wx_s[:, H:2 * H])
        np.multiply(self.Wh_x, self.scale, Wx_s[:, 2 * H:])
        np.negative(self.br, bx_s[:H])
        np.negative(self.bz, bx_s[H:2 * H])
        np.multiply(self.bh, self.scale, bx_s[2 * H:])
        np.dot(self.wte, Wx_s, self.table)                        # (V, 3H) wte @ W_x of the three,
        np.add(self.table, bx_s, self.table)                      #   + b, scaled
        np.negative(self.Wr_h, Wrz_s[:, :H])
        np.negative(self.Wz_h, Wrz_s[:, H:])
        if self.exp_form:
            np.multiply(self.Wh_h, self.minus_two, Wh_s)
        np.copyto(self.WrzT[:H], self.Wr_h.T)                     # for the backward
        np.copyto(self.WrzT[H:], self.Wz_h.T)
        np.copyto(self.WhT, self.Wh_h.T)
        self.table_rz.take(v.xT, 0, b.xrz[:v.U], "clip")          # (U, n, 2H) every position's x @ W_x + b
        self.table_h.take(v.xT, 0, b.xh[:v.U], "clip")            # (U, n, H)
        hs, xrz, xh, rz_t, r_t, z_t = b.hs_t, b.xrz_t, b.xh_t, b.rz_t, b.r_t, b.z_t
        hr_t, hbar_t, dif_t, one, two, exp_form = b.hr_t, b.hbar_t, b.dif_t, self.one, self.two, self.exp_form
        np.copyto(hs[0], self.start)                              # (n, H) h_-1 = start
        for t in range(v.U):
            hprev, rz, hbar, dif = hs[t], rz_t[t], hbar_t[t], dif_t[t]
            np.dot(hprev, Wrz_s, rz)                              # (n, 2H) -hprev @ [Wr_h, Wz_h]
            np.add(rz, xrz[t], rz)                                #   - (x @ W_x + b): -[rpreact, zpreact]
            np.exp(rz, rz)
            np.add(rz, one, rz)
            np.divide(one, rz, rz)                                # (n, 2H) [r, z]
            np.multiply(r_t[t], hprev, hr_t[t])                   # (n, H) hprev_reset = r * hprev
            np.dot(hr_t[t], Wh_s, hbar)                           # (n, H) hprev_reset @ Wh_h
            np.add(hbar, xh[t], hbar)                             #   + x @ Wh_x + bh (both -2x in the exp form)
            if exp_form:
                np.exp(hbar, hbar)
                np.add(hbar, one, hbar)
                np.divide(two, hbar, hbar)
                np.subtract(hbar, one, hbar)                      # (n, H) hbar = tanh(hbarpreact)
            else:
                self.tanh(hbar, hbar)
            np.subtract(hbar, hprev, dif)                         # (n, H) hbar - hprev
            np.multiply(z_t[t], dif, hs[t + 1])
            np.add(hs[t + 1], hprev, hs[t + 1])                   # (n, H) h = hprev + z * (hbar - hprev)

    def cells_backward(self, b, v, s):
        A, Bc, Cc, Dc = v.A, v.Bc, v.Cc, v.Dc
        np.subtract(1, v.z, Dc)                                   # (R, H) 1 - z
        np.multiply(v.z, Dc, A)
        np.multiply(A, v.dif, A)                                  # (R, H) (hbar - hprev) z (1 - z)
        np.square(v.hbar, Bc)
        np.subtract(1, Bc, Bc)
        np.multiply(Bc, v.z, Bc)                                  # (R, H) z (1 - hbar^2)
        np.subtract(1, v.r, Cc)
        np.multiply(Cc, v.r, Cc)
        np.multiply(Cc, v.hprev, Cc)                              # (R, H) hprev r (1 - r)
        dh_t, dhr, dxh, WhT, WrzT = b.dhid_t, b.dhr, b.dxh, self.WhT, self.WrzT
        A_t, Bc_t, Cc_t, Dc_t, r_t, dr_t, dz_t, drz_t, dhb_t = (b.A_t, b.Bc_t, b.Cc_t, b.Dc_t, b.r_t, b.dr_t, b.dz_t,
                                                                b.drz_t, b.dhb_t)
        for t in range(v.U - 1, -1, -1):
            dh = dh_t[t]                                          # (n, H) dhidden_t + dhprev of step t+1
            np.multiply(dh, A_t[t], dz_t[t])                      # (n, H) dzpreact
            np.multiply(dh, Bc_t[t], dhb_t[t])                    # (n, H) dhbarpreact
            np.dot(dhb_t[t], WhT, dhr)                            # (n, H) dhprev_reset = dhbarpreact @ Wh_h.T
            np.multiply(dhr, Cc_t[t], dr_t[t])                    # (n, H) drpreact
            # dhprev: (1) the blend (1 - z) * hprev, (2) hprev_reset = r * hprev, (3) the gates' input
            np.dot(drz_t[t], WrzT, dxh)                           # (n, H) (3) [drpreact, dzpreact] @ [Wr_h, Wz_h].T
            np.multiply(dhr, r_t[t], dhr)                         # (2)
            np.add(dhr, dxh, dhr)
            np.multiply(dh, Dc_t[t], dxh)                         # (1)
            if t:
                np.add(dh_t[t - 1], dxh, dh_t[t - 1])
                np.add(dh_t[t - 1], dhr, dh_t[t - 1])             # (n, H) dhidden_t-1 + dhprev
            else:
                np.add(dxh, dhr, b.tmp)                           # (n, H) dhprev of the first step
        np.add.reduce(b.tmp, 0, None, s.start)                    # (H,) dstart: summed over the rows
        hprevT = v.hprev.T
        np.dot(hprevT, v.dr, s.Wr_h)                              # (H, H) hprev.T @ drpreact, all positions
        np.dot(hprevT, v.dz, s.Wz_h)                              # (H, H) hprev.T @ dzpreact
        np.dot(v.hr.T, v.dhb, s.Wh_h)                             # (H, H) hprev_reset.T @ dhbarpreact

    def input_backward(self, b, v, s):
        H, G_rz, G_h, wteT = self.H, b.G_rz, b.G_h, self.wte.T
        np.dot(v.onehot_t, v.drz, G_rz)                           # (V, 2H) onehot(X).T @ [drpreact, dzpreact]
        np.dot(v.onehot_t, v.dhb, G_h)                            # (V, H) onehot(X).T @ dhbarpreact
        np.dot(wteT, G_rz[:, :H], s.Wr_x)                         # (E, H) dW_x = wte.T @ G, each
        np.dot(wteT, G_rz[:, H:], s.Wz_x)
        np.dot(wteT, G_h, s.Wh_x)
        np.add.reduce(G_rz[:, :H], 0, None, s.br)                 # (H,) db, each
        np.add.reduce(G_rz[:, H:], 0, None, s.bz)
        np.add.reduce(G_h, 0, None, s.bh)
        # dwte = the three G @ W_x.T, from the scaled copies (exact: powers of two)
        np.dot(G_rz, self.Wx_s[:, :2 * H].T, s.wte)               # (V, E) -(G_rz @ [Wr_x, Wz_x].T)
        np.dot(G_h, self.Wx_s[:, 2 * H:].T, b.tmp_VE)             # (V, E) scale * G_h @ Wh_x.T
        np.multiply(b.tmp_VE, 1 / self.scale, b.tmp_VE)
        np.subtract(b.tmp_VE, s.wte, s.wte)


# ----------------------------------------------------------------------------- torch.nn.LSTMCell

class LSTMEngine(RecurrentEngine):
    """The LSTM (recurrent.LSTM, torch.nn.LSTMCell's maths): gates = x_t @ W_ih + b_ih + b_hh +
    h_t-1 @ W_hh (n, 4H), i, f, o their sigmoids and g the tanh of its block; c_t = f * c_t-1 + i * g,
    h_t = o * tanh(c_t). The table is wte @ W_ih + b_ih + b_hh (V, 4H)."""

    gates = 4

    def __init__(self, model, tanh: str | None = None):
        super().__init__(model, tanh)
        w, H, dt = self.w, self.H, self.dtype
        self.W_ih, self.W_hh = getattr(w, "cell.weight_ih"), getattr(w, "cell.weight_hh")   # (E, 4H), (H, 4H)
        self.b_ih, self.b_hh = getattr(w, "cell.bias_ih"), getattr(w, "cell.bias_hh")
        self.start_h, self.start_c = w.start_h, w.start_c
        # the four gates through one sigmoid, with tanh(x) = 2 sigmoid(2x) - 1 for g and sigmoid(x) =
        # 1 / (1 + exp(-x)): the -1 (i, f, o) and -2 (g) go into copies of the weights and the table
        # (exact: powers of two), the numerators 1, 1, 2, 1 into one divide
        self.scale = np.repeat(np.array([-1, -1, -2, -1], dt), H)      # (4H,)
        self.numer = np.repeat(np.array([1, 1, 2, 1], dt), H)          # (4H,)
        self.W_hh_s, self.W_hhT = np.empty((H, 4 * H), dt), np.empty((4 * H, H), dt)   # W_hh.T: see RNNEngine

    def cell_buffers(self, b):
        T, n, H, dt = self.T, b.n, self.H, self.dtype
        b.cs = np.zeros((T + 1, n, H), dt)                        # c_-1 = start_c, c_0 .. c_T-1
        b.gates = np.empty((T, n, 4 * H), dt)                     # i, f, g, o
        b.tanhc, b.P = np.empty((T, n, H), dt), np.empty((T, n, H), dt)
        # coef: what the gates' pre-activation gradients multiply: [g i (1 - i), cprev f (1 - f),
        # i (1 - g^2)] by dc_total, tanh(c) o (1 - o) by dh; P = o (1 - tanh(c)^2) takes dh to dc
        b.coef, b.dgates = np.empty((T, n, 4 * H), dt), np.empty((T, n, 4 * H), dt)
        b.cs_t, b.gates_t, b.tanhc_t, b.P_t, b.dgates_t = (list(a) for a in (b.cs, b.gates, b.tanhc, b.P, b.dgates))
        b.i_t, b.f_t, b.g_t, b.o_t = (list(b.gates[:, :, k * H:(k + 1) * H]) for k in range(4))
        b.coef_ifg_t = list(b.coef.reshape(T, n, 4, H)[:, :, :3])            # (n, 3, H) each
        b.coef_o_t = list(b.coef[:, :, 3 * H:])
        b.dg_ifg_t = list(b.dgates.reshape(T, n, 4, H)[:, :, :3])
        b.dg_o_t = list(b.dgates[:, :, 3 * H:])
        b.dct, b.dcn = np.empty((n, H), dt), np.empty((n, H), dt)            # dc_total of step t, dcprev of t+1
        b.dct3 = b.dct[:, None, :]                                # (n, 1, H)
        b.G = np.empty((self.V, 4 * H), dt)

    def cell_views(self, b, v):
        H, U = self.H, v.U
        v.cprev, v.tanhc, v.P = stacked(b.cs, U), stacked(b.tanhc, U), stacked(b.P, U)     # (R, H)
        v.gates, v.coef, v.dgates = stacked(b.gates, U), stacked(b.coef, U), stacked(b.dgates, U)   # (R, 4H)
        v.i, v.f, v.g, v.o = (v.gates[:, k * H:(k + 1) * H] for k in range(4))
        v.ci, v.cf, v.cg, v.co = (v.coef[:, k * H:(k + 1) * H] for k in range(4))

    def cell_slabs(self, g, s):
        s.W_ih, s.W_hh, s.b_ih, s.b_hh = (getattr(g, f"cell.{k}") for k in ("weight_ih", "weight_hh", "bias_ih",
                                                                             "bias_hh"))
        s.start_h, s.start_c = g.start_h[0], g.start_c[0]

    def cells(self, b, v):
        table, W_hh_s, numer, tanh = self.table, self.W_hh_s, self.numer, self.tanh
        np.dot(self.wte, self.W_ih, table)                        # (V, 4H) wte @ W_ih
        np.add(table, self.b_ih, table)
        np.add(table, self.b_hh, table)                           #   + b_ih + b_hh
        np.multiply(table, self.scale, table)                     #   scaled
        np.multiply(self.W_hh, self.scale, W_hh_s)
        np.copyto(self.W_hhT, self.W_hh.T)                        # for the backward
        table.take(v.xT, 0, v.xin, "clip")                        # (U, n, 4H) every position's x @ W_ih + b
        hs, cs, xin, gates_t, i_t, f_t, g_t, o_t = b.hs_t, b.cs_t, b.xin_t, b.gates_t, b.i_t, b.f_t, b.g_t, b.o_t
        tanhc_t, tmp, one = b.tanhc_t, b.tmp, self.one
        np.copyto(hs[0], self.start_h)                            # (n, H)
        np.copyto(cs[0], self.start_c)                            # (n, H)
        for t in range(v.U):
            gates, c = gates_t[t], cs[t + 1]
            np.dot(hs[t], W_hh_s, gates)                          # (n, 4H) hprev @ W_hh, scaled
            np.add(gates, xin[t], gates)                          #   + x @ W_ih + b_ih + b_hh, scaled
            np.exp(gates, gates)
            np.add(gates, one, gates)
            np.divide(numer, gates, gates)                        # (n, 4H) i, f, 2 sigmoid(2 gpreact), o
            np.subtract(g_t[t], one, g_t[t])                      # (n, H) g = tanh(gpreact)
            np.multiply(f_t[t], cs[t], c)
            np.multiply(i_t[t], g_t[t], tmp)
            np.add(c, tmp, c)                                     # (n, H) c = f * cprev + i * g
            tanh(c, tanhc_t[t])                                   # (n, H) tanh(c)
            np.multiply(o_t[t], tanhc_t[t], hs[t + 1])            # (n, H) h = o * tanh(c)

    def cells_backward(self, b, v, s):
        U, P, coef, ci, cf, cg, co = v.U, v.P, v.coef, v.ci, v.cf, v.cg, v.co
        np.square(v.tanhc, P)
        np.subtract(1, P, P)
        np.multiply(P, v.o, P)                                    # (R, H) o (1 - tanh(c)^2)
        np.subtract(1, v.gates, coef)
        np.multiply(coef, v.gates, coef)                          # (R, 4H) s (1 - s) of each gate
        np.multiply(ci, v.g, ci)                                  # (R, H) g i (1 - i)
        np.multiply(cf, v.cprev, cf)                              # (R, H) cprev f (1 - f)
        np.square(v.g, cg)
        np.subtract(1, cg, cg)
        np.multiply(cg, v.i, cg)                                  # (R, H) i (1 - g^2)
        np.multiply(co, v.tanhc, co)                              # (R, H) tanh(c) o (1 - o)
        dh_t, dct, dcn, dct3, tmp, W_hhT = b.dhid_t, b.dct, b.dcn, b.dct3, b.tmp, self.W_hhT
        P_t, coef_ifg_t, coef_o_t, dg_ifg_t, dg_o_t, dgates_t, f_t = (b.P_t, b.coef_ifg_t, b.coef_o_t, b.dg_ifg_t,
                                                                      b.dg_o_t, b.dgates_t, b.f_t)
        for t in range(U - 1, -1, -1):
            dh = dh_t[t]                                          # (n, H) dhidden_t + dhprev of step t+1
            # c reaches the loss (1) through h = o * tanh(c) and (2) through the next step's cell (dcn)
            np.multiply(dh, P_t[t], dct)
            if t < U - 1:
                np.add(dct, dcn, dct)                             # (n, H) dc_total
            np.multiply(dct3, coef_ifg_t[t], dg_ifg_t[t])         # (n, 3, H) d[i, f, g]preact
            np.multiply(dh, coef_o_t[t], dg_o_t[t])               # (n, H) dopreact
            if t:
                np.dot(dgates_t[t], W_hhT, tmp)                   # (n, H) dhprev = dgates @ W_hh.T
                np.add(dh_t[t - 1], tmp, dh_t[t - 1])
                np.multiply(dct, f_t[t], dcn)                     # (n, H) dcprev = dc_total * f
        # both starts were broadcast over the rows: dstart_h = (dgates_0 summed) @ W_hh.T
        np.add.reduce(dgates_t[0], 0, None, b.colsum)             # (4H,)
        np.dot(b.colsum, W_hhT, s.start_h)                        # (H,)
        np.multiply(dct, f_t[0], dcn)
        np.add.reduce(dcn, 0, None, s.start_c)                    # (H,) dstart_c = (dc_total_0 * f_0) summed
        np.dot(v.hprev.T, v.dgates, s.W_hh)                       # (H, 4H) dW_hh = hprev.T @ dgates, all positions

    def input_backward(self, b, v, s):
        np.dot(v.onehot_t, v.dgates, b.G)                         # (V, 4H) G = onehot(X).T @ dgates
        np.dot(self.wte.T, b.G, s.W_ih)                           # (E, 4H) dW_ih = wte.T @ G
        np.add.reduce(b.G, 0, None, s.b_ih)                       # (4H,)
        np.copyto(s.b_hh, s.b_ih)                                 # the two biases are added alike
        np.dot(b.G, self.W_ih.T, s.wte)                           # (V, E) dwte = G @ W_ih.T
