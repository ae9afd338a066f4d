"""A learning rate that blows up: `npmlp train` stops at the step whose loss is NaN/inf, names it and
the last finite loss, saves exactly the parameters of the last good step, and exits 1.
A loss that stays finite but explodes (`--lr 1e6`: a 1,000-step mean above 10x the first loss)
stops the same way, naming the steps and the mean; so do parameters or running statistics that
overflow while the loss stays finite (a BatchNorm on batches of two rows), at the step that made
them NaN/inf. No NaN or inf ever reaches a saved file."""
from __future__ import annotations

import math
import re
import shutil

import numpy as np
import pytest
from helpers import TINY_RUN, assert_user_error, make_names, run_cli, temp_files

import npmlp.fast
from npmlp.app import lrfind
from npmlp.app import rundir as runs
from npmlp.app.checkpoint import load_checkpoint
from npmlp.app.files import LOCK
from npmlp.deep import Deep
from npmlp.mlp import MLP
from npmlp.train import EXPLODE, WINDOW, TrainConfig, batch_rows, nonfinite

MESSAGE = re.compile(r"training diverged: the loss became NaN/inf at step ([\d,]+) \(last finite loss (\S+) "
                     r"at step ([\d,]+)\); saved the parameters that gave it in (\S+) \(for eval/plot\); train again "
                     r"with a lower (--lr\S*) \(was (\S+)\) and a new --out")


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "names.txt"
    p.write_text("\n".join(make_names(300)) + "\n")
    return p


def train_steps(model, meta, data, lossi, start, stop):
    """Steps start..stop-1 of the run, by the engine it recorded (npmlp.fast.steps, as `npmlp train`)."""
    cfg = TrainConfig(**meta["train"])
    with npmlp.fast.steps(meta["run"]["engine"], model, cfg.batch_size) as steps:
        _, step = steps(*data.train, cfg, lossi, start, stop, None)
    assert step == stop
    return lossi


def replay(meta, stop):
    """Train the same model in-process, from its seed, for `stop` steps -> (model, lossi, data)."""
    cfg, run = TrainConfig(**meta["train"]), meta["run"]
    data = runs.splits(run["data"], run["split_seed"], meta["sizes"]["block_size"])
    model = MLP.init(len(meta["itos"]), **meta["sizes"], seed=cfg.seed, dtype=np.dtype(meta["dtype"]),
                     scheme=run["init"])
    lossi = train_steps(model, meta, data, np.zeros(cfg.steps, np.float32), 0, stop)
    return model, lossi, data


def same_params(a, b) -> bool:
    return a.params.keys() == b.params.keys() and all(np.array_equal(a.params[k], b.params[k]) for k in a.params)


def no_nan_anywhere(run):
    with np.load(run / "model.npz") as z:
        for k in z.files:
            if z[k].dtype.kind == "f":
                assert np.isfinite(z[k]).all(), f"{k} holds NaN/inf"


def diverge(run, names, *opts):
    r = run_cli("train", "--data", names, "--steps", 3000, "--out", run, *TINY_RUN, *opts)
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

    model, _, meta, lossi = load_checkpoint(run / "model.npz")
    assert meta["step"] == bad - 1 and not meta["complete"] and len(lossi) == bad - 1
    ref, ref_lossi, data = replay(meta, bad - 1)
    assert same_params(model, ref), "saved params are not those of the last good step"
    assert np.array_equal(lossi, ref_lossi[:bad - 1])
    # the "last finite loss" of the message is the loss these parameters give at the next step
    lossi_next = train_steps(ref, meta, data, ref_lossi, bad - 1, bad)
    assert np.isfinite(lossi_next[bad - 1]) and float(f"{lossi_next[bad - 1]:.4g}") == last_loss

    # resuming it is deterministic: the same divergence, the same message, the same checkpoint
    r = run_cli("train", "--resume", run, "--quiet")
    assert_user_error(r, 1, f"at step {bad:,}", f"last finite loss {last_loss:.4g} at step {bad - 1:,}")
    again, _, meta2, _ = load_checkpoint(run / "model.npz")
    assert same_params(again, model) and meta2["step"] == bad - 1
    no_nan_anywhere(run)


@pytest.mark.parametrize("dtype, lr", [("float32", "1e38"), ("float32", "1e300"), ("float64", "1e300")])
def test_divergence_at_the_first_update_saves_the_initial_params(tmp_path, names, dtype, lr):
    """float64 with lr 1e300 has a finite float64 loss too big for the float32 loss history: that counts
    as divergence too, so no inf is ever written."""
    run = tmp_path / "run"
    bad, _, m = diverge(run, names, "--lr", lr, "--dtype", dtype)
    assert bad == 1 and m.group(5) == "--lr"
    model, _, meta, lossi = load_checkpoint(run / "model.npz")
    assert meta["step"] == 0 and len(lossi) == 0 and model.dtype == np.dtype(dtype)
    init, _, _ = replay(meta, 0)
    assert same_params(model, init)


