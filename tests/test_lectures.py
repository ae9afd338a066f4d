"""The lecture notebooks on the real names.txt: examples/lecture2.py (makemore part 2, the training
loop with every gradient written inline) and examples/bigram.py (part 1, counted and trained).

Each notebook runs once in this process (its cells' values and printed lines are read back, its
gradients held to torch autograd and to npmlp's MLP.backward) and once as a script with torch
hidden, where finite differences take torch's place.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import HAVE_TORCH, REPO, check, cmp_lines, needs_torch, notebook_defs, run_notebook

pytest.importorskip("marimo", reason="marimo is not installed (pip install 'npmlp[notebook]')")
LECTURE2 = REPO / "examples" / "lecture2.py"
BIGRAM = REPO / "examples" / "bigram.py"
# the loop's gradients, in the order it computes them: dlogits, dW2, db2, dh, dhpreact, ...
LOOP_GRADS = ("logits", "W2", "b2", "h", "hpreact", "W1", "b1", "embcat", "emb", "C")
PARAMS = ("C", "W1", "b1", "W2", "b2")


def printed(stdout: str, label: str) -> float:
    """The number on the one printed line `label X`."""
    found = re.findall(rf"^{re.escape(label)} (\S+)", stdout, re.M)
    assert len(found) == 1, f"want one line '{label} X', got {found} in:\n{stdout}"
    return float(found[0])


def cell_source(notebook, marker: str) -> str:
    """The source of the one cell of `notebook` that contains `marker`."""
    cells = [c for c in notebook.read_text().split("@app.cell") if marker in c]
    assert len(cells) == 1, f"{len(cells)} cells contain {marker!r}"
    return cells[0]


# ----------------------------------------------------------------------------- lecture2.py

@pytest.fixture(scope="module")
def lecture2(names_path):
    return notebook_defs(LECTURE2, names_path)


def assert_lecture2_losses(stdout):
    """The three losses of the 5,000-step run: in the range this recipe lands in across seeds
    (train 2.57-2.83, val 2.87-3.15 over 13 seeds), val above train by the file's rarer tail."""
    train, val, test = (printed(stdout, f"loss {s}") for s in ("train", "val", "test"))
    assert 2.5 < train < 2.9, train
    assert 2.8 < val < 3.2 and 2.8 < test < 3.2, (val, test)
    assert val > train + 0.1 and abs(test - val) < 0.1, (train, val, test)
    return train, val, test


def test_lecture2_data_and_parameters(lecture2, names_path):
    from npmlp import Vocab, build_dataset, load_words, split_words
    defs, _ = lecture2
    words = load_words(names_path)
    assert defs["words"] == words
    vocab = Vocab.from_words(words)                      # '.' = 0, then a..z
    assert defs["itos"] == dict(enumerate(vocab.itos)) and defs["stoi"] == vocab.stoi
    # the notebook's own loop and split equal npmlp's build_dataset on the file's order
    for (X, Y), part, rows in zip((("Xtr", "Ytr"), ("Xdev", "Ydev"), ("Xte", "Yte")),
                                  split_words(words, None), (182_778, 22_633, 22_735)):
        want_X, want_Y = build_dataset(part, vocab, 3)
        assert len(defs[X]) == rows
        np.testing.assert_array_equal(defs[X], want_X)
        np.testing.assert_array_equal(defs[Y], want_Y)
    assert defs["n_params"] == 11_897
    assert all(p.dtype == np.float64 for p in defs["parameters"])


def test_lecture2_trains_and_prints_the_three_losses(lecture2):
    defs, stdout = lecture2
    train, val, test = assert_lecture2_losses(stdout)
    assert (train, val, test) == (defs["loss_train"], defs["loss_val"], defs["loss_test"])
    lossi = np.array(defs["lossi"])
    assert lossi.shape == (5000,) and np.isfinite(lossi).all()
    assert lossi[-500:].mean() < lossi[:100].mean() - 0.3       # log10: the loss fell severalfold
    itos = set(defs["itos"].values())
    assert len(defs["samples"]) == 20 and all(s.endswith(".") and set(s) <= itos for s in defs["samples"])


