"""makemore part 5 (npmlp/wavenet.py and the 3-D pairs of layers.py).

The pairs: linear on (..., I), BatchNorm on (B, C) and (B, T, C) in both variance conventions, and
FlattenConsecutive with and without its squeeze, against torch on shapes hypothesis draws, and
against finite differences on a fixed grid (those run without torch too). The layer objects: part
5's BatchNorm1d (its bug included) against the lecture's layer written in torch, running statistics
and inference. The model: every layer's gradient against the torch mirror, 200-step trajectories
(float64, bug included), the init and the parameter counts of the lecture's performance log. The
command: every subcommand for the wavenet, its options and their refusals, a resume bit-identical.

Legend: B batch, T positions, C channels, I/O a linear layer's in/out width, H n_hidden, n the
flatten group. Tolerances: float64 1e-10 relative to max|ref| (measured ~1e-15), float32 2e-5.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import HAVE_TORCH, StopAfter, check, names_file, needs_torch, run_main, small_dataset
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from npmlp import gradcheck, train
from npmlp.app import cli
from npmlp.app.checkpoint import load_checkpoint
from npmlp.deep import BatchNorm1d
from npmlp.layers import (
    batchnorm_backward,
    batchnorm_forward,
    flatten_consecutive_backward,
    flatten_consecutive_forward,
    linear_backward,
    linear_forward,
)
from npmlp.wavenet import Wavenet, levels

RTOL = {np.float64: 1e-10, np.float32: 2e-5}
DRAWN = settings(max_examples=40, deadline=None)
seeds = st.integers(0, 2**32 - 1)


def t(a, grad=False):
    import torch
    return torch.tensor(np.asarray(a), requires_grad=grad)


# ----------------------------------------------------------------------------- the pairs against torch

@needs_torch
@DRAWN
@given(lead=st.lists(st.integers(1, 9), min_size=1, max_size=3), I=st.integers(1, 40), O=st.integers(1, 40),
       bias=st.booleans(), seed=seeds)
def test_linear_on_any_leading_axes_vs_torch(lead, I, O, bias, seed):
    """x (..., I): W and b serve every row of every leading axis; dW, db sum over all of them."""
    rng = np.random.default_rng(seed)
    x, W, b = rng.standard_normal((*lead, I)), rng.standard_normal((I, O)), rng.standard_normal(O)
    dout = rng.standard_normal((*lead, O))
    out, cache = linear_forward(x, W, b if bias else None)
    dx, dW, db = linear_backward(dout, cache)
    xt, Wt, bt = t(x, True), t(W, True), t(b, True)
    outt = xt @ Wt + bt if bias else xt @ Wt
    outt.backward(t(dout))
    check("out", out, outt.detach().numpy(), RTOL[np.float64])
    check("dx", dx, xt.grad.numpy(), RTOL[np.float64])
    check("dW", dW, Wt.grad.numpy(), RTOL[np.float64])
    if bias:
        check("db", db, bt.grad.numpy(), RTOL[np.float64])
    else:
        assert db is None


def torch_batchnorm(x, gamma, beta, unbiased):
    """The torch side of each convention on (B, C) or (B, T, C): F.batch_norm in training mode (biased;
    it wants the channels on axis 1, so a (B, T, C) input goes in as (B, C, T)), or part 5's layer,
    x.var over every axis but the last (unbiased, torch's default)."""
    import torch
    import torch.nn.functional as F
    if not unbiased:
        xt = x if x.ndim == 2 else x.transpose(1, 2)
        out = F.batch_norm(xt, None, None, gamma, beta, training=True, eps=1e-5)
        return out if x.ndim == 2 else out.transpose(1, 2)
    dim = tuple(range(x.ndim - 1))
    return gamma * (x - x.mean(dim, keepdim=True)) / torch.sqrt(x.var(dim, keepdim=True) + 1e-5) + beta


@needs_torch
@DRAWN
@given(B=st.integers(1, 33), T=st.integers(0, 9), C=st.integers(1, 40), unbiased=st.booleans(),
       offset=st.sampled_from([0.0, 7.0, -1e3]), seed=seeds)
def test_batchnorm_on_2d_and_3d_input_vs_torch(B, T, C, unbiased, offset, seed):
    """T = 0 draws a (B, C) input; otherwise (B, T, C), the statistics over B * T rows per channel."""
    shape = (B, C) if T == 0 else (B, T, C)
    assume(B * max(T, 1) >= 2)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 3 + offset
    gamma, beta, dout = 1 + 0.3 * rng.standard_normal(C), 0.3 * rng.standard_normal(C), rng.standard_normal(shape)
    out, cache = batchnorm_forward(x, gamma, beta, unbiased=unbiased)
    dx, dgamma, dbeta = batchnorm_backward(dout, cache)
    xt, gt, bt = t(x, True), t(gamma, True), t(beta, True)
    outt = torch_batchnorm(xt, gt, bt, unbiased)
    outt.backward(t(dout))
    assert dgamma.shape == dbeta.shape == (C,)
    check("out", out, outt.detach().numpy(), RTOL[np.float64])
    # dx is a difference of terms of size gamma * var_inv * dout; with two rows, or one value far
    # from the others, they cancel almost exactly, so the round-off is judged against their size
    terms = float(np.abs(gamma * cache.var_inv * dout).max())
    check("dx", dx, xt.grad.numpy(), RTOL[np.float64], scale=max(np.abs(xt.grad.numpy()).max(), terms))
    check("dgamma", dgamma, gt.grad.numpy(), RTOL[np.float64])
    check("dbeta", dbeta, bt.grad.numpy(), RTOL[np.float64])


@needs_torch
@DRAWN
@given(B=st.integers(1, 20), groups=st.integers(1, 5), n=st.integers(1, 5), C=st.integers(1, 20), seed=seeds)
def test_flatten_consecutive_vs_torch(B, groups, n, C, seed):
    """(B, groups * n, C) -> (B, groups, C * n), or (B, C * n) when one group is left (the squeeze)."""
    rng = np.random.default_rng(seed)
    x, T = rng.standard_normal((B, groups * n, C)), groups * n
    out, cache = flatten_consecutive_forward(x, n)
    xt = t(x, True)
    outt = xt.view(B, T // n, C * n)
    if outt.shape[1] == 1:
        outt = outt.squeeze(1)
    assert out.shape == tuple(outt.shape) == ((B, C * n) if groups == 1 else (B, groups, C * n))
    dout = rng.standard_normal(out.shape)
    outt.backward(t(dout))
    assert np.array_equal(out, outt.detach().numpy())            # a reshape: exact
    assert np.array_equal(flatten_consecutive_backward(dout, cache), xt.grad.numpy())


@needs_torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("unbiased", [False, True])
def test_3d_batchnorm_in_float32_and_float64(dtype, unbiased):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 4, 128)).astype(dtype)
    gamma, beta = (1 + 0.3 * rng.standard_normal(128)).astype(dtype), (0.3 * rng.standard_normal(128)).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    out, cache = batchnorm_forward(x, gamma, beta, unbiased=unbiased)
    grads = batchnorm_backward(dout, cache)
    xt, gt, bt = t(x, True), t(gamma, True), t(beta, True)
    outt = torch_batchnorm(xt, gt, bt, unbiased)
    outt.backward(t(dout))
    check("out", out, outt.detach().numpy(), RTOL[dtype])
    for name, mine, ref in zip(("dx", "dgamma", "dbeta"), grads, (xt.grad, gt.grad, bt.grad), strict=True):
        assert mine.dtype == dtype, name
        check(name, mine, ref.numpy(), RTOL[dtype])


