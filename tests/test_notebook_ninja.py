"""examples/backprop_ninja.py, makemore part 4's exercises (every gradient of the BatchNorm MLP by
hand, atom by atom, then fused).

On 300 generated names it runs once in this process, in marimo's script mode as `python FILE`
runs it (its cells' values, what it prints and what its cells show are read back, its chain held
to npmlp's BNMLP.backward), and as a script with torch hidden; on the real names.txt it is
exported with its outputs as `marimo run` shows it; without names, it stops with one line.
"""
from __future__ import annotations

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
NINJA = REPO / "examples" / "backprop_ninja.py"
BIGRAM = REPO / "examples" / "bigram.py"
# the 26 gradients of part 4's exercise 1, in the order its backward computes them
NINJA_GRADS = ("logprobs", "probs", "counts_sum_inv", "counts_sum", "counts", "norm_logits", "logit_maxes",
               "logits", "h", "W2", "b2", "hpreact", "bngain", "bnbias", "bnraw", "bnvar_inv", "bnvar",
               "bndiff2", "bndiff", "bnmeani", "hprebn", "embcat", "W1", "b1", "emb", "C")


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return names_file(tmp_path_factory.mktemp("data"), 300, seed=4)


@pytest.fixture(scope="module")
def ninja(names):
    return notebook_run(NINJA, names)


def test_ninja_prints_every_check(ninja):
    """What `python examples/backprop_ninja.py` prints (marimo's script mode, run here in-process):
    the lecture's cmp line for every gradient, each exact or approximate."""
    lines = cmp_lines(ninja.stdout)
    assert [line.split("|")[0].strip() for line in lines[:26]] == list(NINJA_GRADS)
    assert all("approximate: True" in line for line in lines), "\n".join(lines)
    assert ("against torch autograd" if HAVE_TORCH else "against central differences") in ninja.stdout


def test_ninja_cells_check_every_gradient(ninja):
    """Run the app in-process and read what its cells defined."""
    defs = ninja.defs
    assert defs["words"] == make_names(300, seed=4)            # the names of NPMLP_DATA

    # exercise 1: every cmp verdict exact or approximate, against torch when it is installed
    rows = defs["cmp_rows"]
    assert [r["name"] for r in rows] == list(NINJA_GRADS)
    bad = [(r["name"], r["verdict"], r["maxdiff"]) for r in rows if r["verdict"] not in ("exact", "approx")]
    assert not bad, bad
    assert defs["ref_kind"].startswith("torch autograd" if HAVE_TORCH else "central differences")
    assert all(r["compared"] == np.prod(r["shape"]) for r in rows) if HAVE_TORCH else \
        all(0 < r["compared"] <= 20 for r in rows)

    # the notebook's chain is the library's: BNMLP.backward on the same params and minibatch
    from npmlp.bn import BNMLP
    model = BNMLP(defs["P"])
    loss, cache = model.forward(defs["Xb"], defs["Yb"])
    lib_grads, lib_dacts = model.backward(cache)
    assert abs(loss - float(defs["fwd"].loss)) <= 1e-12 * loss
    lib = {**lib_dacts, **lib_grads}
    floor = 1e-2 * max(np.abs(g).max() for g in lib.values())      # b1's gradient is 0 up to round-off
    for name, g in lib.items():
        check(name, defs["grads"][name], g, rtol=1e-10, scale=max(np.abs(g).max(), floor))

    # exercises 2 and 3: the fused backwards equal the atom chain to round-off
    check("dlogits_fast", defs["dlogits_fast"], defs["dlogits"], rtol=1e-12)
    assert abs(defs["loss_fast"] - float(defs["fwd"].loss)) <= 1e-12
    check("hpreact_fast", defs["hpreact_fast"], defs["fwd"].hpreact, rtol=1e-12)
    check("dhprebn_fast", defs["dhprebn_fast"], defs["dhprebn"], rtol=1e-10)
    check("dbngain_fast", defs["dbngain_fast"], defs["dbngain"], rtol=1e-12)
    check("dbnbias_fast", defs["dbnbias_fast"], defs["dbnbias"], rtol=1e-12)
    assert all(r["approximate"] for r in defs["ce_rows"] + defs["bn_rows"] + defs["bessel_rows"])
    assert len(defs["bessel_rows"]) == (4 if HAVE_TORCH else 0)      # unbiased=False vs F.batch_norm
    assert set(defs["pair_checks"]) == {True, False} and all(c.ok for c in defs["pair_checks"].values())

    # exercise 4: the loss fell; calibrated losses are finite; samples are names that end
    lossi = defs["lossi"]
    assert np.isfinite(lossi).all() and lossi[-100:].mean() < lossi[:100].mean()
    assert np.isfinite([defs["train_loss"], defs["dev_loss"]]).all()
    assert np.isfinite(defs["model"].buffers["bnvar"]).all() and (defs["model"].buffers["bnvar"] > 0).all()
    vocab = defs["vocab"]
    assert len(defs["samples"]) == 20
    assert all(s.endswith(".") and set(s) <= set(vocab.itos) for s in defs["samples"])


def test_ninja_shows_everything_it_prints(ninja):
    """What `python examples/backprop_ninja.py` prints is what its cells show: every line is on the page."""
    assert len(cmp_lines(ninja.stdout)) == 26 + 2 + 3 + 4 * HAVE_TORCH and "dev loss" in ninja.stdout
    assert_printed_on_page(ninja.stdout, ninja.page)


def test_ninja_page_shows_the_results_without_torch(ninja, names, tmp_path):
    """`marimo run examples/backprop_ninja.py` with torch hidden (a `torch` package earlier on the
    path whose import fails), exported with its outputs: every cmp table against finite
    differences, the calibrated losses and the samples on the page, nothing on the terminal, no
    cell failed (with torch, test_ninja_shows_everything_it_prints holds the page to what it prints)."""
    page = export_page(NINJA, {"NPMLP_DATA": str(names)}, tmp_path, hide_torch=True)
    assert not page.errors and not page.printed, (page.errors, page.printed[-3000:])
    assert shows(page.text, f"rows: train {len(ninja.defs['Xtr']):,}, "), "not the names given"
    assert shows(page.text, "exercise 1: every atom's gradient against central differences of the NumPy forward")
    assert "torch autograd" not in page.text and "torch.nn.functional" not in page.text
    rows = cmp_rows(page.text)
    assert [row[0] for row in rows[:26]] == list(NINJA_GRADS)
    assert len(rows) == 26 + 2 + 3 and all(row[2] == "True" for row in rows), rows
    for shown in ("train loss", "dev loss", "Samples"):
        assert shows(page.text, shown), shown


def test_ninja_shares_the_bigram_helpers():
    """The cell through which every result and the data go is the same in every notebook."""
    assert notebook_cell(NINJA, "def load_names") == notebook_cell(BIGRAM, "def load_names")


@pytest.mark.parametrize("how", SOME_NO_NAMES)
def test_ninja_without_names_stops_with_one_line(how, tmp_path):
    env, problem = no_names(how, tmp_path)
    assert_data_failure(NINJA, env, problem)


def test_ninja_page_without_names_says_why(tmp_path):
    env, problem = no_names("offline", tmp_path)
    assert_page_stops_without_names(export_page(NINJA, env, tmp_path, hide_torch=True), problem)
