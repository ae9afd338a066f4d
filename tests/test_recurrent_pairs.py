"""The recurrent pairs of npmlp/recurrent.py (the RNN, GRU and LSTM cells, and backpropagation
through time) and the masked cross-entropy of npmlp/layers.py.

Against torch autograd: the RNN and GRU cells against makemore.py's RNNCell and GRUCell maths
written in torch ops here, the LSTM against torch.nn.LSTMCell itself (our weights put in as its
parameters, transposed), each through time against makemore.py's RNN.forward loop, and the masked
cross-entropy against F.cross_entropy(..., ignore_index=-1), on shapes hypothesis draws and on
fixed edge cases. Then the two pitfalls of public NumPy RNN code (dh not carried to the previous
step, a gate's missing sigmoid derivative), put into copies of our backward, which the torch
comparison must reject. Last, every pair against central finite differences (check_pair), which
run without torch too.

Legend: B batch, T positions, E n_embd, H n_embd2 (hidden state), V vocab.
Tolerances (relative to the largest |reference| value of each array, see `check`): float64 1e-10,
float32 2e-5, a float32 gradient relative to at least a tenth of the comparison's largest gradient,
and float32 held to torch's float64 result, within 4 times torch's own float32 error where that is
larger (see check_all: cancellation).
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest
from helpers import check, rel
from hypothesis import given, settings
from hypothesis import strategies as st

from npmlp import recurrent
from npmlp.gradcheck import check_pair
from npmlp.layers import (
    cross_entropy_backward,
    cross_entropy_forward,
    masked_cross_entropy_backward,
    masked_cross_entropy_forward,
)
from npmlp.recurrent import (
    gru_cell_backward,
    gru_cell_forward,
    lstm_backward,
    lstm_cell_backward,
    lstm_cell_forward,
    lstm_forward,
    recurrent_backward,
    recurrent_forward,
    rnn_cell_backward,
    rnn_cell_forward,
)

RTOL = {np.float64: 1e-10, np.float32: 2e-5}
DTYPES = [np.float64, np.float32]
MODELS = ["rnn", "gru", "lstm"]
NO_TORCH = "torch is not installed: these tests compare with its autograd"
FLOOR32 = 0.1      # a float32 gradient's scale: at least this fraction of the comparison's largest (check_all)
TRUTH32 = 4        # npmlp's float32 error against float64 may be this many times torch's own (check_all)
DRAWN = settings(max_examples=20, deadline=None)
small = st.integers(1, 6)
seeds = st.integers(0, 2**32 - 1)
EDGES = [(1, 1, 1, 1), (1, 4, 3, 5), (5, 1, 2, 3), (3, 4, 2, 1), (2, 7, 1, 2)]   # (B, T, E, H)


def randn(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def cell_params(rng, model, E, H, dtype):
    """A cell's parameters after x and hprev (hprev, cprev for the LSTM), in its forward's order:
    weights ~ 1/sqrt(fan in), biases nonzero (zeros can hide a wrong backward)."""
    if model == "lstm":
        return [randn(rng, (E, 4 * H), dtype, E ** -0.5), randn(rng, (H, 4 * H), dtype, H ** -0.5),
                randn(rng, (4 * H,), dtype, 0.5), randn(rng, (4 * H,), dtype, 0.5)]
    params = []
    for _ in range({"rnn": 1, "gru": 3}[model]):  # the GRU's in makemore.py's order: r, z, hbar
        params += [randn(rng, (E + H, H), dtype, (E + H) ** -0.5), randn(rng, (H,), dtype, 0.5)]
    return params


def names_of(model):
    return {"rnn": ["W", "b"], "gru": ["Wr", "br", "Wz", "bz", "Wh", "bh"],
            "lstm": ["W_ih", "W_hh", "b_ih", "b_hh"]}[model]


def state_names(model):
    return ["hprev", "cprev"] if model == "lstm" else ["hprev"]


def start_names(model):
    return ["start_h", "start_c"] if model == "lstm" else ["start"]


# ----------------------------------------------------------------------------- the torch mirrors

def torch_rnn_cell(x, hprev, W, b):
    """makemore.py's RNNCell: tanh(xh_to_h([x, hprev]))."""
    import torch
    return torch.tanh(torch.cat([x, hprev], 1) @ W + b)


