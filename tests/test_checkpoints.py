"""Checkpoints: written atomically, read with allow_pickle=False, validated before use.
A pickled, truncated or tampered model.npz is refused with one line (`npmlp train --resume`
is where a user meets it), and loading never runs code or half-loads a model."""
from __future__ import annotations

import errno
import json
import pickle
import shutil
import signal

import numpy as np
import pytest
from conftest import make_names, run_cli
from errcheck import TINY, StopAfter, assert_user_error, snapshot, temp_files

from npmlp import cli
from npmlp.checkpoint import load_checkpoint, save_checkpoint
from npmlp.errors import NpmlpError
from npmlp.fileio import atomic_open
from npmlp.model import MLP, PARAM_NAMES
from npmlp.train import TrainConfig, sgd

STEPS, STOP_AT = 300, 100


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A run directory holding model.npz of a run stopped at step 100 of 300."""
    tmp = tmp_path_factory.mktemp("ckpt")
    data = tmp / "names.txt"
    data.write_text("\n".join(make_names(200)) + "\n")
    out = tmp / "run"
    mp = pytest.MonkeyPatch()
    mp.setattr(cli, "StopFlag", lambda: StopAfter(STOP_AT))
    try:
        code = cli.main(["train", "--data", str(data), "--steps", str(STEPS), "--out", str(out), *TINY])
    finally:
        mp.undo()
    assert code == 128 + signal.SIGINT
    _, _, meta, lossi = load_checkpoint(out / "model.npz")
    assert meta["step"] == STOP_AT and len(lossi) == STOP_AT and not meta["complete"]
    return out


def arrays_of(run):
    with np.load(run / "model.npz") as z:
        return {k: z[k] for k in z.files}


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


def resume(run):
    return run_cli("train", "--resume", run, "--quiet")


def test_untampered_checkpoint_resumes(tmp_path, interrupted):
    run = copy_run(interrupted, tmp_path / "run")
    r = resume(run)
    assert r.returncode == 0, r.stderr
    _, _, meta, lossi = load_checkpoint(run / "model.npz")
    assert meta["step"] == STEPS and meta["complete"] and len(lossi) == STEPS


# ----------------------------------------------------------------------------- tampered

def _meta(a, **changes):
    meta = json.loads(str(a["meta"]))
    meta.update(changes)
    a["meta"] = np.array(json.dumps(meta))


def _train(a, **changes):
    meta = json.loads(str(a["meta"]))
    meta["train"].update(changes)
    a["meta"] = np.array(json.dumps(meta))


def _nan(a, k, i, v):
    a[k] = a[k].copy()
    a[k].flat[i] = v


TAMPERED = {
    # case: (change to the arrays, words the error must hold)
    "W1 transposed": (lambda a: a.update(W1=a["W1"].T), ["W1 has shape (8, 6), expected (6, 8)"]),
    "C as float64": (lambda a: a.update(C=a["C"].astype(np.float64)), ["C has dtype float64, expected float32"]),
    "b2 as int": (lambda a: a.update(b2=a["b2"].astype(np.int32)), ["b2 has dtype int32"]),
    "NaN in b1": (lambda a: _nan(a, "b1", 3, np.nan), ["b1 contains NaN or inf", "damaged"]),
    "inf in W2": (lambda a: _nan(a, "W2", 0, np.inf), ["W2 contains NaN or inf"]),
    "W2 missing": (lambda a: a.pop("W2"), ["lacks W2", "not written by npmlp"]),
    "meta missing": (lambda a: a.pop("meta"), ["lacks meta"]),
    "lossi missing": (lambda a: a.pop("lossi"), ["holds arrays C, W1, W2, b1, b2, meta but was written with",
                                                 "damaged"]),
    "meta not JSON": (lambda a: a.update(meta=np.array("{'step': 1")), ["missing or malformed metadata"]),
    "meta a number": (lambda a: a.update(meta=np.array(3.0)), ["missing or malformed metadata"]),
    "meta other format": (lambda a: _meta(a, format="something-else"), ["missing or malformed metadata"]),
    "meta dtype float16": (lambda a: _meta(a, dtype="float16"), ["missing or malformed metadata"]),
    "meta dtype garbage": (lambda a: _meta(a, dtype="no-such-type"), ["missing or malformed metadata"]),
    "meta block_size 0": (lambda a: _meta(a, block_size=0), ["missing or malformed metadata"]),
    "meta vocab without '.'": (lambda a: _meta(a, itos=json.loads(str(a["meta"]))["itos"][1:] + ["?"]),
                               ["missing or malformed metadata"]),
    "meta vocab one longer": (lambda a: _meta(a, itos=json.loads(str(a["meta"]))["itos"] + ["!"]),
                              ["C has shape", "expected", "vocab"]),
    "meta n_hidden wrong": (lambda a: _meta(a, n_hidden=9), ["W1 has shape (6, 8), expected (6, 9)"]),
    "lossi with NaN": (lambda a: _nan(a, "lossi", 5, np.nan), ["lossi", "damaged"]),
    "lossi 2-D": (lambda a: a.update(lossi=a["lossi"].reshape(10, -1)), ["lossi", "shape (10, 10)"]),
    "lossi too short": (lambda a: a.update(lossi=a["lossi"][:-1]), ["holds 99 losses for 100 steps"]),
    "step past the end": (lambda a: _meta(a, step=10**6), ["malformed training state"]),
    "step not a number": (lambda a: _meta(a, step="100"), ["malformed training state"]),
    "config negative steps": (lambda a: _train(a, steps=-5), ["malformed training state"]),
    "config unknown field": (lambda a: _train(a, momentum=0.9), ["malformed training state"]),
    "run record missing": (lambda a: _meta(a, run=None), ["malformed training state"]),
}


@pytest.mark.parametrize("case", TAMPERED)
def test_tampered_checkpoint_is_refused(tmp_path, interrupted, case):
    change, needles = TAMPERED[case]
    run = copy_run(interrupted, tmp_path / "run")
    a = arrays_of(run)
    change(a)
    np.savez(run / "model.npz", **a)
    before = snapshot(run)
    r = resume(run)
    assert_user_error(r, 1, str(run / "model.npz"), *needles)
    assert snapshot(run) == before, "a refused checkpoint must be left exactly as it was"


# ----------------------------------------------------------------------------- pickles: never executed

class Payload:
    """Unpickling this creates a marker file: proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_object_array_is_refused_without_running_it(tmp_path, interrupted):
    run = copy_run(interrupted, tmp_path / "run")
    marker = tmp_path / "pwned"
    a = arrays_of(run)
    a["meta"] = np.array([Payload(marker)], dtype=object)
    np.savez(run / "model.npz", **a)   # np.savez pickles the object array
    # the payload is live: a careless np.load(allow_pickle=True) runs it
    with np.load(run / "model.npz", allow_pickle=True) as z:
        z["meta"]
    assert marker.exists()
    marker.unlink()

    r = resume(run)
    assert_user_error(r, 1, "pickled Python objects", "refusing to load", "can run code")
    assert not marker.exists(), "loading a checkpoint ran code from it"


