"""examples/bigram.py, makemore part 1 (the bigram counted, then trained), on the real names.txt.

It runs once in this process (its cells' values, what it prints and what its cells show are read
back, its gradient held to central differences, the counts and torch autograd), once as a script
with torch hidden (finite differences take torch's place), once exported with its outputs as
`marimo run` shows it, and without names, where it stops with one line.
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    HAVE_TORCH,
    NO_NAMES,
    REPO,
    assert_data_failure,
    assert_page_stops_without_names,
    assert_printed_on_page,
    check,
    cmp_lines,
    export_page,
    needs_torch,
    no_names,
    notebook_run,
    printed,
    shows,
    table_rows,
)

pytest.importorskip("marimo", reason="marimo is not installed (pip install 'npmlp[notebook]')")
BIGRAM = REPO / "examples" / "bigram.py"


@pytest.fixture(scope="module")
def bigram(names_path):
    return notebook_run(BIGRAM, names_path)


def bigram_pairs(words):
    """(xs, ys) of every bigram, '.' at both ends: npmlp's rows with a context of one character."""
    from npmlp import Vocab, build_dataset
    X, Y = build_dataset(words, Vocab.from_words(words), 1)
    return X[:, 0].astype(np.int64), Y.astype(np.int64)


def assert_bigram_nlls(stdout):
    counting, neural = printed(stdout, "counting model nll"), printed(stdout, "neural net nll")
    assert abs(counting - 2.4544) < 1e-3, counting          # lecture 1's figure
    assert abs(neural - counting) < 0.05, (counting, neural)
    assert printed(stdout, "regularisation") > 0
    return counting, neural


def test_bigram_counts(bigram, names_path):
    from npmlp import load_words
    defs, stdout = bigram.defs, bigram.stdout
    xs, ys = bigram_pairs(load_words(names_path))
    assert defs["num"] == len(xs) == 228_146
    np.testing.assert_array_equal(defs["xs"], xs)
    np.testing.assert_array_equal(defs["ys"], ys)
    N = np.zeros((27, 27), np.int64)
    np.add.at(N, (xs, ys), 1)
    np.testing.assert_array_equal(defs["N"], N)
    P = (N + 1) / (N + 1).sum(1, keepdims=True)
    np.testing.assert_allclose(defs["P"], P, rtol=1e-15)
    nll = -np.log(P[xs, ys]).mean()
    counting, _ = assert_bigram_nlls(stdout)
    assert abs(defs["nll_counts"] - nll) < 1e-12 and counting == round(nll, 4)


def test_bigram_neural_net_reaches_the_counts(bigram):
    defs, stdout = bigram.defs, bigram.stdout
    _, neural = assert_bigram_nlls(stdout)
    assert neural == round(defs["nll_nn"], 4) and abs(defs["nll_nn"] - defs["nll_counts"]) < 0.05
    lossi = np.array(defs["lossi"])
    assert lossi.shape == (100,) and (np.diff(lossi) < 0).all()   # full batch, convex: every step lower
    # the trained table is close to P where the data are (rare rows learn slowly: q's is still far)
    common = defs["N"].sum(1) >= 3000
    assert np.abs(defs["probs_nn"] - defs["P"])[common].max() < 0.02
    for name in ("samples_counts", "samples_nn"):
        assert len(defs[name]) == 5 and all(s.endswith(".") and len(s) > 1 for s in defs[name])


def test_bigram_gradient_by_hand(bigram):
    """The notebook's backward at a fresh W against central differences of its forward and
    against the per-character closed form from the counts."""
    defs = bigram.defs
    forward, backward, N, num = defs["forward"], defs["backward"], defs["N"], defs["num"]
    W = np.random.default_rng(5).standard_normal((27, 27))
    data, reg, probs = forward(W)
    dW = backward(W, probs)
    softmax = np.exp(W) / np.exp(W).sum(1, keepdims=True)
    check("dW vs the counts", dW, (N.sum(1, keepdims=True) * softmax - N) / num + 0.02 * W / W.size, rtol=1e-12)
    assert abs(reg - 0.01 * (W**2).mean()) < 1e-15
    for j in (0, 28, 300, 728):
        Wp, Wm = W.copy(), W.copy()
        Wp.flat[j] += 1e-5
        Wm.flat[j] -= 1e-5
        fd = (sum(forward(Wp)[:2]) - sum(forward(Wm)[:2])) / 2e-5
        assert abs(fd - dW.flat[j]) <= 1e-6 * np.abs(dW).max(), (j, fd, dW.flat[j])
    rows = defs["check_rows"]
    assert [r["name"] for r in rows] == ["dW vs central differences"] + (["dW vs torch autograd"] if HAVE_TORCH else [])
    assert all(r["approximate"] for r in rows), rows


@needs_torch
def test_bigram_gradient_equals_torch(bigram):
    import torch
    defs = bigram.defs
    W = np.random.default_rng(6).standard_normal((27, 27))
    dW = defs["backward"](W, defs["forward"](W)[2])
    Wt = torch.tensor(W, requires_grad=True)
    xs, ys = (torch.as_tensor(defs[k], dtype=torch.int64) for k in ("xs", "ys"))
    loss = torch.nn.functional.cross_entropy(Wt[xs], ys) + 0.01 * (Wt**2).mean()
    loss.backward()
    check("dW", dW, Wt.grad.numpy(), rtol=1e-10)
    assert abs(sum(defs["forward"](W)[:2]) - loss.item()) < 1e-12


def test_bigram_shows_everything_it_prints(bigram):
    """What `python examples/bigram.py` prints is what its cells show: every line is on the page."""
    assert len(cmp_lines(bigram.stdout)) == 1 + HAVE_TORCH and "neural net samples:" in bigram.stdout
    assert_printed_on_page(bigram.stdout, bigram.page)


def test_bigram_page_shows_the_results_without_torch(bigram, names_path, tmp_path):
    """`marimo run examples/bigram.py` with torch hidden (a `torch` package earlier on the path
    whose import fails), exported with its outputs: the nlls and samples (the same draws as with
    torch), the gradient check against finite differences only, nothing on the terminal, no cell
    failed (with torch, test_bigram_shows_everything_it_prints holds the page to what it prints)."""
    defs = bigram.defs
    page = export_page(BIGRAM, {"NPMLP_DATA": str(names_path)}, tmp_path, hide_torch=True)
    assert not page.errors and not page.printed, (page.errors, page.printed[-3000:])
    assert_bigram_nlls(page.text)
    for shown in (f"counting model nll {defs['nll_counts']:.4f}", f"neural net nll {defs['nll_nn']:.4f}",
                  "counting model samples: " + " ".join(defs["samples_counts"]),
                  "neural net samples: " + " ".join(defs["samples_nn"]), "torch is not installed"):
        assert shows(page.text, shown), f"{shown!r} is not on the page"
    assert "torch autograd" not in page.text
    checks = [(row[0], row[2]) for row in table_rows(page.text) if row[0].startswith("dW vs")]
    assert checks == [("dW vs central differences", "True")], checks


@pytest.mark.parametrize("how", NO_NAMES)
def test_bigram_without_names_stops_with_one_line(how, tmp_path):
    env, problem = no_names(how, tmp_path)
    assert_data_failure(BIGRAM, env, problem)


def test_bigram_page_without_names_says_why(tmp_path):
    env, problem = no_names("missing file", tmp_path)
    assert_page_stops_without_names(export_page(BIGRAM, env, tmp_path, hide_torch=True), problem)
