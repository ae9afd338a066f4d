"""The pairs of makemore.py's Transformer and bag of words (the last section of npmlp/layers.py):
LayerNorm, GELU, softmax, causal attention (the core and makemore.py's CausalSelfAttention), the
causal average (CausalBoW), dropout and the residual sum.

Each pair against a torch autograd mirror written here from makemore.py's maths, on shapes
hypothesis draws and on a few fixed edge cases (T = 1, one head, head size 1); against central
finite differences (npmlp.gradcheck.check_pair, float64); then the properties a Transformer
relies on: nothing at position t depends on a later position, masked scores get exactly zero
gradient, and dropout's backward uses the forward's own mask.

Legend: B batch, T positions, C channels (n_embd), nh heads, hs head size (C / nh).
Tolerances: float64 1e-10, float32 2e-5 (only the order of float round-off differs from torch),
relative to the largest |reference| value of the array (helpers.check) or, where a sum cancels,
to the size of its terms (the *_magnitudes functions).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import check
from hypothesis import given, settings
from hypothesis import strategies as st

from npmlp.gradcheck import check_pair
from npmlp.layers import (
    LN_EPS,
    SoftmaxCache,
    attention_backward,
    attention_forward,
    causal_average_backward,
    causal_average_forward,
    causal_self_attention_backward,
    causal_self_attention_forward,
    dropout_backward,
    dropout_forward,
    gelu_backward,
    gelu_forward,
    layernorm_backward,
    layernorm_forward,
    merge_heads,
    residual_backward,
    residual_forward,
    softmax_backward,
    softmax_forward,
    split_heads,
)

torch = pytest.importorskip("torch", reason="torch is not installed: these tests compare each layer with it")
F = torch.nn.functional
RTOL = {np.float64: 1e-10, np.float32: 2e-5}
DTYPES = [np.float64, np.float32]
DRAWN = settings(max_examples=25, deadline=None)
seeds = st.integers(0, 2**32 - 1)
sizes = st.integers(1, 5)


def t(a, grad=False):
    return torch.tensor(np.asarray(a), requires_grad=grad)


def randn(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def dropout_mask(rng, shape, p, dtype):
    """An inverted-dropout mask: 0 with probability p, else 1 / (1 - p)."""
    return ((rng.random(shape) >= p) / (1 - p)).astype(dtype)


def vs_torch(forward, backward, torch_forward, arrays, extra=(), seed=0, scales=None):
    """Run the pair on `arrays` (the float inputs it differentiates) and `extra` (passed after them,
    not differentiated; arrays among them go to torch as constants), and torch_forward on the
    same; check the output and every gradient, their dtypes and shapes, and that no input was
    modified. scales(arrays, dout, cache) -> {"out" or a gradient's index: the scale its error is
    relative to} where a sum cancels, so that its accuracy is relative to the size of its terms
    (as helpers.magnitude_scales); the rest are relative to max|torch|.
    -> {name: relative error} (mine vs torch)."""
    dtype = arrays[0].dtype.type
    rng = np.random.default_rng(seed)
    before = [a.copy() for a in arrays]
    out, cache = forward(*arrays, *extra)
    dout = randn(rng, out.shape, dtype)
    dout0 = dout.copy()
    grads = backward(dout, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)

    targs = [t(a, True) for a in arrays]
    textra = [t(e) if isinstance(e, np.ndarray) else e for e in extra]
    tout = torch_forward(*targs, *textra)
    tout.backward(t(dout))
    scale = scales(arrays, dout, cache) if scales else {}
    errs = {"out": check("out", out, tout.detach().numpy(), RTOL[dtype], scale.get("out"))}
    assert out.dtype == dtype, f"out is {out.dtype}, the input {np.dtype(dtype)}"
    assert len(grads) == len(arrays), f"{len(grads)} gradients for {len(arrays)} float inputs"
    for i, (g, ta) in enumerate(zip(grads, targs, strict=True)):
        assert g.dtype == dtype and g.shape == tuple(ta.shape), f"gradient {i}: {g.dtype} {g.shape}"
        errs[f"d{i}"] = check(f"gradient {i}", g, ta.grad.numpy(), RTOL[dtype], scale.get(i))
    assert all(np.array_equal(a, b) for a, b in zip(arrays, before, strict=True)), "the forward modified an input"
    assert np.array_equal(dout, dout0), "the backward modified dout"
    return errs


# ----------------------------------------------------------------------------- the torch mirrors

def torch_layernorm(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps=LN_EPS)


def torch_new_gelu(x):
    """makemore.py's NewGELU."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def torch_attention(q, k, v, mask=None):
    """makemore.py's attention of (..., T, hs) queries, keys and values, with nanoGPT's dropout mask."""
    T = q.shape[-2]
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
    att = att.masked_fill(torch.tril(torch.ones(T, T)) == 0, float("-inf"))
    att = F.softmax(att, dim=-1)
    if mask is not None:
        att = att * mask
    return att @ v


