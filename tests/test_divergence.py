"""A learning rate that blows up: `npmlp train` stops at the step whose loss is NaN/inf, names it and
the last finite loss, saves exactly the parameters of the last good step, and exits 1.
No NaN or inf ever reaches a saved file."""
from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import make_names, run_cli
from errcheck import TINY, assert_user_error, temp_files

from npmlp.checkpoint import load_checkpoint
from npmlp.cli import Splits
from npmlp.model import MLP
from npmlp.train import TrainConfig, sgd

MESSAGE = re.compile(r"training diverged: the loss became NaN/inf at step ([\d,]+) \(last finite loss (\S+) "
                     r"at step ([\d,]+)\); saved the parameters that gave it in (\S+) \(for eval/plot\); train again "
                     r"with a lower (--lr\S*) \(was (\S+)\) and a new --out")


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "names.txt"
    p.write_text("\n".join(make_names(300)) + "\n")
    return p


def replay(meta, stop):
    """Train the same model in-process, from its seed, for `stop` steps -> (model, lossi)."""
    cfg, run = TrainConfig(**meta["train"]), meta["run"]
    data = Splits(run["data"], run["split_seed"], meta["block_size"])
    model = MLP.init(len(meta["itos"]), meta["block_size"], meta["n_embd"], meta["n_hidden"], seed=cfg.seed,
                     dtype=np.dtype(meta["dtype"]), scheme=run["init"])
    lossi, step = sgd(model, *data.train, cfg, stop=stop)
    assert step == stop
    return model, lossi, data


def no_nan_anywhere(run):
    with np.load(run / "model.npz") as z:
        for k in z.files:
            if z[k].dtype.kind == "f":
                assert np.isfinite(z[k]).all(), f"{k} holds NaN/inf"


def diverge(run, names, *opts):
    r = run_cli("train", "--data", names, "--steps", 3000, "--out", run, *TINY, *opts)
    line = assert_user_error(r, 1, "training diverged")
    m = MESSAGE.search(line)
    assert m, line
    bad, last_loss, good = (int(m.group(i).replace(",", "")) if i != 2 else float(m.group(i)) for i in (1, 2, 3))
    assert good == bad - 1 and m.group(4) == str(run / "model.npz")
    assert not (run / "metrics.json").exists() and temp_files(run) == []
    no_nan_anywhere(run)
    return bad, last_loss, m


def test_divergence_after_the_decay_keeps_the_last_good_step(tmp_path, names):
    """--lr-decayed 1e38 (float32) explodes right after the rate switches at step 1,500: the snapshot
    taken at step 1,000 is replayed up to the last good step, which must match a clean replay bit-for-bit."""
    run = tmp_path / "run"
    bad, last_loss, m = diverge(run, names, "--lr", "0.1", "--lr-decayed", "1e38")
    assert m.group(5) == "--lr-decayed" and m.group(6) == "1e+38"
    assert bad == 1501, "the first update with lr 1e38 is step 1,500; the loss after it is NaN/inf"

    model, vocab, meta, lossi = load_checkpoint(run / "model.npz")
    assert meta["step"] == bad - 1 and not meta["complete"] and len(lossi) == bad - 1
    ref, ref_lossi, data = replay(meta, bad - 1)
    assert np.array_equal(model.flat, ref.flat), "saved params are not those of the last good step"
    assert np.array_equal(lossi, ref_lossi[:bad - 1])
    # the "last finite loss" of the message is the loss these parameters give at the next step
    cfg = TrainConfig(**meta["train"])
    lossi_next, _ = sgd(ref, *data.train, cfg, ref_lossi, start=bad - 1, stop=bad)
    assert np.isfinite(lossi_next[bad - 1]) and float(f"{lossi_next[bad - 1]:.4g}") == last_loss

    # resuming it is deterministic: the same divergence, the same message, the same checkpoint
    before = model.flat.copy()
    r = run_cli("train", "--resume", run, "--quiet")
    assert_user_error(r, 1, f"at step {bad:,}", f"last finite loss {last_loss:.4g} at step {bad - 1:,}")
    again, _, meta2, _ = load_checkpoint(run / "model.npz")
    assert np.array_equal(again.flat, before) and meta2["step"] == bad - 1
    no_nan_anywhere(run)


@pytest.mark.parametrize("dtype, lr", [("float32", "1e38"), ("float32", "1e300"), ("float64", "1e300")])
def test_divergence_at_the_first_update_saves_the_initial_params(tmp_path, names, dtype, lr):
    """float64 with lr 1e300 has a finite float64 loss too big for the float32 loss history: that counts
    as divergence too, so no inf is ever written."""
    run = tmp_path / "run"
    bad, last_loss, m = diverge(run, names, "--lr", lr, "--dtype", dtype)
    assert bad == 1 and m.group(5) == "--lr"
    model, _, meta, lossi = load_checkpoint(run / "model.npz")
    assert meta["step"] == 0 and len(lossi) == 0 and model.dtype == np.dtype(dtype)
    init, _, _ = replay(meta, 0)
    assert np.array_equal(model.flat, init.flat)
