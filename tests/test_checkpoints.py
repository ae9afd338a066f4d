"""Checkpoints: written atomically, read with allow_pickle=False, validated before use.
A pickled, truncated or tampered model.npz is refused with one line (`npmlp train --resume`
is where a user meets it), and loading never runs code or half-loads a model.
Format 2 names its model and sizes; a format-1 file (the previous npmlp's) still loads and
resumes; a newer format is refused with a word to upgrade."""
from __future__ import annotations

import errno
import json
import pickle
import shutil
import signal

import numpy as np
import pytest
from helpers import TINY_RUN, StopAfter, assert_user_error, make_names, notes, run_cli, snapshot, temp_files
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import npmlp.fast
from npmlp.app import cli
from npmlp.app import rundir as runs
from npmlp.app.checkpoint import load_checkpoint, save_checkpoint
from npmlp.app.errors import NpmlpError
from npmlp.app.files import atomic_open
from npmlp.app.registry import MODELS
from npmlp.mlp import MLP, PARAM_NAMES
from npmlp.train import TrainConfig

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
        code = cli.main(["train", "--data", str(data), "--steps", str(STEPS), "--out", str(out), *TINY_RUN])
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


def same_params(a, b) -> bool:
    return a.params.keys() == b.params.keys() and all(np.array_equal(a.params[k], b.params[k]) for k in a.params)


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


def _sizes(a, **changes):
    meta = json.loads(str(a["meta"]))
    meta["sizes"].update(changes)
    a["meta"] = np.array(json.dumps(meta))


def _run(a, **changes):
    meta = json.loads(str(a["meta"]))
    meta["run"].update(changes)
    meta["run"] = {k: v for k, v in meta["run"].items() if v is not ...}   # ...: delete the key
    a["meta"] = np.array(json.dumps(meta))


def _drop(a, key):
    meta = json.loads(str(a["meta"]))
    del meta[key]
    a["meta"] = np.array(json.dumps(meta))


def as_format_1(a):
    """Rewrite the arrays' meta in the previous npmlp's layout: format 'npmlp-checkpoint-1', the sizes
    at the top level, no 'model' or 'sizes', and a run record without engine, seconds or parts."""
    meta = json.loads(str(a["meta"]))
    sizes = meta.pop("sizes")
    assert meta.pop("model") == "mlp"
    meta.update(format="npmlp-checkpoint-1", **sizes)
    meta["run"] = {k: meta["run"][k] for k in ("data", "split_seed", "init", "data_sha256", "arithmetic")}
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
    "meta newer format": (lambda a: _meta(a, format="npmlp-checkpoint-3"),
                          ["'npmlp-checkpoint-3'", "newer", "upgrade npmlp"]),
    "meta unknown model": (lambda a: _meta(a, model="cnn"), ["'cnn' model", "does not know",
                                                                     "upgrade npmlp"]),
    "meta model missing": (lambda a: _drop(a, "model"), ["missing or malformed metadata"]),
    "meta sizes missing": (lambda a: _drop(a, "sizes"), ["missing or malformed metadata"]),
    "meta sizes a list": (lambda a: _meta(a, sizes=[3, 2, 8]), ["missing or malformed metadata"]),
    "meta block_size 0": (lambda a: _sizes(a, block_size=0), ["missing or malformed metadata"]),
    "meta vocab without '.'": (lambda a: _meta(a, itos=json.loads(str(a["meta"]))["itos"][1:] + ["?"]),
                               ["missing or malformed metadata"]),
    "meta vocab one longer": (lambda a: _meta(a, itos=json.loads(str(a["meta"]))["itos"] + ["!"]),
                              ["C has shape", "expected", "vocab"]),
    "meta n_hidden wrong": (lambda a: _sizes(a, n_hidden=9), ["W1 has shape (6, 8), expected (6, 9)"]),
    "format 1 n_hidden wrong": (lambda a: (as_format_1(a), _meta(a, n_hidden=9)),
                                ["W1 has shape (6, 8), expected (6, 9)"]),
    "format 1 without n_embd": (lambda a: (as_format_1(a), _drop(a, "n_embd")), ["missing or malformed metadata"]),
    "lossi with NaN": (lambda a: _nan(a, "lossi", 5, np.nan), ["lossi", "damaged"]),
    "lossi 2-D": (lambda a: a.update(lossi=a["lossi"].reshape(10, -1)), ["lossi", "shape (10, 10)"]),
    "lossi too short": (lambda a: a.update(lossi=a["lossi"][:-1]), ["holds 99 losses for 100 steps"]),
    "step past the end": (lambda a: _meta(a, step=10**6), ["at step 1,000,000 of a 300-step run", "damaged"]),
    "step negative": (lambda a: _meta(a, step=-1), ["at step -1 of a 300-step run", "damaged"]),
    "step a bool": (lambda a: _meta(a, step=True), ["malformed training state"]),
    "run seconds a string": (lambda a: _run(a, seconds="long"), ["malformed training state"]),
    "run parts negative": (lambda a: _run(a, parts=-1), ["malformed training state"]),
    "step not a number": (lambda a: _meta(a, step="100"), ["malformed training state"]),
    "config negative steps": (lambda a: _train(a, steps=-5), ["malformed training state"]),
    "config unknown field": (lambda a: _train(a, momentum=0.9), ["malformed training state"]),
    "run record missing": (lambda a: _meta(a, run=None), ["malformed training state"]),
    "run engine unknown": (lambda a: _run(a, engine="turbo"), ["malformed training state"]),
    "run engine missing": (lambda a: _run(a, engine=...), ["malformed training state"]),
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
        assert same_params(model, ref_model), f"flip at byte {i} changed the loaded parameters"
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
    for p in model.params.values():
        p += 1
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
    assert err.splitlines() == [(f"npmlp: error: cannot write {run / 'model.npz'}: No space left on device; "
                                 f"the checkpoint of an earlier save is intact: free space or fix permissions, then "
                                 f"resume with: npmlp train --resume {run}")]
    assert snapshot(run) == before and temp_files(run) == []


