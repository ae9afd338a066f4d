"""The run directory's lifecycle, through real `npmlp` processes and real files:

- the lock: while one `npmlp train` writes RUN/, a second one into it is refused (exit 2, naming
  the pid that holds it); a run killed with SIGKILL leaves RUN/.npmlp.lock behind, which the next
  run reports as a note and takes over; a run that ends removes it;
- Ctrl-C after the last step: during the figures (model and metrics are kept: `npmlp plot` draws
  them) or during evaluation (`npmlp train --resume` evaluates); a finished run is not resumed;
- `--split-seed none`: the file's own order, recorded, and honoured by `npmlp eval` and --resume.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import TINY_RUN, StopAfter, assert_user_error, make_names, notes, run_cli, snapshot

import npmlp.fast
from npmlp.app import cli
from npmlp.app import rundir as runs
from npmlp.app.checkpoint import load_checkpoint
from npmlp.app.files import LOCK
from npmlp.data import Vocab, build_dataset, split_words
from npmlp.loading import load_words
from npmlp.mlp import MLP
from npmlp.train import TrainConfig, evaluate

LOUD = ("--n-hidden", "8", "--n-embd", "2", "--no-plots")   # TINY_RUN without --quiet: notes are printed


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "names.txt"
    p.write_text("\n".join(make_names(300)) + "\n")
    return p


def same_params(a, b) -> bool:
    return a.params.keys() == b.params.keys() and all(np.array_equal(a.params[k], b.params[k]) for k in a.params)


# ----------------------------------------------------------------------------- the lock

def hold(p, run) -> None:
    """Wait until `p` holds the lock of `run` (its pid is in the lock file), then freeze it with SIGSTOP:
    it keeps the lock without training on, however long the checks take."""
    deadline = time.monotonic() + 120
    lock = run / LOCK
    while not (lock.exists() and str(p.pid) in lock.read_text(errors="replace")):
        assert p.poll() is None, f"npmlp ended (exit {p.returncode}) before it held {lock}:\n{stderr_of(p)}"
        assert time.monotonic() < deadline, f"no lock file with pid {p.pid} within 120 s"
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGSTOP)


def kill(p) -> None:
    """SIGKILL: the process has no chance to clean up (its kernel lock is released, its file is not)."""
    if p.poll() is None:
        p.kill()
    p.wait(timeout=60)


def stderr_of(p) -> str:
    p.err_file.seek(0)
    return p.err_file.read()


@pytest.fixture
def start(tmp_path):
    """start(*ARGS): `npmlp ARGS` in the background, its stderr to a file (a pipe nobody reads could
    fill up); every process started is killed at the end, whatever happens."""
    env = {k: v for k, v in os.environ.items() if k != "NPMLP_DATA"}
    started: list[subprocess.Popen] = []
    with contextlib.ExitStack() as files:
        def start_(*args) -> subprocess.Popen:
            err = files.enter_context(open(tmp_path / f"stderr-{len(started)}.txt", "w+"))
            p = subprocess.Popen([sys.executable, "-m", "npmlp", *map(str, args)], stdout=subprocess.DEVNULL,
                                 stderr=err, env=env)
            p.err_file = err
            started.append(p)
            return p
        yield start_
        for p in started:
            kill(p)


def test_a_second_train_into_a_running_directory_is_refused(tmp_path, names, start):
    """While `npmlp train` runs into RUN/, a second `npmlp train --out RUN` and a `--resume RUN` exit 2
    with one line naming the pid that holds it, and write nothing; SIGKILL leaves the lock file behind."""
    run = tmp_path / "run"
    holder = start("train", "--data", names, "--steps", 10**6, "--out", run, *TINY_RUN)
    hold(holder, run)
    before = snapshot(run)
    assert before.keys() == {LOCK}
    for args in (["--data", names, "--steps", 10, "--out", run, *TINY_RUN], ["--resume", run, "--quiet"]):
        r = run_cli("train", *args)
        assert_user_error(r, 2, f"{run} is in use", f"(pid {holder.pid})")
        assert snapshot(run) == before
    kill(holder)
    assert holder.returncode == -signal.SIGKILL
    assert (run / LOCK).read_text() == f"{holder.pid}\n" and not (run / "model.npz").exists()


def test_a_killed_run_leaves_a_lock_file_that_resume_notes(tmp_path, names, start, monkeypatch):
    """A resumed run killed with SIGKILL leaves RUN/.npmlp.lock; `npmlp train --resume RUN` then works,
    says in a note that the pid in it was killed, trains to the end, and removes the lock file."""
    run = tmp_path / "run"
    monkeypatch.setattr(cli, "StopFlag", lambda: StopAfter(50))
    assert cli.main(["train", "--data", str(names), "--steps", "20000", "--out", str(run), *TINY_RUN]) == 130
    monkeypatch.undo()
    assert not (run / LOCK).exists()
    holder = start("train", "--resume", run, "--quiet")
    hold(holder, run)
    kill(holder)
    assert (run / LOCK).read_text() == f"{holder.pid}\n"

    r = run_cli("train", "--resume", run, *LOUD)
    assert r.returncode == 0, r.stderr
    stale = [n for n in notes(r) if f"still marked as in use by pid {holder.pid}" in n]
    assert len(stale) == 1 and "killed" in stale[0], r.stderr
    _, _, meta, lossi = load_checkpoint(run / "model.npz")
    assert meta["complete"] and len(lossi) == 20000 and (run / "metrics.json").is_file()
    assert not (run / LOCK).exists(), "a run that ends must remove its lock file"


def test_the_lock_names_the_run_that_took_over_a_stale_one(tmp_path, names, start):
    """A run that takes over a lock file left by a killed run writes its own pid in place of the old
    one: a third `npmlp train` is told exactly that pid, and the file holds just it."""
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text("4194000\n")      # what a killed run leaves (its flock is gone with it)
    holder = start("train", "--data", names, "--steps", 10**6, "--out", run, *LOUD)
    hold(holder, run)
    r = run_cli("train", "--resume", run, "--quiet")
    line = assert_user_error(r, 2, f"{run} is in use")
    assert f"(pid {holder.pid})" in line, line
    assert (run / LOCK).read_bytes() == f"{holder.pid}\n".encode(), (run / LOCK).read_bytes()


# ----------------------------------------------------------------------------- Ctrl-C after the last step

def interrupt_in(monkeypatch, target: str):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt            # what SIGINT raises outside the training loop
    monkeypatch.setattr(target, ctrl_c)


def check_trained(run, steps):
    """All steps done and saved: a complete checkpoint with every loss, and no lock left."""
    model, _, meta, lossi = load_checkpoint(run / "model.npz")
    assert meta["step"] == steps and meta["complete"] and len(lossi) == steps and np.isfinite(lossi).all()
    assert not (run / LOCK).exists()
    return model, lossi


def test_ctrl_c_while_drawing_keeps_model_and_metrics(tmp_path, names, monkeypatch, capsys):
    """Ctrl-C during the figures: exit 130, model.npz and metrics.json complete, and a message pointing
    at `npmlp plot RUN`, which then draws them; `--resume RUN` says the run is finished (exit 2)."""
    run = tmp_path / "run"
    interrupt_in(monkeypatch, "npmlp.app.plots.write_run_figures")
    code = cli.main(["train", "--data", str(names), "--steps", "300", "--out", str(run), *TINY_RUN])
    err = capsys.readouterr().err
    assert code == 130, err
    where = shlex.quote(str(run))
    assert err.splitlines() == [(f"npmlp: interrupted: training finished and saved in {run / 'model.npz'}; "
                                 f"figures not written: run `npmlp plot {where}`")]
    check_trained(run, 300)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 300 and len(metrics["samples"]) == 20 and metrics["parts"] == 1
    assert all(np.isfinite(metrics[f"{k}_loss"]) for k in ("train", "dev", "test"))
    assert not (run / "loss.png").exists()
    monkeypatch.undo()

    r = run_cli(*shlex.split(f"plot {where}"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert (run / "loss.png").is_file() and (run / "embedding.png").is_file()
    before = snapshot(run)
    r = run_cli("train", "--resume", run, "--quiet")
    assert_user_error(r, 2, "finished all 300 steps already", f"npmlp eval {where}", f"npmlp plot {where}")
    assert snapshot(run) == before


def test_ctrl_c_while_evaluating_is_finished_by_resume(tmp_path, names, monkeypatch, capsys):
    """Ctrl-C during the evaluation: exit 130, model.npz complete, no metrics.json, and a message
    pointing at `npmlp train --resume RUN`, which then evaluates (no step again) and writes metrics.json."""
    run = tmp_path / "run"
    interrupt_in(monkeypatch, "npmlp.fast.evaluate")        # what a run evaluates its splits with
    code = cli.main(["train", "--data", str(names), "--steps", "300", "--out", str(run), *TINY_RUN])
    err = capsys.readouterr().err
    assert code == 130, err
    where = shlex.quote(str(run))
    assert err.splitlines() == [(f"npmlp: interrupted: training finished and saved in {run / 'model.npz'}; "
                                 f"evaluation not finished: run `npmlp train --resume {where}` to evaluate "
                                 f"and draw the figures")]
    model, lossi = check_trained(run, 300)
    assert not (run / "metrics.json").exists()
    monkeypatch.undo()

    r = run_cli(*shlex.split(f"train --resume {where}"), "--quiet")
    assert r.returncode == 0, r.stderr
    again, lossi_again = check_trained(run, 300)
    assert same_params(again, model) and np.array_equal(lossi_again, lossi), "no step may run again"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 300 and len(metrics["samples"]) == 20
    assert all(np.isfinite(metrics[f"{k}_loss"]) for k in ("train", "dev", "test"))
    assert (run / "loss.png").is_file()


# ----------------------------------------------------------------------------- --split-seed none

def file_order_splits(path):
    """(vocab, train, dev, test): the file's names in their order, cut 80/10/10, as rows."""
    words = load_words(path)
    vocab = Vocab.from_words(words)
    n1, n2 = int(0.8 * len(words)), int(0.9 * len(words))
    assert split_words(words, None) == (words[:n1], words[n1:n2], words[n2:])
    return vocab, *(build_dataset(w, vocab, 3) for w in (words[:n1], words[n1:n2], words[n2:]))