def torch_gru_cell(x, hprev, Wr, br, Wz, bz, Wh, bh):
    """makemore.py's GRUCell, its lines in its order."""
    import torch
    xh = torch.cat([x, hprev], 1)
    r = torch.sigmoid(xh @ Wr + br)
    hprev_reset = r * hprev
    xhr = torch.cat([x, hprev_reset], 1)
    hbar = torch.tanh(xhr @ Wh + bh)
    z = torch.sigmoid(xh @ Wz + bz)
    return (1 - z) * hprev + z * hbar


def torch_lstm_cell(x, hprev, cprev, W_ih, W_hh, b_ih, b_hh):
    """torch.nn.LSTMCell itself, run with our parameters (transposed to its (out, in) layout)."""
    import torch
    cell = torch.nn.LSTMCell(W_ih.shape[0], W_hh.shape[0], dtype=x.dtype)
    params = {"weight_ih": W_ih.T, "weight_hh": W_hh.T, "bias_ih": b_ih, "bias_hh": b_hh}
    return torch.func.functional_call(cell, params, (x, (hprev, cprev)))


TORCH_CELLS = {"rnn": torch_rnn_cell, "gru": torch_gru_cell, "lstm": torch_lstm_cell}


def torch_sequence(model, emb, starts, params):
    """makemore.py's RNN.forward loop: the start state expanded over the batch, one cell step per
    position -> (hidden (B, T, H), [h_t] with their .grad kept)."""
    import torch
    B, T, _ = emb.shape
    state = [s.expand(B, -1) for s in starts]
    hiddens = []
    for t in range(T):
        out = TORCH_CELLS[model](emb[:, t], *state, *params)
        state = list(out) if model == "lstm" else [out]
        state[0].retain_grad()
        hiddens.append(state[0])
    return torch.stack(hiddens, 1), hiddens


def leaves(torch, arrays):
    return [torch.tensor(a, requires_grad=True) for a in arrays]


# ----------------------------------------------------------------------------- ours, one call per model

def np_cell(model, x, states, params):
    """-> (the cell's outputs as a list: [h] or [h, c], cache)."""
    if model == "lstm":
        (h, c), cache = lstm_cell_forward(x, *states, *params)
        return [h, c], cache
    h, cache = recurrent.CELLS[model][0](x, *states, *params)
    return [h], cache


def np_cell_backward(model, douts, cache):
    if model == "lstm":
        return lstm_cell_backward(*douts, cache)
    return recurrent.CELLS[model][1](douts[0], cache)


def np_sequence(model, emb, starts, params):
    if model == "lstm":
        return lstm_forward(emb, *starts, *params)
    return recurrent_forward(emb, starts[0], model, *params)


def np_sequence_backward(model, dhidden, cache, backward=None):
    """-> (grads, dh per position); backward: a replacement of the backward through time."""
    backward = backward or (lstm_backward if model == "lstm" else recurrent_backward)
    return backward(dhidden, cache, return_dh=True)


# ----------------------------------------------------------------------------- the cells against torch