def torch_causal_self_attention(x, W_attn, b_attn, W_proj, b_proj, n_head, mask=None):
    """makemore.py's CausalSelfAttention.forward, its nn.Linear written as x @ W + b ((in, out) layout)."""
    B, T, C = x.size()
    q, k, v = (x @ W_attn + b_attn).split(C, dim=2)
    k = k.view(B, T, n_head, C // n_head).transpose(1, 2)   # (B, nh, T, hs)
    q = q.view(B, T, n_head, C // n_head).transpose(1, 2)   # (B, nh, T, hs)
    v = v.view(B, T, n_head, C // n_head).transpose(1, 2)   # (B, nh, T, hs)
    y = torch_attention(q, k, v, mask)                      # (B, nh, T, hs)
    y = y.transpose(1, 2).contiguous().view(B, T, C)        # (B, T, C)
    return y @ W_proj + b_proj


def torch_causal_bow(x):
    """makemore.py's CausalBoW.forward: a softmax of zeros masked to the past, times x."""
    B, T, C = x.size()
    att = torch.zeros((B, T, T), dtype=x.dtype)
    att = att.masked_fill(torch.tril(torch.ones(T, T)).view(1, T, T) == 0, float("-inf"))
    att = F.softmax(att, dim=-1)
    return att @ x


def attention_params(rng, C, dtype, scale=1.0):
    """W_attn (C, 3C), b_attn (3C,), W_proj (C, C), b_proj (C,): nonzero biases, as a check wants."""
    return [randn(rng, (C, 3 * C), dtype, scale / math.sqrt(C)), randn(rng, 3 * C, dtype, 0.5),
            randn(rng, (C, C), dtype, 1 / math.sqrt(C)), randn(rng, C, dtype, 0.5)]


# ----------------------------------------------------------------------------- against torch, drawn shapes

def layernorm_magnitudes(arrays, dout, cache):
    """Two sums cancel. x - mean: xhat is accurate relative to (|x| + |mean|) rstd, not to itself
    (a row of nearly equal values, or far from 0); and dx's three terms (layernorm_backward's),
    which cancel exactly, but for eps, when C = 2 (the outputs are then +-1 whatever x is); and db,
    a sum of dout over the rows, which can cancel too. So out, dx, dw and db are judged against the
    size of their terms, in torch as in npmlp."""
    x, w, b = (np.abs(a.astype(np.float64)) for a in arrays)
    rstd = cache.rstd.astype(np.float64)
    xhat = (x + x.mean(-1, keepdims=True)) * rstd          # >= |xhat|: its terms' size
    dxhat = np.abs(dout.astype(np.float64)) * w
    dx = rstd * (dxhat + dxhat.mean(-1, keepdims=True) + xhat * (dxhat * xhat).mean(-1, keepdims=True))
    dw = (np.abs(dout.astype(np.float64)) * xhat).reshape(-1, x.shape[-1]).sum(0)
    db = np.abs(dout.astype(np.float64)).reshape(-1, x.shape[-1]).sum(0)
    return {"out": float((xhat * w + b).max()), 0: float(dx.max()), 1: float(dw.max()), 2: float(db.max())}


@pytest.mark.parametrize("dtype", DTYPES)
@DRAWN
@given(lead=st.lists(sizes, min_size=0, max_size=3), C=st.integers(1, 16), scale=st.floats(0.1, 10),
       shift=st.floats(-5, 5), seed=seeds)
def test_layernorm_vs_torch(dtype, lead, C, scale, shift, seed):
    """Rows of spread `scale` around `shift` x scale (C = 1 is also tested on its own, below)."""
    rng = np.random.default_rng(seed)
    x = ((rng.standard_normal((*lead, C)) + shift) * scale).astype(dtype)
    vs_torch(layernorm_forward, layernorm_backward, torch_layernorm,
             [x, randn(rng, C, dtype) + 1, randn(rng, C, dtype)], seed=seed, scales=layernorm_magnitudes)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layernorm_of_one_channel(dtype):
    """C = 1: each row is its own mean, so xhat = 0, out = b and only db is nonzero. npmlp gets the
    exact zeros; torch's differ from 0 by its round-off in x - mean times 1/sqrt(eps)."""
    rng = np.random.default_rng(12)
    x, w, b = randn(rng, (4, 3, 1), dtype, 3), randn(rng, 1, dtype), randn(rng, 1, dtype)
    dout = randn(rng, (4, 3, 1), dtype)
    out, cache = layernorm_forward(x, w, b)
    dx, dw, db = layernorm_backward(dout, cache)
    assert np.array_equal(out, np.broadcast_to(b, x.shape)) and not dx.any() and not dw.any()
    check("db", db, dout.astype(np.float64).sum((0, 1)), RTOL[dtype])
    xt = t(x, True)
    torch_layernorm(xt, t(w), t(b)).backward(t(dout))
    check("dx vs torch", dx, xt.grad.numpy(), RTOL[dtype], layernorm_magnitudes([x, w, b], dout, cache)[0])


def gelu_magnitudes(arrays, dout, cache):
    """tanh is accurate to round-off relative to 1, not to 1 + tanh, which vanishes for large
    negative x (as a saturated tanh's 1 - h^2, helpers.magnitude_scales), in torch as in npmlp.
    out = 0.5 x (1 + tanh) weighs that round-off by |x|, dx by 0.5 (1 + |x| du/dx)."""
    x, dout = np.abs(arrays[0].astype(np.float64)), np.abs(dout.astype(np.float64))
    dudx = math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x ** 2)
    return {"out": float(x.max()), 0: float((dout * 0.5 * (1 + x * dudx)).max())}


@pytest.mark.parametrize("dtype", DTYPES)
@DRAWN
@given(shape=st.lists(sizes, min_size=1, max_size=3), scale=st.floats(0.1, 6), seed=seeds)
def test_gelu_vs_torch(dtype, shape, scale, seed):
    rng = np.random.default_rng(seed)
    vs_torch(gelu_forward, gelu_backward, torch_new_gelu, [randn(rng, shape, dtype, scale)], seed=seed,
             scales=gelu_magnitudes)


def softmax_magnitudes(arrays, dy, cache):
    """dx's scale: the size of its terms y (dy - sum(dy y)). A peaked softmax (y near 1) cancels
    them at its peak, so dx there is accurate relative to them, not to itself."""
    y, dy = np.abs(cache.y.astype(np.float64)), np.abs(dy.astype(np.float64))
    return {0: float((y * (dy + (dy * y).sum(-1, keepdims=True))).max())}


@pytest.mark.parametrize("dtype", DTYPES)
@DRAWN
@given(shape=st.lists(sizes, min_size=1, max_size=3), scale=st.floats(0.1, 20), seed=seeds)
def test_softmax_vs_torch(dtype, shape, scale, seed):
    rng = np.random.default_rng(seed)
    vs_torch(softmax_forward, softmax_backward, lambda x: F.softmax(x, dim=-1),
             [randn(rng, shape, dtype, scale)], seed=seed, scales=softmax_magnitudes)


@pytest.mark.parametrize("dtype", DTYPES)
@DRAWN
@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), T=st.integers(1, 7), hs=st.integers(1, 6),
       p=st.sampled_from([None, 0.0, 0.4]), seed=seeds)
