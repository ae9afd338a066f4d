"""The fast engines of makemore.py's bag of words and Transformer (transformer.BoW and
transformer.Transformer with train.sgd), and their evaluation: the training step, fused.

Same maths, same minibatches, same dropout masks (drawn from the generator the model's
dropout_state names, in the reference's order, its count moved on as the reference moves it);
only the order of the floating-point operations differs, so the tests hold it to the
reference: float64 to 1e-12 relative per step, 1e-10 over 1,000 steps. A student never needs
to read this file.

Legend: B batch, T block_size, t a position, M the positions a step computes and Tm the most
of them in one row (see the first trick), C n_embd, H the bag of words' n_hidden, nh heads, hs
head size C / nh, V vocab size, L n_layers, P params.
The tricks, each said once where it is used:
  - only the positions up to each row's last unmasked target are computed: position t reaches
    the loss only through positions >= t (causal attention and averages; the rest acts position
    by position), so one after the last target adds exactly 0 to every gradient. A name fills
    45% of makemore.py's rows; the rest is padding. These M "kept" positions are packed into the
    first M rows of each array; only the causal mixing (attention, the average) runs in a padded
    (B, Tm) layout, Tm the longest row's kept positions, gathered to and from it by one `take`;
  - the arrays of a batch size are made once, and their views for each M and each Tm (a fresh
    array's pages fault on first touch, which costs about as much as the arithmetic here);
  - every head at once: q, k, v are (B, nh, Tm, hs) views of one (B*Tm, 3C) array, and each
    attention product is one np.matmul over the stacked (Tm, Tm) blocks, written through views
    straight into the merged-heads array;
  - the causal mask is a precomputed (T, T) of 0 and -inf added to the scores, and the softmax
    skips the shift by each row's max when its row sums show it is not needed;
  - the logits are made transposed, (V, M): the softmax reduces over V by adding contiguous rows;
  - sums over rows or channels are products with ones (BLAS gemv beats np.add.reduce several
    times on these shapes);
  - ufuncs take `out` by position (a keyword costs more than the arithmetic on small arrays);
  - GELU as x * sigmoid(2u) = x / (1 + exp(-2u)), one exp (NumPy's tanh is slow here), and its
    derivative made in the forward while its operands are in the cache;
  - dwte and dwpe are one product, [onehot(x), onehot(V + t)].T @ demb (wte and wpe are adjacent
    in the flat vector);
  - one draw of a step's every dropout mask (a generator's doubles come in order, so one call
    gives what the reference's calls give one after another);
  - evaluation sorts the names by length, so that a chunk's rows are as long as each other.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from ..layers import GELU_A, GELU_K, LN_EPS
from ..transformer import DROPOUT_STATE, DROPOUT_STREAM, EXACT
from .flat import FlatParams
from .tanh import pick

DROPPED, MASKED = -1, -2    # picks' codes: a position after its row's last target; a kept one without a target

# the range of a softmax row's sum of exps in which exp of the scores as they are (unshifted) is
# as accurate as the shifted softmax (see TransformerEngine._softmax)
SUM_RANGE = {np.dtype(np.float32): (2.0 ** -60, 2.0 ** 100), np.dtype(np.float64): (2.0 ** -900, 2.0 ** 900)}


def view(a, shape):
    """a reshaped to `shape` as a view (a strided array's reshape may copy, and a copy would
    take the writes meant for a)."""
    v = a.reshape(shape)
    if not np.shares_memory(v, a):
        raise AssertionError(f"a reshape to {shape} copied")
    return v


def prefix(flat, shape):
    """The first prod(shape) numbers of the 1-D array flat, as an array of that shape."""
    return flat[:math.prod(shape)].reshape(shape)


class SequenceEngine(FlatParams):
    """What both engines share: a step's kept positions, the embeddings and their gradient, the
    masked cross-entropy over the transposed logits. A subclass names in `packed` its buffers of
    kept positions (each (B*T + 1, ...): the first M rows hold a step's positions, the last row
    stays 0 for the padded layout's dropped positions to read), of which _views makes (M, ...) views;
    _padding(b, Tm) makes its arrays of the padded layout."""

    chunked = False     # the mean over a batch's unmasked targets couples its rows
    packed: tuple[str, ...] = ()

    def __init__(self, model, wte: str, wpe: str):
        self.V, self.T, self.C = model.vocab_size, model.block_size, model.n_embd
        self.wte, self.wpe = wte, wpe
        super().__init__(model)
        self._bufs: dict[int, SimpleNamespace] = {}

    def views(self, flat) -> SimpleNamespace:
        """FlatParams' views, and `emb`: [wte; wpe] (V + T, C), one view (wpe follows wte)."""
        v, at = super().views(flat), self.offset
        if at[self.wpe] != at[self.wte] + self.V * self.C:
            raise AssertionError("wpe must follow wte in the flat vector")
        v.emb = flat[at[self.wte]:at[self.wpe] + self.T * self.C].reshape(self.V + self.T, self.C)
        return v

    def picks(self, y, n: int, out) -> None:
        """For the targets y (..., n, T) of n rows: each position's target, MASKED (-2) for a kept
        position without one, DROPPED (-1) after its row's last target (the module's first trick)."""
        valid = y >= 0                                                  # (..., n, T)
        last = self.T - np.argmax(valid[..., ::-1], axis=-1)            # (..., n) one past the last target
        last[~valid.any(-1)] = 0
        np.copyto(out, y)
        np.copyto(out, MASKED, where=~valid)
        np.copyto(out, DROPPED, where=np.arange(self.T) >= last[..., None])

    def _common(self, B: int, dt) -> SimpleNamespace:
        N, V, T = B * self.T, self.V, self.T
        b = SimpleNamespace(
            B=B, N=N, by_M={}, by_Tm={},
            # the shifted logits (V, M) and their exps, with room for a slot past the end: a
            # masked target's pick reads it (0 in the shifted logits), the backward writes it
            shifted_flat=np.zeros(V * N + 1, dt), counts_flat=np.zeros(V * N + 1, dt),
            logits_flat=np.empty(V * N, dt), maxes=np.empty(N, dt), sums=np.empty(N, dt), lse=np.empty(N, dt),
            keep=np.empty(N, dt), coef=np.empty(N, dt), ones_V=np.ones(V, dt), ones_N=np.ones(N, dt),
            ones_C=np.full(self.C, 1 / self.C, dt), onehot=np.zeros((N, V + T), dt), hot=np.zeros(0, np.intp),
            arange=np.arange(N), pad_src_buf=np.empty(N, np.intp))
        b.onehot_flat = b.onehot.reshape(-1)
        return b

    def _views(self, b, M: int) -> SimpleNamespace:
        """The first M rows of every packed buffer, and the step's other arrays over M, made once per M."""
        v = SimpleNamespace(M=M)
        for name in self.packed:
            a = getattr(b, name, None)                                  # (inference makes no backward's)
            setattr(v, name, None if a is None else a[:M])
        V = self.V
        v.logits = b.logits_flat[:V * M].reshape(V, M)
        v.shifted, v.counts = b.shifted_flat[:V * M].reshape(V, M), b.counts_flat[:V * M].reshape(V, M)
        v.maxes, v.sums, v.lse, v.keep, v.coef = (a[:M] for a in (b.maxes, b.sums, b.lse, b.keep, b.coef))
        v.ones_M, v.arange, v.onehot = b.ones_N[:M], b.arange[:M], b.onehot[:M]
        v.hot_base = np.concatenate([v.arange, v.arange]) * (V + self.T)   # (2M,) each kept row's start
        self._more_views(b, v)
        b.by_M[M] = v
        return v

    def _more_views(self, b, v) -> None:
        """A subclass's own views over M."""

    def _padding(self, b, Tm: int) -> SimpleNamespace:
        raise NotImplementedError

    def _pack(self, b, xb, code) -> tuple[SimpleNamespace, SimpleNamespace]:
        """The step's kept positions from picks' codes (B, T): -> (v, u), the views over M and those
        of the padded (B, Tm) layout. Sets b.rows (M,), the kept positions' rows b*Tm + t of the
        padded layout, b.pad_src (B*Tm,), each padded row's kept row (or the zero row B*T);
        b.pick, the targets' places in the shifted logits (V, M) flattened; keep (1 where a target
        counts), their count b.n; b.emb_rows, the rows of [wte; wpe] each kept position reads (x, V + t)."""
        kept = code != DROPPED                                          # (B, T) a prefix of each row
        Tm = int(np.count_nonzero(kept.any(0)))
        if Tm == 0:
            raise ValueError(f"every one of the {code.size} targets is -1 (masked): the mean over no targets is "
                             f"undefined")
        kept, codes = kept[:, :Tm].reshape(-1), code[:, :Tm].reshape(-1)   # (B*Tm,) the padded layout
        rows = np.flatnonzero(kept)                                     # (M,)
        M = len(rows)
        v = b.by_M.get(M) or self._views(b, M)
        u = b.by_Tm.get(Tm) or self._padding(b, Tm)
        b.rows, b.v, b.u = rows, v, u
        y = codes.take(rows)                                            # (M,) targets, MASKED where none
        valid = y >= 0
        np.copyto(v.keep, valid)
        b.n = int(np.count_nonzero(valid))
        b.pick = y * M + v.arange
        b.pick[~valid] = self.V * M                                     # the slot past the end
        b.shifted_flat[self.V * M] = 0
        b.pad_src = b.pad_src_buf[:b.B * Tm]
        b.pad_src.fill(b.N)
        b.pad_src[rows] = v.arange
        b.emb_rows = np.concatenate([xb[:, :Tm].reshape(-1).take(rows), self.V + u.positions.take(rows)])   # (2M,)
        return v, u

    def _embed(self, b, v, out) -> None:
        """out (M, C) = wte[x] + wpe[t] of each kept position."""
        M = v.M
        # take(..., out, "clip"): with out, the default mode ("raise") copies through a buffer, 3x slower
        self.w.emb.take(b.emb_rows[:M], 0, out, "clip")
        out += self.w.emb.take(b.emb_rows[M:], 0)

    def _embed_backward(self, b, v, demb, g) -> None:
        """demb (M, C) -> [dwte; dwpe] (V + T, C) = [onehot(x), onehot(V + t)].T @ demb: BLAS adds the
        rows of repeated characters and positions (np.add.at would add them one by one)."""
        b.onehot_flat[b.hot] = 0                                        # the last step's ones
        b.hot = v.hot_base + b.emb_rows
        b.onehot_flat[b.hot] = 1                                        # (M, V + T)
        np.dot(v.onehot.T, demb, g.emb)                                 # (V + T, C)

    def _cross_entropy(self, b, v) -> float:
        """The masked mean of -log softmax(logits)[y] over the targets, from v.logits (V, M)."""
        np.maximum.reduce(v.logits, 0, None, v.maxes)                   # (M,) contiguous rows of M
        np.subtract(v.logits, v.maxes, v.shifted)                       # (V, M) logits - max
        picked = b.shifted_flat.take(b.pick)                            # (M,) 0 where masked
        np.exp(v.shifted, v.counts)                                     # (V, M)
        np.dot(b.ones_V, v.counts, v.sums)                              # (M,) sum over V
        np.log(v.sums, v.lse)
        return (float(np.dot(v.keep, v.lse)) - float(np.add.reduce(picked))) / b.n

    def _cross_entropy_backward(self, b, v, dloss: float):
        """-> dlogits (V, M) = dloss * (softmax - onehot(y)) / n at the targets, 0 elsewhere
        (written over the counts)."""
        np.multiply(v.keep, dloss / b.n, v.coef)
        np.divide(v.coef, v.sums, v.coef)                               # (M,) 0 where masked
        np.multiply(v.counts, v.coef, v.counts)                         # (V, M) dloss * softmax / n
        b.counts_flat[b.pick] -= dloss / b.n                            #   minus dloss * onehot(y) / n
        return v.counts

    def _codes(self, yb, pick):
        """picks' codes of yb, given (Chunks.gather makes them for many steps at once) or made here."""
        if pick is None:
            pick = np.empty(yb.shape, np.intp)
            self.picks(yb, len(yb), pick)
        return pick


# ----------------------------------------------------------------------------- the bag of words

class BoWEngine(SequenceEngine):
    """transformer.BoW's step: emb = wte[X] + wpe, x = emb + cbow(emb), x += c_proj(tanh(c_fc(x))),
    logits = x @ lm_head + b."""

    packed = ("resid", "fc", "h", "t", "block", "dblock", "dh", "dresid")

    def __init__(self, model, tanh: str | None = None, inference: bool = False):
        self.H = model.n_hidden
        super().__init__(model, "wte.weight", "wpe.weight")
        self.tanh_form, self.tanh = pick(self.dtype, tanh)
        w, k = self.w.__dict__, "context_block.mlp."
        self.W_fc, self.b_fc, self.W_proj, self.b_proj, self.W_lm, self.b_lm = (
            w[n] for n in (k + "c_fc.weight", k + "c_fc.bias", k + "c_proj.weight", k + "c_proj.bias",
                           "lm_head.weight", "lm_head.bias"))
        self.b_lm2 = self.b_lm.reshape(-1, 1)                           # (V, 1), added to the transposed logits
        T = self.T
        avg = np.tril(np.ones((T, T)))
        self.avg = (avg / avg.sum(1, keepdims=True)).astype(self.dtype)   # (T, T) row t: 1 / (t+1) on 0..t

    def _buffers(self, B: int):
        b = self._bufs.get(B)
        if b is not None:
            return b
        dt, C, H = self.dtype, self.C, self.H
        b = self._common(B, dt)
        N = b.N
        b.resid, b.block, b.dblock, b.dresid = (np.zeros((N + 1, C), dt) for _ in range(4))   # packed
        b.fc, b.h, b.t, b.dh = (np.zeros((N + 1, H), dt) for _ in range(4))
        b.pads = [np.empty(N * C, dt) for _ in range(4)]               # the padded layout's, for every Tm
        self._bufs[B] = b
        return b

    def _padding(self, b, Tm: int) -> SimpleNamespace:
        B, C = b.B, self.C
        u = SimpleNamespace(positions=np.arange(B * Tm) % Tm, avg=self.avg[:Tm, :Tm].copy())   # (Tm, Tm)
        u.avg_t = u.avg.T
        u.emb, u.resid, u.dresid, u.demb = (prefix(a, (B * Tm, C)) for a in b.pads)
        u.emb3, u.resid3, u.dresid3, u.demb3 = (view(a, (B, Tm, C)) for a in (u.emb, u.resid, u.dresid, u.demb))
        b.by_Tm[Tm] = u
        return u

    def forward_loss(self, xb, yb, pick=None, hot=None) -> tuple[float, SimpleNamespace]:
        """The forward of rows xb (B, T), yb (B, T) (-1 masked): (mean loss over the unmasked targets,
        the buffers holding it all). pick: picks' codes of yb (None: made here); hot: unused."""
        B = len(xb)
        b = self._buffers(B)
        v, u = self._pack(b, xb, self._codes(yb, pick))
        Tm = len(u.avg)
        # the causal average in the padded layout, then the kept positions
        self.w.__dict__[self.wte].take(xb[:, :Tm], 0, u.emb3, "clip")
        np.add(u.emb3, self.w.__dict__[self.wpe][:Tm], u.emb3)         # (B, Tm, C) emb
        # cbow_t = the mean of emb_0..emb_t: one (Tm, Tm) @ (Tm, C) product per row of the batch
        np.matmul(u.avg, u.emb3, u.resid3)                              # (B, Tm, C) cbow
        np.add(u.resid, u.emb, u.resid)                                 # resid_cbow
        u.resid.take(b.rows, 0, v.resid, "clip")                                # (M, C)
        np.dot(v.resid, self.W_fc, v.fc)
        np.add(v.fc, self.b_fc, v.fc)                                   # (M, H) c_fc
        self.tanh(v.fc, v.h)                                            # (M, H)
        np.dot(v.h, self.W_proj, v.block)
        np.add(v.block, self.b_proj, v.block)                           # (M, C) mlp
        np.add(v.block, v.resid, v.block)                               # (M, C) context_block
        np.dot(self.W_lm.T, v.block.T, v.logits)                        # (V, M) transposed logits
        np.add(v.logits, self.b_lm2, v.logits)
        return self._cross_entropy(b, v), b

    def backward(self, b, xb, yb, dloss: float, g) -> None:
        """After forward_loss(xb, yb) gave b: dloss * the gradient of the mean loss into g (views()
        of a gradient vector)."""
        v, u, gd, k = b.v, b.u, g.__dict__, "context_block.mlp."
        dlogits_t = self._cross_entropy_backward(b, v, dloss)           # (V, M)
        np.dot(v.block.T, dlogits_t.T, gd["lm_head.weight"])            # (C, V)
        np.dot(dlogits_t, v.ones_M, gd["lm_head.bias"])                 # (V,)
        np.dot(dlogits_t.T, self.W_lm.T, v.dblock)                      # (M, C) dcontext_block
        np.dot(v.h.T, v.dblock, gd[k + "c_proj.weight"])                # (H, C)
        np.dot(v.ones_M, v.dblock, gd[k + "c_proj.bias"])
        np.dot(v.dblock, self.W_proj.T, v.dh)                           # (M, H) dtanh
        np.multiply(v.h, v.h, v.t)                                      # dc_fc = (1 - h^2) * dh
        np.subtract(1, v.t, v.t)
        np.multiply(v.dh, v.t, v.dh)                                    # (M, H)
        np.dot(v.resid.T, v.dh, gd[k + "c_fc.weight"])                  # (C, H)
        np.dot(v.ones_M, v.dh, gd[k + "c_fc.bias"])
        np.dot(v.dh, self.W_fc.T, v.dresid)                             # (M, C)
        np.add(v.dresid, v.dblock, v.dresid)                            # + the skip
        # in the padded layout (0 after each row's last target): demb_s = dresid_s (the skip) + the
        # sum over t >= s of dresid_t / (t + 1)
        b.dresid.take(b.pad_src, 0, u.dresid, "clip")                           # (B*Tm, C)
        np.matmul(u.avg_t, u.dresid3, u.demb3)                          # (B, Tm, C)
        np.add(u.demb, u.dresid, u.demb)
        u.demb.take(b.rows, 0, v.resid, "clip")                                 # (M, C) demb, over resid (read above)
        self._embed_backward(b, v, v.resid, g)


# ----------------------------------------------------------------------------- the Transformer

class TransformerEngine(SequenceEngine):
    """transformer.Transformer's step, with nanoGPT's dropout when the model has one. The model's
    dropout_state (seed, dropout forwards) is kept here between load() and store(), moved on by
    each forward that drops, as the model's own forward moves it."""

    packed = ("x", "dx", "tmp", "tmp2", "mean", "var", "dy", "dqkv", "fc", "x2", "sg", "dact", "xhatf", "rstdf",
              "lnf")
    per_layer = ("xhat1", "xhat2", "rstd1", "rstd2", "ln1", "ln2", "qkv", "y", "act", "dgelu", "mask_attn_k",
                 "mask_mlp_k")

    def __init__(self, model, inference: bool = False):
        """inference: the forward of evaluation only (no dropout, no backward): one block's arrays
        serve every block."""
        self.L, self.nh, self.inference = model.n_layers, model.n_head, inference
        self.p = 0.0 if inference else float(model.dropout)
        super().__init__(model, "transformer.wte.weight", "transformer.wpe.weight")
        self.hs = self.C // self.nh
        self.dropout_state = np.array(model.buffers[DROPOUT_STATE], self.dtype)   # (2,) seed, step
        w = self.w.__dict__
        self.ln_f_w, self.ln_f_b, self.W_lm = (w[k] for k in ("transformer.ln_f.weight", "transformer.ln_f.bias",
                                                              "lm_head.weight"))
        T = self.T
        # the causal mask, added to the scores: 0 where t2 <= t, -inf above the diagonal
        self.neg = np.where(np.tri(T, dtype=bool), 0.0, -np.inf).astype(self.dtype)   # (T, T)
        self.scale = 1 / math.sqrt(self.hs)

    def views(self, flat) -> SimpleNamespace:
        """SequenceEngine's views, and `layers`: block i's parameters (or gradients), bound once."""
        v = super().views(flat)
        v.layers = []
        for i in range(self.L):
            k = f"transformer.h.{i}."
            v.layers.append(SimpleNamespace(**{
                name: getattr(v, k + key) for name, key in (
                    ("ln1_w", "ln_1.weight"), ("ln1_b", "ln_1.bias"), ("ln2_w", "ln_2.weight"), ("ln2_b", "ln_2.bias"),
                    ("attn", "attn.c_attn.weight"), ("attn_b", "attn.c_attn.bias"),
                    ("proj", "attn.c_proj.weight"), ("proj_b", "attn.c_proj.bias"),
                    ("fc", "mlp.c_fc.weight"), ("fc_b", "mlp.c_fc.bias"),
                    ("mproj", "mlp.c_proj.weight"), ("mproj_b", "mlp.c_proj.bias"))}))
        return v

    def load(self, model):
        super().load(model)
        self.dropout_state[...] = model.buffers[DROPOUT_STATE]

    def store(self, model):
        super().store(model)
        model.buffers[DROPOUT_STATE][...] = self.dropout_state

    def _buffers(self, B: int):
        b = self._bufs.get(B)
        if b is not None:
            return b
        dt, C, T, nh = self.dtype, self.C, self.T, self.nh
        b = self._common(B, dt)
        N, train = b.N, not self.inference

        def packed(width):
            return np.zeros((N + 1, width), dt)

        b.x, b.tmp, b.tmp2, b.xhatf, b.lnf = (packed(C) for _ in range(5))
        b.mean, b.var, b.rstdf = packed(1), packed(1), packed(1)
        # c_fc's output and GELU's scratch serve every block: the backward reads only gelu'
        b.fc, b.x2, b.sg = (packed(4 * C) for _ in range(3))
        if train:
            b.dx, b.dy, b.dqkv, b.dact = packed(C), packed(C), packed(3 * C), packed(4 * C)
        b.wC = np.empty(C, dt)
        # the padded layout's arrays, whose views _padding makes for each Tm
        att = B * nh * T * T
        b.pad = SimpleNamespace(**{k: np.empty(n, dt) for k, n in (
            ("s", att), ("e", att), ("ssum", att // T), ("y", N * C),
            *((("datt", att), ("dy", N * C), ("dqkv", 3 * N * C)) if train else ()))})
        b.layers = []
        for _ in range(self.L if train else 1):
            a = SimpleNamespace()
            a.xhat1, a.xhat2, a.ln1, a.ln2, a.y = (packed(C) for _ in range(5))
            a.rstd1, a.rstd2 = packed(1), packed(1)
            a.qkv = packed(3 * C)
            a.act, a.dgelu = packed(4 * C), packed(4 * C) if train else None
            a.mask_attn_k, a.mask_mlp_k = (packed(C), packed(C)) if self.p else (None, None)   # their kept rows
            a.pad = SimpleNamespace(qkv=np.empty(3 * N * C, dt), att=np.empty(att, dt),
                                    att_used=np.empty(att, dt) if self.p else None)
            b.layers.append(a)
        b.layers *= 1 if train else self.L
        if self.p:
            # every mask of a step in the reference's order: x0, then per block the attention
            # weights', the attention output's and the MLP's
            sizes = [N * C] + [att, N * C, N * C] * self.L
            b.uniform, b.kept = np.empty(sum(sizes), np.float64), np.empty(sum(sizes), bool)
            b.masks = np.empty(sum(sizes), dt)
            parts, at = [], 0
            for s in sizes:
                parts.append(b.masks[at:at + s])
                at += s
            b.mask_emb, b.mask_emb_k = parts[0].reshape(N, C), packed(C)
            for i, a in enumerate(b.layers):
                a.mask_att = parts[1 + 3 * i].reshape(B, nh, T, T)
                a.mask_attn, a.mask_mlp = parts[2 + 3 * i].reshape(N, C), parts[3 + 3 * i].reshape(N, C)
        self._bufs[B] = b
        return b

    def _more_views(self, b, v) -> None:
        M = v.M
        v.layers = [SimpleNamespace(**{k: None if getattr(a, k) is None else getattr(a, k)[:M] for k in self.per_layer})
                    for a in b.layers]
        v.mask_emb_k = b.mask_emb_k[:M] if self.p else None

    def _padding(self, b, Tm: int) -> SimpleNamespace:
        """The arrays of the padded (B, Tm) layout, views of b.pad's and each block's a.pad's."""
        B, C, nh, hs, P = b.B, self.C, self.nh, self.hs, b.pad
        Nm = B * Tm

        def heads(a):
            """(B*Tm, C) rows of the padded layout -> (B, nh, Tm, hs): head h's channels of each row, a view."""
            return view(a, (B, Tm, nh, hs)).transpose(0, 2, 1, 3)

        u = SimpleNamespace(positions=np.arange(Nm) % Tm, neg=self.neg[:Tm, :Tm], ones_T=np.ones(Tm, self.dtype))
        u.s, u.e = prefix(P.s, (B, nh, Tm, Tm)), prefix(P.e, (B, nh, Tm, Tm))
        u.ssum = prefix(P.ssum, (B, nh, Tm, 1))
        u.s2, u.e2, u.ssum1 = u.s.reshape(-1, Tm), u.e.reshape(-1, Tm), u.ssum.reshape(-1)
        u.y = prefix(P.y, (Nm, C))
        u.yh = heads(u.y)
        if not self.inference:
            u.datt = prefix(P.datt, (B, nh, Tm, Tm))
            u.dy, u.dqkv = prefix(P.dy, (Nm, C)), prefix(P.dqkv, (Nm, 3 * C))
            u.dyh = heads(u.dy)
            u.dq, u.dk, u.dv = (heads(u.dqkv[:, j * C:(j + 1) * C]) for j in range(3))
        u.layers = []
        for a in b.layers:
            ua = SimpleNamespace(qkv=prefix(a.pad.qkv, (Nm, 3 * C)), att=prefix(a.pad.att, (B, nh, Tm, Tm)))
            ua.q, ua.k, ua.v = (heads(ua.qkv[:, j * C:(j + 1) * C]) for j in range(3))
            ua.kT, ua.vT = ua.k.swapaxes(-1, -2), ua.v.swapaxes(-1, -2)   # (B, nh, hs, Tm)
            ua.att_used = prefix(a.pad.att_used, (B, nh, Tm, Tm)) if self.p else ua.att
            ua.mask_att = a.mask_att[:, :, :Tm, :Tm] if self.p else None
            u.layers.append(ua)
        b.by_Tm[Tm] = u
        return u

    def _draw_masks(self, b, v) -> None:
        """Transformer.dropout_rng and dropout_forward's masks, all of this step's at once: 0 with
        probability p, else 1 / (1 - p), from the generator seeded by (seed, step), then step + 1;
        each (B*T, C) mask's kept rows gathered for the packed layout."""
        seed, step = int(self.dropout_state[0]), int(self.dropout_state[1])
        if step + 1 >= EXACT and self.dtype == np.float32:
            raise ValueError(f"a float32 Transformer counts {EXACT:,} dropout steps at most; train in float64")
        self.dropout_state[1] = step + 1
        np.random.default_rng([DROPOUT_STREAM, seed, step]).random(out=b.uniform)
        np.greater_equal(b.uniform, self.p, b.kept)
        np.multiply(b.kept, self.dtype.type(1 / (1 - self.p)), b.masks)
        Tm = len(b.u.neg)
        rows = b.rows + (self.T - Tm) * (b.rows // Tm)                  # (M,) in the (B, T) layout
        b.mask_emb.take(rows, 0, v.mask_emb_k, "clip")
        for a, va in zip(b.layers, v.layers, strict=True):
            a.mask_attn.take(rows, 0, va.mask_attn_k, "clip")
            a.mask_mlp.take(rows, 0, va.mask_mlp_k, "clip")

    # ------------------------------------------------------------------------- LayerNorm

    def _layernorm(self, b, v, x, w, bias, xhat, rstd, out) -> None:
        """out = w * (x - mean) / sqrt(var + eps) + bias over each row's C channels; xhat and rstd
        (M, 1) kept for the backward."""
        np.dot(x, b.ones_C, v.mean[:, 0])                               # (M,) the mean, by gemv
        np.subtract(x, v.mean, xhat)                                    # (M, C) x - mean
        np.multiply(xhat, xhat, v.tmp2)
        np.dot(v.tmp2, b.ones_C, v.var[:, 0])                           # (M,) biased variance
        np.add(v.var, LN_EPS, rstd)
        np.sqrt(rstd, rstd)
        np.divide(1, rstd, rstd)                                        # (M, 1)
        np.multiply(xhat, rstd, xhat)                                   # (M, C) xhat
        np.multiply(xhat, w, out)
        np.add(out, bias, out)                                          # (M, C)

    def _layernorm_backward(self, b, v, dout, xhat, rstd, w, dw, db, dx, add=True) -> None:
        """dx += (add) or = the LayerNorm's input gradient, rstd * (dxhat - mean(dxhat) - xhat *
        mean(dxhat * xhat)) with dxhat = w * dout; dw = sum(dout * xhat), db = sum(dout) over the rows."""
        t, u = v.tmp2, v.tmp
        np.dot(v.ones_M, dout, db)                                      # (C,)
        np.multiply(dout, xhat, t)                                      # (M, C)
        np.dot(v.ones_M, t, dw)                                         # (C,)
        # the two means over a row: mean(dxhat * xhat) = (dout * xhat) @ w / C, mean(dxhat) = dout @ w / C
        np.multiply(w, 1 / self.C, b.wC)
        np.dot(t, b.wC, v.var[:, 0])                                    # (M,) mean(dxhat * xhat)
        np.dot(dout, b.wC, v.mean[:, 0])                                # (M,) mean(dxhat)
        np.multiply(dout, w, u)                                         # (M, C) dxhat
        np.multiply(xhat, v.var, t)
        np.subtract(u, t, u)
        np.subtract(u, v.mean, u)
        if add:
            np.multiply(u, rstd, u)
            np.add(dx, u, dx)                                           # (M, C)
        else:
            np.multiply(u, rstd, dx)

    # ------------------------------------------------------------------------- the step

    def forward_loss(self, xb, yb, pick=None, hot=None) -> tuple[float, SimpleNamespace]:
        """The forward of rows xb (B, T), yb (B, T) (-1 masked) in training mode (dropout, when the
        model has it, with this step's masks): (mean loss over the unmasked targets, the buffers).
        pick: picks' codes of yb (None: made here); hot: unused."""
        B = len(xb)
        b = self._buffers(B)
        v, u = self._pack(b, xb, self._codes(yb, pick))
        p = self.p
        if p:
            self._draw_masks(b, v)
        x = v.x
        self._embed(b, v, x)                                            # (M, C) emb
        if p:
            np.multiply(x, v.mask_emb_k, x)                             # x0
        for W, a, ua, va in zip(self.w.layers, b.layers, u.layers, v.layers, strict=True):
            self._layernorm(b, v, x, W.ln1_w, W.ln1_b, va.xhat1, va.rstd1, va.ln1)   # (M, C)
            np.dot(va.ln1, W.attn, va.qkv)
            np.add(va.qkv, W.attn_b, va.qkv)                            # (M, 3C) q, k, v side by side
            a.qkv.take(b.pad_src, 0, ua.qkv, "clip")                            # (B*Tm, 3C) padded, 0 where dropped
            self._softmax(u, ua)                                        # (B, nh, Tm, Tm) att
            if p:
                np.multiply(ua.att, ua.mask_att, ua.att_used)
            np.matmul(ua.att_used, ua.v, u.yh)                          # (B, nh, Tm, hs) merged heads, into u.y
            u.y.take(b.rows, 0, va.y, "clip")                                   # (M, C)
            np.dot(va.y, W.proj, v.tmp)
            np.add(v.tmp, W.proj_b, v.tmp)                              # (M, C) c_proj
            if p:
                np.multiply(v.tmp, va.mask_attn_k, v.tmp)
            np.add(x, v.tmp, x)                                         # (M, C) resid_attn
            self._layernorm(b, v, x, W.ln2_w, W.ln2_b, va.xhat2, va.rstd2, va.ln2)   # (M, C)
            np.dot(va.ln2, W.fc, v.fc)
            np.add(v.fc, W.fc_b, v.fc)                                  # (M, 4C) c_fc
            self._gelu(v, va)                                           # (M, 4C) act, and gelu'
            np.dot(va.act, W.mproj, v.tmp)
            np.add(v.tmp, W.mproj_b, v.tmp)                             # (M, C) mlp c_proj
            if p:
                np.multiply(v.tmp, va.mask_mlp_k, v.tmp)
            np.add(x, v.tmp, x)                                         # (M, C) h.i
        self._layernorm(b, v, x, self.ln_f_w, self.ln_f_b, v.xhatf, v.rstdf, v.lnf)   # (M, C)
        np.dot(self.W_lm.T, v.lnf.T, v.logits)                          # (V, M) transposed logits
        return self._cross_entropy(b, v), b

    def _softmax(self, u, ua) -> None:
        """att = softmax(q k^T / sqrt(hs), -inf on the future) of every head at once."""
        s = u.s
        np.matmul(ua.q, ua.kT, s)                                       # (B, nh, Tm, Tm)
        np.multiply(s, self.scale, s)
        np.add(s, u.neg, s)                                             # -inf on the future
        # exp without the shift by each row's max (a reduction over Tm, slow on short rows) when
        # that is as accurate: every row sum in SUM_RANGE leaves no overflow and no partly
        # denormal row; else, or for a NaN, the shifted softmax
        np.exp(s, u.e)
        np.dot(u.e2, u.ones_T, u.ssum1)                                 # (B*nh*Tm,) row sums
        lo, hi = SUM_RANGE[self.dtype]
        if not (np.minimum.reduce(u.ssum1) >= lo and np.maximum.reduce(u.ssum1) <= hi):
            np.maximum.reduce(s, -1, None, u.ssum, keepdims=True)       # (B, nh, Tm, 1) row maxes
            np.subtract(s, u.ssum, s)
            np.exp(s, u.e)
            np.dot(u.e2, u.ones_T, u.ssum1)
        np.divide(1, u.ssum, u.ssum)
        np.multiply(u.e, u.ssum, ua.att)                                # (B, nh, Tm, Tm)

    def _gelu(self, v, va) -> None:
        """act = x s, s = sigmoid(2u) = (1 + tanh(u)) / 2, u = K (x + A x^3), x = c_fc, and (training)
        its derivative for the backward, gelu' = s + 2 x s (1 - s) du/dx = s + act (1 - s) (2K + 6KA x^2)."""
        x, x2, sg, d = v.fc, v.x2, v.sg, va.dgelu
        np.multiply(x, x, x2)                                           # x^2
        np.multiply(x2, -2 * GELU_K * GELU_A, sg)
        np.add(sg, -2 * GELU_K, sg)
        np.multiply(sg, x, sg)                                          # -2u
        np.exp(sg, sg)
        np.add(sg, 1, sg)
        np.divide(1, sg, sg)                                            # s = 1 / (1 + exp(-2u))
        np.multiply(x, sg, va.act)                                      # (M, 4C) gelu
        if self.inference:
            return
        np.multiply(x2, 6 * GELU_K * GELU_A, d)
        np.add(d, 2 * GELU_K, d)                                        # 2 du/dx
        np.multiply(d, va.act, d)
        np.subtract(1, sg, x2)
        np.multiply(d, x2, d)
        np.add(d, sg, d)                                                # (M, 4C) gelu'

    def backward(self, b, xb, yb, dloss: float, g) -> None:
        """After forward_loss(xb, yb) gave b: dloss * the gradient of the mean loss into g (views()
        of a gradient vector)."""
        p, gd, v, u = self.p, g.__dict__, b.v, b.u
        dlogits_t = self._cross_entropy_backward(b, v, dloss)           # (V, M)
        np.dot(v.lnf.T, dlogits_t.T, gd["lm_head.weight"])              # (C, V)
        np.dot(dlogits_t.T, self.W_lm.T, v.dy)                          # (M, C) dln_f
        dx = v.dx
        self._layernorm_backward(b, v, v.dy, v.xhatf, v.rstdf, self.ln_f_w, gd["transformer.ln_f.weight"],
                                 gd["transformer.ln_f.bias"], dx, add=False)
        for W, G, ua, va in zip(reversed(self.w.layers), reversed(g.layers), reversed(u.layers), reversed(v.layers),
                                strict=True):
            # the MLP branch: dproj = dx (* its mask)
            d = dx
            if p:
                np.multiply(dx, va.mask_mlp_k, v.tmp2)
                d = v.tmp2
            np.dot(va.act.T, d, G.mproj)                                # (4C, C)
            np.dot(v.ones_M, d, G.mproj_b)
            np.dot(d, W.mproj.T, v.dact)                                # (M, 4C)
            np.multiply(v.dact, va.dgelu, v.dact)                       # (M, 4C) dc_fc
            np.dot(va.ln2.T, v.dact, G.fc)                              # (C, 4C)
            np.dot(v.ones_M, v.dact, G.fc_b)
            np.dot(v.dact, W.fc.T, v.dy)                                # (M, C) dln_2
            self._layernorm_backward(b, v, v.dy, va.xhat2, va.rstd2, W.ln2_w, G.ln2_w, G.ln2_b, dx)   # dresid_attn
            # the attention branch
            d = dx
            if p:
                np.multiply(dx, va.mask_attn_k, v.tmp2)
                d = v.tmp2
            np.dot(va.y.T, d, G.proj)                                   # (C, C)
            np.dot(v.ones_M, d, G.proj_b)
            np.dot(d, W.proj.T, v.dy)                                   # (M, C) dy, merged heads
            b.dy.take(b.pad_src, 0, u.dy, "clip")                               # (B*Tm, C) padded, 0 where dropped
            np.matmul(ua.att_used.swapaxes(-1, -2), u.dyh, u.dv)        # (B, nh, Tm, hs) dv
            np.matmul(u.dyh, ua.vT, u.datt)                             # (B, nh, Tm, Tm) datt_used
            if p:
                np.multiply(u.datt, ua.mask_att, u.datt)
            # softmax: dpreatt = att * (datt - sum(datt * att)), then the 1 / sqrt(hs) of the scores
            np.multiply(u.datt, ua.att, u.s)
            np.dot(u.s2, u.ones_T, u.ssum1)                             # (B*nh*Tm,)
            np.subtract(u.datt, u.ssum, u.datt)
            np.multiply(u.datt, ua.att, u.datt)
            np.multiply(u.datt, self.scale, u.datt)                     # (B, nh, Tm, Tm) dpreatt * scale
            np.matmul(u.datt, ua.k, u.dq)                               # (B, nh, Tm, hs)
            np.matmul(u.datt.swapaxes(-1, -2), ua.q, u.dk)              # (B, nh, Tm, hs)
            u.dqkv.take(b.rows, 0, v.dqkv, "clip")                              # (M, 3C)
            np.dot(va.ln1.T, v.dqkv, G.attn)                            # (C, 3C)
            np.dot(v.ones_M, v.dqkv, G.attn_b)
            np.dot(v.dqkv, W.attn.T, v.dy)                              # (M, C) dln_1
            self._layernorm_backward(b, v, v.dy, va.xhat1, va.rstd1, W.ln1_w, G.ln1_w, G.ln1_b, dx)
        if p:
            np.multiply(dx, v.mask_emb_k, dx)                           # demb
        self._embed_backward(b, v, dx, g)


# ----------------------------------------------------------------------------- evaluation

EVAL_ROWS = 256    # names evaluated at once


def inference_loss(model, X, Y, rows: int = EVAL_ROWS) -> float:
    """train.evaluate(model, X, Y) of a bag of words or a Transformer, faster: the mean loss over
    every unmasked target of the names X, Y (N, T) in inference mode (no dropout), by the engine's
    forward of `rows` names at a time, in the order of their length (so that a chunk's padded
    layout is as short as its names)."""
    eng = {"bow": BoWEngine, "transformer": TransformerEngine}[model.spec.engine](model, inference=True)
    eng.load(model)
    Y = np.asarray(Y)
    valid = Y >= 0
    order = np.argsort(np.where(valid.any(1), Y.shape[1] - np.argmax(valid[:, ::-1], 1), 0), kind="stable")
    total, count = 0.0, 0
    with np.errstate(over="ignore"):                                    # exp(-2u) in GELU may overflow to inf
        for i in range(0, len(X), rows):
            ix = order[i:i + rows]
            xb, yb = X[ix].astype(np.intp), Y[ix].astype(np.intp)
            if not (yb >= 0).any():
                continue
            loss, b = eng.forward_loss(xb, yb)
            total += loss * b.n
            count += b.n
    return total / count if count else float("nan")
