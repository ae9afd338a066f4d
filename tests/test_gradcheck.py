"""`npmlp gradcheck` and npmlp/gradcheck.py: every row in backward order, each checked against
torch, finite differences and the fast engine; a broken backward (of either tier) is caught and
named; without torch the finite differences still decide. The table is read by its header names."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from helpers import HAVE_TORCH, SMALL_MLP, needs_torch, run_main

import npmlp.fast
import npmlp.fast.engine
import npmlp.mlp
from npmlp import gradcheck
from npmlp.app.registry import MODELS
from npmlp.layers import cross_entropy_forward
from npmlp.mlp import ACT_NAMES, MLP

ROWS = ["logits", "h", "hpreact", "embcat", "emb", "W2", "b2", "W1", "b1", "C"]   # backward order
PARAMS = ROWS[len(ACT_NAMES):]
DEEP_LAYERS = 40          # deep enough for a step of 1e-4 to fail right gradients without refinement


@pytest.fixture(scope="module")
def names(tiny_names):
    return tiny_names


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run


@needs_torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gradcheck_lists_every_row_and_passes(capsys, names, dtype):
    code, out, err = run_main(capsys, "gradcheck", "--data", names, "--dtype", dtype, "--quiet", *SMALL_MLP)
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
    orig = npmlp.mlp.tanh_backward
    monkeypatch.setattr(npmlp.mlp, "tanh_backward", lambda dh, cache: orig(dh, cache) * 1.01)  # 1% off
    code, out, err = run_main(capsys, "gradcheck", "--data", names, "--quiet", *SMALL_MLP)
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
    orig = npmlp.fast.engine.Engine.backward

    def wrong(self, b, xb, yb, dloss, g):                     # the fast dC 1% too large
        orig(self, b, xb, yb, dloss, g)
        g.C *= 1.01

    monkeypatch.setattr(npmlp.fast.engine.Engine, "backward", wrong)
    code, out, err = run_main(capsys, "gradcheck", "--data", names, "--quiet", *SMALL_MLP)
    assert code == 1 and "dC (fast)" in err
    rows = gradcheck.parse_table(out)
    assert rows["C"]["fast"] == "FAIL" and rows["C"]["fd"].startswith("ok")
    assert all(rows[k]["fast"] in ("exact", "approx") for k in ("W2", "b2", "W1", "b1"))


def test_gradcheck_without_torch_still_checks_finite_differences(capsys, names, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)           # `import torch` raises ImportError
    code, out, err = run_main(capsys, "gradcheck", "--data", names, "--quiet", *SMALL_MLP)
    assert code == 0, err
    rows = gradcheck.parse_table(out)
    assert list(rows) == ROWS
    assert all(r["torch"] == "-" and r["max|mine-torch|"] == "-" and r["fd"].startswith("ok") for r in rows.values())
    assert "torch: not installed" in out and "(torch" not in out.splitlines()[1]

    orig = npmlp.mlp.linear_backward                        # now break a backward: fd alone catches it

    def wrong_linear_backward(dout, cache):
        dx, dW, db = orig(dout, cache)
        return dx, dW, db * 0.5

    monkeypatch.setattr(npmlp.mlp, "linear_backward", wrong_linear_backward)
    code, out, err = run_main(capsys, "gradcheck", "--data", names, "--quiet", *SMALL_MLP)
    assert code == 1
    assert "db1 (fd and fast)" in err and "db2 (fd and fast)" in err


@pytest.mark.parametrize("kind", ["mlp", "bn", "deep"])
def test_every_model_runs_its_forward_from_an_intermediate_put_in_place(kind):
    """The one way gradcheck perturbs an intermediate: forward(X, Y, at={name: array}). Putting back
    the intermediate's own value gives the same loss; putting another changes the loss exactly as
    the rest of the forward from there would."""
    rng = np.random.default_rng(0)
    model = MODELS[kind].init(27, 3, 4, 16, dtype=np.float64)
    X, Y = rng.integers(0, 27, (8, 3)), rng.integers(0, 27, 8)
    loss, cache = model.forward(X, Y)
    for name in model.act_names:
        assert model.forward(X, Y, at={name: cache[name]})[0] == loss
    # logits put in place: the loss is the cross-entropy of those logits alone
    other = rng.standard_normal(cache["logits"].shape)
    assert model.forward(X, Y, at={"logits": other})[0] == pytest.approx(cross_entropy_forward(other, Y)[0], rel=1e-14)
    # an earlier intermediate changed: every later one follows, and the loss moves
    first = model.act_names[-1]
    changed = model.forward(X, Y, at={first: cache[first] + rng.standard_normal(cache[first].shape)})[1]
    assert not np.allclose(changed["logits"], cache["logits"])


def test_report_rows_follow_the_backward_and_fast_gradients_equal_the_reference():
    rng = np.random.default_rng(2)
    model = MLP.init(11, 2, 3, 7, dtype=np.float64, seed=4)
    X, Y = rng.integers(0, 11, (9, 2)), rng.integers(0, 11, 9)
    rep = gradcheck.report(model, X, Y, coords=5, use_torch=False)
    assert [r.name for r in rep.rows] == ROWS and rep.torch_loss is None
    assert all(r.ok and r.fd_coords == min(5, np.prod(r.shape)) for r in rep.rows)
    grads = model.loss_and_grads(X, Y)[1]
    fast = npmlp.fast.gradients(model, X, Y)
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


# ----------------------------------------------------------------------------- check_pair never passes a wrong gradient

def _tanh_pair():
    from npmlp.layers import tanh_backward, tanh_forward
    return tanh_forward, tanh_backward


@pytest.mark.parametrize("bad,problem", [(np.nan, "NaN/inf"), (np.inf, "NaN/inf"), (-np.inf, "NaN/inf")])
def test_check_pair_fails_a_backward_that_returns_nan_or_inf(bad, problem):
    forward, _ = _tanh_pair()
    x = np.random.default_rng(0).standard_normal((8, 5))
    rep = gradcheck.check_pair(forward, lambda d, c: np.full_like(d, bad), x)
    assert not rep.ok and rep.rows[0].problem.startswith(problem) and "NaN/inf" in rep.rows[0].failed

    def one(d, c):
        return np.where(np.arange(d.size).reshape(d.shape) == 7, bad, (1 - c.h ** 2) * d)

    assert not gradcheck.check_pair(forward, one, x).ok                      # one bad entry is enough


def test_check_pair_fails_a_gradient_of_the_wrong_shape():
    from npmlp.layers import linear_backward, linear_forward
    forward, backward = _tanh_pair()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 5))
    rep = gradcheck.check_pair(forward, lambda d, c: backward(d, c).reshape(4, 10), x)
    assert not rep.ok and rep.rows[0].problem == "shape 4x10, not the input's 8x5"
    assert "dx: shape 4x10, not the input's 8x5" in rep.text
    # a db of shape (1,) for a (3,) bias: summed over everything instead of over the batch

    def wrong_db(d, c):
        return (*linear_backward(d, c)[:2], d.sum(keepdims=True).reshape(1))

    rep = gradcheck.check_pair(linear_forward, wrong_db, rng.standard_normal((4, 2)), rng.standard_normal((2, 3)),
                               rng.standard_normal(3))
    assert [r.ok for r in rep.rows] == [True, True, False] and rep.rows[2].problem.startswith("shape 1,")
    # one element too many: failed, not an IndexError from the finite differences

    def extra(d, c):
        return np.append(backward(d, c), 0.0)

    rep = gradcheck.check_pair(forward, extra, x)
    assert not rep.ok and rep.rows[0].problem == "shape 41, not the input's 8x5"


@pytest.mark.parametrize("call,message", [
    (lambda f, b, x: gradcheck.check_pair(f, lambda d, c: [b(d, c)] * 3, x),
     r"backward returned 3 gradients for the 1 floating-point input \['x'\]"),
    (lambda f, b, x: gradcheck.check_pair(lambda x: f(x)[0], b, x),
     r"forward must return \(out, cache\).*returned a ndarray of shape \(8, 5\)"),
    (lambda f, b, x: gradcheck.check_pair(f, b, 0.5),
     r"no input is one \(inputs: x \(float\)\); pass the inputs to check as np.array"),
    (lambda f, b, x: gradcheck.check_pair(f, b, [0.5, 1.0]),
     r"no input is one \(inputs: x \(list\)\)"),
    (lambda f, b, x: gradcheck.check_pair(f, b, x, coords=0), "coords must be a whole number >= 1"),
    (lambda f, b, x: gradcheck.check_pair(f, b, x, coords=-1), "coords must be a whole number >= 1"),
    (lambda f, b, x: gradcheck.check_pair(f, b, np.zeros((0, 5))), r"input x is empty \(shape \(0, 5\)\)"),
])
def test_check_pair_says_what_is_wrong_with_a_pair_it_cannot_check(call, message):
    forward, backward = _tanh_pair()
    with pytest.raises(ValueError, match=message):
        call(forward, backward, np.random.default_rng(2).standard_normal((8, 5)))


def test_check_pair_legend_says_why_torch_has_no_column():
    forward, backward = _tanh_pair()
    rep = gradcheck.check_pair(forward, backward, np.random.default_rng(3).standard_normal((4, 3)))
    assert rep.ok
    # torch_forward left out: the column was not asked for (installed or not, torch is not the reason)
    assert "torch: not checked (pass torch_forward to add this column)" in rep.text
    assert "not installed" not in rep.text
    if not HAVE_TORCH:                            # the model report, which asks for torch itself, says why
        model = MLP.init(27, 3, 4, 8, dtype=np.float64)
        rng = np.random.default_rng(0)
        rows = gradcheck.report(model, rng.integers(0, 27, (6, 3)), rng.integers(0, 27, 6), coords=2).rows
        assert "torch: not installed" in gradcheck.format_table(rows, np.float64)


# ----------------------------------------------------------------------------- no false failures, no false passes

def twenty_as(tmp_path):
    path = tmp_path / "a20.txt"
    path.write_text("a\n" * 20)
    return path


@pytest.mark.parametrize("use_torch", [True, False])
def test_bn_on_twenty_copies_of_one_name_passes_and_a_planted_error_fails(tmp_path, use_torch, monkeypatch):
    """20 x 'a': two distinct rows, so BatchNorm's variances are tiny and a step of 1e-4 is too
    coarse for dbnvar (its truncation error alone failed the row). Right gradients pass; a dbnvar
    1e-3 off still fails, with torch and without."""
    if use_torch and not HAVE_TORCH:
        pytest.skip("torch is not installed")
    from npmlp.app.rundir import splits
    from npmlp.bn import BNMLP
    data = splits(twenty_as(tmp_path), 42, 3)
    model = BNMLP.init(data.vocab.size, dtype=np.float64)
    X, Y = gradcheck.minibatch(*data.train, 32, 2147483647)
    rep = gradcheck.report(model, X, Y, coords=200, use_torch=use_torch)          # every coordinate of dbnvar
    assert all(r.ok for r in rep.rows), [(r.name, r.fd_relerr) for r in rep.rows if not r.ok]
    assert next(r for r in rep.rows if r.name == "bnvar").fd_refined >= 1   # the case the refinement is for
    backward = BNMLP.backward

    def planted(self, c):
        grads, dacts = backward(self, c)
        dacts["bnvar"] = dacts["bnvar"] * 1.001
        return grads, dacts
    monkeypatch.setattr(BNMLP, "backward", planted)
    rep = gradcheck.report(model, X, Y, coords=200, use_torch=use_torch)
    bad = [r.name for r in rep.rows if not r.ok]
    assert bad == ["bnvar"], bad
    assert next(r for r in rep.rows if r.name == "bnvar").failed == (["torch", "fd"] if use_torch else ["fd"])


@pytest.mark.parametrize("use_torch", [True, False])
def test_a_deep_plain_stack_passes_and_a_planted_error_fails(use_torch, monkeypatch):
    """A deep tanh stack without BatchNorm (weights x 5/3): a perturbation of 1e-4 grows through
    the layers and the differences' truncation error failed right gradients. They pass; a tanh
    backward 1e-3 off at one layer fails every row below it, with torch and without."""
    if use_torch and not HAVE_TORCH:
        pytest.skip("torch is not installed")
    from npmlp.deep import Deep, Tanh
    rng = np.random.default_rng(5)
    model = Deep.init(27, n_layers=DEEP_LAYERS, n_hidden=32, batchnorm=0, dtype=np.float64, seed=3)
    X, Y = rng.integers(0, 27, (16, 3)), rng.integers(0, 27, 16)
    rep = gradcheck.report(model, X, Y, coords=4, use_torch=use_torch)
    assert all(r.ok for r in rep.rows), [(r.name, r.fd_relerr) for r in rep.rows if not r.ok]
    assert sum(r.fd_refined for r in rep.rows) > 0, "the stack is meant to need the smaller steps"
    backward = Tanh.backward

    def planted(self, dout, h):
        dx, g = backward(self, dout, h)
        return (dx * 1.001 if self.name == f"tanh{DEEP_LAYERS // 2}" else dx), g
    monkeypatch.setattr(Tanh, "backward", planted)
    rep = gradcheck.report(model, X, Y, coords=4, use_torch=use_torch)
    names = [r.name for r in rep.rows]
    first = names.index(f"linear{DEEP_LAYERS // 2}")      # the first gradient the planted error reaches
    assert all(r.ok for r in rep.rows[:first]), [r.name for r in rep.rows[:first] if not r.ok]
    # every intermediate below the planted layer is 0.1% off everywhere: each row fails; a weight's
    # gradient is spot-checked at 4 coordinates, so its small entries may hide the 0.1%
    below = [r for r in rep.rows[first:] if r.name.startswith(("linear", "tanh")) or r.name in ("embcat", "emb")]
    assert below and all("fd" in r.failed for r in below), [(r.name, r.fd_relerr) for r in below if r.ok]
    assert any(not r.ok for r in rep.rows[first:] if r.name.startswith("W"))
