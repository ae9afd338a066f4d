"""Ctrl-C / SIGTERM during a real `npmlp train` subprocess, then `npmlp train --resume`: the result
must be bit-identical to a run that was never interrupted. Also: a finished run is never overwritten,
--resume refuses other options or other data, and two runs with the same seed are bit-identical."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import make_names, run_cli
from errcheck import StopAfter, assert_user_error, snapshot, temp_files

from npmlp import cli
from npmlp.checkpoint import load_checkpoint

STEPS = 100_000  # ~25k steps/s here: the signal lands ~0.3 s in (first progress update), far before the end
MODEL = ("--n-hidden", "8", "--n-embd", "2", "--batch-size", "32", "--lr", "0.2")
ARRAYS = ("C", "W1", "b1", "W2", "b2", "lossi")


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "names.txt"
    p.write_text("\n".join(make_names(300)) + "\n")
    return p


@pytest.fixture(scope="module")
def reference(names, tmp_path_factory):
    """The run that is never interrupted."""
    out = tmp_path_factory.mktemp("ref") / "run"
    r = run_cli("train", "--data", names, "--steps", STEPS, *MODEL, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def arrays(run):
    with np.load(run / "model.npz") as z:
        return {k: z[k] for k in ARRAYS}


def assert_bit_identical(run, ref):
    a, b = arrays(run), arrays(ref)
    for k in ARRAYS:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k]), f"{k}: max abs diff {np.abs(a[k] - b[k]).max()}"


PROGRESS = re.compile(r"\|\s*(\d+)/(\d+) \[")


def interrupt(args, signum, after_step: int):
    """Start `npmlp ARGS` (with its progress bar on), wait until the bar passes `after_step`, send
    `signum`, and return (exit code, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "NPMLP_DATA"}
    p = subprocess.Popen([sys.executable, "-m", "npmlp", *map(str, args)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=env)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: p.stderr.read1(4096), b"")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while True:
        done = [int(m.group(1)) for m in PROGRESS.finditer(b"".join(chunks).decode(errors="replace"))]
        if done and done[-1] > after_step:
            break
        assert p.poll() is None, f"npmlp ended before it could be interrupted:\n{b''.join(chunks).decode()}"
        assert time.monotonic() < deadline, "no training progress within 120 s"
        time.sleep(0.02)
    p.send_signal(signum)
    code = p.wait(timeout=120)
    reader.join(timeout=10)
    return code, b"".join(chunks).decode()


def check_interrupted(run, code, err, signum, ref):
    """The interrupt path: exit 128+signum, a resume command, and a checkpoint of an exact earlier step."""
    assert code == 128 + signum, err
    assert "Traceback" not in err and "npmlp: error" not in err, err
    name = signal.Signals(signum).name
    m = re.search(rf"npmlp: {name}: stopped after step ([\d,]+) of {STEPS:,}; saved (.+)\n", err)
    assert m, err
    step = int(m.group(1).replace(",", ""))
    assert m.group(2) == str(run / "model.npz")
    resume_cmd = re.search(r"npmlp: resume with: (.+)\n", err).group(1)
    assert shlex.split(resume_cmd) == ["npmlp", "train", "--resume", str(run)]
    model, _, meta, lossi = load_checkpoint(run / "model.npz")
    assert 0 < step < STEPS and meta["step"] == step and not meta["complete"]
    assert np.array_equal(lossi, arrays(ref)["lossi"][:step]), "the losses so far must match the reference"
    assert temp_files(run) == [] and not (run / "metrics.json").exists()
    return step, shlex.split(resume_cmd)[1:]