def check_all(label, pairs, dtype, truth=None):
    """Each array of {name: (mine, torch's)} against torch's, relative to its own largest |value|.
    A float32 gradient that cancelled (a sum of terms of both signs, a product with a state near 0)
    carries the round-off of the terms that made it, not of its small result, in torch as in npmlp.
    So in float32 a gradient (a name starting with d) is judged relative to FLOOR32 x the largest
    gradient of the comparison if that is larger, as gradcheck's FLOOR does; and, given truth
    {name: torch's result in float64 from the same inputs}, each float32 array is held to that
    truth, within the above or TRUTH32 x torch's own float32 error on it, whichever is larger:
    npmlp's round-off may be a few times torch's, never more."""
    big = max(float(np.abs(ref).max(initial=0.0)) for name, (_, ref) in pairs.items() if name.startswith("d"))
    for name, (mine, ref) in pairs.items():
        floor = FLOOR32 * big if dtype == np.float32 and name.startswith("d") else 0.0
        scale = max(float(np.abs(ref).max(initial=0.0)), floor)
        if truth is None:
            check(f"{label} {name}", mine, ref, RTOL[dtype], scale=scale)
        else:
            torch_err = float(np.abs(ref.astype(np.float64) - truth[name]).max(initial=0.0))
            check(f"{label} {name} (against float64)", mine, truth[name], 1.0,
                  scale=max(RTOL[dtype] * scale, TRUTH32 * torch_err))


def truth_of(dtype, run):
    """run(float64) where dtype is float32 (check_all's truth), else None; run(dtype) takes the
    inputs cast to dtype and returns {name: torch's result}."""
    return run(np.float64) if dtype == np.float32 else None


def cell_vs_torch(model, B, E, H, dtype, seed):
    rng = np.random.default_rng(seed)
    x = randn(rng, (B, E), dtype)                                  # (B, E)
    states = [randn(rng, (B, H), dtype) for _ in state_names(model)]  # (B, H) each
    params = cell_params(rng, model, E, H, dtype)
    douts = [randn(rng, (B, H), dtype) for _ in state_names(model)]  # (B, H): dh (and dc)
    before = [a.copy() for a in [x, *states, *params, *douts]]

    outs, cache = np_cell(model, x, states, params)
    grads = np_cell_backward(model, douts, cache)

    torch = pytest.importorskip("torch", reason=NO_TORCH)
    names = ["h", "c"][:len(outs)] + ["dx"] + [f"d{n}" for n in state_names(model) + names_of(model)]

    def run(dt):
        xt, *rest = leaves(torch, [a.astype(dt) for a in [x, *states, *params]])
        out_t = TORCH_CELLS[model](xt, *rest)
        outs_t = list(out_t) if model == "lstm" else [out_t]
        sum(((o * torch.tensor(d.astype(dt))).sum() for o, d in zip(outs_t, douts, strict=True))).backward()
        refs = [o.detach().numpy() for o in outs_t] + [a.grad.numpy() for a in [xt, *rest]]
        assert len(refs) == len(names)
        return dict(zip(names, refs, strict=True))

    refs = run(dtype)
    assert len(grads) == len(refs) - len(outs)
    pairs = {name: (mine, refs[name]) for name, mine in zip(names, [*outs, *grads], strict=True)}
    for name, (mine, _) in pairs.items():
        assert mine.dtype == dtype, f"{name}: {mine.dtype}"
    check_all(f"{model} cell", pairs, dtype, truth_of(dtype, run))
    for a, b in zip(before, [x, *states, *params, *douts], strict=True):
        assert np.array_equal(a, b), "a pair must not change its inputs"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dtype", DTYPES)
@DRAWN
@given(B=small, E=small, H=small, seed=seeds)
def test_cell_vs_torch_drawn(model, dtype, B, E, H, seed):
    cell_vs_torch(model, B, E, H, dtype, seed)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,E,H", [(1, 1, 1), (1, 3, 5), (4, 1, 1), (8, 10, 32)])
def test_cell_vs_torch_edges(model, dtype, B, E, H):
    cell_vs_torch(model, B, E, H, dtype, seed=B * 100 + E * 10 + H)


# ----------------------------------------------------------------------------- through time against torch

