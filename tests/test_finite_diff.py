"""The hand-written backward against central finite differences, in float64, with no torch at all:
an independent check of the same gradients test_model.py compares with autograd.

    numeric dL/dp_i = (L(p + eps e_i) - L(p - eps e_i)) / (2 eps),  eps = 1e-5

Legend: B batch, T block_size, E n_embd, H n_hidden, V vocab size.
Central differences have truncation error O(eps^2 * L''') ~ 1e-10 and round-off ~ 1e-16 / eps
~ 1e-11, so, per param, the relative error ||analytic - numeric|| / (||analytic|| + ||numeric||)
stays far below the 1e-6 asserted (measured 1e-11..9e-10; max abs error 2e-10). Never do this in float32: there the
round-off alone is ~1e-7 / 1e-5 = 1e-2.
"""
from __future__ import annotations

import numpy as np
import pytest

from npmlp.gradcheck import central_difference
from npmlp.layers import cross_entropy_forward, linear_forward, tanh_forward
from npmlp.mlp import MLP, PARAM_NAMES, param_shapes

STEP = 1e-5
REL = 1e-6
MAX_COORDS = 60  # per param: all coordinates of smaller params, a fixed random sample of bigger ones


def rel_error(a, n):
    a, n = np.ravel(a), np.ravel(n)
    return float(np.linalg.norm(a - n) / max(np.linalg.norm(a) + np.linalg.norm(n), 1e-300))


def make_model(V, T, E, H, seed):
    rng = np.random.default_rng(seed)
    # moderate scale so tanh is neither linear nor saturated; biases non-zero on purpose
    params = {k: rng.standard_normal(s) * 0.7 for k, s in param_shapes(V, T, E, H).items()}
    return MLP(params), rng


def numeric_grad(f, x, coords):
    """Central differences of the scalar f() w.r.t. x.flat[coords] (the report's helper, eps 1e-5)."""
    return central_difference(f, x, coords, eps=STEP)


def report(name, a, n):
    worst = np.argsort(np.abs(a - n))[-3:][::-1]
    return (f"{name}: rel {rel_error(a, n):.3e}, maxdiff {np.abs(a - n).max():.3e}; analytic vs numeric "
            + ", ".join(f"{a[i]:.10g} vs {n[i]:.10g}" for i in worst))


@pytest.mark.parametrize("V,T,E,H,B,seed", [
    (7, 3, 4, 10, 16, 0),       # small: every coordinate of every param
    (27, 3, 10, 64, 32, 1),     # lecture-like: a random sample of the bigger params
    (5, 1, 1, 3, 1, 2),         # batch of one, minimal widths
])
def test_param_grads_vs_central_differences(V, T, E, H, B, seed):
    model, rng = make_model(V, T, E, H, seed)
    assert model.dtype == np.float64
    X = rng.integers(0, V, size=(B, T)).astype(np.uint8)
    X[: B // 2, 0] = X[0, 0]   # some repeated indices so dC rows sum several contributions
    Y = rng.integers(0, V, size=B).astype(np.uint8)
    _, grads = model.loss_and_grads(X, Y)

    def f():
        return model.loss(X, Y)

    for k in PARAM_NAMES:
        p = model.params[k]
        n = p.size
        coords = np.arange(n) if n <= MAX_COORDS else np.sort(rng.choice(n, MAX_COORDS, replace=False))
        a = grads[k].reshape(-1)[coords]
        num = numeric_grad(f, p, coords)
        assert np.abs(a).max() > 0, f"d{k} is all zero on the checked coordinates: the check would be empty"
        assert rel_error(a, num) < REL, report("d" + k, a, num)
        np.testing.assert_allclose(a, num, rtol=1e-5, atol=1e-8, err_msg="d" + k)


def test_random_direction_derivative():
    """The whole gradient at once: d/dt L(p + t u) at t=0 equals <grad, u> for a random u."""
    model, rng = make_model(27, 3, 10, 200, 3)
    X = rng.integers(0, 27, size=(64, 3)).astype(np.uint8)
    Y = rng.integers(0, 27, size=64).astype(np.uint8)
    _, grads = model.loss_and_grads(X, Y)
    p0 = {k: p.copy() for k, p in model.params.items()}

    def move(u, t):
        for k, p in model.params.items():
            p[...] = p0[k] + t * u[k]

    for _ in range(3):
        u = {k: rng.standard_normal(p.shape) for k, p in p0.items()}
        norm = np.sqrt(sum((v ** 2).sum() for v in u.values()))
        u = {k: v / norm for k, v in u.items()}
        move(u, STEP)
        fp = model.loss(X, Y)
        move(u, -STEP)
        fm = model.loss(X, Y)
        move(u, 0)
        num, ana = (fp - fm) / (2 * STEP), float(sum((grads[k] * u[k]).sum() for k in PARAM_NAMES))
        assert abs(num - ana) / max(abs(num) + abs(ana), 1e-300) < REL, (num, ana)


def test_intermediate_grads_vs_central_differences():
    """dacts (the gradients of emb, hpreact, h, logits) by finite differences of the loss as a
    function of that intermediate, composing the rest of the forward from the layer pairs."""
    V, T, E, H, B = 7, 3, 4, 10, 6
    model, rng = make_model(V, T, E, H, 4)
    X = rng.integers(0, V, size=(B, T)).astype(np.uint8)
    Y = rng.integers(0, V, size=B).astype(np.uint8)
    _, cache = model.forward(X, Y)
    _, dacts = model.backward(cache)

    def from_logits(logits):
        return float(cross_entropy_forward(logits, Y)[0])

    P = model.params

    def from_h(h):
        return from_logits(linear_forward(h, P["W2"], P["b2"])[0])

    def from_hpreact(hpreact):
        return from_h(tanh_forward(hpreact)[0])

    def from_emb(emb):
        return from_hpreact(linear_forward(emb.reshape(B, T * E), P["W1"], P["b1"])[0])

    for name, fn in [("logits", from_logits), ("h", from_h), ("hpreact", from_hpreact), ("emb", from_emb)]:
        x = np.array(getattr(cache, name), copy=True)
        assert abs(fn(x) - model.loss(X, Y)) < 1e-12, f"composed forward from {name} is not the model's"
        num = numeric_grad(lambda: fn(x), x, np.arange(x.size))  # noqa: B023
        a = np.asarray(dacts[name]).reshape(-1)
        assert rel_error(a, num) < REL, report("d" + name, a, num)
    # embcat is a reshape of emb: its gradient is the same numbers
    np.testing.assert_array_equal(np.asarray(dacts["embcat"]).reshape(-1), np.asarray(dacts["emb"]).reshape(-1))