def test_split_seed_none_trains_on_the_file_order(tmp_path, names):
    """--split-seed none: the run trains on the first 80% of the file's names, in order (bit-identical
    to an in-process run on those rows), records null, and `npmlp eval` scores the file-order splits."""
    run = tmp_path / "run"
    r = run_cli("train", "--data", names, "--steps", 500, "--split-seed", "none", "--out", run, *TINY_RUN)
    assert r.returncode == 0, r.stderr
    model, _, meta, lossi = load_checkpoint(run / "model.npz")
    assert meta["run"]["split_seed"] is None
    assert json.loads((run / "metrics.json").read_text())["config"]["split_seed"] is None

    vocab, train, dev, test = file_order_splits(names)
    splits = runs.splits(names, None, 3)
    for mine, want in zip((splits.train, splits.dev, splits.test), (train, dev, test), strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(mine, want, strict=True))
    cfg = TrainConfig(**meta["train"])
    again = MLP.init(vocab.size, 3, 2, 8, seed=cfg.seed)
    again_lossi = np.zeros(cfg.steps, np.float32)
    with npmlp.fast.steps(meta["run"]["engine"], again, cfg.batch_size) as steps:
        steps(*train, cfg, again_lossi, 0, cfg.steps, None)
    assert same_params(again, model) and np.array_equal(again_lossi, lossi)

    r = run_cli("eval", run)
    assert r.returncode == 0, r.stderr
    want = "   ".join(f"{k} loss {evaluate(model, *xy):.4f}" for k, xy in zip(("train", "dev", "test"),
                                                                          (train, dev, test), strict=True))
    shuffled = runs.splits(names, 42, 3)
    other = "   ".join(f"{k} loss {evaluate(model, *xy):.4f}" for k, xy in shuffled.items())
    assert r.stdout.strip() == want and want != other


