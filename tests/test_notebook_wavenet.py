"""examples/wavenet.py, makemore part 5: the flatten and 3-D BatchNorm backwards, the BatchNorm bug
and its fix, and the training loop over layer objects.

On 300 generated names it runs as a script with torch hidden (finite differences take torch's
place) and once in this process, in marimo's script mode as `python FILE` runs it: its cmp
verdicts all pass, what it prints is what its cells show, its written-out network is npmlp's
Wavenet draw for draw, its loop learns, and the bug and the fix keep the statistics the lecture
describes. On the real names.txt it is exported with its outputs as `marimo run` shows it;
without names, it stops with one line.
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
WAVENET = REPO / "examples" / "wavenet.py"
BIGRAM = REPO / "examples" / "bigram.py"


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return names_file(tmp_path_factory.mktemp("data"), 300, seed=4)


@pytest.fixture(scope="module")
def wavenet(names):
    return notebook_run(WAVENET, names)


def assert_cmp_lines(stdout):
    lines = cmp_lines(stdout)
    assert len(lines) == 2 + 3 + 3 and all("approximate: True" in line for line in lines), stdout


def test_wavenet_prints_every_check(wavenet):
    """What `python examples/wavenet.py` prints (marimo's script mode, run here in-process)."""
    assert_cmp_lines(wavenet.stdout)


def test_wavenet_cells_check_train_and_show_the_bug(wavenet):
    defs = wavenet.defs
    assert defs["words"] == make_names(300, seed=4)
    assert defs["ref_kind"].startswith("torch autograd" if HAVE_TORCH else "central differences")
    rows = defs["flatten_rows"] + defs["bn_rows"] + defs["lib_rows"]
    assert all(r["verdict"] in ("exact", "approx") for r in rows), rows
    if HAVE_TORCH:                                                   # a reshape's gradient moves numbers only
        assert all(r["exact"] for r in defs["flatten_rows"])

    # the notebook's 3-D BatchNorm backward is the library's pair
    from npmlp.layers import batchnorm_backward, batchnorm_forward
    _, cache = batchnorm_forward(defs["x_bn"], defs["gamma_bn"], np.zeros(68), unbiased=True)
    for mine, lib in zip(defs["bn_grads"], batchnorm_backward(defs["dout_bn"], cache), strict=True):
        np.testing.assert_allclose(mine, lib, rtol=1e-12, atol=1e-14)

    # the written-out network is npmlp's, draw for draw; its loop learns; its samples end
    from npmlp.wavenet import Wavenet
    vocab = defs["vocab"]
    assert defs["same_init"] and defs["n_params"] == Wavenet.init(vocab.size).num_params
    lossi = defs["lossi"]
    assert np.isfinite(lossi).all() and lossi[-100:].mean() < lossi[:100].mean()
    assert np.isfinite([defs["train_loss"], defs["dev_loss"]]).all() and defs["dev_loss"] < np.log(vocab.size)
    assert len(defs["samples"]) == 20 and all(s.endswith(".") for s in defs["samples"])

    # the bug: statistics per position; the fix: per channel
    assert defs["stat_shapes"] == {"bug": ((1, 4, 68), (1, 4, 68)), "fix": ((1, 1, 68), (1, 1, 68))}
    bug, fix = defs["bug_results"]["bug: dim 0"], defs["bug_results"]["fix: dims (0, 1)"]
    assert bug["stats"]["mean1"] == (4, 68) and bug["stats"]["mean2"] == (2, 68) and bug["stats"]["mean3"] == (68,)
    assert all(s == (68,) for s in fix["stats"].values())
    assert all(np.isfinite([r["train"], r["dev"]]).all() for r in (bug, fix))


def test_wavenet_shows_everything_it_prints(wavenet):
    """What `python examples/wavenet.py` prints is what its cells show: every line is on the page."""
    assert len(cmp_lines(wavenet.stdout)) == 2 + 3 + 3 and "dev loss" in wavenet.stdout
    assert_printed_on_page(wavenet.stdout, wavenet.page)


def test_wavenet_page_shows_the_results_without_torch(wavenet, names, tmp_path):
    """`marimo run examples/wavenet.py` with torch hidden (a `torch` package earlier on the path
    whose import fails), exported with its outputs: the checks against the differences, the
    losses, the samples and the bug's table on the page, nothing on the terminal, no cell failed
    (with torch, test_wavenet_shows_everything_it_prints holds the page to what it prints)."""
    page = export_page(WAVENET, {"NPMLP_DATA": str(names)}, tmp_path, hide_torch=True)
    assert not page.errors and not page.printed, (page.errors, page.printed[-3000:])
    assert shows(page.text, f"rows: train {len(wavenet.defs['Xtr']):,}, dev {len(wavenet.defs['Xdev']):,}")
    assert shows(page.text, "central differences of the NumPy forward (torch is not installed)")
    assert "torch autograd" not in page.text
    rows = cmp_rows(page.text)
    assert len(rows) == 2 + 3 + 3 and all(row[2] == "True" for row in rows), rows
    for shown in ("train loss", "dev loss", "Samples", "| bug: dim 0 |", "| fix: dims (0, 1) |"):
        assert shows(page.text, shown), shown


def test_wavenet_shares_the_bigram_helpers():
    """The cell through which every result and the data go is the same in every notebook."""
    assert notebook_cell(WAVENET, "def load_names") == notebook_cell(BIGRAM, "def load_names")


@pytest.mark.parametrize("how", SOME_NO_NAMES)
def test_wavenet_without_names_stops_with_one_line(how, tmp_path):
    env, problem = no_names(how, tmp_path)
    assert_data_failure(WAVENET, env, problem)


def test_wavenet_page_without_names_says_why(tmp_path):
    env, problem = no_names("missing file", tmp_path)
    assert_page_stops_without_names(export_page(WAVENET, env, tmp_path, hide_torch=True), problem)