def sequence_vs_torch(model, B, T, E, H, dtype, seed, last_only=False, backward=None, with_truth=False):
    """Our forward and backward through time and torch's, on the same random inputs ->
    {name: (mine, torch's)}: hidden, the gradient reaching each position's h (dh), demb, the
    starts' and the parameters' gradients. last_only: dhidden is zero except at the last position.
    backward: a replacement backward through time (the pitfalls below). with_truth: returns
    (those pairs, check_all's truth)."""
    rng = np.random.default_rng(seed)
    emb = randn(rng, (B, T, E), dtype)                             # (B, T, E)
    starts = [randn(rng, (1, H), dtype, 0.5) for _ in start_names(model)]  # (1, H) each
    params = cell_params(rng, model, E, H, dtype)
    dhidden = randn(rng, (B, T, H), dtype)                         # (B, T, H)
    if last_only:
        dhidden[:, :-1] = 0
    before = [a.copy() for a in [emb, *starts, *params, dhidden]]

    hidden, cache = np_sequence(model, emb, starts, params)
    grads, dhs = np_sequence_backward(model, dhidden, cache, backward)
    for a, b in zip(before, [emb, *starts, *params, dhidden], strict=True):
        assert np.array_equal(a, b), "a pair must not change its inputs"

    torch = pytest.importorskip("torch", reason=NO_TORCH)
    names = ["demb"] + [f"d{n}" for n in start_names(model) + names_of(model)]
    assert len(grads) == len(names)

    def run(dt):
        embt, *rest = leaves(torch, [a.astype(dt) for a in [emb, *starts, *params]])
        startst, paramst = rest[:len(starts)], rest[len(starts):]
        hiddent, hiddens = torch_sequence(model, embt, startst, paramst)
        hiddent.backward(torch.tensor(dhidden.astype(dt)))
        refs = {"hidden": hiddent.detach().numpy(), "dh": np.stack([h.grad.numpy() for h in hiddens], 1)}
        return refs | {n: a.grad.numpy() for n, a in zip(names, [embt, *rest], strict=True)}

    refs = run(dtype)
    pairs = {name: (mine, refs[name]) for name, mine in zip(refs, [hidden, dhs, *grads], strict=True)}
    for name, (mine, _) in pairs.items():
        assert mine.dtype == dtype, f"{name}: {mine.dtype}"
    return (pairs, truth_of(dtype, run)) if with_truth else pairs


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dtype", DTYPES)
@DRAWN
@given(B=small, T=small, E=small, H=small, seed=seeds)
def test_sequence_vs_torch_drawn(model, dtype, B, T, E, H, seed):
    pairs, truth = sequence_vs_torch(model, B, T, E, H, dtype, seed, with_truth=True)
    check_all(model, pairs, dtype, truth)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,E,H", EDGES)
def test_sequence_vs_torch_edges(model, dtype, B, T, E, H):
    pairs, truth = sequence_vs_torch(model, B, T, E, H, dtype, seed=B * 1000 + T * 100 + E * 10 + H, with_truth=True)
    check_all(model, pairs, dtype, truth)


@pytest.mark.parametrize("model", MODELS)
def test_the_last_output_reaches_the_first_input(model):
    """A gradient only at the last position must still reach position 0 and the start state, and
    the same as torch: only the dh (and dc) carried back from step to step can take it there."""
    T = 5
    pairs = sequence_vs_torch(model, 3, T, 2, 4, np.float64, seed=11, last_only=True)
    check_all(model, pairs, np.float64)
    demb, dstart = pairs["demb"][0], pairs[f"d{start_names(model)[0]}"][0]
    assert np.abs(demb[:, 0]).max() > 1e-6 and np.abs(dstart).max() > 1e-6, "nothing came back to t = 0"
    dh = pairs["dh"][0]
    assert all(np.abs(dh[:, t]).max() > 1e-6 for t in range(T)), "a position the gradient did not reach"


@pytest.mark.parametrize("model", MODELS)
def test_the_float32_rule_has_teeth(model):
    """check_all's float32 rule (float64 truth, torch's own error) passes the real gradients and
    fails them with one entry moved by 1e-4 of the largest gradient."""
    pairs, truth = sequence_vs_torch(model, 3, 4, 2, 3, np.float32, seed=7, with_truth=True)
    check_all(model, pairs, np.float32, truth)
    name = f"d{names_of(model)[0]}"
    mine, ref = pairs[name]
    big = max(float(np.abs(r).max()) for n, (_, r) in pairs.items() if n.startswith("d"))
    moved = mine.copy()
    moved.flat[0] += np.float32(1e-4 * big)
    with pytest.raises(pytest.fail.Exception, match=f"{name} .against float64"):
        check_all(model, pairs | {name: (moved, ref)}, np.float32, truth)