# ----------------------------------------------------------------------------- the pairs against finite differences

@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 7), (2, 2, 3, 7)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_pair_vs_finite_differences(shape, bias):
    rng = np.random.default_rng(len(shape))
    x, W, b = rng.standard_normal(shape), rng.standard_normal((7, 5)), rng.standard_normal(5)
    rep = gradcheck.check_pair(linear_forward, linear_backward, x, W, b if bias else None)
    assert rep.ok and [r.name for r in rep.rows] == ["x", "W", "b"][:2 + bias], rep.text


@pytest.mark.parametrize("shape", [(2, 5), (16, 3), (2, 1, 4), (8, 4, 6), (3, 2, 5)])
@pytest.mark.parametrize("unbiased", [False, True])
def test_batchnorm_pair_vs_finite_differences(shape, unbiased):
    rng = np.random.default_rng(sum(shape))
    C = shape[-1]
    x, gamma, beta = rng.standard_normal(shape) * 2 + 1, 1 + 0.3 * rng.standard_normal(C), 0.3 * rng.standard_normal(C)
    rep = gradcheck.check_pair(lambda x, g, b: batchnorm_forward(x, g, b, unbiased=unbiased), batchnorm_backward,
                               x, gamma, beta, coords=12)
    assert rep.ok, rep.text