def test_lecture2_loop_writes_every_gradient_inline():
    loop = cell_source(LECTURE2, "for i in range(steps):")
    for name in LOOP_GRADS:
        assert re.search(rf"^\s+d{name} = ", loop, re.M), f"d{name} is not computed in the loop"
    assert "np.add.at(dC, Xb, demb)" in loop and "p += -lr * grad" in loop
    code = re.sub(r"#.*", "", loop)                      # the code, without its comments
    assert not re.search(r"MLP|npmlp|backward\(|sgd|train\(", code)


def test_lecture2_gradients_equal_mlp_backward(lecture2):
    """The loop's last-step gradients against npmlp's backward on the same parameters and minibatch."""
    from npmlp import MLP
    defs, stdout = lecture2
    params, Xb, Yb = defs["params_last"], defs["Xb"], defs["Yb"]
    loss, cache = MLP(params).forward(Xb, Yb)
    grads, dacts = MLP(params).backward(cache)
    ref = {**dacts, **grads}
    assert abs(defs["loss"] - loss) <= 1e-12 * loss
    for name in LOOP_GRADS:
        check(f"d{name}", defs[f"d{name}"], ref[name], rtol=1e-12)
    # and the notebook's own verdicts, printed
    assert [r["name"] for r in defs["lib_rows"]] == list(LOOP_GRADS)
    assert all(r["approximate"] for r in defs["lib_rows"]), defs["lib_rows"]
    assert "against npmlp's MLP.backward" in stdout


@needs_torch
def test_lecture2_gradients_equal_torch(lecture2):
    from npmlp import MLP
    from npmlp.torch_mirrors import torch_loss_and_grads
    defs, stdout = lecture2
    loss, grads, dacts = torch_loss_and_grads(MLP(defs["params_last"]), defs["Xb"], defs["Yb"])
    ref = {**dacts, **grads}
    assert abs(defs["loss"] - loss) <= 1e-12 * loss
    for name in LOOP_GRADS:
        check(f"d{name}", defs[f"d{name}"], ref[name], rtol=1e-10)
    assert defs["ref_kind"].startswith("torch autograd")
    assert [r["name"] for r in defs["ref_rows"]] == list(LOOP_GRADS)
    assert all(r["approximate"] for r in defs["ref_rows"]), defs["ref_rows"]
    assert "the loop's gradients against torch autograd (float64)" in stdout


def test_lecture2_runs_without_torch(names_path):
    stdout = run_notebook(LECTURE2, {"NPMLP_DATA": str(names_path)}, hide_torch=True).stdout
    assert_lecture2_losses(stdout)
    assert "against central differences (torch is not installed)" in stdout and "torch autograd" not in stdout
    lines = cmp_lines(stdout)
    assert len(lines) == len(PARAMS) + len(LOOP_GRADS)      # finite differences: the parameters only
    assert all("approximate: True" in line for line in lines), "\n".join(lines)


# ----------------------------------------------------------------------------- bigram.py

@pytest.fixture(scope="module")
def bigram(names_path):
    return notebook_defs(BIGRAM, names_path)


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
    defs, stdout = bigram
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
    defs, stdout = bigram
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
    defs, stdout = bigram
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
    defs, _ = bigram
    W = np.random.default_rng(6).standard_normal((27, 27))
    dW = defs["backward"](W, defs["forward"](W)[2])
    Wt = torch.tensor(W, requires_grad=True)
    xs, ys = (torch.as_tensor(defs[k], dtype=torch.int64) for k in ("xs", "ys"))
    loss = torch.nn.functional.cross_entropy(Wt[xs], ys) + 0.01 * (Wt**2).mean()
    loss.backward()
    check("dW", dW, Wt.grad.numpy(), rtol=1e-10)
    assert abs(sum(defs["forward"](W)[:2]) - loss.item()) < 1e-12


def test_bigram_runs_without_torch(names_path):
    stdout = run_notebook(BIGRAM, {"NPMLP_DATA": str(names_path)}, hide_torch=True).stdout
    assert_bigram_nlls(stdout)
    assert "torch is not installed" in stdout and "torch autograd" not in stdout
    lines = cmp_lines(stdout)
    assert len(lines) == 1 and "approximate: True" in lines[0], lines
