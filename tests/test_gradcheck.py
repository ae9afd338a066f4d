"""`npmlp gradcheck` and npmlp/gradcheck.py: every row in backward order, each checked against
torch, finite differences and the fast engine; a broken backward (of either tier) is caught and
named; without torch the finite differences still decide. The table is read by its header names."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from helpers import needs_torch, run_main

import npmlp.fast
import npmlp.model
from npmlp import gradcheck
from npmlp.model import ACT_NAMES, MLP

TINY = ["--n-embd", "4", "--n-hidden", "16"]
ROWS = ["logits", "h", "hpreact", "embcat", "emb", "W2", "b2", "W1", "b1", "C"]   # backward order
PARAMS = ROWS[len(ACT_NAMES):]


@pytest.fixture(scope="module")
def names(tiny_names):
    return tiny_names


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run


@needs_torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gradcheck_lists_every_row_and_passes(capsys, names, dtype):
    code, out, err = run_main(capsys, "gradcheck", "--data", names, "--dtype", dtype, "--quiet", *TINY)
    assert code == 0, err
    rows = gradcheck.parse_table(out)
    assert list(rows) == ROWS                                 # every row, in backward order
    for name, r in rows.items():
        assert r["torch"] in ("exact", "approx"), r
        assert float(r["max|mine-torch|"]) < (1e-12 if dtype == "float64" else 1e-5), r
        assert float(r["fd rel err"]) < (1e-6 if dtype == "float64" else 1e-4) and r["fd"].startswith("ok"), r
        # the fast engine's gradient on the same minibatch, for each parameter; intermediates: "-"
        assert r["fast"] == ("-" if name in ACT_NAMES else r["fast"]) and (
            name in ACT_NAMES or r["fast"] in ("exact", "approx")), r
    assert "all 10 gradients pass" in out


@needs_torch
def test_gradcheck_fails_and_points_at_a_corrupted_reference_backward(capsys, names, monkeypatch):
    orig = npmlp.model.tanh_backward
    monkeypatch.setattr(npmlp.model, "tanh_backward", lambda dh, cache: orig(dh, cache) * 1.01)  # 1% off
    code, out, err = run_main(capsys, "gradcheck", "--data", names, "--quiet", *TINY)
    assert code == 1
    assert err.startswith("npmlp: error:") and err.count("\n") == 1
    assert "dhpreact (torch and fd)" in err and "look first at dhpreact" in err
    rows = gradcheck.parse_table(out)
    # the gradients computed before tanh's backward are right, everything after it is wrong
    for name in ("logits", "h", "W2", "b2"):
        assert rows[name]["torch"] != "FAIL" and rows[name]["fd"].startswith("ok"), rows[name]
    for name in ("hpreact", "embcat", "emb", "W1", "b1", "C"):
        assert rows[name]["torch"] == "FAIL" and rows[name]["fd"].startswith("FAIL"), rows[name]
    for name in ("W1", "b1", "C"):                            # the fast engine disagrees with it too
        assert rows[name]["fast"] == "FAIL", rows[name]


def test_gradcheck_fast_column_catches_a_broken_fast_engine(capsys, names, monkeypatch):
    orig = npmlp.fast.Engine.backward

    def wrong(self, b, xb, yb, dloss, g):                     # the fast dC 1% too large
        orig(self, b, xb, yb, dloss, g)
        g.C *= 1.01

    monkeypatch.setattr(npmlp.fast.Engine, "backward", wrong)
    code, out, err = run_main(capsys, "gradcheck", "--data", names, "--quiet", *TINY)
    assert code == 1 and "dC (fast)" in err
    rows = gradcheck.parse_table(out)
    assert rows["C"]["fast"] == "FAIL" and rows["C"]["fd"].startswith("ok")
    assert all(rows[k]["fast"] in ("exact", "approx") for k in ("W2", "b2", "W1", "b1"))


def test_gradcheck_without_torch_still_checks_finite_differences(capsys, names, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)           # `import torch` raises ImportError
    code, out, err = run_main(capsys, "gradcheck", "--data", names, "--quiet", *TINY)
    assert code == 0, err
    rows = gradcheck.parse_table(out)
    assert list(rows) == ROWS
    assert all(r["torch"] == "-" and r["max|mine-torch|"] == "-" and r["fd"].startswith("ok") for r in rows.values())
    assert "torch: not installed" in out and "(torch" not in out.splitlines()[1]

    orig = npmlp.model.linear_backward                        # now break a backward: fd alone catches it

    def wrong_linear_backward(dout, cache):
        dx, dW, db = orig(dout, cache)
        return dx, dW, db * 0.5

    monkeypatch.setattr(npmlp.model, "linear_backward", wrong_linear_backward)
    code, out, err = run_main(capsys, "gradcheck", "--data", names, "--quiet", *TINY)
    assert code == 1
    assert "db1 (fd and fast)" in err and "db2 (fd and fast)" in err


def test_loss_from_each_intermediate_is_the_forward_loss():
    rng = np.random.default_rng(0)
    model = MLP.init(27, 3, 4, 16, dtype=np.float64)
    X, Y = rng.integers(0, 27, (8, 3)), rng.integers(0, 27, 8)
    loss, cache = model.forward(X, Y)
    for name in ACT_NAMES:
        assert gradcheck.loss_from(model, name, getattr(cache, name), Y) == pytest.approx(loss, rel=1e-14)


def test_report_rows_follow_the_backward_and_fast_gradients_equal_the_reference():
    rng = np.random.default_rng(2)
    model = MLP.init(11, 2, 3, 7, dtype=np.float64, seed=4)
    X, Y = rng.integers(0, 11, (9, 2)), rng.integers(0, 11, 9)
    rep = gradcheck.report(model, X, Y, coords=5, use_torch=False)
    assert [r.name for r in rep.rows] == ROWS and rep.torch_loss is None
    assert all(r.ok and r.fd_coords == min(5, np.prod(r.shape)) for r in rep.rows)
    grads = model.loss_and_grads(X, Y)[1]
    fast = gradcheck.fast_gradients(model, X, Y)
    for k in PARAMS:
        np.testing.assert_allclose(fast[k], grads[k], rtol=1e-12, atol=1e-12 * np.abs(grads[k]).max())


def test_parse_table_reads_cells_by_header():
    rows = [gradcheck.Row("W1", (30, 200), 1.5e-16, "approx", 3e-9, 20, True, "exact", 6.4),
            gradcheck.Row("b1", (200,), None, "-", 2e-3, 20, False, "-", 1.2)]
    table = gradcheck.format_table(rows, np.float64)
    got = gradcheck.parse_table(table)
    assert got["W1"] == {"tensor": "dW1", "shape": "30x200", "max|mine-torch|": "1.50e-16", "torch": "approx",
                         "fd rel err": "3.00e-09", "fd": "ok (20)", "fast": "exact", "grad norm": "6.4000e+00"}
    assert got["b1"]["fd"] == "FAIL (20)" and got["b1"]["torch"] == "-" and got["b1"]["fast"] == "-"
    assert rows[1].failed == ["fd"] and rows[0].ok


@needs_torch
def test_gradcheck_of_a_trained_run(capsys, run_dir):
    code, out, err = run_main(capsys, "gradcheck", "--run", run_dir, "--quiet")
    assert code == 0, err
    assert str(run_dir / "model.npz") in out and list(gradcheck.parse_table(out)) == ROWS
    code, _, err = run_main(capsys, "gradcheck", "--run", run_dir, "--n-hidden", "8")
    assert code == 2 and "--n-hidden" in err


# ----------------------------------------------------------------------------- check_pair

def test_check_pair_passes_the_library_pairs_and_skips_integer_inputs():
    from npmlp.layers import (
        cross_entropy_backward,
        cross_entropy_forward,
        embedding_backward,
        embedding_forward,
        linear_backward,
        linear_forward,
    )
    rng = np.random.default_rng(0)
    rep = gradcheck.check_pair(linear_forward, linear_backward, rng.standard_normal((5, 4)),
                               rng.standard_normal((4, 3)), rng.standard_normal(3))
    assert rep.ok and [r.name for r in rep.rows] == ["x", "W", "b"] and "dW" in rep.text
    assert all(r.torch_verdict == "-" for r in rep.rows) and "fast" not in rep.text.splitlines()[0]
    X = rng.integers(0, 7, (5, 3))
    rep = gradcheck.check_pair(embedding_forward, embedding_backward, rng.standard_normal((7, 2)), X)
    assert rep.ok and [r.name for r in rep.rows] == ["C"]                       # X passes through
    rep = gradcheck.check_pair(cross_entropy_forward, cross_entropy_backward, rng.standard_normal((6, 9)),
                               rng.integers(0, 9, 6))
    assert rep.ok and [r.name for r in rep.rows] == ["logits"]                  # scalar output: dloss 1


def test_check_pair_catches_a_broken_backward_and_names_the_input():
    from npmlp.layers import linear_backward, linear_forward

    def broken(dout, cache):                       # db forgets that b was broadcast over the batch
        dx, dW, _db = linear_backward(dout, cache)
        return dx, dW, dout[0]

    rng = np.random.default_rng(1)
    rep = gradcheck.check_pair(linear_forward, broken, rng.standard_normal((5, 4)), rng.standard_normal((4, 3)),
                               rng.standard_normal(3))
    assert not rep.ok
    assert [r.name for r in rep.rows if not r.ok] == ["b"]
    assert gradcheck.parse_table(rep.text)["b"]["fd"].startswith("FAIL")


@needs_torch
def test_check_pair_with_a_torch_forward_and_a_user_pair():
    """A student's own layer in the convention: a leaky ReLU, right and wrong."""
    import torch

    def leaky_forward(x, slope=0.1):
        return np.where(x > 0, x, slope * x), x

    def leaky_backward(dout, x):
        return np.where(x > 0, dout, 0.1 * dout)

    x = np.random.default_rng(2).standard_normal((4, 6)) + 0.05     # away from the kink at 0
    rep = gradcheck.check_pair(leaky_forward, leaky_backward, x,
                               torch_forward=lambda x: torch.nn.functional.leaky_relu(x, 0.1))
    assert rep.ok and rep.rows[0].torch_verdict in ("exact", "approx")
    rep = gradcheck.check_pair(leaky_forward, lambda dout, x: np.where(x > 0, dout, 0.0), x,
                               torch_forward=lambda x: torch.nn.functional.leaky_relu(x, 0.1))
    assert not rep.ok and rep.rows[0].failed == ["torch", "fd"]


def test_check_pair_refuses_a_backward_with_the_wrong_number_of_gradients():
    from npmlp.layers import linear_backward, linear_forward
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="2 gradients for the 3"):
        gradcheck.check_pair(linear_forward, lambda d, c: linear_backward(d, c)[:2], rng.standard_normal((2, 2)),
                             rng.standard_normal((2, 2)), rng.standard_normal(2))