def test_attention_core_vs_torch(dtype, lead, T, hs, p, seed):
    """One head (T, hs) or many (B, nh, T, hs); with and without a dropout mask on the weights."""
    rng = np.random.default_rng(seed)
    q, k, v = (randn(rng, (*lead, T, hs), dtype) for _ in range(3))
    extra = () if p is None else (dropout_mask(rng, (*lead, T, T), p, dtype),)
    vs_torch(attention_forward, attention_backward, torch_attention, [q, k, v], extra, seed=seed)


@pytest.mark.parametrize("dtype", DTYPES)
@DRAWN
@given(B=st.integers(1, 3), T=st.integers(1, 7), n_head=st.integers(1, 4), hs=st.integers(1, 4),
       scale=st.floats(0.2, 4), dropout=st.booleans(), seed=seeds)
def test_causal_self_attention_vs_torch(dtype, B, T, n_head, hs, scale, dropout, seed):
    rng = np.random.default_rng(seed)
    C = n_head * hs
    x = randn(rng, (B, T, C), dtype)
    extra = (n_head,) + ((dropout_mask(rng, (B, n_head, T, T), 0.3, dtype),) if dropout else ())
    vs_torch(causal_self_attention_forward, causal_self_attention_backward, torch_causal_self_attention,
             [x, *attention_params(rng, C, dtype, scale)], extra, seed=seed)