# ----------------------------------------------------------------------------- a finite loss that explodes

EXPLODED = re.compile(r"training diverged: the mean loss of steps ([\d,]+)-([\d,]+) is (\S+), more than "
                      r"(\d+)x the first step's loss or ln\(vocab\) \((\S+)\); saved the model after "
                      r"([\d,]+) steps in (\S+) \(for eval/plot\); train again with a lower (--lr\S*) \(was (\S+)\) "
                      r"and a new --out")


@pytest.fixture(scope="module")
def exploded(names, tmp_path_factory):
    """(run, error line, match) of `npmlp train --lr 1e6`: every loss finite, their mean huge."""
    run = tmp_path_factory.mktemp("explode") / "run"
    r = run_cli("train", "--data", names, "--steps", 2000, "--lr", "1e6", "--out", run, *TINY_RUN)
    line = assert_user_error(r, 1, "training diverged", "--lr")
    m = EXPLODED.search(line)
    assert m, line
    return run, line, m


def test_a_finite_loss_that_explodes_stops_the_run(exploded):
    """--lr 1e6: the mean loss of the first 1,000 steps is far above 10x the first step's loss; the run
    stops at the window's last step (exit 1), names the steps and the mean, advises a lower --lr, and
    saves the model it had (finite, loadable) with the losses so far; no metrics.json."""
    run, _, m = exploded
    first, last, mean, times, base = (int(m.group(1).replace(",", "")), int(m.group(2).replace(",", "")),
                                      float(m.group(3)), int(m.group(4)), float(m.group(5)))
    assert (first, last) == (0, WINDOW - 1) and times == EXPLODE
    assert m.group(7) == str(run / "model.npz") and m.group(8) == "--lr" and m.group(9) == "1e+06"
    model, vocab, meta, lossi = load_checkpoint(run / "model.npz")
    saved = int(m.group(6).replace(",", ""))
    assert saved == last and meta["step"] == saved and not meta["complete"] and len(lossi) == saved
    assert np.isfinite(lossi).all(), "the loss never became NaN/inf: this is the finite-explosion path"
    # the message's numbers: base = max(first step's loss, ln V), and the mean of the losses of steps
    # 0..999, the last of them (not kept: its update was never applied) that of the saved model
    assert float(f"{max(float(lossi[0]), math.log(vocab.size)):.4g}") == base
    cfg, data = TrainConfig(**meta["train"]), runs.splits(meta["run"]["data"], meta["run"]["split_seed"], 3)
    X, Y = data.train
    ix = batch_rows(cfg, last, len(X))
    want = (float(np.sum(lossi, dtype=np.float64)) + float(model.loss(X[ix], Y[ix]))) / WINDOW
    assert mean > EXPLODE * base and abs(want - mean) <= 5e-4 * want, (want, mean)   # mean printed .4g
    assert not (run / "metrics.json").exists() and temp_files(run) == [] and not (run / LOCK).exists()
    no_nan_anywhere(run)
    # the model saved is the one those steps trained
    ref, ref_lossi, _ = replay(meta, saved)
    assert same_params(model, ref) and np.array_equal(lossi, ref_lossi[:saved])


@pytest.mark.parametrize("command", [["eval"], ["sample", "-n", "3"], ["plot", "--quiet"]])
def test_an_exploded_run_can_be_evaluated_and_drawn(exploded, tmp_path, command):
    run, _, _ = exploded
    out = ["--out", tmp_path] if command[0] == "plot" else []
    r = run_cli(*command, run, *out)
    assert r.returncode == 0 and r.stdout, r.stderr
    assert "Traceback" not in r.stderr


def test_resuming_an_exploded_run_stops_again_the_same_way(exploded, tmp_path):
    run, line, _ = exploded
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = load_checkpoint(copy / "model.npz")
    r = run_cli("train", "--resume", copy, "--quiet")
    assert assert_user_error(r, 1, "training diverged") == line.replace(str(run), str(copy))
    after = load_checkpoint(copy / "model.npz")
    assert same_params(after[0], before[0]) and after[2]["step"] == before[2]["step"]
    assert np.array_equal(after[3], before[3])


# ----------------------------------------------------------------------------- statistics that overflow

