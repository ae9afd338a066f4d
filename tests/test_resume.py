"""Ctrl-C / SIGTERM during a real `npmlp train` subprocess, then `npmlp train --resume`: the result
must be bit-identical to a run that was never interrupted, with either engine, and metrics.json
counts the training time of every part. The two engines agree to round-off. Also: a finished run
is never overwritten, --resume refuses other options (the engine too) or other data, and two runs
with the same seed are bit-identical."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import signal

import numpy as np
import pytest
from helpers import StopAfter, assert_user_error, check, interrupt, make_names, run_cli, snapshot, temp_files

import npmlp.fast
from npmlp.app import cli
from npmlp.app.checkpoint import load_checkpoint
from npmlp.app.files import LOCK
from npmlp.data import Vocab, build_dataset, split_words
from npmlp.loading import load_words
from npmlp.mlp import MLP
from npmlp.train import TrainConfig

STEPS = 100_000  # ~25k steps/s here: the signal lands ~0.3 s in (first progress update), far before the end
ENGINE_STEPS = 20_000  # float64, the reference engine at ~5k steps/s: the signal lands ~1,000 steps in
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


def check_interrupted(run, code, err, signum, ref, steps=STEPS):
    """The interrupt path: exit 128+signum, a resume command, and a checkpoint of an exact earlier step."""
    assert code == 128 + signum, err
    assert "Traceback" not in err and "npmlp: error" not in err, err
    name = signal.Signals(signum).name
    m = re.search(rf"npmlp: {name}: stopped after step ([\d,]+) of {steps:,}; saved (.+)\n", err)
    assert m, err
    step = int(m.group(1).replace(",", ""))
    assert m.group(2) == str(run / "model.npz")
    resume_cmd = re.search(r"npmlp: resume with: (.+)\n", err).group(1)
    assert shlex.split(resume_cmd) == ["npmlp", "train", "--resume", str(run)]
    _, _, meta, lossi = load_checkpoint(run / "model.npz")
    assert 0 < step < steps and meta["step"] == step and not meta["complete"]
    assert np.array_equal(lossi, arrays(ref)["lossi"][:step]), "the losses so far must match the reference"
    assert temp_files(run) == [] and not (run / "metrics.json").exists()
    assert not (run / LOCK).exists(), "the run directory's lock must be released on a signal"
    return step, shlex.split(resume_cmd)[1:]


def resumed_line(run, engine, step, steps=STEPS):
    """What `npmlp train --resume` says it does (the summary line's end)."""
    return f"{engine} engine; resuming at step {step:,} of {steps:,}; writing {run}/"


def check_seconds(run, first_part: float, parts: int):
    """metrics.json's `seconds` counts the training time of every part (at least the parts before
    the last), `parts` counts them; the checkpoint records the same."""
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["parts"] == parts, metrics
    assert metrics["seconds"] > 0 and metrics["seconds"] >= first_part, (metrics["seconds"], first_part)
    assert "seconds" not in metrics["config"] and "parts" not in metrics["config"]
    _, _, meta, _ = load_checkpoint(run / "model.npz")
    assert meta["run"]["parts"] == parts and meta["run"]["seconds"] == metrics["seconds"]


def test_sigint_then_resume_is_bit_identical(tmp_path, names, reference):
    run = tmp_path / "run"
    code, err = interrupt(["train", "--data", names, "--steps", STEPS, *MODEL, "--out", run], signal.SIGINT, 0)
    step, resume_args = check_interrupted(run, code, err, signal.SIGINT, reference)
    first_part = load_checkpoint(run / "model.npz")[2]["run"]
    assert first_part["parts"] == 1 and first_part["seconds"] > 0 and first_part["engine"] == "fast"

    r = run_cli(*resume_args)                      # exactly the command the message printed
    assert r.returncode == 0, r.stderr
    assert resumed_line(run, "fast", step) in r.stderr
    assert_bit_identical(run, reference)
    _, _, meta, _ = load_checkpoint(run / "model.npz")
    assert meta["step"] == STEPS and meta["complete"]
    assert (run / "metrics.json").is_file() and temp_files(run) == []
    check_seconds(run, first_part["seconds"], parts=2)


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
    two_parts = load_checkpoint(run / "model.npz")[2]["run"]
    assert two_parts["parts"] == 2

    # the names file moved: --data gives its new place; the run's own options may be repeated
    moved = tmp_path / "moved.txt"
    data.rename(moved)
    r = run_cli("train", "--resume", run, "--data", moved, "--n-hidden", 8, "--steps", STEPS, "--quiet")
    assert r.returncode == 0, r.stderr
    assert_bit_identical(run, reference)
    check_seconds(run, two_parts["seconds"], parts=3)


# ----------------------------------------------------------------------------- the two engines

@pytest.fixture(scope="module")
def engine_runs(names, tmp_path_factory):
    """engine -> an uninterrupted float64 run of ENGINE_STEPS steps trained by that engine."""
    runs_ = {}
    for engine in npmlp.fast.ENGINES:
        out = tmp_path_factory.mktemp(engine) / "run"
        r = run_cli("train", "--data", names, "--steps", ENGINE_STEPS, *MODEL, "--dtype", "float64",
                    "--engine", engine, "--out", out, "--quiet", "--no-plots")
        assert r.returncode == 0, r.stderr
        runs_[engine] = out
    return runs_


def test_the_engines_train_the_same_model_to_round_off(engine_runs):
    """`npmlp train --engine reference` and `--engine fast`, float64: the same parameters, losses and
    metrics to 1e-10 relative (the loss history is kept in float32: equal to its rounding); each
    run records the engine that trained it."""
    fast, ref = (arrays(engine_runs[e]) for e in ("fast", "reference"))
    for k in ARRAYS[:-1]:
        assert fast[k].dtype == ref[k].dtype == np.float64, k
        check(f"{k} fast vs reference", fast[k], ref[k], 1e-10)
    a, b = fast["lossi"], ref["lossi"]
    assert a.shape == b.shape == (ENGINE_STEPS,)
    off = np.abs(a.astype(np.float64) - b) > np.spacing(np.abs(b))
    assert not off.any(), f"lossi differs by more than float32 rounding at steps {np.flatnonzero(off)[:5]}"
    mf, mr = (json.loads((engine_runs[e] / "metrics.json").read_text()) for e in ("fast", "reference"))
    for k in ("train_loss", "dev_loss", "test_loss"):
        check(k, mf[k], mr[k], 1e-10)
    for engine, m in (("fast", mf), ("reference", mr)):
        assert m["config"]["engine"] == engine and m["config"]["arithmetic"] == npmlp.fast.ARITHMETIC[engine]
        assert load_checkpoint(engine_runs[engine] / "model.npz")[2]["run"]["engine"] == engine


def test_the_engines_take_the_same_steps_in_float64(names):
    """npmlp.fast.steps, the steps `npmlp train` runs, with a float64 loss history: the per-step losses
    and the parameters of both engines agree to 1e-10 relative over 2,000 steps (two index blocks)."""
    words = load_words(names)
    vocab = Vocab.from_words(words)
    X, Y = build_dataset(split_words(words, 42)[0], vocab, 3)
    cfg = TrainConfig(steps=2000, batch_size=32, lr=0.2, lr_decayed=0.02)
    out = {}
    for engine in npmlp.fast.ENGINES:
        model = MLP.init(vocab.size, 3, 2, 8, dtype=np.float64)
        lossi = np.zeros(cfg.steps, np.float64)
        with npmlp.fast.steps(engine, model, cfg.batch_size) as steps:
            steps(X, Y, cfg, lossi, 0, cfg.steps, None)
        out[engine] = model, lossi
    (fast, fast_lossi), (ref, ref_lossi) = out["fast"], out["reference"]
    check("lossi fast vs reference", fast_lossi, ref_lossi, 1e-10)
    assert ref_lossi[-1] < ref_lossi[0] - 0.5, "the model must have learned something"
    for k in ref.params:
        check(f"{k} fast vs reference", fast.params[k], ref.params[k], 1e-10)


def test_reference_engine_sigint_then_resume_is_bit_identical(tmp_path, names, engine_runs):
    """The reference engine, interrupted by a real SIGINT and resumed without --engine, continues with
    the engine the run recorded and ends bit-identical to its uninterrupted run."""
    run, ref = tmp_path / "run", engine_runs["reference"]
    code, err = interrupt(["train", "--data", names, "--steps", ENGINE_STEPS, *MODEL, "--dtype", "float64",
                           "--engine", "reference", "--out", run, "--no-plots"], signal.SIGINT, 0)
    step, resume_args = check_interrupted(run, code, err, signal.SIGINT, ref, steps=ENGINE_STEPS)
    assert load_checkpoint(run / "model.npz")[2]["run"]["engine"] == "reference"

    r = run_cli(*resume_args, "--no-plots")
    assert r.returncode == 0, r.stderr
    assert resumed_line(run, "reference", step, ENGINE_STEPS) in r.stderr
    assert_bit_identical(run, ref)
    _, _, meta, _ = load_checkpoint(run / "model.npz")
    assert meta["run"]["engine"] == "reference" and meta["complete"]


# ----------------------------------------------------------------------------- refusals

@pytest.fixture
def stopped(tmp_path, names, monkeypatch):
    """A run stopped at step 50 of 200 by cmd_train's own interrupt path (in-process, exact)."""
    out = tmp_path / "stopped"
    monkeypatch.setattr(cli, "StopFlag", lambda: StopAfter(50))
    assert cli.main(["train", "--data", str(names), "--steps", "200", *MODEL, "--out", str(out), "--quiet"]) == 130
    assert not (out / LOCK).exists()
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
    (["--split-seed", "none"], ["--split-seed", "differs from the run's 42"]),
    (["--engine", "reference"], ["--engine reference differs from the run's fast", "drop --engine"]),
    (["--out", "elsewhere"], ["--out elsewhere differs"]),
])
def test_resume_refuses_other_options(stopped, opts, needles):
    before = snapshot(stopped)                     # hidden files too: the lock is released
    r = run_cli("train", "--resume", stopped, *opts, "--quiet")
    assert_user_error(r, 2, *needles)
    assert snapshot(stopped) == before