@pytest.mark.parametrize("dtype", DTYPES)
@DRAWN
@given(B=st.integers(1, 4), T=st.integers(1, 9), C=st.integers(1, 8), seed=seeds)
def test_causal_average_vs_torch(dtype, B, T, C, seed):
    rng = np.random.default_rng(seed)
    vs_torch(causal_average_forward, causal_average_backward, torch_causal_bow, [randn(rng, (B, T, C), dtype)],
             seed=seed)


# ----------------------------------------------------------------------------- against torch, fixed cases

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,n_head,C", [(1, 1, 1, 1),     # one position, one head of size 1
                                          (2, 1, 4, 16),    # T = 1: each position attends to itself only
                                          (3, 5, 1, 8),     # one head
                                          (2, 6, 6, 6),     # C = n_head: heads of size 1
                                          (2, 16, 4, 64)])  # makemore.py's defaults (n_embd 64, n_head 4)
def test_causal_self_attention_edges_vs_torch(dtype, B, T, n_head, C):
    rng = np.random.default_rng(B * 100 + T * 10 + n_head)
    x = randn(rng, (B, T, C), dtype)
    vs_torch(causal_self_attention_forward, causal_self_attention_backward, torch_causal_self_attention,
             [x, *attention_params(rng, C, dtype)], (n_head,))


@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_and_dropout_vs_torch(dtype):
    rng = np.random.default_rng(11)
    x, fx = randn(rng, (2, 5, 8), dtype), randn(rng, (2, 5, 8), dtype)
    vs_torch(residual_forward, residual_backward, lambda a, b: a + b, [x, fx])
    _, cache = dropout_forward(x, 0.3, np.random.default_rng(1))
    vs_torch(lambda a: dropout_forward(a, 0.3, np.random.default_rng(1)), dropout_backward,
             lambda a: a * t(cache.mask), [x])


def test_attention_core_is_torchs_scaled_dot_product_attention():
    """A second, independent reference: torch's own causal attention kernel."""
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((2, 3, 7, 5)) for _ in range(3))
    vs_torch(attention_forward, attention_backward, lambda a, b, c: F.scaled_dot_product_attention(
        a, b, c, is_causal=True), [q, k, v])


def test_new_gelu_is_torchs_tanh_gelu():
    """makemore.py's NewGELU is torch's F.gelu(approximate='tanh'), so either mirror would do."""
    x = t(np.linspace(-8, 8, 1001))
    check("NewGELU vs F.gelu(tanh)", torch_new_gelu(x).numpy(), F.gelu(x, approximate="tanh").numpy(), 1e-14)


def test_split_and_merge_heads_are_inverse():
    a = np.arange(2 * 3 * 12.0).reshape(2, 3, 12)
    h = split_heads(a, 4)                                   # (2, 4, 3, 3)
    assert h.shape == (2, 4, 3, 3) and np.array_equal(h[:, 1, :, :], a[:, :, 3:6])  # head 1: channels 3..5
    assert np.array_equal(merge_heads(h), a)


def test_bad_n_head_is_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="does not divide"):
        causal_self_attention_forward(randn(rng, (1, 2, 6), np.float64), *attention_params(rng, 6, np.float64), 4)


# ----------------------------------------------------------------------------- against finite differences

