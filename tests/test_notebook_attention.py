"""examples/attention.py, makemore.py's Transformer: the LayerNorm, softmax, attention and GELU
backwards, a tiny Transformer's training step written out, a short training run, the heads drawn.

On 300 generated names it runs once in this process, in marimo's script mode as `python FILE`
runs it (its cells' values, what it prints and what its cells show are read back, its step held
to npmlp's Transformer), and as a script with torch hidden (finite differences alone); on the
real names.txt it is exported with its outputs as `marimo run` shows it; without names, it stops
with one line.
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
ATTENTION = REPO / "examples" / "attention.py"
BIGRAM = REPO / "examples" / "bigram.py"
N_PARAMS = 2 + 12 * 2 + 3            # the embeddings, 2 blocks of 12, ln_f and lm_head


def n_checks(torch: bool) -> int:
    """The cmp lines: LayerNorm's b, w, x (torch and the differences) and xhat (the differences:
    F.layer_norm keeps it inside); the softmax's x, and its Jacobian; one head's v, att, q, k;
    GELU's x; the training step's parameters against torch (or the differences) and npmlp."""
    return 3 * (1 + torch) + 1 + (1 + torch) + 1 + 4 * (1 + torch) + (1 + torch) + 2 * N_PARAMS


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return names_file(tmp_path_factory.mktemp("data"), 300, seed=4)


@pytest.fixture(scope="module")
def attention(names):
    return notebook_run(ATTENTION, names)


def assert_cmp_lines(stdout, torch):
    lines = cmp_lines(stdout)
    assert len(lines) == n_checks(torch) and all("approximate: True" in line for line in lines), stdout


def test_attention_prints_every_check(attention):
    """What `python examples/attention.py` prints (marimo's script mode, run here in-process)."""
    assert_cmp_lines(attention.stdout, HAVE_TORCH)
    assert ("against torch autograd" if HAVE_TORCH else "against central differences") in attention.stdout


def test_attention_cells_check_every_gradient(attention):
    defs = attention.defs
    assert defs["words"] == make_names(300, seed=4)
    rows = (defs["ln_rows"] + defs["softmax_rows"] + defs["att_rows"] + defs["gelu_rows"] + defs["step_rows"]
            + defs["lib_rows"])
    assert len(rows) == n_checks(HAVE_TORCH)
    assert all(r["verdict"] in ("exact", "approx") for r in rows), [r for r in rows if r["verdict"] == "FAIL"]
    assert defs["future_grad"] == 0.0                             # the mask: exactly no gradient to the future
    assert {r["name"] for r in defs["att_rows"]} >= {"att (differences)", *(["att (torch)"] * HAVE_TORCH)}

    # the notebook's step is npmlp's Transformer.backward, held here independently of its cmp
    from npmlp.transformer import Transformer
    model = Transformer(defs["P_check"], n_head=defs["n_head"])
    loss, c = model.forward(defs["Xb"], defs["Yb"])
    assert abs(loss - defs["loss_check"]) <= 1e-12 * loss
    lib, _ = model.backward(c)
    assert set(lib) == set(defs["grads_check"]) and len(lib) == N_PARAMS
    for name, g in lib.items():
        check(name, defs["grads_check"][name], g, rtol=1e-10)


def test_attention_step_writes_every_gradient_inline():
    """The cell where the student sees the step: the blocks' backward and AdamW written out, no library call."""
    cell = notebook_cell(ATTENTION, "def block_backward(")
    for line in ("dresid = dout + d2.x", "return dresid + d1.x, g", "p *= 1 - lr * weight_decay",
                 'np.add.at(grads["transformer.wte.weight"], c.X, dx)',
                 "for i, p in reversed(list(enumerate(blocks(P)))):"):
        assert line in cell, line
    code = re.sub(r"#.*", "", cell)
    assert not re.search(r"Transformer\(|AdamW|npmlp|layers\.|\.step\(", code), code


def test_attention_trains_and_draws_its_heads(attention):
    defs = attention.defs
    vocab, lossi = defs["vocab"], defs["lossi"]
    assert lossi.shape == (300,) and np.isfinite(lossi).all()
    assert lossi[-50:].mean() < lossi[:20].mean() - 0.3
    assert np.isfinite([defs["train_loss"], defs["dev_loss"]]).all() and defs["dev_loss"] < np.log(vocab.size)
    assert len(defs["samples"]) == 12 and all((s.endswith(".") or len(s) == defs["T"] - 1) and set(s) <= set(vocab.itos)
                                              for s in defs["samples"])
    # the notebook's forward is npmlp's on the trained arrays
    X = defs["Xdev"][:16]
    _, c = defs["transformer_forward"](defs["P"], X, defs["Ydev"][:16], defs["n_head"])
    check("logits", c.logits, defs["trained"].logits(X), rtol=1e-12)

    # each head's weights for the chosen name: 2 blocks of 4 heads, rows sum to 1, nothing on the future
    name = defs["name"].value
    patterns = defs["patterns"]
    assert len(patterns) == 2 and all(p.shape == (4, len(name) + 1, len(name) + 1) for p in patterns)
    for p in patterns:
        np.testing.assert_allclose(p.sum(-1), 1, rtol=1e-12)
        assert (np.triu(p, 1) == 0).all()
    lib = defs["trained"].attention_patterns(np.array([[0, *(vocab.stoi[ch] for ch in name)]]))
    for i, p in enumerate(patterns):
        check(f"att {i}", p, lib[i][0], rtol=1e-12)


def test_attention_shows_everything_it_prints(attention):
    """What `python examples/attention.py` prints is what its cells show: every line is on the page."""
    assert len(cmp_lines(attention.stdout)) == n_checks(HAVE_TORCH) and "dev loss" in attention.stdout
    assert_printed_on_page(attention.stdout, attention.page)


def test_attention_page_shows_the_results_without_torch(names, tmp_path):
    """`marimo run examples/attention.py` with torch hidden (a `torch` package earlier on the path
    whose import fails), exported with its outputs: every check against the differences, the
    losses, the samples and the heads' summary on the page, nothing on the terminal, no cell failed
    (with torch, test_attention_shows_everything_it_prints holds the page to what it prints)."""
    page = export_page(ATTENTION, {"NPMLP_DATA": str(names)}, tmp_path, hide_torch=True)
    assert not page.errors and not page.printed, (page.errors, page.printed[-3000:])
    assert shows(page.text, "names: train 240, dev 30"), "not the names given"
    assert shows(page.text, "central differences of the NumPy forward (torch is not installed)")
    assert "torch autograd" not in page.text
    rows = cmp_rows(page.text)
    assert len(rows) == n_checks(False) and all(row[2] == "True" for row in rows), rows
    for shown in ("train loss", "dev loss", "Samples", "the sharpest head is block", "largest |value| 0,"):
        assert shows(page.text, shown), shown


def test_attention_shares_the_bigram_helpers():
    """The cell through which every result and the data go is the same in every notebook."""
    assert notebook_cell(ATTENTION, "def load_names") == notebook_cell(BIGRAM, "def load_names")


@pytest.mark.parametrize("how", SOME_NO_NAMES)
def test_attention_without_names_stops_with_one_line(how, tmp_path):
    env, problem = no_names(how, tmp_path)
    assert_data_failure(ATTENTION, env, problem)


def test_attention_page_without_names_says_why(tmp_path):
    env, problem = no_names("missing file", tmp_path)
    assert_page_stops_without_names(export_page(ATTENTION, env, tmp_path, hide_torch=True), problem)