def test_raw_pickle_file_is_refused_without_running_it(tmp_path, interrupted):
    run = copy_run(interrupted, tmp_path / "run")
    marker = tmp_path / "pwned"
    (run / "model.npz").write_bytes(pickle.dumps({"W1": Payload(marker)}))
    r = resume(run)
    assert_user_error(r, 1, "is a Python pickle", "refusing to load it")
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"hello, I am not a checkpoint\n", b""], ids=["text", "empty"])
def test_not_a_checkpoint_is_refused(tmp_path, interrupted, content):
    run = copy_run(interrupted, tmp_path / "run")
    (run / "model.npz").write_bytes(content)
    assert_user_error(resume(run), 1, "is not an npmlp checkpoint")


def test_npy_file_is_refused(tmp_path, interrupted):
    run = copy_run(interrupted, tmp_path / "run")
    with open(run / "model.npz", "wb") as f:
        np.save(f, np.zeros(3))
    assert_user_error(resume(run), 1, "is not an npmlp checkpoint")


def test_missing_checkpoint_is_a_usage_error(tmp_path):
    (tmp_path / "empty_run").mkdir()
    assert_user_error(resume(tmp_path / "empty_run"), 2, "no model.npz there")


# ----------------------------------------------------------------------------- truncated or damaged

