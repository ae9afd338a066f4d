"""examples/backprop_ninja.py (part 4's exercises) runs top to bottom as a plain script, also with
torch hidden and offline. The lecture notebooks (lecture2.py, bigram.py) are tested in test_lectures.py."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import HAVE_TORCH, REPO, check, cmp_lines, make_names, names_file, notebook_defs, run_notebook

pytest.importorskip("marimo", reason="marimo is not installed (pip install 'npmlp[notebook]')")
NINJA = REPO / "examples" / "backprop_ninja.py"
# the 26 gradients of part 4's exercise 1, in the order its backward computes them
NINJA_GRADS = ("logprobs", "probs", "counts_sum_inv", "counts_sum", "counts", "norm_logits", "logit_maxes",
               "logits", "h", "W2", "b2", "hpreact", "bngain", "bnbias", "bnraw", "bnvar_inv", "bnvar",
               "bndiff2", "bndiff", "bnmeani", "hprebn", "embcat", "W1", "b1", "emb", "C")


@pytest.fixture
def names(tmp_path):
    return names_file(tmp_path, 300, seed=4)


def test_ninja_falls_back_to_generated_names_offline(tmp_path):
    run_notebook(NINJA, {"NPMLP_DATA": str(tmp_path / "missing.txt"), "XDG_CACHE_HOME": str(tmp_path)})


# ----------------------------------------------------------------------------- backprop_ninja.py

def test_ninja_runs_as_a_script(names):
    r = run_notebook(NINJA, {"NPMLP_DATA": str(names)})
    lines = cmp_lines(r.stdout)
    assert [line.split("|")[0].strip() for line in lines[:26]] == list(NINJA_GRADS)
    assert all("approximate: True" in line for line in lines), "\n".join(lines)
    assert ("against torch autograd" if HAVE_TORCH else "against central differences") in r.stdout


def test_ninja_cells_check_every_gradient(names):
    """Run the app in-process and read what its cells defined."""
    defs, _ = notebook_defs(NINJA, names)
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


def test_ninja_runs_without_torch(names):
    """With torch hidden (a `torch` package earlier on the path whose import fails), the notebook
    still runs and checks every gradient against finite differences instead."""
    r = run_notebook(NINJA, {"NPMLP_DATA": str(names)}, hide_torch=True)
    assert "against central differences of the NumPy forward (torch is not installed)" in r.stdout
    assert "torch autograd" not in r.stdout and "torch.nn.functional" not in r.stdout
    lines = cmp_lines(r.stdout)
    assert len(lines) == 26 + 2 + 3                  # exercise 1, 2 (chain and fd), 3; no torch-only lines
    assert all("approximate: True" in line for line in lines), "\n".join(lines)