def test_an_unknown_cell_is_refused():
    with pytest.raises(ValueError, match="cell must be one of 'rnn', 'gru'"):
        recurrent_forward(np.zeros((1, 2, 3)), np.zeros((1, 4)), "lstm", np.zeros((7, 4)), np.zeros(4))


# ----------------------------------------------------------------------------- pitfalls the comparisons must reject

def mutant(func, old, new):
    """func with the text `old` of its source (found exactly once) replaced by `new`: the bug
    written into a copy of our own backward, run with the module's names."""
    source = inspect.getsource(func)
    assert source.count(old) == 1, f"{old!r} occurs {source.count(old)} times in {func.__name__}"
    namespace = dict(vars(recurrent))
    exec(compile(source.replace(old, new), f"<{func.__name__}, mutated>", "exec"), namespace)
    return namespace[func.__name__]


def worst(pairs):
    """The largest relative error of any array against torch."""
    return max(rel(mine, ref) for mine, ref in pairs.values())


CARRY = "dh = dhidden[:, t] + dhprev"


@pytest.mark.parametrize("model,func,old,new", [
    ("rnn", recurrent_backward, CARRY, "dh = dhidden[:, t]"),         # dh not carried to the previous step
    ("gru", recurrent_backward, CARRY, "dh = dhidden[:, t]"),
    ("lstm", lstm_backward, CARRY, "dh = dhidden[:, t]"),
    ("lstm", lstm_backward, "dh, dcprev, cache.steps", "dh, 0 * dcprev, cache.steps"),  # dc not carried
    ("rnn", recurrent_backward, "dp += d", "dp[...] = d"),            # a parameter's gradient of one step only
    ("lstm", lstm_backward, "dW_hh += dW_hh_t", "dW_hh = dW_hh_t"),
])
def test_a_backward_through_time_with_a_pitfall_fails(model, func, old, new):
    pytest.importorskip("torch", reason=NO_TORCH)
    check_all(model, sequence_vs_torch(model, 3, 4, 2, 3, np.float64, seed=5), np.float64)  # the real one
    pairs = sequence_vs_torch(model, 3, 4, 2, 3, np.float64, seed=5, backward=mutant(func, old, new))
    assert worst(pairs) > 1e-3, f"{model} with {new!r} passes the torch comparison: the test has no teeth"


@pytest.mark.parametrize("model,func,old", [
    ("gru", gru_cell_backward, " * r * (1 - r)"),        # a sigmoid gate's derivative left out
    ("gru", gru_cell_backward, " * z * (1 - z)"),
    ("lstm", lstm_cell_backward, " * i * (1 - i)"),
    ("lstm", lstm_cell_backward, " * f * (1 - f)"),
    ("lstm", lstm_cell_backward, " * o * (1 - o)"),
    ("rnn", rnn_cell_backward, "(1 - h ** 2) * "),       # a tanh derivative left out
    ("gru", gru_cell_backward, " * (1 - hbar ** 2)"),
    ("lstm", lstm_cell_backward, " * (1 - g ** 2)"),
    ("lstm", lstm_cell_backward, " * (1 - tanhc ** 2)"),
])
def test_a_cell_backward_with_a_missing_derivative_fails(model, func, old, monkeypatch):
    """The cell's backward with the derivative dropped, run through time (T = 4) inside our
    backward through time: the comparison with torch must fail."""
    pytest.importorskip("torch", reason=NO_TORCH)
    broken = mutant(func, old, "")
    if model == "lstm":
        monkeypatch.setattr(recurrent, "lstm_cell_backward", broken)
    else:
        monkeypatch.setitem(recurrent.CELLS, model, (recurrent.CELLS[model][0], broken))
    pairs = sequence_vs_torch(model, 3, 4, 2, 3, np.float64, seed=6)
    assert rel(*pairs["hidden"]) <= RTOL[np.float64], "the forward is untouched"
    assert worst(pairs) > 1e-3, f"{model} without {old!r} passes the torch comparison: the test has no teeth"