def test_truncated_checkpoint_is_refused_on_the_command_line(tmp_path, interrupted):
    run = copy_run(interrupted, tmp_path / "run")
    data = (run / "model.npz").read_bytes()
    (run / "model.npz").write_bytes(data[: len(data) // 2])
    assert_user_error(resume(run), 1, "corrupt or truncated", "retrain or use another copy")


def test_every_truncation_and_byte_flip_is_refused_or_harmless(tmp_path, interrupted):
    """Cut the file at many lengths and flip many single bytes: load_checkpoint either raises
    NpmlpError or (a flip in a field nothing reads, e.g. a zip timestamp) returns the exact model."""
    good = (interrupted / "model.npz").read_bytes()
    ref_model, ref_vocab, ref_meta, ref_lossi = load_checkpoint(interrupted / "model.npz")
    path = tmp_path / "model.npz"
    for n in range(0, len(good), 23):
        path.write_bytes(good[:n])
        with pytest.raises(NpmlpError):
            load_checkpoint(path)
    harmless = 0
    for i in range(0, len(good), 7):
        bad = bytearray(good)
        bad[i] ^= 0x5A
        path.write_bytes(bytes(bad))
        try:
            model, vocab, meta, lossi = load_checkpoint(path)
        except NpmlpError:
            continue
        harmless += 1
        assert np.array_equal(model.flat, ref_model.flat), f"flip at byte {i} changed the loaded parameters"
        assert vocab == ref_vocab and meta == ref_meta and np.array_equal(lossi, ref_lossi), i
    assert harmless < len(good) // 7 // 4, "most flips must be caught (zip CRC-32, npy header checks)"


# ----------------------------------------------------------------------------- atomic save

def _broken_savez(exc):
    def savez(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")   # some bytes reach the temporary file first
        raise exc
    return savez


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk full", "ctrl-c"])
def test_failed_save_keeps_the_old_checkpoint(tmp_path, interrupted, monkeypatch, exc):
    run = copy_run(interrupted, tmp_path / "run")
    model, vocab, meta, lossi = load_checkpoint(run / "model.npz")
    before = snapshot(run)
    model.flat[...] += 1
    monkeypatch.setattr(np, "savez", _broken_savez(exc))
    with pytest.raises(type(exc)):
        save_checkpoint(run / "model.npz", model, vocab, meta, lossi)
    assert snapshot(run) == before and temp_files(run) == []


def test_failed_save_during_training_is_one_line_and_keeps_the_old_checkpoint(tmp_path, interrupted,
                                                                              monkeypatch, capsys):
    """cmd_train itself: a full disk when the resumed run saves -> exit 1, old model.npz intact."""
    run = copy_run(interrupted, tmp_path / "run")
    before = snapshot(run)
    monkeypatch.setattr(np, "savez", _broken_savez(OSError(errno.ENOSPC, "No space left on device")))
    code = cli.main(["train", "--resume", str(run), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.splitlines() == [f"npmlp: error: cannot write {run / 'model.npz'}: No space left on device; "
                                f"free space or fix permissions, then resume from the last saved checkpoint"]
    assert snapshot(run) == before and temp_files(run) == []


def test_non_finite_parameters_are_never_saved(tmp_path, interrupted):
    run = copy_run(interrupted, tmp_path / "run")
    model, vocab, meta, lossi = load_checkpoint(run / "model.npz")
    before = snapshot(run)
    model.params["W1"][0, 0] = np.nan
    with pytest.raises(NpmlpError, match="NaN/inf"):
        save_checkpoint(run / "model.npz", model, vocab, meta, lossi)
    assert snapshot(run) == before and temp_files(run) == []


def test_atomic_open_replaces_only_on_success(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write(b"new but unfinished")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old" and temp_files(tmp_path) == []
    with atomic_open(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new" and temp_files(tmp_path) == []


def test_checkpoint_params_are_exactly_the_trained_ones(interrupted):
    """What cmd_train saved on the interrupt equals a model trained in-process for exactly STOP_AT steps."""
    model, vocab, meta, lossi = load_checkpoint(interrupted / "model.npz")
    assert set(arrays_of(interrupted)) == {*PARAM_NAMES, "meta", "lossi"}
    cfg, run = TrainConfig(**meta["train"]), meta["run"]
    data = cli.Splits(run["data"], run["split_seed"], model.block_size)
    again = MLP.init(vocab.size, model.block_size, model.n_embd, model.n_hidden, seed=cfg.seed,
                     dtype=model.dtype, scheme=run["init"])
    ref_lossi, step = sgd(again, *data.train, cfg, stop=STOP_AT)
    assert step == meta["step"] == STOP_AT
    assert np.array_equal(again.flat, model.flat)
    assert np.array_equal(ref_lossi[:STOP_AT], lossi)
