"""The fast engines of makemore.py's bag of words and Transformer (transformer.BoW and
transformer.Transformer with train.sgd): their training step, fused.

Same maths, same minibatches, same dropout masks (drawn from the generator the model's
dropout_state names, in the reference's order, its count moved on as the reference moves it);
only the order of the floating-point operations differs, so the tests hold it to the
reference: float64 to 1e-12 relative per step, 1e-10 over 1,000 steps. A student never needs
to read this file.

Legend: B batch, T block_size, N = B*T positions (row b*T + t of the padded layout), M the
positions a step computes (see the first trick), C n_embd, H the bag of words' n_hidden, nh
heads, hs head size C / nh, V vocab size, L n_layers, P params.
The tricks, each said once where it is used:
  - only the positions up to each row's last unmasked target are computed: position t reaches
    the loss only through positions >= t (causal attention and averages; the rest acts position
    by position), so one after the last target adds exactly 0 to every gradient. A name of
    makemore.py's rows fills 45% of them; the rest of a row is padding. These M "kept" positions
    are packed into the first M rows of each array, and only the causal mixing (attention, the
    average) runs in the padded (B, T) layout, gathered to and from it by one `take`;
  - the arrays of a batch size are made once, and their views for each M (a fresh array's pages
    fault on first touch, which costs about as much as the arithmetic here);
  - every head at once: q, k, v are (B, nh, T, hs) views of one (N, 3C) array, and each
    attention product is one np.matmul over the stacked (T, T) blocks, written through views
    straight into the merged-heads array;
  - the causal mask is a precomputed (T, T) of 0 and -inf added to the scores, and the softmax
    skips the shift by each row's max when its row sums show it is not needed;
  - the logits are made transposed, (V, M): the softmax reduces over V by adding contiguous rows;
  - sums over rows or channels are products with ones (BLAS gemv beats np.add.reduce several
    times on these shapes);
  - ufuncs take `out` by position (a keyword costs more than the arithmetic on small arrays);
  - GELU as x * sigmoid(2u) = x / (1 + exp(-2u)), one exp (NumPy's tanh is slow here), and its
    derivative made in the forward while its operands are in the cache;
  - dwte and dwpe are one product, [onehot(X), onehot(t)].T @ demb (wte and wpe are adjacent in
    the flat vector);
  - one draw of a step's every dropout mask (a generator's doubles come in order, so one call
    gives what the reference's calls give one after another).
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


class SequenceEngine(FlatParams):
    """What both engines share: a step's kept positions, the embeddings and their gradient, the
    masked cross-entropy over the transposed logits. A subclass names in `packed` its buffers of
    kept positions (each (N + 1, ...): the first M rows hold a step's positions, row N stays 0
    for the padded layout's dropped positions to read), of which _views makes the (M, ...) views."""

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
            B=B, N=N, by_M={},
            # the shifted logits (V, M) and their exps, with room for a slot past the end: a
            # masked target's pick reads it (0 in the shifted logits), the backward writes it
            shifted_flat=np.zeros(V * N + 1, dt), counts_flat=np.zeros(V * N + 1, dt),
            logits_flat=np.empty(V * N, dt), maxes=np.empty(N, dt), sums=np.empty(N, dt), lse=np.empty(N, dt),
            keep=np.empty(N, dt), coef=np.empty(N, dt), ones_V=np.ones(V, dt), ones_N=np.ones(N, dt),
            ones_C=np.full(self.C, 1 / self.C, dt), onehot=np.zeros((N, V + T), dt), hot=np.zeros(0, np.intp),
            positions=np.arange(N) % T, pad_src=np.empty(N, np.intp), arange=np.arange(N))
        b.onehot_flat = b.onehot.reshape(-1)
        return b

    def _views(self, b, M: int) -> SimpleNamespace:
        """The first M rows of every packed buffer, and the step's other arrays over M, made once per M."""
        v = SimpleNamespace(M=M)
        for name in self.packed:
            setattr(v, name, getattr(b, name)[:M])
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

    def _pack(self, b, xb, code) -> SimpleNamespace:
        """The step's kept positions from picks' codes (B, T): their rows in the padded layout
        (b.rows, M of them) and pad_src (N,), each padded row's kept row (or N, the zero row); the
        targets' places in the shifted logits (V, M) flattened (b.pick), keep (1 where a target
        counts), their count n; and the rows of [wte; wpe] each kept position reads (x, V + t)."""
        flat = code.reshape(-1)
        rows = np.flatnonzero(flat != DROPPED)                          # (M,)
        M = len(rows)
        if M == 0:
            raise ValueError(f"every one of the {flat.size} targets is -1 (masked): the mean over no targets is "
                             f"undefined")
        v = b.by_M.get(M) or self._views(b, M)
        b.rows, b.v = rows, v
        y = flat.take(rows)                                             # (M,) targets, MASKED where none
        valid = y >= 0
        np.copyto(v.keep, valid)
        b.n = int(np.count_nonzero(valid))
        b.pick = y * M + v.arange
        b.pick[~valid] = self.V * M                                     # the slot past the end
        b.shifted_flat[self.V * M] = 0
        b.pad_src.fill(b.N)
        b.pad_src[rows] = v.arange
        b.emb_rows = np.concatenate([xb.reshape(-1).take(rows), self.V + b.positions.take(rows)])   # (2M,)
        return v

    def _embed(self, b, v, out) -> None:
        """out (M, C) = wte[x] + wpe[t] of each kept position."""
        M = v.M
        self.w.emb.take(b.emb_rows[:M], 0, out)
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

    def __init__(self, model, tanh: str | None = None):
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
        self.avg_t = self.avg.T

    def _buffers(self, B: int):
        b = self._bufs.get(B)
        if b is not None:
            return b
        dt, C, H, T = self.dtype, self.C, self.H, self.T
        b = self._common(B, dt)
        N = b.N
        b.resid, b.block, b.dblock, b.dresid = (np.zeros((N + 1, C), dt) for _ in range(4))   # packed
        b.fc, b.h, b.t, b.dh = (np.zeros((N + 1, H), dt) for _ in range(4))
        b.emb_pad, b.resid_pad, b.dresid_pad, b.demb_pad = (np.empty((N, C), dt) for _ in range(4))   # padded
        b.emb3, b.resid3, b.dresid3, b.demb3 = (view(a, (B, T, C)) for a in (b.emb_pad, b.resid_pad, b.dresid_pad,
                                                                              b.demb_pad))
        self._bufs[B] = b
        return b

    def forward_loss(self, xb, yb, pick=None, hot=None) -> tuple[float, SimpleNamespace]:
        """The forward of rows xb (B, T), yb (B, T) (-1 masked): (mean loss over the unmasked targets,
        the buffers holding it all). pick: picks' codes of yb (None: made here); hot: unused."""
        B = len(xb)
        b = self._buffers(B)
        v = self._pack(b, xb, self._codes(yb, pick))
        # the causal average in the padded layout, then the kept positions
        self.w.__dict__[self.wte].take(xb.reshape(-1), 0, b.emb_pad)
        np.add(b.emb3, self.w.__dict__[self.wpe], b.emb3)              # (B, T, C) emb
        # cbow_t = the mean of emb_0..emb_t: one (T, T) @ (T, C) product per row of the batch
        np.matmul(self.avg, b.emb3, b.resid3)                           # (B, T, C) cbow
        np.add(b.resid_pad, b.emb_pad, b.resid_pad)                     # (N, C) resid_cbow
        b.resid_pad.take(b.rows, 0, v.resid)                            # (M, C)
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
        v, gd, k = b.v, g.__dict__, "context_block.mlp."
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
        b.dresid.take(b.pad_src, 0, b.dresid_pad)                       # (N, C)
        np.matmul(self.avg_t, b.dresid3, b.demb3)                       # (B, T, C)
        np.add(b.demb_pad, b.dresid_pad, b.demb_pad)
        b.demb_pad.take(b.rows, 0, v.resid)                             # (M, C) demb, over resid (read above)
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

    def __init__(self, model):
        self.L, self.nh = model.n_layers, model.n_head
        self.p = float(model.dropout)
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
        dt, C, T, nh, hs = self.dtype, self.C, self.T, self.nh, self.hs
        b = self._common(B, dt)
        N = b.N

        def packed(width):
            return np.zeros((N + 1, width), dt)

        def heads(a):
            """(N, C) rows of the padded layout -> (B, nh, T, hs): head h's channels of each row, a view."""
            return view(a, (B, T, nh, hs)).transpose(0, 2, 1, 3)

        b.x, b.dx, b.tmp, b.tmp2, b.dy, b.xhatf, b.lnf = (packed(C) for _ in range(7))
        b.mean, b.var, b.rstdf = packed(1), packed(1), packed(1)
        b.dqkv = packed(3 * C)
        # c_fc's output and GELU's scratch serve every block: the backward reads only gelu'
        b.fc, b.x2, b.sg, b.dact = (packed(4 * C) for _ in range(4))
        # the padded layout of the attention
        b.dy_pad, b.dqkv_pad = np.empty((N, C), dt), np.empty((N, 3 * C), dt)
        b.dyh = heads(b.dy_pad)
        b.dq, b.dk, b.dv = (heads(b.dqkv_pad[:, j * C:(j + 1) * C]) for j in range(3))
        b.y_pad = np.empty((N, C), dt)
        b.yh = heads(b.y_pad)
        b.s, b.e, b.datt = (np.empty((B, nh, T, T), dt) for _ in range(3))
        b.ssum = np.empty((B, nh, T, 1), dt)
        b.e2, b.s2, b.ssum1 = b.e.reshape(-1, T), b.s.reshape(-1, T), b.ssum.reshape(-1)
        b.ones_T = np.ones(T, dt)
        b.wC = np.empty(C, dt)
        b.layers = []
        for _ in range(self.L):
            a = SimpleNamespace()
            a.xhat1, a.xhat2, a.ln1, a.ln2, a.y = (packed(C) for _ in range(5))
            a.rstd1, a.rstd2 = packed(1), packed(1)
            a.qkv = packed(3 * C)
            a.act, a.dgelu = packed(4 * C), packed(4 * C)
            a.qkv_pad = np.empty((N, 3 * C), dt)                       # the padded layout's q, k, v
            a.q, a.k, a.v = (heads(a.qkv_pad[:, j * C:(j + 1) * C]) for j in range(3))
            a.kT, a.vT = a.k.swapaxes(-1, -2), a.v.swapaxes(-1, -2)    # (B, nh, hs, T)
            a.att = np.empty((B, nh, T, T), dt)
            a.att_used = np.empty((B, nh, T, T), dt) if self.p else a.att
            a.mask_attn_k, a.mask_mlp_k = (packed(C), packed(C)) if self.p else (None, None)   # their kept rows
            b.layers.append(a)
        if self.p:
            # every mask of a step in the reference's order: x0, then per block the attention
            # weights', the attention output's and the MLP's
            sizes = [N * C] + [B * nh * T * T, N * C, N * C] * self.L
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

    def _draw_masks(self, b, v) -> None:
        """Transformer.dropout_rng and dropout_forward's masks, all of this step's at once: 0 with
        probability p, else 1 / (1 - p), from the generator seeded by (seed, step), then step + 1;
        each (N, C) mask's kept rows gathered for the packed layout."""
        seed, step = int(self.dropout_state[0]), int(self.dropout_state[1])
        if step + 1 >= EXACT and self.dtype == np.float32:
            raise ValueError(f"a float32 Transformer counts {EXACT:,} dropout steps at most; train in float64")
        self.dropout_state[1] = step + 1
        np.random.default_rng([DROPOUT_STREAM, seed, step]).random(out=b.uniform)
        np.greater_equal(b.uniform, self.p, b.kept)
        np.multiply(b.kept, self.dtype.type(1 / (1 - self.p)), b.masks)
        b.mask_emb.take(b.rows, 0, v.mask_emb_k)
        for a, va in zip(b.layers, v.layers, strict=True):
            a.mask_attn.take(b.rows, 0, va.mask_attn_k)
            a.mask_mlp.take(b.rows, 0, va.mask_mlp_k)

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
        v = self._pack(b, xb, self._codes(yb, pick))
        p = self.p
        if p:
            self._draw_masks(b, v)
        x = v.x
        self._embed(b, v, x)                                            # (M, C) emb
        if p:
            np.multiply(x, v.mask_emb_k, x)                             # x0
        for W, a, va in zip(self.w.layers, b.layers, v.layers, strict=True):
            self._layernorm(b, v, x, W.ln1_w, W.ln1_b, va.xhat1, va.rstd1, va.ln1)   # (M, C)
            np.dot(va.ln1, W.attn, va.qkv)
            np.add(va.qkv, W.attn_b, va.qkv)                            # (M, 3C) q, k, v side by side
            a.qkv.take(b.pad_src, 0, a.qkv_pad)                         # (N, 3C) padded, 0 where dropped
            self._softmax(b, a)                                         # (B, nh, T, T) att
            if p:
                np.multiply(a.att, a.mask_att, a.att_used)
            np.matmul(a.att_used, a.v, b.yh)                            # (B, nh, T, hs) into y_pad: merged heads
            b.y_pad.take(b.rows, 0, va.y)                               # (M, C)
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

    def _softmax(self, b, a) -> None:
        """att = softmax(q k^T / sqrt(hs), -inf on the future) of every head at once."""
        s = b.s
        np.matmul(a.q, a.kT, s)                                         # (B, nh, T, T)
        np.multiply(s, self.scale, s)
        np.add(s, self.neg, s)                                          # -inf on the future
        # exp without the shift by each row's max (a reduction over T, slow on short rows) when
        # that is as accurate: every row sum in SUM_RANGE leaves no overflow and no partly
        # denormal row; else, or for a NaN, the shifted softmax
        np.exp(s, b.e)
        np.dot(b.e2, b.ones_T, b.ssum1)                                 # (B*nh*T,) row sums
        lo, hi = SUM_RANGE[self.dtype]
        if not (np.minimum.reduce(b.ssum1) >= lo and np.maximum.reduce(b.ssum1) <= hi):
            np.maximum.reduce(s, -1, None, b.ssum, keepdims=True)       # (B, nh, T, 1) row maxes
            np.subtract(s, b.ssum, s)
            np.exp(s, b.e)
            np.dot(b.e2, b.ones_T, b.ssum1)
        np.divide(1, b.ssum, b.ssum)
        np.multiply(b.e, b.ssum, a.att)                                 # (B, nh, T, T)

    @staticmethod
    def _gelu(v, va) -> None:
        """act = x s, s = sigmoid(2u) = (1 + tanh(u)) / 2, u = K (x + A x^3), x = c_fc, and its
        derivative for the backward, gelu' = s + 2 x s (1 - s) du/dx = s + act (1 - s) (2K + 6KA x^2)."""
        x, x2, sg, d = v.fc, v.x2, v.sg, va.dgelu
        np.multiply(x, x, x2)                                           # x^2
        np.multiply(x2, -2 * GELU_K * GELU_A, sg)
        np.add(sg, -2 * GELU_K, sg)
        np.multiply(sg, x, sg)                                          # -2u
        np.exp(sg, sg)
        np.add(sg, 1, sg)
        np.divide(1, sg, sg)                                            # s = 1 / (1 + exp(-2u))
        np.multiply(x, sg, va.act)                                      # (M, 4C) gelu
        np.multiply(x2, 6 * GELU_K * GELU_A, d)
        np.add(d, 2 * GELU_K, d)                                        # 2 du/dx
        np.multiply(d, va.act, d)
        np.subtract(1, sg, x2)
        np.multiply(d, x2, d)
        np.add(d, sg, d)                                                # (M, 4C) gelu'

    def backward(self, b, xb, yb, dloss: float, g) -> None:
        """After forward_loss(xb, yb) gave b: dloss * the gradient of the mean loss into g (views()
        of a gradient vector)."""
        p, gd, v = self.p, g.__dict__, b.v
        dlogits_t = self._cross_entropy_backward(b, v, dloss)           # (V, M)
        np.dot(v.lnf.T, dlogits_t.T, gd["lm_head.weight"])              # (C, V)
        np.dot(dlogits_t.T, self.W_lm.T, v.dy)                          # (M, C) dln_f
        dx = v.dx
        self._layernorm_backward(b, v, v.dy, v.xhatf, v.rstdf, self.ln_f_w, gd["transformer.ln_f.weight"],
                                 gd["transformer.ln_f.bias"], dx, add=False)
        for W, G, a, va in zip(reversed(self.w.layers), reversed(g.layers), reversed(b.layers), reversed(v.layers),
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
            b.dy.take(b.pad_src, 0, b.dy_pad)                           # (N, C) padded, 0 where dropped
            np.matmul(a.att_used.swapaxes(-1, -2), b.dyh, b.dv)         # (B, nh, T, hs) dv
            np.matmul(b.dyh, a.vT, b.datt)                              # (B, nh, T, T) datt_used
            if p:
                np.multiply(b.datt, a.mask_att, b.datt)
            # softmax: dpreatt = att * (datt - sum(datt * att)), then the 1 / sqrt(hs) of the scores
            np.multiply(b.datt, a.att, b.s)
            np.dot(b.s2, b.ones_T, b.ssum1)                             # (B*nh*T,)
            np.subtract(b.datt, b.ssum, b.datt)
            np.multiply(b.datt, a.att, b.datt)
            np.multiply(b.datt, self.scale, b.datt)                     # (B, nh, T, T) dpreatt * scale
            np.matmul(b.datt, a.k, b.dq)                                # (B, nh, T, hs)
            np.matmul(b.datt.swapaxes(-1, -2), a.q, b.dk)               # (B, nh, T, hs)
            b.dqkv_pad.take(b.rows, 0, v.dqkv)                          # (M, 3C)
            np.dot(va.ln1.T, v.dqkv, G.attn)                            # (C, 3C)
            np.dot(v.ones_M, v.dqkv, G.attn_b)
            np.dot(v.dqkv, W.attn.T, v.dy)                              # (M, C) dln_1
            self._layernorm_backward(b, v, v.dy, va.xhat1, va.rstd1, W.ln1_w, G.ln1_w, G.ln1_b, dx)
        if p:
            np.multiply(dx, v.mask_emb_k, dx)                           # demb
        self._embed_backward(b, v, dx, g)
