"""examples/rnn.py, makemore.py's recurrent models: one RNN step, backprop through time, the GRU's
gates, AdamW written out and a short training run, the gradient through time drawn.

On 300 generated names it runs once in this process, in marimo's script mode as `python FILE`
runs it (its cells' values, what it prints and what its cells show are read back, its loop held
to npmlp's RNN.backward and train.AdamW), and as a script with torch hidden (finite differences
alone); on the real names.txt it is exported with its outputs as `marimo run` shows it; without
names, it stops with one line.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import (
    HAVE_TORCH,
    REPO,
    SOME_NO_NAMES,
    assert_data_failure,
    assert_page_stops_without_names,
    assert_printed_on_page,
    check,
    cmp_lines,
    cmp_rows,
    export_page,
    make_names,
    names_file,
    no_names,
    notebook_cell,
    notebook_run,
    shows,
)

pytest.importorskip("marimo", reason="marimo is not installed (pip install 'npmlp[notebook]')")
RNN_NB = REPO / "examples" / "rnn.py"
BIGRAM = REPO / "examples" / "bigram.py"
PARAMS = ("lm_head.weight", "lm_head.bias", "cell.xh_to_h.weight", "cell.xh_to_h.bias", "start", "wte.weight")


def n_checks(torch: bool) -> int:
    """The cmp lines: the RNN step's 5 gradients and the GRU step's 11 (each against torch and the
    differences, or the differences alone); through time 8 against torch (6 parameters, hidden,
    h through time) or 6 against the differences, and 8 against npmlp; AdamW's 6 parameters
    against npmlp, and torch."""
    return (5 + 11) * (1 + torch) + (8 if torch else 6) + 8 + 6 * (1 + torch)


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return names_file(tmp_path_factory.mktemp("data"), 300, seed=4)


@pytest.fixture(scope="module")
def rnn(names):
    return notebook_run(RNN_NB, names)


def assert_cmp_lines(stdout, torch):
    lines = cmp_lines(stdout)
    assert len(lines) == n_checks(torch) and all("approximate: True" in line for line in lines), stdout


def test_rnn_prints_every_check(rnn):
    """What `python examples/rnn.py` prints (marimo's script mode, run here in-process)."""
    assert_cmp_lines(rnn.stdout, HAVE_TORCH)
    assert ("against torch autograd" if HAVE_TORCH else "against central differences") in rnn.stdout


def test_rnn_data_are_makemore_sequences(rnn):
    defs = rnn.defs
    assert defs["words"] == make_names(300, seed=4)
    assert defs["same_rows"]                                           # the cell's loop is build_sequences
    X, Y, T = defs["Xtr"], defs["Ytr"], defs["T"]
    assert X.shape[1] == Y.shape[1] == T == max(map(len, defs["words"])) + 1
    counts = Y[:, :-1] >= 0
    assert (X[:, 0] == 0).all() and (Y[:, :-1][counts] == X[:, 1:][counts]).all()   # y is x one position ahead
    assert ((Y == -1) == (np.cumsum(Y == 0, axis=1) - (Y == 0) > 0)).all()          # -1 after the closing '.' only


def test_rnn_cells_check_every_gradient(rnn):
    defs = rnn.defs
    rows = defs["cell_rows"] + defs["bptt_rows"] + defs["lib_rows"] + defs["gru_rows"] + defs["adamw_rows"]
    assert len(rows) == n_checks(HAVE_TORCH)
    assert all(r["verdict"] in ("exact", "approx") for r in rows), [r for r in rows if r["verdict"] == "FAIL"]
    names = [r["name"] for r in defs["gru_rows"]]
    for gate in ("z", "hbar", "r"):                                    # the gates' own gradients, checked
        assert f"{gate} (differences)" in names and (f"{gate} (torch)" in names) == HAVE_TORCH
    assert [r["name"] for r in defs["lib_rows"]] == ["hidden", "h through time", *PARAMS]

    # the notebook's loop through time is npmlp's RNN.backward, held here independently of its cmp
    from npmlp.recurrent import RNN
    model = RNN(defs["P_check"], block_size=defs["T"])
    Xb, Yb = defs["Xb"], defs["Yb"]
    loss, c = model.forward(Xb, Yb)
    assert abs(loss - defs["loss_check"]) <= 1e-12 * loss
    lib, _ = model.backward(c)
    for name in PARAMS:
        check(name, defs["grads_check"][name], lib[name], rtol=1e-10)


def test_rnn_loop_writes_bptt_and_adamw_inline():
    """The cells where the student sees the loop: BPTT and the AdamW update written out, no library call."""
    bptt = notebook_cell(RNN_NB, "def bptt(")
    for line in ("dh[:, t] = dhidden[:, t] + dhprev", "dW += d.W", "dhprev = d.hprev",
                 "dstart = dhprev.sum(0, keepdims=True)", "np.add.at(dwte, c.X, d.emb)"):
        assert line in bptt, line
    cell = notebook_cell(RNN_NB, "def train(")
    loop = cell[cell.index("def train("):cell.index("return np.array(lossi)")]
    for line in ("p *= 1 - lr * weight_decay", "m[k] = beta1 * m[k] + (1 - beta1) * g",
                 "v[k] = beta2 * v[k] + (1 - beta2) * g ** 2", "m_hat = m[k] / (1 - beta1 ** t)",
                 "v_hat = v[k] / (1 - beta2 ** t)", "p -= lr * m_hat / (np.sqrt(v_hat) + eps)"):
        assert line in loop, line
    code = re.sub(r"#.*", "", loop)
    assert not re.search(r"RNN|AdamW|npmlp|\.backward\(|\.step\(", code), code


def test_rnn_adamw_is_npmlp_and_torch(rnn):
    losses = rnn.defs["adamw_losses"]
    assert set(losses) == {"this loop", "npmlp AdamW", *(["torch.optim.AdamW"] * HAVE_TORCH)}
    for name, lossi in losses.items():
        np.testing.assert_allclose(lossi, losses["this loop"], rtol=1e-12, err_msg=name)


def test_rnn_trains_and_draws_the_gradient_through_time(rnn):
    defs = rnn.defs
    vocab, lossi = defs["vocab"], defs["lossi"]
    assert lossi.shape == (500,) and np.isfinite(lossi).all()
    assert lossi[-50:].mean() < lossi[:20].mean() - 0.3
    assert np.isfinite([defs["train_loss"], defs["dev_loss"]]).all() and defs["dev_loss"] < np.log(vocab.size)
    # a name ends with '.', or is cut at the T - 1 characters a sequence model's positions hold
    assert len(defs["samples"]) == 12 and all((s.endswith(".") or len(s) == defs["T"] - 1) and set(s) <= set(vocab.itos)
                                              for s in defs["samples"])

    tt, t0 = defs["through_time"], defs["t0"]
    assert set(tt) == {"at init", "saturated: bias + 3", "trained"}
    back = {k: r["from_t0"][0] / r["from_t0"][t0] for k, r in tt.items()}
    assert back["saturated: bias + 3"] < 1e-6 * back["at init"]      # a saturated tanh: the gradient vanishes
    assert back["at init"] < 1 and back["trained"] > back["at init"]
    assert tt["saturated: bias + 3"]["saturation"] > 0.8 > 0.05 > tt["at init"]["saturation"]

    # the whole gradient per position is what `npmlp diagnose` reads (RNN.readings_through_time)
    from npmlp import gradcheck
    from npmlp.recurrent import RNN
    Xv, Yv = gradcheck.minibatch(defs["Xdev"], defs["Ydev"], 256, seed=1)
    readings = RNN(defs["P"], block_size=defs["T"]).readings_through_time(Xv, Yv)
    check("dh_norm", tt["trained"]["dh_norm"], readings["dh_norm"], rtol=1e-10)


def test_rnn_shows_everything_it_prints(rnn):
    """What `python examples/rnn.py` prints is what its cells show: every line is on the page."""
    assert len(cmp_lines(rnn.stdout)) == n_checks(HAVE_TORCH) and "dev loss" in rnn.stdout
    assert_printed_on_page(rnn.stdout, rnn.page)


def test_rnn_page_shows_the_results_without_torch(names, tmp_path):
    """`marimo run examples/rnn.py` with torch hidden (a `torch` package earlier on the path whose
    import fails), exported with its outputs: every check against the differences, the losses, the
    samples and the table of the gradient through time on the page, nothing on the terminal, no
    cell failed (with torch, test_rnn_shows_everything_it_prints holds the page to what it prints)."""
    page = export_page(RNN_NB, {"NPMLP_DATA": str(names)}, tmp_path, hide_torch=True)
    assert not page.errors and not page.printed, (page.errors, page.printed[-3000:])
    assert shows(page.text, "names: train 240, dev 30"), "not the names given"
    assert shows(page.text, "central differences of the NumPy forward (torch is not installed)")
    assert "torch autograd" not in page.text and "torch.optim" not in page.text
    rows = cmp_rows(page.text)
    assert len(rows) == n_checks(False) and all(row[2] == "True" for row in rows), rows
    for shown in ("train loss", "dev loss", "Samples", "| at init |", "| saturated: bias + 3 |", "| trained |"):
        assert shows(page.text, shown), shown


def test_rnn_shares_the_bigram_helpers():
    """The cell through which every result and the data go is the same in every notebook."""
    assert notebook_cell(RNN_NB, "def load_names") == notebook_cell(BIGRAM, "def load_names")


@pytest.mark.parametrize("how", SOME_NO_NAMES)
def test_rnn_without_names_stops_with_one_line(how, tmp_path):
    env, problem = no_names(how, tmp_path)
    assert_data_failure(RNN_NB, env, problem)


def test_rnn_page_without_names_says_why(tmp_path):
    env, problem = no_names("missing file", tmp_path)
    assert_page_stops_without_names(export_page(RNN_NB, env, tmp_path, hide_torch=True), problem)