@pytest.fixture
def stopped_reference(tmp_path, names, monkeypatch):
    """A run of the reference engine stopped at step 50 of 200 (in-process, exact)."""
    out = tmp_path / "stopped"
    monkeypatch.setattr(cli, "StopFlag", lambda: StopAfter(50))
    assert cli.main(["train", "--data", str(names), "--steps", "200", *MODEL, "--engine", "reference",
                     "--out", str(out), "--quiet"]) == 130
    assert load_checkpoint(out / "model.npz")[2]["run"]["engine"] == "reference"
    return out


def test_resume_keeps_the_run_engine(stopped_reference):
    """A reference run's resume: --engine fast and --processes (the fast engine's) are refused, and
    nothing changes; typing its own --engine is fine, and the run ends with the engine it recorded."""
    run = stopped_reference
    before = snapshot(run)
    r = run_cli("train", "--resume", run, "--engine", "fast", "--quiet")
    assert_user_error(r, 2, "--engine fast differs from the run's reference", "drop --engine")
    assert snapshot(run) == before
    r = run_cli("train", "--resume", run, "--processes", "2", "--quiet")
    assert_user_error(r, 2, "--processes", "--engine reference")
    assert snapshot(run) == before
    r = run_cli("train", "--resume", run, "--engine", "reference", "--no-plots")
    assert r.returncode == 0, r.stderr
    assert resumed_line(run, "reference", 50, 200) in r.stderr
    _, _, meta, _ = load_checkpoint(run / "model.npz")
    assert meta["complete"] and meta["run"]["engine"] == "reference"
    assert json.loads((run / "metrics.json").read_text())["config"]["engine"] == "reference"


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
    where = shlex.quote(str(reference))
    assert_user_error(r, 2, f"finished all {STEPS:,} steps already", "nothing to resume",
                      f"npmlp eval {where}", f"npmlp plot {where}")
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
    """Runs record their engine's npmlp.fast.ARITHMETIC; one written before the key existed (or by another rounding)
    resumes, with a note that it does not continue bit-identically."""
    from npmlp.app.checkpoint import save_checkpoint
    model, vocab, meta, lossi = load_checkpoint(stopped / "model.npz")
    assert meta["run"]["arithmetic"] == npmlp.fast.ARITHMETIC["fast"]
    del meta["run"]["arithmetic"]
    save_checkpoint(stopped / "model.npz", model, vocab, meta, lossi)
    capsys.readouterr()
    # (the fixture's StopFlag still stops after 50 more steps: 130, saved with the new version)
    assert cli.main(["train", "--resume", str(stopped), "--quiet", "--no-plots"]) == 130
    err = capsys.readouterr().err
    assert "trained by an older npmlp" in err and "not bit-identically" in err
    assert load_checkpoint(stopped / "model.npz")[2]["run"]["arithmetic"] == npmlp.fast.ARITHMETIC["fast"]


def test_resume_takes_the_checkpoint_path_eval_takes(stopped, tmp_path):
    """eval and sample take RUN or RUN/model.npz: so does --resume (it said it could not create a
    folder there); RUN/best.npz, a model other than the last, and a path that is not there are
    refused naming what to give, with nothing made."""
    r = run_cli("train", "--resume", stopped / "model.npz", "--quiet", "--no-plots")
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(stopped / "model.npz")[2]["complete"]
    (stopped / "best.npz").write_bytes(b"")
    r = run_cli("train", "--resume", stopped / "best.npz", "--quiet")
    assert_user_error(r, 2, "from its last checkpoint, model.npz, not best.npz", f"--resume {stopped}")
    r = run_cli("train", "--resume", tmp_path / "nowhere", "--quiet")
    assert_user_error(r, 2, f"--resume {tmp_path / 'nowhere'}: no such run directory")
    assert not (tmp_path / "nowhere").exists()
