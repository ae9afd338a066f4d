"""examples/wavenet.py (makemore part 5) runs top to bottom as a script, with torch and with torch
hidden and no names file (finite differences, generated names); in-process, its cmp verdicts all
pass, its written-out network is npmlp's Wavenet draw for draw, its loop learns, and the bug and
the fix keep the statistics the lecture describes."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import HAVE_TORCH, REPO, cmp_lines, make_names, names_file, notebook_defs, run_notebook

pytest.importorskip("marimo", reason="marimo is not installed (pip install 'npmlp[notebook]')")
NOTEBOOK = REPO / "examples" / "wavenet.py"


@pytest.fixture
def names(tmp_path):
    return names_file(tmp_path, 300, seed=4)


def run_script(env, hide_torch=False):
    r = run_notebook(NOTEBOOK, env, hide_torch=hide_torch)
    lines = cmp_lines(r.stdout)
    assert len(lines) == 2 + 3 + 3 and all("approximate: True" in line for line in lines), r.stdout
    return r


def test_runs_as_a_script(names):
    run_script({"NPMLP_DATA": str(names)})


def test_runs_without_torch_and_offline(tmp_path):
    """A `torch` package earlier on the path whose import fails, and no names file anywhere: the
    checks fall back to finite differences, the data to generated names."""
    run_script({"NPMLP_DATA": str(tmp_path / "missing.txt"), "XDG_CACHE_HOME": str(tmp_path)}, hide_torch=True)


def test_cells_check_train_and_show_the_bug(names):
    defs, _ = notebook_defs(NOTEBOOK, names)
    assert defs["words"] == make_names(300, seed=4)
    assert defs["ref_kind"].startswith("torch autograd" if HAVE_TORCH else "central differences")
    rows = defs["flatten_rows"] + defs["bn_rows"] + defs["lib_rows"]
    assert all(r["verdict"] in ("exact", "approx") for r in rows), rows
    if HAVE_TORCH:                                                   # a reshape's gradient moves numbers only
        assert all(r["exact"] for r in defs["flatten_rows"])

    # the notebook's 3-D BatchNorm backward is the library's pair
    from npmlp.layers import batchnorm_backward, batchnorm_forward
    _, cache = batchnorm_forward(defs["x_bn"], defs["gamma_bn"], np.zeros(68), unbiased=True)
    for mine, lib in zip(defs["bn_grads"], batchnorm_backward(defs["dout_bn"], cache)):
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