OVERFLOWED = re.compile(r"training diverged: the running statistic (running_var\d+) became NaN/inf at step ([\d,]+), "
                        r"though the loss stayed finite \((\S+)\); saved the model after ([\d,]+) steps in (\S+) "
                        r"\(for eval/plot\); train again with a lower --lr \(was 0\.1\) or a larger --batch-size "
                        r"\(was (\d+): BatchNorm's statistics of so few rows are noisy\) and a new --out")


@pytest.fixture(scope="module")
def one_letter(tmp_path_factory):
    """100 one-letter names: a deep BatchNorm stack at batch 4 sees rows so alike that the inputs of
    its first BatchNorm grow until their running variance overflows float32, while the loss stays
    near 2.3 (training normalises with the batch's own statistics)."""
    rng = np.random.default_rng(0)
    p = tmp_path_factory.mktemp("one") / "names.txt"
    p.write_text("\n".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 100)) + "\n")
    return p


@pytest.mark.parametrize("data, batch, engine", [("one letter", 4, "fast"), ("one letter", 4, "reference"),
                                                 ("names", 2, "fast")],
                         ids=["the loss stays finite", "the reference engine, no warning", "then the loss is NaN"])
def test_statistics_that_overflow_stop_the_run_where_it_happens(tmp_path, names, one_letter, data, batch, engine):
    """`--model deep --batch-size 2` (or 4 on low-variety names): a running variance overflows to inf
    while the loss stays finite, so the loss alone never stops the run (on the generated names it
    turns NaN a few steps later). The run stops at the step whose forward or update overflowed, keeps
    the model before it (finite, loadable) and says what overflowed; no NumPy warning reaches
    stderr (assert_user_error allows nothing but npmlp: lines). It used to train on, refuse to
    save the NaN/inf model at the end, and remove the whole run directory."""
    run, source = tmp_path / "run", one_letter if data == "one letter" else names
    r = run_cli("train", "--model", "deep", "--batch-size", batch, "--steps", 300, "--data", source,
                "--engine", engine, "--out", run, "--quiet", "--no-plots")
    line = assert_user_error(r, 1, "training diverged")
    m = OVERFLOWED.search(line)
    assert m, line
    step = int(m.group(2).replace(",", ""))
    assert int(m.group(4).replace(",", "")) == step and m.group(5) == str(run / "model.npz")
    assert m.group(6) == str(batch)
    no_nan_anywhere(run)
    model, _, meta, lossi = load_checkpoint(run / "model.npz")
    assert meta["step"] == step and len(lossi) == step and np.isfinite(lossi).all()
    assert not (run / "metrics.json").exists() and temp_files(run) == []
    # where it happens: the model saved is finite, and its next step (the one named) overflows
    cfg = TrainConfig(**meta["train"])
    rows = runs.splits(meta["run"]["data"], meta["run"]["split_seed"], 3)
    full = np.zeros(cfg.steps, np.float32)
    with npmlp.fast.steps(engine, model, cfg.batch_size) as steps, np.errstate(all="ignore"):
        steps(*rows.train, cfg, full, step, step + 1, None)
    assert np.isfinite(full[step]) and float(f"{full[step]:.4g}") == float(m.group(3)), "the loss stayed finite"
    assert nonfinite(model) == f"running statistic {m.group(1)}"
    # the run is kept: resuming it stops again the same way, at the same step
    r = run_cli("train", "--resume", run, "--quiet", "--no-plots")
    assert assert_user_error(r, 1, "training diverged") == line


def test_lr_find_stops_its_sweep_where_the_statistics_overflow(one_letter):
    """lr-find's sweep stops at the rate whose step leaves the model's running statistics NaN/inf,
    not at a NaN loss that comes (if it comes) only later: the rates after it sweep a ruined model."""
    rows = runs.splits(one_letter, 42, 3)
    lre = np.linspace(-3, 0, 300)

    def sweep(rates):
        model = Deep.init(rows.vocab.size)
        with npmlp.fast.steps("reference", model, 4) as steps, np.errstate(all="ignore"):
            losses = lrfind.sweep(steps, *rows.train, rates, TrainConfig(steps=len(rates), batch_size=4), model=model)
        return model, losses

    model, losses = sweep(lre)
    ran = int(np.isfinite(losses).sum())
    assert 2 <= ran < len(lre) and np.isfinite(losses[:ran]).all() and np.isnan(losses[ran:]).all()
    assert nonfinite(model) is not None, "the sweep stopped before the model was ruined"
    model, losses = sweep(lre[:ran])
    assert nonfinite(model) is None and np.isfinite(losses).all(), "the sweep went on with a ruined model"