def _fd_cases():
    rng = np.random.default_rng(21)
    x = rng.standard_normal((2, 4, 6))
    q, k, v = (rng.standard_normal((2, 2, 4, 3)) for _ in range(3))
    mask = dropout_mask(rng, (2, 3, 4, 4), 0.3, np.float64)
    params = attention_params(rng, 6, np.float64)

    def attention_with_dropout(x, W_attn, b_attn, W_proj, b_proj):
        return causal_self_attention_forward(x, W_attn, b_attn, W_proj, b_proj, 3, mask)

    def dropout_fixed_draw(x):   # the same draw on every call, as the differences need
        return dropout_forward(x, 0.3, np.random.default_rng(5))

    return {
        "layernorm": (layernorm_forward, layernorm_backward, (x * 3 + 1, *rng.standard_normal((2, 6)))),
        "gelu": (gelu_forward, gelu_backward, (x * 2,)),
        "softmax": (softmax_forward, softmax_backward, (x * 2,)),
        "attention core": (attention_forward, attention_backward, (q, k, v)),
        "causal self-attention": (causal_self_attention_forward, causal_self_attention_backward, (x, *params, 3)),
        "... with dropout": (attention_with_dropout, causal_self_attention_backward, (x, *params)),
        "causal average": (causal_average_forward, causal_average_backward, (x,)),
        "dropout": (dropout_fixed_draw, dropout_backward, (x,)),
        "residual": (residual_forward, residual_backward, (x, rng.standard_normal(x.shape))),
    }


@pytest.mark.parametrize("name", list(_fd_cases()))
def test_pair_vs_finite_differences(name):
    forward, backward, inputs = _fd_cases()[name]
    result = check_pair(forward, backward, *inputs)
    assert result.ok, f"{name}\n{result.text}"


# ----------------------------------------------------------------------------- causality

@DRAWN
@given(B=st.integers(1, 3), T=st.integers(2, 7), n_head=st.integers(1, 3), hs=st.integers(1, 3), data=st.data(),
       seed=seeds)