# ----------------------------------------------------------------------------- masked cross-entropy

def random_targets(rng, shape, V, p_mask):
    """Targets in [0, V), each masked (-1) with probability p_mask, at least one left unmasked."""
    Y = rng.integers(0, V, size=shape)
    Y[rng.random(shape) < p_mask] = -1
    Y.flat[rng.integers(Y.size)] = rng.integers(V)
    return Y


def masked_vs_torch(logits, Y, dloss, dtype):
    torch = pytest.importorskip("torch", reason=NO_TORCH)
    F = torch.nn.functional
    logits0, Y0 = logits.copy(), Y.copy()
    loss, cache = masked_cross_entropy_forward(logits, Y)
    dlogits = masked_cross_entropy_backward(dloss, cache)
    assert np.array_equal(logits, logits0) and np.array_equal(Y, Y0)
    V = logits.shape[-1]
    lt = torch.tensor(logits, requires_grad=True)
    losst = F.cross_entropy(lt.view(-1, V), torch.tensor(Y.astype(np.int64)).view(-1), ignore_index=-1)
    (dloss * losst).backward()
    assert isinstance(loss, float) and dlogits.dtype == dtype and dlogits.shape == logits.shape
    check("masked loss", loss, losst.item(), RTOL[dtype])
    check("masked dlogits", dlogits, lt.grad.numpy(), RTOL[dtype])
    masked = Y == -1
    assert not np.any(dlogits[masked]), "a masked position's gradient must be exactly 0"
    return loss, dlogits


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,V", [((4, 7), 27), ((1, 1), 2), ((32,), 27), ((3, 16), 5), ((2, 3), 300)])
@pytest.mark.parametrize("p_mask", [0.0, 0.3, 0.9])
def test_masked_cross_entropy_vs_torch(dtype, shape, V, p_mask):
    rng = np.random.default_rng(len(shape) * 1000 + V + int(p_mask * 10))
    logits = randn(rng, (*shape, V), dtype, 3.0)                   # (B, T, V) or (N, V)
    masked_vs_torch(logits, random_targets(rng, shape, V, p_mask), 1.0, dtype)


@DRAWN
@given(B=small, T=small, V=st.integers(2, 30), p_mask=st.floats(0, 1), dloss=st.sampled_from([1.0, 0.25, -2.5]),
       seed=seeds)
def test_masked_cross_entropy_vs_torch_drawn(B, T, V, p_mask, dloss, seed):
    rng = np.random.default_rng(seed)
    masked_vs_torch(randn(rng, (B, T, V), np.float64, 2.0), random_targets(rng, (B, T), V, p_mask), dloss,
                    np.float64)


def test_masked_cross_entropy_with_nothing_masked_is_the_plain_one():
    rng = np.random.default_rng(2)
    logits, Y = rng.standard_normal((4, 6, 27)), rng.integers(0, 27, (4, 6))
    loss, cache = masked_cross_entropy_forward(logits, Y)
    plain, plain_cache = cross_entropy_forward(logits.reshape(-1, 27), Y.reshape(-1))
    assert loss == plain
    assert np.array_equal(masked_cross_entropy_backward(1.0, cache),
                          cross_entropy_backward(1.0, plain_cache).reshape(4, 6, 27))


def test_masked_cross_entropy_divides_by_the_unmasked_count():
    """The mean is over the targets that count: masking half the positions of a batch whose
    positions are all alike leaves the loss as it was, and doubles each counted row's gradient."""
    logits = np.tile(np.random.default_rng(3).standard_normal(5), (2, 4, 1))  # (2, 4, 5) every row alike
    Y = np.full((2, 4), 3)
    half = Y.copy()
    half[:, ::2] = -1
    full_loss, full_cache = masked_cross_entropy_forward(logits, Y)
    half_loss, half_cache = masked_cross_entropy_forward(logits, half)
    assert abs(full_loss - half_loss) <= 1e-15 * full_loss
    full_d, half_d = masked_cross_entropy_backward(1.0, full_cache), masked_cross_entropy_backward(1.0, half_cache)
    np.testing.assert_allclose(half_d[:, 1::2], 2 * full_d[:, 1::2], rtol=1e-14)
    assert not np.any(half_d[:, ::2])


