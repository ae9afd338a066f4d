"""The fast engines of makemore.py's bag of words and Transformer (transformer.BoW and
transformer.Transformer with train.sgd): their training step, fused.

Same maths, same minibatches, same dropout masks (drawn from the generator the model's
dropout_state names, in the reference's order, the count moved on as the reference moves it);
only the order of the floating-point operations differs, so the tests hold it to the
reference: float64 to 1e-12 relative per step, 1e-10 over 1,000 steps. A student never needs
to read this file.

Legend: B batch, T block_size, N = B*T rows (row b*T + t), C n_embd, H the bag of words'
n_hidden, nh heads, hs head size C / nh, V vocab size, L n_layers, P params.
The tricks, each said once where it is used:
  - the arrays of a batch size are made once (a fresh array's pages fault on first touch, which
    cost about as much as the arithmetic here);
  - the bias trick: each Linear's [W; b] is one (I+1, O) view of the flat vector (b follows its
    W there) and its input carries a ones column, so one product gives x @ W + b and one [dW; db];
  - every head at once: q, k, v are (B, nh, T, hs) views of the one (N, 3C) product, and each
    attention product is one np.matmul over the stacked (T, T) blocks, written through views
    straight into the merged-heads array;
  - the causal mask is a precomputed (T, T) of 0 and -inf added to the scores;
  - the logits are made transposed, (V, N): the softmax reduces over V by adding contiguous rows;
  - sums over rows or channels are products with ones (BLAS gemv beats np.add.reduce several
    times on these shapes);
  - ufuncs take `out` by position (a keyword costs more than the arithmetic on small arrays);
  - GELU as x * sigmoid(2u) = x / (1 + exp(-2u)): one exp and cheap passes (NumPy's tanh is slow
    here), x*x kept for the backward;
  - one draw of every dropout mask of a step (a generator's doubles come in order, so one call
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


def view(a, shape):
    """a reshaped to `shape` as a view (a strided array's reshape may copy, and a copy would
    take the writes meant for a)."""
    v = a.reshape(shape)
    if not np.shares_memory(v, a):
        raise AssertionError(f"a reshape to {shape} copied")
    return v


# the range of a softmax row's sum of exps for which exp of the scores as they are (unshifted) is as
# accurate as the shifted softmax (see TransformerEngine._softmax)
SUM_RANGE = {np.dtype(np.float32): (2.0 ** -60, 2.0 ** 100), np.dtype(np.float64): (2.0 ** -900, 2.0 ** 900)}


class SequenceEngine(FlatParams):
    """What both engines share: the flat vector with each Linear's [W; b] view, the targets' places
    in the transposed logits, the embeddings and the masked cross-entropy."""

    chunked = False     # the mean over a batch's unmasked targets couples its rows

    def __init__(self, model, wte: str, wpe: str, linears: tuple[str, ...]):
        self.V, self.T, self.C = model.vocab_size, model.block_size, model.n_embd
        self.wte, self.wpe, self.linears = wte, wpe, linears
        super().__init__(model)
        self._bufs: dict[int, SimpleNamespace] = {}

    def views(self, flat) -> SimpleNamespace:
        """FlatParams' views, and `Wb`: each Linear's [W; b] (I+1, O) by its module name."""
        v, at = super().views(flat), self.offset
        v.Wb = {}
        for k in self.linears:
            (I, O) = self.shapes[k + ".weight"]
            v.Wb[k] = flat[at[k + ".weight"]:at[k + ".bias"] + O].reshape(I + 1, O)
        return v

    def picks(self, y, n: int, out) -> None:
        """Where the targets y (..., n, T) of n rows sit in the transposed logits (V, N) flattened,
        y * N + row; a masked target (-1) points at the one slot past the end, which holds 0."""
        N = n * self.T
        np.multiply(y, N, out)
        out += np.arange(N).reshape(n, self.T)
        np.copyto(out, -1, where=y < 0)

    def _common(self, B: int, dt) -> SimpleNamespace:
        N, V, C = B * self.T, self.V, self.C
        # the shifted logits (V, N) and their exps, each with a slot past the end: a masked target's
        # pick reads it (0 in the logits) and the backward's subtraction writes it (never read)
        shifted, counts = np.zeros(V * N + 1, dt), np.zeros(V * N + 1, dt)
        onehot = np.zeros((N, V), dt)
        return SimpleNamespace(
            N=N, shifted_flat=shifted, shifted=shifted[:-1].reshape(V, N), counts_flat=counts,
            counts=counts[:-1].reshape(V, N), logits=np.empty((V, N), dt), maxes=np.empty(N, dt),
            sums=np.empty(N, dt), lse=np.empty(N, dt), keep=np.empty(N, dt), coef=np.empty(N, dt),
            onehot=onehot, onehot_t=onehot.T, onehot_flat=onehot.reshape(-1), rows_v=np.arange(N) * V,
            rows_N=np.arange(N).reshape(B, self.T), ones_V=np.ones(V, dt), ones_B=np.ones(B, dt),
            ones_N=np.ones(N, dt), ones_C=np.full(C, 1 / C, dt), pick=None, hot=None, n=0)

    def _embed(self, b, xb, out) -> None:
        """out (N, C) = wte[X] + wpe[t], row b*T + t."""
        getattr(self.w, self.wte).take(xb.reshape(-1), 0, out)
        np.add(out.reshape(len(xb), self.T, self.C), getattr(self.w, self.wpe), out.reshape(len(xb), self.T, self.C))

    def _embed_backward(self, b, demb, g) -> None:
        """demb (N, C) -> dwte (V, C), dwpe (T, C)."""
        B = len(b.ones_B)
        # dwte = onehot(X).T @ demb: BLAS adds the rows of repeated characters
        b.onehot.fill(0)
        b.onehot_flat[b.hot] = 1                                        # (N, V)
        np.dot(b.onehot_t, demb, getattr(g, self.wte))                  # (V, C)
        # wpe[t] was added to every row of the batch: dwpe sums demb over B (a product with ones)
        np.dot(b.ones_B, demb.reshape(B, self.T * self.C), getattr(g, self.wpe).reshape(-1))

    def _places(self, b, xb, yb, pick, hot) -> None:
        """The targets' places (picks) and the characters' places in onehot ((row * T + t) * V + x),
        given by Chunks.gather or made here; the count of unmasked targets, and keep (N,), 1 where a
        target counts and 0 where it is masked."""
        if pick is None:
            pick = np.empty(yb.shape, np.intp)
            self.picks(yb, len(yb), pick)
        b.pick = pick
        b.hot = xb.reshape(-1) + b.rows_v if hot is None else hot
        np.greater_equal(pick.reshape(-1), 0, b.keep, casting="unsafe")
        b.n = int(np.count_nonzero(b.keep))
        if b.n == 0:
            raise ValueError(f"every one of the {yb.size} targets is -1 (masked): the mean over no targets is "
                             f"undefined")

    def _cross_entropy(self, b) -> float:
        """The masked mean of -log softmax(logits)[y] over the unmasked targets, from b.logits (V, N)."""
        np.maximum.reduce(b.logits, 0, None, b.maxes)                   # (N,) contiguous rows of N
        np.subtract(b.logits, b.maxes, b.shifted)                       # (V, N) logits - max
        picked = b.shifted_flat.take(b.pick)                            # (B, T) 0 where masked
        np.exp(b.shifted, b.counts)                                     # (V, N)
        np.dot(b.ones_V, b.counts, b.sums)                              # (N,) sum over V
        np.log(b.sums, b.lse)                                           # (N,)
        return (float(np.dot(b.keep, b.lse)) - float(np.add.reduce(picked, None))) / b.n

    def _cross_entropy_backward(self, b, dloss: float):
        """-> dlogits (V, N) = dloss * (softmax - onehot(Y)) / n at the unmasked targets, 0 elsewhere
        (written over the counts)."""
        np.multiply(b.keep, dloss / b.n, b.coef)
        np.divide(b.coef, b.sums, b.coef)                               # (N,) 0 where masked
        np.multiply(b.counts, b.coef, b.counts)                         # (V, N) dloss * softmax / n
        b.counts_flat[b.pick] -= dloss / b.n                            #   minus dloss * onehot(Y) / n
        return b.counts


# ----------------------------------------------------------------------------- the bag of words

class BoWEngine(SequenceEngine):
    """transformer.BoW's step: emb = wte[X] + wpe, x = emb + cbow(emb), x += c_proj(tanh(c_fc(x))),
    logits = x @ lm_head + b."""

    def __init__(self, model, tanh: str | None = None):
        self.H = model.n_hidden
        super().__init__(model, "wte.weight", "wpe.weight",
                         ("context_block.mlp.c_fc", "context_block.mlp.c_proj", "lm_head"))
        self.tanh_form, self.tanh = pick(self.dtype, tanh)
        w = self.w
        self.W_fc, self.W_proj, self.W_lm = (w.Wb[k] for k in self.linears)
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
        b.emb = np.empty((N, C), dt)
        b.resid1 = np.ones((N, C + 1), dt)                             # [resid_cbow, 1]
        b.h1 = np.ones((N, H + 1), dt)                                 # [tanh, 1]
        b.block1 = np.ones((N, C + 1), dt)                             # [context_block, 1]
        b.fc, b.h, b.dh, b.t = (np.empty((N, H), dt) for _ in range(4))
        b.dblock, b.dresid, b.demb = (np.empty((N, C), dt) for _ in range(3))
        b.resid, b.block = b.resid1[:, :C], b.block1[:, :C]
        b.emb3, b.resid3, b.dresid3, b.demb3 = (view(a, (B, T, C)) for a in (b.emb, b.resid, b.dresid, b.demb))
        self._bufs[B] = b
        return b

    def forward_loss(self, xb, yb, pick=None, hot=None) -> tuple[float, SimpleNamespace]:
        """The forward of rows xb (B, T), yb (B, T) (-1 masked): (mean loss over the unmasked targets,
        the buffers holding it all). pick, hot: see SequenceEngine._places."""
        B = len(xb)
        b = self._buffers(B)
        self._places(b, xb, yb, pick, hot)
        self._embed(b, xb, b.emb)                                       # (N, C)
        # cbow_t = the mean of emb_0..emb_t: one (T, T) @ (T, C) product per row of the batch
        np.matmul(self.avg, b.emb3, b.resid3)                           # (B, T, C) cbow
        np.add(b.resid, b.emb, b.resid)                                 # (N, C) resid_cbow
        np.dot(b.resid1, self.W_fc, b.fc)                               # (N, H) + b
        self.tanh(b.fc, b.h)                                            # (N, H) on a contiguous array
        np.copyto(b.h1[:, :self.H], b.h)
        np.matmul(b.h1, self.W_proj, b.block)                           # (N, C) mlp, into block1
        np.add(b.block, b.resid, b.block)                               # (N, C) context_block
        np.dot(self.W_lm.T, b.block1.T, b.logits)                       # (V, N) transposed logits
        return self._cross_entropy(b), b

    def backward(self, b, xb, yb, dloss: float, g) -> None:
        """After forward_loss(xb, yb) gave b: dloss * the gradient of the mean loss into g (views()
        of a gradient vector)."""
        dlogits_t = self._cross_entropy_backward(b, dloss)              # (V, N)
        W_fc, W_proj, W_lm = (g.Wb[k] for k in self.linears)
        np.dot(b.block1.T, dlogits_t.T, W_lm)                           # (C+1, V) [dW; db]
        np.dot(dlogits_t.T, self.W_lm[:-1].T, b.dblock)                 # (N, C) dcontext_block
        np.dot(b.h1.T, b.dblock, W_proj)                                # (H+1, C)
        np.dot(b.dblock, self.W_proj[:-1].T, b.dh)                      # (N, H) dtanh
        np.multiply(b.h, b.h, b.t)                                      # dc_fc = (1 - h^2) * dh
        np.subtract(1, b.t, b.t)
        np.multiply(b.dh, b.t, b.dh)                                    # (N, H)
        np.dot(b.resid1.T, b.dh, W_fc)                                  # (C+1, H)
        np.dot(b.dh, self.W_fc[:-1].T, b.dresid)                        # (N, C)
        np.add(b.dresid, b.dblock, b.dresid)                            # + the skip
        # demb_s = dresid_s (the skip) + sum over t >= s of dresid_t / (t + 1)
        np.matmul(self.avg_t, b.dresid3, b.demb3)                       # (B, T, C)
        np.add(b.demb, b.dresid, b.demb)
        self._embed_backward(b, b.demb, g)


# ----------------------------------------------------------------------------- the Transformer

class TransformerEngine(SequenceEngine):
    """transformer.Transformer's step, with nanoGPT's dropout when the model has one. The model's
    dropout_state (seed, dropout forwards) is kept here between load() and store(), moved on by
    each forward that drops, as the model's own forward moves it."""

    def __init__(self, model):
        self.L, self.nh = model.n_layers, model.n_head
        self.p = float(model.dropout)
        names = []
        for i in range(self.L):
            k = f"transformer.h.{i}."
            names += [k + "attn.c_attn", k + "attn.c_proj", k + "mlp.c_fc", k + "mlp.c_proj"]
        super().__init__(model, "transformer.wte.weight", "transformer.wpe.weight", tuple(names))
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
        out = []
        for i in range(self.L):
            k = f"transformer.h.{i}."
            out.append(SimpleNamespace(
                ln1_w=getattr(v, k + "ln_1.weight"), ln1_b=getattr(v, k + "ln_1.bias"),
                ln2_w=getattr(v, k + "ln_2.weight"), ln2_b=getattr(v, k + "ln_2.bias"),
                attn=getattr(v, k + "attn.c_attn.weight"), attn_b=getattr(v, k + "attn.c_attn.bias"),
                proj=getattr(v, k + "attn.c_proj.weight"), proj_b=getattr(v, k + "attn.c_proj.bias"),
                fc=getattr(v, k + "mlp.c_fc.weight"), fc_b=getattr(v, k + "mlp.c_fc.bias"),
                mproj=getattr(v, k + "mlp.c_proj.weight"), mproj_b=getattr(v, k + "mlp.c_proj.bias")))
        v.layers = out
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

        def heads(a):
            """(N, C) rows -> (B, nh, T, hs): head h's channels of each row, a view."""
            return view(a, (B, T, nh, hs)).transpose(0, 2, 1, 3)

        b.x, b.dx, b.tmp, b.tmp2 = (np.empty((N, C), dt) for _ in range(4))
        b.mean, b.var = np.empty((N, 1), dt), np.empty((N, 1), dt)
        b.mean1, b.var1 = b.mean.reshape(-1), b.var.reshape(-1)
        b.dqkv = np.empty((N, 3 * C), dt)
        b.dq, b.dk, b.dv = (heads(b.dqkv[:, j * C:(j + 1) * C]) for j in range(3))
        b.dy = np.empty((N, C), dt)
        b.dyh = heads(b.dy)
        b.datt, b.s = np.empty((B, nh, T, T), dt), np.empty((B, nh, T, T), dt)
        b.e = np.empty((B, nh, T, T), dt)
        b.ssum = np.empty((B, nh, T, 1), dt)
        b.s2, b.e2, b.ssum1 = b.s.reshape(-1, T), b.e.reshape(-1, T), b.ssum.reshape(-1)
        b.datt2 = b.datt.reshape(-1, T)
        b.ones_T = np.ones(T, dt)
        # c_fc's output and GELU's scratch serve every block: the backward reads only gelu'
        b.fc, b.x2, b.sg, b.dact = (np.empty((N, 4 * C), dt) for _ in range(4))
        b.xhatf, b.rstdf, b.lnf = np.empty((N, C), dt), np.empty((N, 1), dt), np.empty((N, C), dt)
        b.wC = np.empty(C, dt)
        b.layers = []
        for _ in range(self.L):
            a = SimpleNamespace()
            a.xhat1, a.xhat2 = np.empty((N, C), dt), np.empty((N, C), dt)
            a.rstd1, a.rstd2 = np.empty((N, 1), dt), np.empty((N, 1), dt)
            a.ln1, a.ln2 = np.empty((N, C), dt), np.empty((N, C), dt)
            a.qkv = np.empty((N, 3 * C), dt)
            a.q, a.k, a.v = (heads(a.qkv[:, j * C:(j + 1) * C]) for j in range(3))
            a.kT, a.vT = a.k.swapaxes(-1, -2), a.v.swapaxes(-1, -2)    # (B, nh, hs, T)
            a.att = np.empty((B, nh, T, T), dt)
            a.att_used = np.empty((B, nh, T, T), dt) if self.p else a.att
            a.y = np.empty((N, C), dt)                                 # the merged heads: c_proj's input
            a.yh = heads(a.y)                                          # (B, nh, T, hs) a view into y
            a.act = np.empty((N, 4 * C), dt)
            a.dgelu = np.empty((N, 4 * C), dt)                         # gelu'(c_fc)
            b.layers.append(a)
        if self.p:
            # every mask of a step in the reference's order: x0, then per block the attention
            # weights', the attention output's and the MLP's
            sizes = [N * C] + [B * nh * T * T, N * C, N * C] * self.L
            b.uniform = np.empty(sum(sizes), np.float64)
            b.kept = np.empty(sum(sizes), bool)
            b.masks = np.empty(sum(sizes), dt)
            parts, at = [], 0
            for s in sizes:
                parts.append(b.masks[at:at + s])
                at += s
            b.mask_emb = parts[0].reshape(N, C)
            for i, a in enumerate(b.layers):
                a.mask_att = parts[1 + 3 * i].reshape(B, nh, T, T)
                a.mask_attn, a.mask_mlp = parts[2 + 3 * i].reshape(N, C), parts[3 + 3 * i].reshape(N, C)
        self._bufs[B] = b
        return b

    def _draw_masks(self, b) -> None:
        """Transformer.dropout_rng and dropout_forward's masks, all of this step's at once: 0 with
        probability p, else 1 / (1 - p), from the generator seeded by (seed, step); step += 1."""
        seed, step = int(self.dropout_state[0]), int(self.dropout_state[1])
        if step + 1 >= EXACT and self.dtype == np.float32:
            raise ValueError(f"a float32 Transformer counts {EXACT:,} dropout steps at most; train in float64")
        self.dropout_state[1] = step + 1
        np.random.default_rng([DROPOUT_STREAM, seed, step]).random(out=b.uniform)
        np.greater_equal(b.uniform, self.p, b.kept)
        np.multiply(b.kept, self.dtype.type(1 / (1 - self.p)), b.masks)

    # ------------------------------------------------------------------------- LayerNorm

    def _layernorm(self, b, x, w, bias, xhat, rstd, out) -> None:
        """out = w * (x - mean) / sqrt(var + eps) + bias over each row's C channels; xhat and rstd
        (N, 1) kept for the backward."""
        np.dot(x, b.ones_C, b.mean1)                                    # (N,) the mean, by gemv
        np.subtract(x, b.mean, xhat)                                    # (N, C) x - mean
        np.multiply(xhat, xhat, b.tmp2)
        np.dot(b.tmp2, b.ones_C, b.var1)                                # (N,) biased variance
        np.add(b.var, LN_EPS, rstd)
        np.sqrt(rstd, rstd)
        np.divide(1, rstd, rstd)                                        # (N, 1)
        np.multiply(xhat, rstd, xhat)                                   # (N, C) xhat
        np.multiply(xhat, w, out)
        np.add(out, bias, out)                                          # (N, C)

    def _layernorm_backward(self, b, dout, xhat, rstd, w, dw, db, dx, add=True) -> None:
        """dx += (add) or = the LayerNorm's input gradient, rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
        with dxhat = w * dout; dw = sum(dout * xhat), db = sum(dout) over the rows."""
        t, u = b.tmp2, b.tmp
        np.dot(b.ones_N, dout, db)                                      # (C,)
        np.multiply(dout, xhat, t)                                      # (N, C)
        np.dot(b.ones_N, t, dw)                                         # (C,)
        # the two means over a row: mean(dxhat * xhat) = (dout * xhat) @ w / C, mean(dxhat) = dout @ w / C
        np.multiply(w, 1 / self.C, b.wC)
        np.dot(t, b.wC, b.var1)                                         # (N,) mean(dxhat * xhat)
        np.dot(dout, b.wC, b.mean1)                                     # (N,) mean(dxhat)
        np.multiply(dout, w, u)                                         # (N, C) dxhat
        np.multiply(xhat, b.var, t)
        np.subtract(u, t, u)
        np.subtract(u, b.mean, u)
        if add:
            np.multiply(u, rstd, u)
            np.add(dx, u, dx)                                           # (N, C)
        else:
            np.multiply(u, rstd, dx)

    # ------------------------------------------------------------------------- the step

    def forward_loss(self, xb, yb, pick=None, hot=None) -> tuple[float, SimpleNamespace]:
        """The forward of rows xb (B, T), yb (B, T) (-1 masked) in training mode (dropout, when the
        model has it, with this step's masks): (mean loss over the unmasked targets, the buffers).
        pick, hot: see SequenceEngine._places."""
        B = len(xb)
        b = self._buffers(B)
        self._places(b, xb, yb, pick, hot)
        p = self.p
        if p:
            self._draw_masks(b)
        x = b.x
        self._embed(b, xb, x)                                           # (N, C) emb
        if p:
            np.multiply(x, b.mask_emb, x)                               # x0
        for W, a in zip(self.w.layers, b.layers, strict=True):
            self._layernorm(b, x, W.ln1_w, W.ln1_b, a.xhat1, a.rstd1, a.ln1)   # (N, C)
            np.dot(a.ln1, W.attn, a.qkv)                                # (N, 3C) q, k, v side by side
            np.add(a.qkv, W.attn_b, a.qkv)
            self._softmax(b, a)                                         # (B, nh, T, T) att
            if p:
                np.multiply(a.att, a.mask_att, a.att_used)
            np.matmul(a.att_used, a.v, a.yh)                            # (B, nh, T, hs) into y1: merged heads
            np.dot(a.y, W.proj, b.tmp)                                  # (N, C) c_proj
            np.add(b.tmp, W.proj_b, b.tmp)
            if p:
                np.multiply(b.tmp, a.mask_attn, b.tmp)
            np.add(x, b.tmp, x)                                         # (N, C) resid_attn
            self._layernorm(b, x, W.ln2_w, W.ln2_b, a.xhat2, a.rstd2, a.ln2)   # (N, C)
            np.dot(a.ln2, W.fc, b.fc)                                   # (N, 4C) c_fc
            np.add(b.fc, W.fc_b, b.fc)
            self._gelu(b, a)                                            # (N, 4C) into act1, and gelu'
            np.dot(a.act, W.mproj, b.tmp)                               # (N, C) mlp c_proj
            np.add(b.tmp, W.mproj_b, b.tmp)
            if p:
                np.multiply(b.tmp, a.mask_mlp, b.tmp)
            np.add(x, b.tmp, x)                                         # (N, C) h.i
        self._layernorm(b, x, self.ln_f_w, self.ln_f_b, b.xhatf, b.rstdf, b.lnf)   # (N, C)
        np.dot(self.W_lm.T, b.lnf.T, b.logits)                          # (V, N) transposed logits
        return self._cross_entropy(b), b

    def _softmax(self, b, a) -> None:
        """att = softmax(q k^T / sqrt(hs), -inf on the future) of every head at once."""
        s = b.s
        np.matmul(a.q, a.kT, s)                                         # (B, nh, T, T)
        np.multiply(s, self.scale, s)
        np.add(s, self.neg, s)                                          # -inf on the future
        # exp without the shift by each row's max (a reduction over T, slow on short rows) when
        # that is as accurate: every row sum between 2^-60 and 2^100 (float32) leaves no overflow
        # and no partly denormal row; else, or for a NaN, the shifted softmax
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
    def _gelu(b, a) -> None:
        """act = x s, s = sigmoid(2u) = (1 + tanh(u)) / 2, u = K (x + A x^3), x = c_fc, and its
        derivative for the backward: gelu' = s + 2 x s (1 - s) du/dx = s + act (1 - s) (2K + 6KA x^2),
        made here while x's arrays are in the cache (the backward then multiplies once)."""
        x, x2, sg, d = b.fc, b.x2, b.sg, a.dgelu
        np.multiply(x, x, x2)                                           # x^2
        np.multiply(x2, -2 * GELU_K * GELU_A, sg)
        np.add(sg, -2 * GELU_K, sg)
        np.multiply(sg, x, sg)                                          # -2u
        np.exp(sg, sg)
        np.add(sg, 1, sg)
        np.divide(1, sg, sg)                                            # s = 1 / (1 + exp(-2u))
        np.multiply(x, sg, a.act)                                       # (N, 4C) gelu
        np.multiply(x2, 6 * GELU_K * GELU_A, d)
        np.add(d, 2 * GELU_K, d)                                        # 2 du/dx
        np.multiply(d, a.act, d)
        np.subtract(1, sg, x2)
        np.multiply(d, x2, d)
        np.add(d, sg, d)                                                # (N, 4C) gelu'

    def backward(self, b, xb, yb, dloss: float, g) -> None:
        """After forward_loss(xb, yb) gave b: dloss * the gradient of the mean loss into g (views()
        of a gradient vector)."""
        p, gd = self.p, g.__dict__
        dlogits_t = self._cross_entropy_backward(b, dloss)              # (V, N)
        np.dot(b.lnf.T, dlogits_t.T, gd["lm_head.weight"])              # (C, V)
        np.dot(dlogits_t.T, self.W_lm.T, b.dy)                          # (N, C) dln_f
        dx = b.dx
        self._layernorm_backward(b, b.dy, b.xhatf, b.rstdf, self.ln_f_w, gd["transformer.ln_f.weight"],
                                 gd["transformer.ln_f.bias"], dx, add=False)
        for W, G, a in zip(reversed(self.w.layers), reversed(g.layers), reversed(b.layers), strict=True):
            # the MLP branch: dproj = dx (* its mask)
            d = dx
            if p:
                np.multiply(dx, a.mask_mlp, b.tmp2)
                d = b.tmp2
            np.dot(a.act.T, d, G.mproj)                                 # (4C, C)
            np.dot(b.ones_N, d, G.mproj_b)
            np.dot(d, W.mproj.T, b.dact)                                # (N, 4C)
            np.multiply(b.dact, a.dgelu, b.dact)                        # (N, 4C) dc_fc
            np.dot(a.ln2.T, b.dact, G.fc)                               # (C, 4C)
            np.dot(b.ones_N, b.dact, G.fc_b)
            np.dot(b.dact, W.fc.T, b.dy)                                # (N, C) dln_2
            self._layernorm_backward(b, b.dy, a.xhat2, a.rstd2, W.ln2_w, G.ln2_w, G.ln2_b, dx)   # dresid_attn
            # the attention branch
            d = dx
            if p:
                np.multiply(dx, a.mask_attn, b.tmp2)
                d = b.tmp2
            np.dot(a.y.T, d, G.proj)                                    # (C, C)
            np.dot(b.ones_N, d, G.proj_b)
            np.dot(d, W.proj.T, b.dy)                                   # (N, C) dy, merged heads
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
            np.dot(a.ln1.T, b.dqkv, G.attn)                             # (C, 3C)
            np.dot(b.ones_N, b.dqkv, G.attn_b)
            np.dot(b.dqkv, W.attn.T, b.dy)                              # (N, C) dln_1
            self._layernorm_backward(b, b.dy, a.xhat1, a.rstd1, W.ln1_w, G.ln1_w, G.ln1_b, dx)
        if p:
            np.multiply(dx, b.mask_emb, dx)                             # demb
        self._embed_backward(b, dx, g)