def test_sigint_then_resume_is_bit_identical(tmp_path, names, reference):
    run = tmp_path / "run"
    code, err = interrupt(["train", "--data", names, "--steps", STEPS, *MODEL, "--out", run], signal.SIGINT, 0)
    step, resume_args = check_interrupted(run, code, err, signal.SIGINT, reference)

    r = run_cli(*resume_args)                      # exactly the command the message printed
    assert r.returncode == 0, r.stderr
    assert f"resuming {run} at step {step:,} of {STEPS:,}" in r.stderr
    assert_bit_identical(run, reference)
    _, _, meta, _ = load_checkpoint(run / "model.npz")
    assert meta["step"] == STEPS and meta["complete"]
    assert (run / "metrics.json").is_file() and temp_files(run) == []


def test_sigterm_twice_then_resume_from_a_moved_file_is_bit_identical(tmp_path, names, reference):
    data = tmp_path / "names.txt"
    shutil.copy(names, data)
    run = tmp_path / "run"
    code, err = interrupt(["train", "--data", data, "--steps", STEPS, *MODEL, "--out", run], signal.SIGTERM, 0)
    first, _ = check_interrupted(run, code, err, signal.SIGTERM, reference)

    # interrupt the resumed run too: a resume of a resume must still line up
    code, err = interrupt(["train", "--resume", run], signal.SIGINT, first)
    second, _ = check_interrupted(run, code, err, signal.SIGINT, reference)
    assert second > first

    # the names file moved: --data gives its new place; the run's own options may be repeated
    moved = tmp_path / "moved.txt"
    data.rename(moved)
    r = run_cli("train", "--resume", run, "--data", moved, "--n-hidden", 8, "--steps", STEPS, "--quiet")
    assert r.returncode == 0, r.stderr
    assert_bit_identical(run, reference)


# ----------------------------------------------------------------------------- refusals

@pytest.fixture
def stopped(tmp_path, names, monkeypatch):
    """A run stopped at step 50 of 200 by cmd_train's own interrupt path (in-process, exact)."""
    out = tmp_path / "stopped"
    monkeypatch.setattr(cli, "StopFlag", lambda: StopAfter(50))
    assert cli.main(["train", "--data", str(names), "--steps", "200", *MODEL, "--out", str(out), "--quiet"]) == 130
    return out


@pytest.mark.parametrize("opts, needles", [
    (["--n-hidden", "16"], ["--n-hidden 16 differs from the run's 8", "drop --n-hidden"]),
    (["--steps", "500"], ["--steps 500 differs from the run's 200"]),
    (["--lr", "0.5"], ["--lr 0.5 differs from the run's 0.2"]),
    (["--lr", "0.1"], ["--lr 0.1 differs from the run's 0.2"]),          # typed, though the default
    (["--lr=0.1"], ["--lr 0.1 differs from the run's 0.2"]),
    (["--steps", "200000"], ["--steps 200000 differs from the run's 200"]),
    (["--dtype", "float64"], ["--dtype float64 differs from the run's float32"]),
    (["--seed", "7"], ["--seed 7 differs"]),
    (["--split-seed", "1"], ["--split-seed 1 differs from the run's 42"]),
    (["--out", "elsewhere"], ["--out elsewhere differs"]),
])
def test_resume_refuses_other_options(stopped, opts, needles):
    before = snapshot(stopped)
    r = run_cli("train", "--resume", stopped, *opts, "--quiet")
    assert_user_error(r, 2, *needles)
    assert snapshot(stopped) == before


@pytest.fixture
def stopped_own_data(tmp_path, names, monkeypatch):
    """(run, data): like `stopped`, but trained on its own copy of the names, free to move or edit."""
    data = tmp_path / "names.txt"
    shutil.copy(names, data)
    run = tmp_path / "run"
    monkeypatch.setattr(cli, "StopFlag", lambda: StopAfter(50))
    assert cli.main(["train", "--data", str(data), "--steps", "200", *MODEL, "--out", str(run), "--quiet"]) == 130
    return run, data