@pytest.mark.parametrize("Y,match", [
    ([[0, -2, 1]], r"target -2 at \(0, 1\) is outside \[-1, 4\)"),
    ([[0, 4, 1]], r"target 4 at \(0, 1\) is outside \[-1, 4\)"),
    ([[-1, -1, -1]], "every one of the 3 targets is -1"),
    ([[0, 1]], "got logits \\(1, 3, 4\\) and targets \\(1, 2\\)"),
    ([[0.0, 1.0, 2.0]], "must be integers"),
])
def test_masked_cross_entropy_refuses(Y, match):
    with pytest.raises(ValueError, match=match):
        masked_cross_entropy_forward(np.zeros((1, 3, 4)), np.array(Y))


# ----------------------------------------------------------------------------- finite differences (no torch needed)
# check_pair: L = sum(out * dout) for a seeded random dout, each input's gradient against central
# differences at 20 random coordinates, in float64.

def lstm_cell_stacked(x, hprev, cprev, W_ih, W_hh, b_ih, b_hh):
    """lstm_cell_forward with its two outputs as one array (2, B, H), for check_pair."""
    (h, c), cache = lstm_cell_forward(x, hprev, cprev, W_ih, W_hh, b_ih, b_hh)
    return np.stack([h, c]), cache


def lstm_cell_stacked_backward(dhc, cache):
    return lstm_cell_backward(dhc[0], dhc[1], cache)


def rnn_sequence(emb, start, W, b):
    return recurrent_forward(emb, start, "rnn", W, b)


def gru_sequence(emb, start, Wr, br, Wz, bz, Wh, bh):
    return recurrent_forward(emb, start, "gru", Wr, br, Wz, bz, Wh, bh)


def fd_inputs(model, what, seed=0):
    """Random float64 inputs of a cell (B=3, E=2, H=4) or a sequence (T=4 too)."""
    rng = np.random.default_rng(seed)
    B, T, E, H = 3, 4, 2, 4
    params = cell_params(rng, model, E, H, np.float64)
    if what == "cell":
        return [randn(rng, (B, E), np.float64), *[randn(rng, (B, H), np.float64) for _ in state_names(model)],
                *params]
    return [randn(rng, (B, T, E), np.float64), *[randn(rng, (1, H), np.float64, 0.5) for _ in start_names(model)],
            *params]


PAIRS = {("rnn", "cell"): (rnn_cell_forward, rnn_cell_backward),
         ("gru", "cell"): (gru_cell_forward, gru_cell_backward),
         ("lstm", "cell"): (lstm_cell_stacked, lstm_cell_stacked_backward),
         ("rnn", "sequence"): (rnn_sequence, recurrent_backward),
         ("gru", "sequence"): (gru_sequence, recurrent_backward),
         ("lstm", "sequence"): (lstm_forward, lstm_backward)}


@pytest.mark.parametrize("model,what", list(PAIRS), ids=lambda v: str(v))
def test_finite_differences(model, what):
    forward, backward = PAIRS[model, what]
    result = check_pair(forward, backward, *fd_inputs(model, what))
    assert result.ok, "\n" + result.text
    assert len(result.rows) == len(fd_inputs(model, what))


def test_masked_cross_entropy_finite_differences():
    rng = np.random.default_rng(4)
    logits, Y = rng.standard_normal((3, 5, 6)), random_targets(rng, (3, 5), 6, 0.4)
    result = check_pair(masked_cross_entropy_forward, masked_cross_entropy_backward, logits, Y, coords=90)
    assert result.ok, "\n" + result.text