def test_attention_output_at_t_ignores_later_positions(B, T, n_head, hs, data, seed):
    """Changing the inputs after position t leaves the outputs up to t bit-identical, and a loss
    on the outputs up to t sends exactly zero gradient to the later inputs."""
    t_last = data.draw(st.integers(0, T - 2), label="t")
    rng = np.random.default_rng(seed)
    C = n_head * hs
    x = rng.standard_normal((B, T, C))
    params = attention_params(rng, C, np.float64)
    later = x.copy()
    later[:, t_last + 1:] = rng.standard_normal((B, T - t_last - 1, C)) * 10
    out, cache = causal_self_attention_forward(x, *params, n_head)
    out_later, _ = causal_self_attention_forward(later, *params, n_head)
    assert np.array_equal(out[:, :t_last + 1], out_later[:, :t_last + 1]), "position t saw a later position"
    assert not np.allclose(out[:, t_last + 1:], out_later[:, t_last + 1:]), "the later positions must change"

    dout = rng.standard_normal(out.shape)
    dout[:, t_last + 1:] = 0                                # a loss on positions 0..t only
    dx = causal_self_attention_backward(dout, cache)[0]
    assert np.all(dx[:, t_last + 1:] == 0), "a later input got gradient from an earlier output"
    assert np.any(dx[:, :t_last + 1] != 0)

    y, bow = causal_average_forward(x)
    y_later, _ = causal_average_forward(later)
    assert np.array_equal(y[:, :t_last + 1], y_later[:, :t_last + 1]), "the causal average saw the future"
    assert np.all(causal_average_backward(dout, bow)[:, t_last + 1:] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_scores_get_exactly_zero_gradient(dtype):
    """att is exactly 0 above the diagonal, so the softmax's backward (attention_backward's step 3)
    gives the masked scores exactly 0, as torch's autograd does."""
    rng = np.random.default_rng(8)
    B, nh, T, hs = 2, 3, 6, 4
    q, k, v = (randn(rng, (B, nh, T, hs), dtype) for _ in range(3))
    _, cache = attention_forward(q, k, v)
    above = ~np.tril(np.ones((T, T), bool))
    assert np.all(cache.att[..., above] == 0) and np.all(cache.att[..., ~above] > 0)
    datt = randn(rng, (B, nh, T, T), dtype, 10)
    dpreatt = softmax_backward(datt, SoftmaxCache(cache.att))
    assert np.all(dpreatt[..., above] == 0), "a masked score got gradient"

    pre = t(np.where(above, -np.inf, randn(rng, (B, nh, T, T), dtype)), True)
    F.softmax(pre, dim=-1).backward(t(datt))
    assert np.all(pre.grad.numpy()[..., above] == 0)
    check("softmax over masked scores", softmax_backward(datt, SoftmaxCache(F.softmax(pre, -1).detach().numpy())),
          pre.grad.numpy(), RTOL[dtype])


def test_causal_average_weights_are_the_running_mean():
    x = np.arange(1.0, 7.0).reshape(1, 6, 1)                # 1, 2, ..., 6
    y, cache = causal_average_forward(x)
    assert np.allclose(y[0, :, 0], [1, 1.5, 2, 2.5, 3, 3.5])
    assert np.allclose(cache.att.sum(1), 1) and np.all(np.triu(cache.att, 1) == 0)


# ----------------------------------------------------------------------------- dropout

@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_p0_is_the_identity(dtype):
    x = randn(np.random.default_rng(0), (3, 4), dtype)
    out, cache = dropout_forward(x, 0.0, np.random.default_rng(0))
    assert out is x and cache.mask is None
    dout = randn(np.random.default_rng(1), (3, 4), dtype)
    assert dropout_backward(dout, cache) is dout


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_mask_keeps_the_mean(dtype, p):
    """The mask is 0 or 1/(1-p), kept with probability 1 - p, so it averages 1 (and x's mean is kept)."""
    n = 1_000_000
    x = np.ones(n, dtype)
    out, cache = dropout_forward(x, p, np.random.default_rng(2))
    mask = cache.mask
    assert mask.dtype == dtype and out.dtype == dtype
    scaled = np.asarray(1 / (1 - p), dtype)
    assert np.all((mask == 0) | (mask == scaled)), "mask values other than 0 and 1/(1-p)"
    sigma = math.sqrt(p * (1 - p) / n)                      # std of the kept fraction
    assert abs(np.mean(mask == 0) - p) < 6 * sigma
    assert abs(mask.astype(np.float64).mean() - 1) < 6 * sigma / (1 - p)
    assert np.array_equal(out, x * mask)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_backward_uses_the_forwards_mask(dtype):
    """Where the forward dropped an entry the gradient is 0; where it kept one, dout / (1 - p):
    read off the forward's own output, so a backward that drew a new mask would fail."""
    p = 0.4
    rng = np.random.default_rng(3)
    x = rng.uniform(1, 2, (50, 40)).astype(dtype)           # no zeros: out == 0 exactly where dropped
    x0 = x.copy()
    out, cache = dropout_forward(x, p, rng)
    dout = randn(rng, x.shape, dtype)
    dx = dropout_backward(dout, cache)
    dropped = out == 0
    assert 0.3 < dropped.mean() < 0.5
    assert np.all(dx[dropped] == 0), "gradient passed where the forward dropped"
    check("dx where kept", dx[~dropped], dout[~dropped] / (1 - p), RTOL[dtype])
    assert np.array_equal(dx, dropout_backward(dout, cache)), "the backward must not draw"
    assert np.array_equal(x, x0)
    again, _ = dropout_forward(x, p, np.random.default_rng(3))
    _, other = dropout_forward(x, p, np.random.default_rng(4))
    assert not np.array_equal(other.mask, cache.mask)       # a different draw is a different mask
    assert again.shape == x.shape


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_refuses_p_outside_0_1(p):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout_forward(np.ones(3), p, np.random.default_rng(0))


def test_attention_dropout_mask_of_ones_is_no_dropout():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 5, 8))
    params = attention_params(rng, 8, np.float64)
    out, cache = causal_self_attention_forward(x, *params, 2)
    out1, cache1 = causal_self_attention_forward(x, *params, 2, np.ones((2, 2, 5, 5)))
    assert np.array_equal(out, out1)
    dout = rng.standard_normal(out.shape)
    grads, grads1 = causal_self_attention_backward(dout, cache), causal_self_attention_backward(dout, cache1)
    for g, g1 in zip(grads, grads1, strict=True):
        assert np.array_equal(g, g1)


def test_residual_gradient_reaches_both_addends():
    """In x + f(x) the gradient reaching x is the skip's (dout) plus the path's (f's backward of dout)."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 4))
    fx, gc = gelu_forward(x)
    out, _ = residual_forward(x, fx)
    dout = rng.standard_normal(out.shape)
    dskip, dfx = residual_backward(dout)
    dx = dskip + gelu_backward(dfx, gc)
    xt = t(x, True)
    (xt + torch_new_gelu(xt)).backward(t(dout))
    check("dx through skip + path", dx, xt.grad.numpy(), RTOL[np.float64])