def test_resume_and_eval_name_a_moved_names_file(tmp_path, stopped_own_data):
    run, data = stopped_own_data
    data.rename(tmp_path / "moved.txt")
    for args in (["train", "--resume", run], ["eval", run]):
        r = run_cli(*args, "--quiet", env={"NPMLP_DATA": str(tmp_path / "moved.txt")})
        assert_user_error(r, 1, f"the run's names file {data} no longer exists", "--data FILE")
    r = run_cli("eval", run, "--data", tmp_path / "moved.txt", "--quiet")
    assert r.returncode == 0 and "dev loss" in r.stdout, r.stderr


def test_resume_refuses_other_data(tmp_path, stopped):
    other = tmp_path / "other.txt"
    other.write_text("\n".join(make_names(300, seed=1)) + "\n")
    before = snapshot(stopped)
    r = run_cli("train", "--resume", stopped, "--data", other, "--quiet")
    assert_user_error(r, 1, str(other), "differ from the ones this run was trained on", "--data FILE")
    assert snapshot(stopped) == before


def test_resume_refuses_a_names_file_edited_in_place(stopped_own_data):
    run, data = stopped_own_data
    data.write_text("\n".join(make_names(300)[:-1]) + "\n")   # one name fewer, same characters
    before = snapshot(run)
    r = run_cli("train", "--resume", run, "--quiet")
    assert_user_error(r, 1, str(data), "differ from the ones this run was trained on")
    assert snapshot(run) == before


def test_finished_run_is_never_overwritten(reference, names):
    before = snapshot(reference)
    r = run_cli("train", "--data", names, "--steps", 10, "--out", reference, "--quiet")
    assert_user_error(r, 2, f"{reference} already holds a run", f"--resume {reference}")
    r = run_cli("train", "--resume", reference, "--quiet")
    assert_user_error(r, 2, f"finished all {STEPS:,} steps already", "nothing to resume")
    assert snapshot(reference) == before


# ----------------------------------------------------------------------------- determinism

def test_same_seed_and_options_are_bit_identical(tmp_path, names):
    common = ("train", "--data", names, "--steps", 3000, *MODEL, "--quiet")
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        r = run_cli(*common, "--seed", seed, "--out", tmp_path / name)
        assert r.returncode == 0, r.stderr
    assert_bit_identical(tmp_path / "a", tmp_path / "b")
    a, c = arrays(tmp_path / "a"), arrays(tmp_path / "c")
    assert not np.array_equal(a["W1"], c["W1"]), "the seed must matter"


def test_resume_after_a_stop_during_evaluation_writes_the_metrics(tmp_path, reference):
    """All steps saved but metrics.json missing (stopped while evaluating): --resume evaluates."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "metrics.json").unlink()
    before = arrays(run)
    r = run_cli("train", "--resume", run, "--quiet", "--no-plots")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(metrics["dev_loss"]) and metrics["steps"] == STEPS
    after = arrays(run)
    assert all(np.array_equal(before[k], after[k]) for k in ARRAYS), "no step may run again"


def test_resume_of_a_run_from_an_older_npmlp_says_it_is_not_bit_identical(stopped, capsys):
    """Runs record train.ARITHMETIC; one written before the key existed (or by another rounding)
    resumes, with a note that it does not continue bit-identically."""
    from npmlp.checkpoint import save_checkpoint
    model, vocab, meta, lossi = load_checkpoint(stopped / "model.npz")
    assert meta["run"]["arithmetic"] == cli.ARITHMETIC
    del meta["run"]["arithmetic"]
    save_checkpoint(stopped / "model.npz", model, vocab, meta, lossi)
    capsys.readouterr()
    # (the fixture's StopFlag still stops after 50 more steps: 130, saved with the new version)
    assert cli.main(["train", "--resume", str(stopped), "--quiet", "--no-plots"]) == 130
    err = capsys.readouterr().err
    assert "trained by an older npmlp" in err and "not bit-identically" in err
    assert load_checkpoint(stopped / "model.npz")[2]["run"]["arithmetic"] == cli.ARITHMETIC