@pytest.mark.parametrize("shape,n", [((3, 8, 2), 2), ((3, 2, 5), 2), ((2, 9, 3), 3), ((4, 1, 3), 1)])
def test_flatten_pair_vs_finite_differences(shape, n):
    x = np.random.default_rng(0).standard_normal(shape)
    rep = gradcheck.check_pair(lambda x: flatten_consecutive_forward(x, n), flatten_consecutive_backward, x)
    assert rep.ok, rep.text


@pytest.mark.parametrize("x, match", [(np.ones(5), "takes \\(B, C\\) or \\(B, T, C\\)"),
                                      (np.ones((1, 4)), "at least 2 rows"),
                                      (np.ones((1, 1, 4)), "at least 2 rows")])
def test_batchnorm_refuses_what_it_cannot_normalise(x, match):
    with pytest.raises(ValueError, match=match):
        batchnorm_forward(x, np.ones(4), np.zeros(4))


@pytest.mark.parametrize("shape, n, match", [((2, 6, 3), 4, "6 positions do not split into groups of 4"),
                                             ((2, 6, 3), 0, "groups of 0"),
                                             ((6, 3), 2, "takes \\(B, T, C\\) input")])
def test_flatten_refuses_what_it_cannot_group(shape, n, match):
    with pytest.raises(ValueError, match=match):
        flatten_consecutive_forward(np.ones(shape), n)


# ----------------------------------------------------------------------------- part 5's BatchNorm1d

def torch_part5_batchnorm(x, gamma, beta, running, over_batch_only, training=True):
    """The lecture's BatchNorm1d.__call__ in torch (x.var: unbiased), its running statistics a dict
    updated as the lecture does: the bug reduces dim 0 alone, and its running statistics become
    (1, T, C) by broadcasting."""
    import torch
    if training:
        dim = 0 if x.ndim == 2 or over_batch_only else (0, 1)
        xmean, xvar = x.mean(dim, keepdim=True), x.var(dim, keepdim=True)
    else:
        xmean, xvar = running["mean"], running["var"]
    out = gamma * (x - xmean) / torch.sqrt(xvar + 1e-5) + beta
    if training:
        with torch.no_grad():
            running["mean"] = (1 - 0.1) * running["mean"] + 0.1 * xmean
            running["var"] = (1 - 0.1) * running["var"] + 0.1 * xvar
    return out


@needs_torch
@pytest.mark.parametrize("over_batch_only", [False, True])
@pytest.mark.parametrize("shape", [(32, 4, 8), (2, 2, 3), (5, 6)])
def test_part5_batchnorm1d_vs_the_lectures_layer(shape, over_batch_only):
    """Five training batches (forward, backward, running statistics), then inference."""
    import torch
    rng = np.random.default_rng(sum(shape))
    C = shape[-1]
    params = {"g": 1 + 0.3 * rng.standard_normal(C), "b": 0.3 * rng.standard_normal(C)}
    stat = shape[1:-1] + (C,) if over_batch_only else (C,)
    buffers = {"m": np.zeros(stat), "v": np.ones(stat)}
    mine = BatchNorm1d("bn", params, buffers, "g", "b", "m", "v", unbiased=True, over_batch_only=over_batch_only)
    running = {"mean": torch.zeros(C, dtype=torch.float64), "var": torch.ones(C, dtype=torch.float64)}
    for _ in range(5):
        x, dout = rng.standard_normal(shape) * 3 + 1, rng.standard_normal(shape)
        out, cache = mine.forward(x)
        dx, grads = mine.backward(dout, cache)
        xt, gt, bt = t(x, True), t(params["g"], True), t(params["b"], True)
        outt = torch_part5_batchnorm(xt, gt, bt, running, over_batch_only)
        outt.backward(t(dout))
        check("out", out, outt.detach().numpy(), RTOL[np.float64])
        terms = np.abs(params["g"]).max() * np.abs(cache[1]).max() * np.abs(dout).max()   # dx's cancelling terms
        check("dx", dx, xt.grad.numpy(), RTOL[np.float64], scale=max(np.abs(xt.grad.numpy()).max(), terms))
        check("dgamma", grads["g"], gt.grad.numpy(), RTOL[np.float64])
        check("dbeta", grads["b"], bt.grad.numpy(), RTOL[np.float64])
    check("running mean", buffers["m"], running["mean"].reshape(stat).numpy(), RTOL[np.float64])
    check("running var", buffers["v"], running["var"].reshape(stat).numpy(), RTOL[np.float64])
    x = rng.standard_normal((3,) + shape[1:])
    out, _ = mine.forward(x, training=False)
    ref = torch_part5_batchnorm(t(x), t(params["g"]), t(params["b"]), running, over_batch_only, training=False)
    check("inference", out, ref.numpy().reshape(out.shape), RTOL[np.float64])


