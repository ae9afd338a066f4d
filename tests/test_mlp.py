"""The whole MLP: loss, all five parameter gradients and the intermediates' gradients against the
torch autograd mirror (npmlp/torch_mirrors.py) over many shapes; init; validation.

Legend: B batch, T block_size, E n_embd, H n_hidden, V vocab size.
Each gradient is compared as max|mine - torch| / (largest magnitude summed into it), see
`helpers.magnitude_scales`: for an ordinary batch that is ~max|gradient|, but a saturated tanh or a
confident softmax can cancel a gradient down to ~1e-7 of its terms in BOTH libraries, and then
its own size is no yardstick for round-off (relative to max|ref| such cases measured up to 1e-10
in float64 and 0.2 in float32, from eps-sized absolute differences).
Tolerances, measured worst over 400 random shapes (V in 2,3,27,53,300, T 1..8, E 1..16, H 1..300,
B 1..512, half with one character everywhere):
  float64: 1e-10 (measured worst 2e-14);
  float32: 2e-5 on the small grid shapes (measured ~1e-6), 1e-4 for the shapes with long float32
  sums (V*H*B or H*B large) and for random shapes (measured worst 1.1e-5).
Huge logits are compared in float64 only: there a float32 logit (~1e3) has an ulp of ~1e-4, so
the two libraries' softmaxes legitimately differ.
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers import check, magnitude_scales, needs_torch
from hypothesis import given, settings
from hypothesis import strategies as st

from npmlp.mlp import ACT_NAMES, MLP, PARAM_NAMES, param_shapes
from npmlp.torch_mirrors import torch_loss_and_grads

RTOL64 = 1e-10
RTOL32 = 2e-5
RTOL32_BIG = 1e-4


def random_params(rng, V, T, E, H, dtype, w2_scale=1.0):
    """Every param (biases too) drawn from a normal: zero biases could hide a wrong backward."""
    p = {k: rng.standard_normal(s) * 0.5 for k, s in param_shapes(V, T, E, H).items()}
    p["W2"] *= w2_scale
    return {k: v.astype(dtype) for k, v in p.items()}


def random_batch(rng, V, T, B, repeat=False):
    dt = np.uint8 if V <= 256 else np.int32  # what build_dataset hands out
    if repeat:  # one character everywhere: every row of the batch hits the same row of C
        c = int(rng.integers(0, V))
        return np.full((B, T), c, dt), np.full(B, c, dt)
    return rng.integers(0, V, size=(B, T)).astype(dt), rng.integers(0, V, size=B).astype(dt)


def compare_with_torch(V, T, E, H, B, dtype, seed=0, repeat=False, w2_scale=1.0, rtol=None):
    rng = np.random.default_rng(seed)
    params = random_params(rng, V, T, E, H, dtype, w2_scale)
    X, Y = random_batch(rng, V, T, B, repeat)
    model = MLP(params)
    loss, cache = model.forward(X, Y)
    grads, dacts = model.backward(cache)
    rloss, rgrads, rdacts = torch_loss_and_grads(model, X, Y)
    rtol = rtol or (RTOL64 if dtype == np.float64 else RTOL32)
    scales = magnitude_scales(model, cache, X, Y)
    assert np.isfinite(loss)
    worst = {"loss": check("loss", loss, rloss, rtol)}
    for k in PARAM_NAMES:
        g = grads[k]
        assert g.dtype == dtype, f"d{k} dtype {g.dtype} != params {dtype}"
        assert g.shape == params[k].shape, f"d{k} shape {g.shape} != {params[k].shape}"
        worst["d" + k] = check("d" + k, g, rgrads[k], rtol, scales[k])
    for k in ACT_NAMES:
        assert dacts[k].dtype == dtype
        worst["d" + k] = check("d" + k, dacts[k], rdacts[k], rtol, scales[k])
    return worst


# (V, T, E, H, B): the lecture's shape, the extremes of each dimension, and odd sizes in between
GRID = [
    (27, 3, 10, 200, 32),     # the lecture
    (27, 3, 10, 200, 1),      # batch of one
    (2, 1, 1, 1, 1),          # everything minimal
    (2, 8, 16, 300, 512),     # everything maximal but V
    (3, 2, 5, 7, 9),
    (27, 1, 2, 13, 100),
    (27, 8, 16, 64, 3),
    (53, 4, 7, 100, 256),
    (53, 5, 1, 1, 17),
    (300, 3, 10, 200, 64),    # V > 256: int32 indices
    (300, 8, 16, 300, 512),
    (300, 1, 1, 5, 1),
]


@needs_torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("V,T,E,H,B", GRID)
def test_mlp_matches_torch_grid(V, T, E, H, B, dtype):
    big = V * H * B >= 300 * 64 * 64 or H * B >= 300 * 256
    rtol = None if dtype == np.float64 or not big else RTOL32_BIG
    compare_with_torch(V, T, E, H, B, dtype, seed=V + T + E + H + B, rtol=rtol)


@needs_torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("V,T,E,H,B", [(27, 3, 10, 200, 512), (300, 8, 4, 30, 200), (2, 1, 1, 1, 1)])
def test_mlp_one_character_everywhere(V, T, E, H, B, dtype):
    compare_with_torch(V, T, E, H, B, dtype, seed=5, repeat=True, rtol=None if dtype == np.float64 else RTOL32_BIG)


@needs_torch
@pytest.mark.parametrize("w2_scale", [1e2, 1e3, 1e4])
@pytest.mark.parametrize("V,T,E,H,B", [(27, 3, 10, 200, 32), (300, 2, 3, 50, 64)])
def test_mlp_huge_logits_float64(V, T, E, H, B, w2_scale):
    """W2 scaled up: logits of 1e3..1e5, a saturated softmax; the loss must stay finite and exact."""
    compare_with_torch(V, T, E, H, B, np.float64, seed=9, w2_scale=w2_scale)


@needs_torch
@pytest.mark.parametrize("w2_scale", [1e2, 1e4])
def test_mlp_huge_logits_float32_finite(w2_scale):
    rng = np.random.default_rng(1)
    params = random_params(rng, 27, 3, 10, 200, np.float32, w2_scale)
    X, Y = random_batch(rng, 27, 3, 64)
    model = MLP(params)
    loss, grads = model.loss_and_grads(X, Y)
    assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values())
    rloss, _, _ = torch_loss_and_grads(model, X, Y)
    check("loss (float32, huge logits)", loss, rloss, 1e-4)


@needs_torch
@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 8), E=st.integers(1, 16), H=st.integers(1, 300), B=st.integers(1, 512),
       V=st.sampled_from([2, 3, 27, 53, 300]), seed=st.integers(0, 2**32 - 1), repeat=st.booleans())
def test_mlp_matches_torch_hypothesis_float64(T, E, H, B, V, seed, repeat):
    compare_with_torch(V, T, E, H, B, np.float64, seed=seed, repeat=repeat)


@needs_torch
@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 8), E=st.integers(1, 16), H=st.integers(1, 300), B=st.integers(1, 512),
       V=st.sampled_from([2, 3, 27, 53, 300]), seed=st.integers(0, 2**32 - 1), repeat=st.booleans())
def test_mlp_matches_torch_hypothesis_float32(T, E, H, B, V, seed, repeat):
    compare_with_torch(V, T, E, H, B, np.float32, seed=seed, repeat=repeat, rtol=RTOL32_BIG)


# ----------------------------------------------------------------------------- conveniences

def test_logits_and_loss_agree_with_loss_and_grads():
    rng = np.random.default_rng(8)
    for dtype in (np.float64, np.float32):
        model = MLP(random_params(rng, 27, 3, 10, 200, dtype))
        X, Y = random_batch(rng, 27, 3, 50)
        loss, grads = model.loss_and_grads(X, Y)
        _, cache = model.forward(X, Y)
        logits = model.logits(X)
        assert logits.shape == (50, 27) and logits.dtype == dtype
        assert np.array_equal(logits, cache.logits)
        assert model.loss(X, Y) == loss and isinstance(loss, float)
        # lists work too (np.asarray inside)
        assert model.loss(X.tolist(), Y.tolist()) == loss
        g2, _ = model.backward(cache)
        for k in PARAM_NAMES:
            assert np.array_equal(grads[k], g2[k])
        # loss_and_grads returns new arrays each call, not views of shared state
        _, grads_b = model.loss_and_grads(X[:3], Y[:3])
        assert not any(np.shares_memory(grads[k], grads_b[k]) for k in PARAM_NAMES)


def test_forward_rejects_wrong_block_size():
    model = MLP.init(27, block_size=3, n_embd=2, n_hidden=4)
    with pytest.raises(ValueError, match="block_size"):
        model.logits(np.zeros((5, 4), np.uint8))


# ----------------------------------------------------------------------------- init and validation

def flat(model):
    return np.concatenate([model.params[k].ravel() for k in PARAM_NAMES])


def test_init_lecture_config_has_11897_params():
    model = MLP.init(27)  # block_size 3, n_embd 10, n_hidden 200
    assert model.num_params == 11_897 == flat(model).size
    assert model.dtype == np.float32 and all(p.dtype == np.float32 for p in model.params.values())
    assert {k: p.shape for k, p in model.params.items()} == {
        "C": (27, 10), "W1": (30, 200), "b1": (200,), "W2": (200, 27), "b2": (27,)}
    assert (model.vocab_size, model.block_size, model.n_embd, model.n_hidden) == (27, 3, 10, 200)
    assert model.sizes == {"block_size": 3, "n_embd": 10, "n_hidden": 200} == MLP.spec.defaults
    # five separate arrays, as the lecture's: an update of one leaves the others alone
    params = list(model.params.values())
    assert not any(np.shares_memory(a, b) for i, a in enumerate(params) for b in params[i + 1:])
    before = model.params["b2"].copy()
    model.params["W2"] -= 0.1
    assert np.array_equal(model.params["b2"], before)


def test_init_schemes():
    lec = MLP.init(27, seed=1, dtype=np.float64)
    kai = MLP.init(27, seed=1, dtype=np.float64, scheme="kaiming")
    lec2 = MLP.init(27, seed=1, dtype=np.float64)
    assert np.array_equal(flat(lec), flat(lec2)), "same seed must give the same init"
    assert not np.array_equal(flat(lec), flat(MLP.init(27, seed=2, dtype=np.float64)))
    P, K = lec.params, kai.params
    # lecture: plain standard normal everywhere (11,897 draws: mean ~0, std ~1)
    assert abs(flat(lec).mean()) < 0.05 and abs(flat(lec).std() - 1) < 0.05
    # kaiming: the same draws, rescaled
    np.testing.assert_array_equal(K["C"], P["C"])
    np.testing.assert_allclose(K["W1"], P["W1"] * (5 / 3) / np.sqrt(30), rtol=1e-15)
    np.testing.assert_allclose(K["b1"], P["b1"] * 0.01, rtol=1e-15)
    np.testing.assert_allclose(K["W2"], P["W2"] * 0.01, rtol=1e-15)
    assert not np.any(K["b2"])
    # float32 init is the float64 init rounded
    np.testing.assert_array_equal(flat(MLP.init(27, seed=1)), flat(lec).astype(np.float32))
    with pytest.raises(ValueError, match="scheme"):
        MLP.init(27, scheme="xavier")
    for bad in ({"block_size": 0}, {"n_embd": 0}, {"n_hidden": 0}):
        with pytest.raises(ValueError):
            MLP.init(27, **bad)


def test_mlp_rejects_bad_params():
    good = random_params(np.random.default_rng(0), 27, 3, 10, 20, np.float64)
    MLP(good)
    for k in PARAM_NAMES:
        with pytest.raises(ValueError, match=k):
            MLP({n: v for n, v in good.items() if n != k})
    for k, shape in [("C", (26, 10)), ("W1", (30, 21)), ("W1", (31, 20)), ("b1", (21,)), ("W2", (20, 26)),
                     ("b2", (28,)), ("b2", (1, 27)), ("W2", (27, 20))]:
        with pytest.raises(ValueError):
            MLP({**good, k: np.zeros(shape)})
    with pytest.raises(ValueError, match="float"):
        MLP({k: v.astype(np.int64) for k, v in good.items()})
    # MLP copies the arrays it is given
    m = MLP(good)
    good["W1"][0, 0] += 1
    assert m.params["W1"][0, 0] != good["W1"][0, 0]


def test_backward_lists_gradients_in_the_order_it_computes_them():
    """The gradcheck table reads its rows from these dicts: intermediates from dlogits down, then
    the parameters as the backward reaches them (W2, b2 first; dC last)."""
    model = MLP.init(27, n_hidden=8, dtype=np.float64)
    _, cache = model.forward(np.zeros((4, 3), np.uint8), np.ones(4, np.uint8))
    grads, dacts = model.backward(cache)
    assert list(dacts) == list(ACT_NAMES) == ["logits", "h", "hpreact", "embcat", "emb"]
    assert list(grads) == ["W2", "b2", "W1", "b1", "C"] and set(grads) == set(PARAM_NAMES)