def test_failed_first_save_of_a_new_run_says_nothing_is_saved(tmp_path, monkeypatch, capsys):
    """A full disk at a new run's first save: there is no checkpoint to resume from, and no folder is left."""
    data = tmp_path / "names.txt"
    data.write_text("\n".join(make_names(200)) + "\n")
    monkeypatch.setattr(np, "savez", _broken_savez(OSError(errno.ENOSPC, "No space left on device")))
    out = tmp_path / "run"
    code = cli.main(["train", "--data", str(data), "--steps", "20", "--out", str(out), *TINY_RUN])
    err = capsys.readouterr().err
    assert code == 1 and err.splitlines() == [
        f"npmlp: error: cannot write {out / 'model.npz'}: No space left on device; nothing of this run is saved: "
        f"free space or fix permissions, then train again"], err
    assert not out.exists()


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
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write(b"new but unfinished")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old" and temp_files(tmp_path) == []
    with atomic_open(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new" and temp_files(tmp_path) == []


def test_checkpoint_params_are_exactly_the_trained_ones(interrupted):
    """What cmd_train saved on the interrupt equals a model trained in-process by the engine the run
    recorded for exactly STOP_AT steps; the metadata names the model, its sizes and the engine."""
    model, vocab, meta, lossi = load_checkpoint(interrupted / "model.npz")
    assert set(arrays_of(interrupted)) == {*PARAM_NAMES, "meta", "lossi"}
    assert meta["format"] == "npmlp-checkpoint-2" and meta["model"] == "mlp"
    assert meta["sizes"] == {"block_size": 3, "n_embd": 2, "n_hidden": 8}
    assert meta["run"]["engine"] == "fast" and meta["run"]["arithmetic"] == npmlp.fast.ARITHMETIC["fast"]
    cfg, run = TrainConfig(**meta["train"]), meta["run"]
    data = runs.splits(run["data"], run["split_seed"], model.block_size)
    again = MLP.init(vocab.size, **meta["sizes"], seed=cfg.seed, dtype=model.dtype, scheme=run["init"])
    ref_lossi = np.zeros(cfg.steps, np.float32)
    with npmlp.fast.steps(run["engine"], again, cfg.batch_size) as steps:
        _, step = steps(*data.train, cfg, ref_lossi, 0, STOP_AT, None)
    assert step == meta["step"] == STOP_AT
    assert same_params(again, model)
    assert np.array_equal(ref_lossi[:STOP_AT], lossi)


# ----------------------------------------------------------------------------- formats

@pytest.fixture(scope="module")
def format_1(interrupted, tmp_path_factory):
    """The interrupted run with its model.npz rewritten in format 1, as the previous npmlp wrote it."""
    run = copy_run(interrupted, tmp_path_factory.mktemp("format1") / "run")
    a = arrays_of(run)
    as_format_1(a)
    np.savez(run / "model.npz", **a)
    return run


def test_format_1_checkpoint_loads_as_the_same_model(interrupted, format_1):
    model, vocab, meta, lossi = load_checkpoint(format_1 / "model.npz")
    model2, vocab2, meta2, lossi2 = load_checkpoint(interrupted / "model.npz")
    assert meta["format"] == "npmlp-checkpoint-1"
    assert meta["model"] == "mlp" and meta["sizes"] == meta2["sizes"] and meta["run"]["engine"] == "fast"
    assert type(model) is type(model2) and model.dtype == model2.dtype
    assert same_params(model, model2) and vocab == vocab2 and np.array_equal(lossi, lossi2)


@pytest.mark.parametrize("command", [["eval"], ["sample", "-n", "5"]])
def test_format_1_checkpoint_evaluates_and_samples(interrupted, format_1, command):
    """`npmlp eval` and `npmlp sample` of a format-1 run print what they print for the same run in format 2."""
    old, new = (run_cli(*command, run) for run in (format_1, interrupted))
    assert old.returncode == 0 and new.returncode == 0, old.stderr + new.stderr
    assert old.stdout and old.stdout == new.stdout


def test_format_1_checkpoint_plots(tmp_path, format_1):
    r = run_cli("plot", format_1, "--out", tmp_path / "figures", "--quiet")
    assert r.returncode == 0, r.stderr
    assert {p.name for p in (tmp_path / "figures").iterdir()} >= {"loss.png", "embedding.png"}


def test_format_1_checkpoint_resumes_with_the_fast_engine(tmp_path, interrupted, format_1):
    """A format-1 run resumes (with the fast engine, which wrote it), bit-identically to the same run
    in format 2, with no note about other arithmetic; it is saved in format 2 with its engine."""
    old, new = copy_run(format_1, tmp_path / "old"), copy_run(interrupted, tmp_path / "new")
    r = run_cli("train", "--resume", old, "--no-plots")
    assert r.returncode == 0, r.stderr
    assert notes(r) == [] and "fast engine; resuming at step 100 of 300" in r.stderr
    assert resume(new).returncode == 0
    assert arrays_of(old).keys() == arrays_of(new).keys()
    for k, v in arrays_of(new).items():
        if k != "meta":
            assert np.array_equal(arrays_of(old)[k], v), k
    _, _, meta, lossi = load_checkpoint(old / "model.npz")
    assert meta["format"] == "npmlp-checkpoint-2" and meta["model"] == "mlp" and meta["complete"]
    assert meta["run"]["engine"] == "fast" and meta["sizes"] == {"block_size": 3, "n_embd": 2, "n_hidden": 8}
    assert len(lossi) == STEPS and (old / "metrics.json").is_file()


def test_format_1_checkpoint_refuses_another_engine(tmp_path, format_1):
    run = copy_run(format_1, tmp_path / "run")
    before = snapshot(run)
    r = run_cli("train", "--resume", run, "--engine", "reference", "--quiet")
    assert_user_error(r, 2, "--engine reference differs from the run's fast")
    assert snapshot(run) == before


@pytest.mark.parametrize("change, needles", [
    (lambda a: _meta(a, format="npmlp-checkpoint-3"), ["'npmlp-checkpoint-3'", "newer", "upgrade npmlp"]),
    (lambda a: _meta(a, model="cnn"), ["'cnn' model", "does not know", "upgrade npmlp"]),
], ids=["format 3", "unknown model"])
@pytest.mark.parametrize("command", [["eval"], ["sample"], ["plot"], ["gradcheck", "--run"]])
def test_reading_commands_refuse_a_checkpoint_they_cannot_read(tmp_path, interrupted, change, needles, command):
    """Never half-loaded: eval, sample, plot and gradcheck print nothing but the one error line,
    and the run directory is left exactly as it was."""
    run = copy_run(interrupted, tmp_path / "run")
    a = arrays_of(run)
    change(a)
    np.savez(run / "model.npz", **a)
    with pytest.raises(NpmlpError) as e:
        load_checkpoint(run / "model.npz")
    assert all(n in str(e.value) for n in needles), str(e.value)
    before = snapshot(run)
    r = run_cli(*command, run, "--quiet") if command[0] != "sample" else run_cli(*command, run)
    assert_user_error(r, 1, str(run / "model.npz"), *needles)
    assert r.stdout == "" and snapshot(run) == before


# ----------------------------------------------------------------------------- what train writes, loads

@st.composite
def run_sizes(draw):
    """(model kind, its sizes): each option drawn over its whole legal range, its extremes included
    (1-wide layers, 512 positions, 24 layers), kept small enough to train in a moment."""
    kind = draw(st.sampled_from(sorted(MODELS)))
    cls = MODELS[kind]
    sizes = {}
    for o in cls.spec.options:
        if o.const is not None:                                      # a switch
            sizes[o.name] = draw(st.sampled_from([o.default, o.const]))
        elif o.type is float:
            sizes[o.name] = draw(st.sampled_from([0.0, 0.5, 0.99]))
        else:
            high = {"block_size": 512, "n_layers": 3 if kind == "transformer" else 24, "n_hidden": 8}.get(o.name, 6)
            sizes[o.name] = draw(st.one_of(st.just(1), st.just(high), st.integers(1, high)))
    if kind == "wavenet":                # the block is a power of the group: n**L positions, or the flat network
        n = draw(st.integers(1, 8))
        sizes["flatten"] = n
        sizes["block_size"] = n ** draw(st.integers(1, int(np.log(512) / np.log(n)))) if n > 1 else 1
    if kind == "transformer":            # the heads divide the embedding
        sizes["n_embd"] = sizes["n_head"] * draw(st.integers(1, 3))
    return kind, sizes


def cli_flags(kind, sizes) -> list[str]:
    """`npmlp train` options giving a model these sizes (a switch's flag where it differs from the default)."""
    out = ["--model", kind]
    for o in MODELS[kind].spec.options:
        if o.const is not None:
            out += [o.cli] if sizes[o.name] != o.default else []
        else:
            out += [o.cli, str(sizes[o.name])]
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=run_sizes())
@example(drawn=("wavenet", {"block_size": 512, "n_embd": 1, "n_hidden": 1, "flatten": 2,
                            "batchnorm_over_batch_only": 0}))
def test_every_checkpoint_train_writes_loads(tmp_path_factory, drawn):
    """Whatever legal sizes a run has, the checkpoint `npmlp train` writes is one every command reads
    (load_checkpoint): `--model wavenet --block-size 512 --n-embd 1 --n-hidden 1` trained, exited 0,
    and then eval, sample and plot said its metadata was malformed (the tamper guard bounded a size
    by the file's element count)."""
    kind, sizes = drawn
    tmp = tmp_path_factory.mktemp("sizes")
    data = tmp / "names.txt"
    data.write_text("\n".join(make_names(60, seed=1)) + "\n")
    out = tmp / "run"
    code = cli.main(["train", "--data", str(data), "--steps", "3", "--batch-size", "4", "--out", str(out),
                     "--quiet", "--no-plots", *cli_flags(kind, sizes)])
    assert code == 0, (kind, sizes)
    model, _, meta, lossi = load_checkpoint(out / "model.npz")
    assert model.kind == kind and meta["step"] == 3 and len(lossi) == 3
    assert {k: v for k, v in model.sizes.items() if k in sizes} == sizes