def test_the_bug_normalises_each_position_on_its_own():
    """Statistics over dim 0 alone: each of the T positions is a batch of its own, per channel, so
    the bug's output is the fixed layer's applied to every position separately."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 4, 6)) + np.arange(4)[:, None] * 10      # positions with their own offsets
    p = {"g": 1 + 0.3 * rng.standard_normal(6), "b": 0.3 * rng.standard_normal(6)}
    bug = BatchNorm1d("bn", p, {"m": np.zeros((4, 6)), "v": np.ones((4, 6))}, "g", "b", "m", "v", True,
                      over_batch_only=True)
    out, _ = bug.forward(x)
    for pos in range(4):
        alone, _ = batchnorm_forward(x[:, pos], p["g"], p["b"], unbiased=True)
        check(f"position {pos}", out[:, pos], alone, 1e-14)
    fixed, _ = batchnorm_forward(x, p["g"], p["b"], unbiased=True)
    assert np.abs(fixed - out).max() > 1                                 # across positions: another answer


def test_the_bugs_gradients_vs_finite_differences():
    rng = np.random.default_rng(4)
    p = {"g": 1 + 0.3 * rng.standard_normal(5), "b": 0.3 * rng.standard_normal(5)}

    def forward(x, g, b):
        layer = BatchNorm1d("bn", {"g": g, "b": b}, {"m": np.zeros((3, 5)), "v": np.ones((3, 5))}, "g", "b", "m",
                            "v", True, over_batch_only=True)
        out, cache = layer.forward(x)
        return out, (layer, cache)

    def backward(dout, cache):
        layer, c = cache
        dx, grads = layer.backward(dout, c)
        return dx, grads["g"], grads["b"]

    rep = gradcheck.check_pair(forward, backward, rng.standard_normal((6, 3, 5)), p["g"], p["b"])
    assert rep.ok, rep.text


# ----------------------------------------------------------------------------- the model

# (V, T, E, H, n, bug, B): the lecture's sizes, its bug, flat (n = T), groups of 3, one position
CONFIGS = [(27, 8, 24, 128, 2, 0, 32), (27, 8, 24, 128, 2, 1, 32), (11, 8, 5, 7, 8, 0, 3), (13, 9, 4, 6, 3, 1, 5),
           (7, 1, 3, 4, 1, 0, 2), (19, 16, 3, 5, 2, 1, 2), (9, 4, 2, 3, 4, 1, 7)]


def random_wavenet(V, T, E, H, n, bug, seed=0, dtype=np.float64):
    """Every parameter drawn, gamma and beta and b far from 1 and 0 (a missing term cannot hide)."""
    rng = np.random.default_rng(seed)
    shapes = Wavenet.shapes(V, T, E, H, n)
    p = {k: (rng.standard_normal(s) * 0.5 + (k.startswith("gamma"))).astype(dtype) for k, s in shapes.items()}
    return Wavenet(p, batchnorm_over_batch_only=bug), rng


# float32 on the batches of 5 or more: over two rows a BatchNorm's output is +-1 whatever its input,
# so the gradient of its input is a cancellation float32 keeps nothing of (float64 checks those)
@needs_torch
@pytest.mark.parametrize("V,T,E,H,n,bug,B,dtype", [(*c, np.float64) for c in CONFIGS] +
                         [(*c, np.float32) for c in CONFIGS if c[-1] >= 5])
def test_every_layer_vs_torch(V, T, E, H, n, bug, B, dtype):
    from npmlp.torch_mirrors import torch_loss_and_grads
    model, rng = random_wavenet(V, T, E, H, n, bug, seed=B + T, dtype=dtype)
    X, Y = rng.integers(0, V, (B, T)), rng.integers(0, V, B)
    loss, cache = model.forward(X, Y)
    grads, dacts = model.backward(cache)
    tloss, tgrads, tdacts = torch_loss_and_grads(model, X, Y)
    check("loss", loss, tloss, RTOL[dtype])
    assert list(dacts) == list(model.act_names) and set(tdacts) == set(dacts)
    assert set(grads) == set(model.params) == set(tgrads)
    ref = {**tdacts, **tgrads}
    # as gradcheck judges: a gradient that is ~0 (a BatchNorm's input over two rows, whose output
    # barely depends on it) is compared against 1% of the largest gradient, not its own size
    floor = gradcheck.FLOOR * max(float(np.abs(r).max()) for r in ref.values())
    for k, g in {**dacts, **grads}.items():
        assert g.dtype == dtype and g.shape == ref[k].shape, k
        check("d" + k, g, ref[k], RTOL[dtype], scale=max(float(np.abs(ref[k]).max()), floor))


@pytest.mark.parametrize("bug", [0, 1])
def test_every_layer_vs_finite_differences(bug):
    model, rng = random_wavenet(11, 4, 3, 5, 2, bug, seed=9)
    X, Y = rng.integers(0, 11, (6, 4)), rng.integers(0, 11, 6)
    rep = gradcheck.report(model, X, Y, coords=8, use_torch=False)
    assert [r.name for r in rep.rows][:5] == ["logits", "tanh2", "batchnorm2", "linear2", "flatten2"]
    assert len(rep.rows) == len(model.act_names) + len(model.params)
    assert all(r.fd_ok for r in rep.rows), gradcheck.format_table(rep.rows, np.float64)


def torch_inference(tp, tb, X, n, L):
    """The trained torch model in the lecture's eval mode: each BatchNorm1d with its running statistics."""
    import torch
    x = torch.tensor(tp["C"])[torch.as_tensor(X.astype(np.int64))]
    for i in range(1, L + 1):
        B, T, C = x.shape
        x = x.view(B, T // n, C * n)
        x = x.squeeze(1) if x.shape[1] == 1 else x
        x = x @ torch.tensor(tp[f"W{i}"])
        mean, var = torch.tensor(tb[f"running_mean{i}"]), torch.tensor(tb[f"running_var{i}"])
        gamma, beta = torch.tensor(tp[f"gamma{i}"]), torch.tensor(tp[f"beta{i}"])
        x = torch.tanh(gamma * (x - mean) / torch.sqrt(var + 1e-5) + beta)
    return (x @ torch.tensor(tp[f"W{L + 1}"]) + torch.tensor(tp[f"b{L + 1}"])).numpy()


@needs_torch
@pytest.mark.parametrize("block_size,flatten,bug", [(8, 2, 0), (8, 2, 1), (8, 8, 0), (9, 3, 1)])
def test_trajectory_200_steps_vs_torch(block_size, flatten, bug):
    """200 steps of SGD (lr 0.1, then 0.01 from step 150) from the same init on the same minibatches:
    params, running statistics and inference logits equal to float64 round-off."""
    from npmlp.torch_mirrors import torch_sgd
    vocab, X, Y = small_dataset(400, seed=5, block_size=block_size)
    model = Wavenet.init(vocab.size, block_size, n_embd=5, n_hidden=12, flatten=flatten,
                         batchnorm_over_batch_only=bug, seed=4, dtype=np.float64)
    init = model.like({k: v.copy() for k, v in model.params.items()})
    cfg = train.TrainConfig(steps=200, batch_size=32, lr=0.1, decay_at=0.75, seed=4)
    lossi, _ = train.sgd(model, X, Y, cfg)
    tl, tp, tb = torch_sgd(init, X, Y, [train.batch_rows(cfg, s, len(X)) for s in range(200)],
                           [cfg.lr_at(s) for s in range(200)], return_buffers=True)
    check("lossi", lossi, tl.astype(np.float32), 1e-6)
    assert lossi[-20:].mean() < lossi[:20].mean()
    for k in model.params:
        check(k, model.params[k], tp[k], RTOL[np.float64], scale=max(np.abs(tp[k]).max(), 1e-3))
    assert set(tb) == set(model.buffers)
    for k in tb:
        check(k, model.buffers[k], tb[k], RTOL[np.float64])
    check("inference logits", model.logits(X[:50]), torch_inference(tp, tb, X[:50], flatten, model.n_levels),
          RTOL[np.float64])


@pytest.mark.parametrize("sizes, count", [
    ({}, 76_579),                                                               # row 5: the lecture's WaveNet
    ({"n_embd": 10, "n_hidden": 68}, 22_397),                                   # rows 3, 4: hierarchical
    ({"n_embd": 10, "n_hidden": 68, "batchnorm_over_batch_only": 1}, 22_397),
    ({"n_embd": 10, "n_hidden": 200, "flatten": 8}, 22_097),                    # row 2: flat, context 8
    ({"block_size": 3, "n_embd": 10, "n_hidden": 200, "flatten": 3}, 12_097),   # row 1: part 3's network
])
def test_the_performance_logs_parameter_counts(sizes, count):
    assert Wavenet.init(27, **sizes).num_params == count


def test_init_is_part_5s():
    m = Wavenet.init(27, seed=1, dtype=np.float64)
    sizes = (m.block_size, m.n_embd, m.n_hidden, m.flatten, m.n_levels, m.batchnorm_over_batch_only)
    assert sizes == (8, 24, 128, 2, 3, 0)
    assert list(m.params) == ["C", "W1", "gamma1", "beta1", "W2", "gamma2", "beta2", "W3", "gamma3", "beta3",
                              "W4", "b4"]
    rng = np.random.default_rng(1)
    assert np.array_equal(m.params["C"], rng.standard_normal((27, 24)))
    for i, (I, O) in enumerate([(48, 128), (256, 128), (256, 128), (128, 27)], 1):   # drawn in layer order
        want = rng.standard_normal((I, O)) / np.sqrt(I) * (0.1 if i == 4 else 1)      # no gain; the last x 0.1
        np.testing.assert_allclose(m.params[f"W{i}"], want, rtol=1e-15)
        if i < 4:
            assert np.all(m.params[f"gamma{i}"] == 1) and not m.params[f"beta{i}"].any()
    assert not m.params["b4"].any()
    assert all(np.all(v == ("var" in k)) and v.shape == (128,) for k, v in m.buffers.items())
    assert m.tanh_names == ("tanh1", "tanh2", "tanh3") and m.min_batch == 2


def test_the_bugs_running_statistics_are_per_position():
    m = Wavenet.init(27, n_embd=10, n_hidden=68, batchnorm_over_batch_only=1)
    assert {k: v.shape for k, v in m.buffers.items()} == {
        "running_mean1": (4, 68), "running_var1": (4, 68), "running_mean2": (2, 68), "running_var2": (2, 68),
        "running_mean3": (68,), "running_var3": (68,)}
    assert m.sizes["batchnorm_over_batch_only"] == 1
    assert m.like(m.params).batchnorm_over_batch_only == 1                 # gradcheck's copies keep the bug


@pytest.mark.parametrize("T, n, L", [(8, 2, 3), (8, 8, 1), (9, 3, 2), (1, 1, 1), (16, 4, 2), (3, 3, 1)])
def test_levels(T, n, L):
    assert levels(T, n) == L


@pytest.mark.parametrize("T, n", [(6, 2), (8, 1), (8, 16), (1, 2), (12, 2)])
def test_a_block_that_is_not_a_power_of_the_group_is_a_value_error(T, n):
    with pytest.raises(ValueError, match="not a power of the flatten group"):
        Wavenet.init(27, T, flatten=n)


def test_training_forward_of_one_row_is_a_clear_error_and_inference_takes_one():
    model, rng = random_wavenet(11, 8, 3, 4, 2, 0)
    with pytest.raises(ValueError, match="at least 2 rows"):
        model.forward(rng.integers(0, 11, (1, 8)), np.zeros(1, int))
    assert model.logits(rng.integers(0, 11, (1, 8))).shape == (1, 11)
    with pytest.raises(ValueError, match="block_size=8"):
        model.logits(rng.integers(0, 11, (2, 3)))


# ----------------------------------------------------------------------------- the command

SMALL = ["--model", "wavenet", "--block-size", "4", "--n-embd", "4", "--n-hidden", "8"]


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return names_file(tmp_path_factory.mktemp("data"), 300, seed=8)


@pytest.fixture(scope="module")
def bug_run(names, tmp_path_factory):
    """One finished 300-step run of a small hierarchical wavenet with the lecture's bug."""
    d = tmp_path_factory.mktemp("wavenet") / "run"
    assert cli.main(["train", "--data", str(names), "--steps", "300", "--quiet", "--out", str(d), *SMALL,
                     "--batchnorm-over-batch-only"]) == 0
    return d


def test_train_prints_the_lectures_parameters_and_split(capsys, names_path, tmp_path):
    code, out, err = run_main(capsys, "train", "--data", names_path, "--model", "wavenet", "--steps", "1", "--no-plots",
                              "--out", tmp_path / "r")
    assert code == 0, err
    assert "rows train/dev/test 182,625/22,655/22,866" in err and "wavenet model, 76,579 parameters" in err, err
    assert "fast engine" in err
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["config"]["decay_at"] == 0.75


def test_the_checkpoint_records_the_group_and_the_bug(bug_run):
    model, vocab, meta, lossi = load_checkpoint(bug_run / "model.npz")
    assert meta["model"] == "wavenet" and meta["run"]["engine"] == "reference" and len(lossi) == 300
    assert meta["sizes"] == {"block_size": 4, "n_embd": 4, "n_hidden": 8, "flatten": 2,
                             "batchnorm_over_batch_only": 1} == model.sizes
    assert model.buffers["running_mean1"].shape == (2, 8) and model.buffers["running_var2"].shape == (8,)
    assert model.buffers["running_var1"].std() > 0                 # trained, per position
    metrics = json.loads((bug_run / "metrics.json").read_text())
    assert metrics["config"]["batchnorm_over_batch_only"] == 1 and metrics["config"]["flatten"] == 2


def test_eval_sample_plot_diagnose_and_gradcheck_of_the_run(capsys, bug_run, tmp_path):
    code, out, err = run_main(capsys, "eval", bug_run, "--quiet")
    assert code == 0, err
    got = dict(zip(out.split()[::3], map(float, out.split()[2::3]), strict=True))
    metrics = json.loads((bug_run / "metrics.json").read_text())
    assert got["dev"] == pytest.approx(metrics["dev_loss"], abs=1e-4) and got["dev"] < np.log(27)
    code, out, err = run_main(capsys, "sample", bug_run, "-n", "5")
    assert code == 0 and len(out.split()) == 5 and all(n.endswith(".") for n in out.split()), err
    assert out.split() == metrics["samples"][:5]                   # the names `train` printed
    code, out, err = run_main(capsys, "plot", bug_run, "--out", tmp_path / "p", "--quiet")
    assert code == 0, err
    assert {p.name for p in (tmp_path / "p").glob("*.png")} == {"loss.png", "embedding.png", "gradients.png"}
    code, out, err = run_main(capsys, "diagnose", bug_run, "--out", tmp_path / "d", "--quiet")
    assert code == 0, err
    assert all(f"tanh{i}" in out for i in (1, 2)) and "W3" in out and "grad:data" in out
    code, out, err = run_main(capsys, "gradcheck", "--run", bug_run, "--quiet", "--coords", "6")
    assert code == 0, out + err
    assert "batchnorm_over_batch_only 1" in out and "dbatchnorm1" in out


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("bug", [[], ["--batchnorm-over-batch-only"]])
def test_gradcheck_lists_every_layer(capsys, names, dtype, bug):
    code, out, err = run_main(capsys, "gradcheck", "--data", names, "--dtype", dtype, "--quiet", "--coords", "6",
                              *SMALL, *bug)
    assert code == 0, out + err
    rows = gradcheck.parse_table(out)
    assert list(rows) == ["logits", "tanh2", "batchnorm2", "linear2", "flatten2", "tanh1", "batchnorm1", "linear1",
                          "flatten1", "emb", "W3", "b3", "gamma2", "beta2", "W2", "gamma1", "beta1", "W1", "C"]
    assert all(r["fd"].startswith("ok") for r in rows.values())
    # the fast engine's column: each parameter, except where the bug keeps the model on the reference
    params = ["W3", "b3", "gamma2", "beta2", "W2", "gamma1", "beta1", "W1", "C"]
    assert all(rows[k]["fast"] == "-" for k in rows if k not in params)             # no intermediates kept
    assert all(rows[k]["fast"] in (("-",) if bug else ("exact", "approx")) for k in params)
    assert all(r["torch"] in (("exact", "approx") if HAVE_TORCH else ("-",)) for r in rows.values())


@pytest.mark.parametrize("bug", [[], ["--batchnorm-over-batch-only"]])
def test_resume_is_bit_identical(names, tmp_path, monkeypatch, bug):
    full, part = tmp_path / "full", tmp_path / "part"
    argv = ["train", "--data", str(names), "--steps", "240", "--quiet", "--no-plots", *SMALL, *bug]
    assert cli.main([*argv, "--out", str(full)]) == 0
    with monkeypatch.context() as m:
        m.setattr(cli, "StopFlag", lambda: StopAfter(97))
        assert cli.main([*argv, "--out", str(part)]) == 130
    assert cli.main(["train", "--resume", str(part), "--quiet", "--no-plots"]) == 0
    with np.load(full / "model.npz") as a, np.load(part / "model.npz") as b:
        assert set(a.files) == set(b.files) and {"running_mean1", "running_var2"} <= set(a.files)
        for k in a.files:
            if k != "meta":
                assert np.array_equal(a[k], b[k]), k


def test_lr_find(capsys, names, tmp_path):
    code, out, err = run_main(capsys, "lr-find", "--data", names, "--steps", "40", "--quiet", "--out", tmp_path,
                              *SMALL, "--batchnorm-over-batch-only")
    assert code == 0 and "suggested learning rate" in out, err


@pytest.mark.parametrize("argv, needles", [
    (["--model", "wavenet", "--block-size", "6"], ["--block-size 6 is not a power of --flatten 2", "--flatten 6"]),
    (["--model", "wavenet", "--flatten", "3"], ["--block-size 8 is not a power of --flatten 3"]),
    (["--model", "wavenet", "--flatten", "1"], ["--flatten 1 fuses none"]),
    (["--model", "wavenet", "--batchnorm-over-batch-only", "--engine", "fast"],
     ["--engine fast", "part 5's BatchNorm bug", "reference engine only", "drop --engine fast"]),
    (["--model", "wavenet", "--batch-size", "1"], ["--batch-size 1", "at least 2"]),
    (["--model", "wavenet", "--init", "kaiming"], ["drop --init"]),
    (["--model", "wavenet", "--n-layers", "2"], ["--n-layers", "deep and transformer models only"]),
    (["--flatten", "2"], ["--flatten", "wavenet model only", "--model wavenet"]),
    (["--model", "deep", "--batchnorm-over-batch-only"], ["--batchnorm-over-batch-only", "wavenet model only"]),
])
def test_options_the_wavenet_refuses(capsys, names, tmp_path, argv, needles):
    code, _out, err = run_main(capsys, "train", "--data", names, "--steps", "5", "--quiet", "--out", tmp_path / "r",
                               *argv)
    assert code == 2 and err.count("\n") == 1 and err.startswith("npmlp: error:"), err
    assert all(n in err for n in needles), err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("opts, needles", [
    (["--flatten", "4"], ["--flatten 4 differs from the run's 2"]),
    (["--batchnorm-over-batch-only"], ["--batchnorm-over-batch-only 1 differs from the run's 0"])])
def test_resume_keeps_the_group_and_the_bug(capsys, names, tmp_path, monkeypatch, opts, needles):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(cli, "StopFlag", lambda: StopAfter(5))
        assert cli.main(["train", "--data", str(names), "--steps", "50", "--quiet", "--out", str(run), *SMALL]) == 130
    code, _out, err = run_main(capsys, "train", "--resume", run, "--quiet", *opts)
    assert code == 2 and all(n in err for n in needles), err