def test_split_seed_none_is_kept_by_resume(tmp_path, names, monkeypatch):
    """A --split-seed none run stopped and resumed ends bit-identical to one never stopped; typing
    another --split-seed on the resume is refused."""
    common = ["train", "--data", str(names), "--steps", "500", "--split-seed", "none", *TINY_RUN, "--no-plots"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli.main([*common, "--out", str(whole)]) == 0
    monkeypatch.setattr(cli, "StopFlag", lambda: StopAfter(200))
    assert cli.main([*common, "--out", str(parts)]) == 130
    assert load_checkpoint(parts / "model.npz")[2]["run"]["split_seed"] is None

    before = snapshot(parts)
    r = run_cli("train", "--resume", parts, "--split-seed", "42", "--quiet")
    assert_user_error(r, 2, "--split-seed 42 differs from the run's", "drop --split-seed")
    assert snapshot(parts) == before
    r = run_cli("train", "--resume", parts, "--split-seed", "none", "--quiet", "--no-plots")
    assert r.returncode == 0, r.stderr
    with np.load(whole / "model.npz") as a, np.load(parts / "model.npz") as b:
        for k in ("C", "W1", "b1", "W2", "b2", "lossi"):
            assert np.array_equal(a[k], b[k]), k
    m_whole, m_parts = (json.loads((d / "metrics.json").read_text()) for d in (whole, parts))
    assert m_parts["config"]["split_seed"] is None and m_parts["parts"] == 2
    for k in ("train_loss", "dev_loss", "test_loss", "samples"):
        assert m_whole[k] == m_parts[k], k


def test_a_full_disk_while_drawing_keeps_the_trained_run(tmp_path, names, monkeypatch, capsys):
    """Training finished and saved; then the figures cannot be written (simulated: plots.atomic_open
    raises ENOSPC): one line naming the file, exit 1, and the way to draw them later."""
    import contextlib
    import errno

    from helpers import run_main

    from npmlp.app import plots

    @contextlib.contextmanager
    def full(path, mode="wb"):
        raise OSError(errno.ENOSPC, "No space left on device")
        yield
    monkeypatch.setattr(plots, "atomic_open", full)
    out = tmp_path / "run"
    code, _out, err = run_main(capsys, "train", "--data", names, "--steps", "30", "--out", out, *TINY_RUN)
    assert code == 1, err
    assert err.startswith(f"npmlp: error: cannot write {out / 'loss.png'}: No space left on device") and \
        err.count("\n") == 1, err
    assert f"training finished and saved in {out / 'model.npz'}" in err and f"npmlp plot {out} --out DIR" in err
    _, _, meta, _ = load_checkpoint(out / "model.npz")
    assert meta["complete"] and json.loads((out / "metrics.json").read_text())["steps"] == 30
    monkeypatch.undo()
    code, _out, err = run_main(capsys, "plot", out, "--quiet")
    assert code == 0 and (out / "loss.png").is_file(), err
