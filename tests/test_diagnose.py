"""makemore part 3's health readings (npmlp/diagnose.py, `npmlp diagnose`, `npmlp train --diagnose`):
each number recomputed here from the definitions (saturated share, means and stds of the tanh
outputs and of the gradients reaching them, grad:data, update:data) on the model's own
intermediates and on torch autograd's gradients; the update:data samples against a step of the
reference loop; running statistics untouched; figures that exist and parse; resume keeps the samples."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import StopAfter, make_names, needs_torch, run_main, snapshot

from npmlp import train
from npmlp.app import cli, diagnose
from npmlp.deep import Deep
from npmlp.mlp import MLP

PNG = b"\x89PNG\r\n\x1a\n"


def small_data():
    from npmlp.data import Vocab, build_dataset
    words = make_names(300, seed=8)
    vocab = Vocab.from_words(words)
    return (vocab, *build_dataset(words, vocab, 3))


@needs_torch
@pytest.mark.parametrize("kind", ["mlp", "deep"])
def test_readings_follow_their_definitions(kind):
    from npmlp.torch_mirrors import torch_loss_and_grads
    vocab, X, Y = small_data()
    model = (MLP.init(vocab.size, n_hidden=40, dtype=np.float64) if kind == "mlp" else
             Deep.init(vocab.size, n_hidden=30, n_layers=3, dtype=np.float64))
    Xb, Yb = X[:32], Y[:32]
    before = {k: v.copy() for k, v in getattr(model, "buffers", {}).items()}
    r = diagnose.read(model, Xb, Yb)
    assert all(np.array_equal(v, model.buffers[k]) for k, v in before.items()), "running statistics moved"
    _, cache = model.forward(Xb, Yb)
    _, tgrads, tdacts = torch_loss_and_grads(model, Xb, Yb)
    names = ["h"] if kind == "mlp" else ["tanh1", "tanh2", "tanh3"]
    assert [a.name for a in r.activations] == names == [g.name for g in r.gradients]
    for a, g in zip(r.activations, r.gradients, strict=True):
        h = cache[a.name] if isinstance(cache, dict) else getattr(cache, a.name)
        assert a.mean == pytest.approx(h.mean()) and a.std == pytest.approx(h.std())
        assert a.saturated == pytest.approx((np.abs(h) > 0.97).mean())
        assert g.std == pytest.approx(tdacts[g.name].std(), rel=1e-9)
    weights = [k for k, p in model.params.items() if p.ndim == 2]
    assert [w.name for w in r.weights] == weights
    for w in r.weights:
        assert w.ratio == pytest.approx(tgrads[w.name].std() / model.params[w.name].std(), rel=1e-9)
    text = diagnose.tables(r)
    assert f"{100 * r.activations[0].saturated:5.2f}%" in text and f"{r.weights[0].ratio:.3e}" in text


def test_the_lecture_init_saturates_and_kaiming_does_not():
    """Part 3's story in numbers: plain standard-normal init saturates most of the tanh layer;
    Kaiming's (5/3)/sqrt(fan_in) keeps hpreact's std near 5/3, a fifth of the units past 0.97."""
    vocab, X, Y = small_data()
    lecture = diagnose.read(MLP.init(vocab.size, dtype=np.float64), X[:256], Y[:256]).activations[0]
    kaiming = diagnose.read(MLP.init(vocab.size, dtype=np.float64, scheme="kaiming"), X[:256], Y[:256]).activations[0]
    assert lecture.saturated > 0.6 and kaiming.saturated < 0.3 and lecture.std > 0.9 > kaiming.std


def test_update_ratios_are_the_steps_update(tmp_path):
    """One sample: log10(std(lr * grad) / std(param)) with grad the reference backward on that
    step's rows; then the step itself moves each param by exactly lr * grad."""
    vocab, X, Y = small_data()
    model = MLP.init(vocab.size, n_hidden=20, dtype=np.float64, scheme="kaiming")
    cfg = train.TrainConfig(steps=10, batch_size=16, lr=0.3, seed=2)
    u = diagnose.UpdateRatios(model.params)
    u.record(model, X, Y, cfg, 0)
    before = {k: v.copy() for k, v in model.params.items()}
    train.sgd(model, X, Y, cfg, stop=1)
    for j, k in enumerate(u.names):
        update = model.params[k] - before[k]
        want = np.log10(update.std() / before[k].std()) if before[k].std() > 0 else np.nan
        assert u.ratios[0][j] == pytest.approx(want, rel=1e-9, nan_ok=True), k
    u.save(tmp_path / "u.npz")
    back = diagnose.UpdateRatios.load(tmp_path / "u.npz")
    assert back.names == u.names and back.steps == [0] and np.allclose(back.ratios, u.ratios, equal_nan=True)
    assert diagnose.UpdateRatios.load(tmp_path / "missing.npz") is None


def test_train_diagnose_samples_every_100_steps_and_resume_keeps_them(tmp_path, monkeypatch, capsys):
    vocab_words = make_names(300, seed=8)
    data = tmp_path / "names.txt"
    data.write_text("\n".join(vocab_words) + "\n")
    argv = ["train", "--data", str(data), "--model", "deep", "--n-hidden", "12", "--n-layers", "2", "--n-embd", "4",
            "--steps", "450", "--quiet", "--diagnose"]
    assert cli.main([*argv, "--out", str(tmp_path / "full")]) == 0
    with monkeypatch.context() as m:
        m.setattr(cli, "StopFlag", lambda: StopAfter(170))
        assert cli.main([*argv, "--out", str(tmp_path / "part")]) == 130
    assert diagnose.UpdateRatios.load(tmp_path / "part" / diagnose.RATIOS).steps == [0, 100]
    assert cli.main(["train", "--resume", str(tmp_path / "part"), "--quiet"]) == 0
    full = diagnose.UpdateRatios.load(tmp_path / "full" / diagnose.RATIOS)
    part = diagnose.UpdateRatios.load(tmp_path / "part" / diagnose.RATIOS)
    assert full.steps == part.steps == [0, 100, 200, 300, 400]
    assert np.array_equal(np.array(full.ratios), np.array(part.ratios), equal_nan=True)
    for name in ("activations.png", "activation_grads.png", "weight_grads.png", "update_ratio.png"):
        assert (tmp_path / "full" / name).read_bytes()[:8] == PNG
    capsys.readouterr()
    assert cli.main(["diagnose", str(tmp_path / "full"), "--quiet", "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "update:data, log10, mean of the last 5 samples" in out and "W3" in out
    assert (tmp_path / "d" / "update_ratio.png").read_bytes()[:8] == PNG


# ----------------------------------------------------------------------------- update_ratio.npz, checked

@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A --diagnose run stopped at step 250 of 400: samples at steps 0, 100 and 200."""
    tmp = tmp_path_factory.mktemp("stopped")
    data = tmp / "names.txt"
    data.write_text("\n".join(make_names(300, seed=8)) + "\n")
    mp = pytest.MonkeyPatch()
    mp.setattr(cli, "StopFlag", lambda: StopAfter(250))
    try:
        assert cli.main(["train", "--data", str(data), "--steps", "400", "--n-embd", "2", "--n-hidden", "8",
                         "--diagnose", "--quiet", "--no-plots", "--out", str(tmp / "run")]) == 130
    finally:
        mp.undo()
    assert diagnose.UpdateRatios.load(tmp / "run" / diagnose.RATIOS).steps == [0, 100, 200]
    return tmp / "run"


def _ratios(run, **change):
    with np.load(run / diagnose.RATIOS) as z:
        a = {k: z[k] for k in z.files}
    a.update(change)
    np.savez(run / diagnose.RATIOS, **{k: v for k, v in a.items() if v is not None})


RATIO_DAMAGE = {
    # case: (damage, words the error must hold)
    "truncated": (lambda run: (run / diagnose.RATIOS).write_bytes((run / diagnose.RATIOS).read_bytes()[:300]),
                  ["corrupt or truncated"]),
    "text": (lambda run: (run / diagnose.RATIOS).write_text("not recorded\n"), ["is not an npmlp update:data"]),
    "a pickle": (lambda run: (run / diagnose.RATIOS).write_bytes(b"\x80\x04N."), ["Python pickle", "refusing"]),
    "ratios cut short": (lambda run: _ratios(run, ratios=np.zeros((3, 4))), ["shape (3, 4)", "expected float (3, 5)"]),
    "ratios flat": (lambda run: _ratios(run, ratios=np.zeros(15)), ["shape (15,)"]),
    "ratios as text": (lambda run: _ratios(run, ratios=np.full((3, 5), "x")), ["dtype <U1"]),
    "an inf ratio": (lambda run: _ratios(run, ratios=np.full((3, 5), np.inf)), ["infinite ratios"]),
    "names of another model": (lambda run: _ratios(run, names=np.array(["C", "W1", "b1", "W2", "X"])),
                               ["names the parameters", "not the model's"]),
    "steps missing": (lambda run: _ratios(run, steps=None), ["holds arrays names, ratios"]),
    "a sample lost": (lambda run: _ratios(run, steps=np.array([0, 100, 300]), ratios=np.zeros((3, 5))),
                      ["samples from step 0 to 100", "checkpoint is at step 250"]),
    "steps out of order": (lambda run: _ratios(run, steps=np.array([0, 200, 100])), ["every 100 steps, in order"]),
    "stale (older than the checkpoint)": (lambda run: _ratios(run, steps=np.array([0, 100]), ratios=np.zeros((2, 5))),
                                          ["ending early", "up to 200"]),
}


@pytest.mark.parametrize("command", ["diagnose", "resume"])
@pytest.mark.parametrize("case", RATIO_DAMAGE)
def test_a_damaged_update_ratio_file_is_refused_and_kept(capsys, stopped, tmp_path, case, command):
    """diagnose used to say 'not recorded' (a text file) or fail with a traceback; --resume dropped
    the first part's samples with exit 0. Both now refuse in one line naming the file, and leave it."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    damage, needles = RATIO_DAMAGE[case]
    damage(run)
    before = snapshot(run)
    argv = ["diagnose", run, "--out", tmp_path / "figures"] if command == "diagnose" else ["train", "--resume", run]
    code, out, err = run_main(capsys, *argv, "--quiet")
    assert code == 1 and out == "", err
    assert err.startswith("npmlp: error: ") and err.count("\n") == 1, err
    assert str(run / diagnose.RATIOS) in err and "restore it from a copy, or move it away" in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert snapshot(run) == before
    assert not (tmp_path / "figures").exists()


def test_a_missing_update_ratio_file_is_said_not_silently_dropped(capsys, stopped, tmp_path):
    """Moved away (the advice above): diagnose and --resume go on, and say what is lost, under --quiet too."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    (run / diagnose.RATIOS).unlink()
    code, out, err = run_main(capsys, "diagnose", run, "--quiet", "--out", tmp_path / "figures")
    assert code == 0, err
    assert f"sampled by --diagnose into {run / diagnose.RATIOS}, which is missing" in out
    assert err == f"npmlp: note: {run / diagnose.RATIOS} is missing: the update:data ratios this run recorded " \
                  f"(--diagnose) are lost\n"
    code, out, err = run_main(capsys, "train", "--resume", run, "--quiet")
    assert code == 0, err
    assert "the samples before step 250 are lost; sampling goes on from step 250" in err
    assert diagnose.UpdateRatios.load(run / diagnose.RATIOS).steps == [300]


def test_samples_saved_ahead_of_the_checkpoint_are_kept_to_its_step(capsys, stopped, tmp_path, monkeypatch):
    """update_ratio.npz is written before model.npz: if the checkpoint's write fails, the side file
    holds samples past the checkpoint's step; the resume drops those, not the ones before it."""
    import shutil

    from npmlp.app import rundir
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    before = (run / "model.npz").read_bytes()

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(rundir, "save_checkpoint", full_disk)
    monkeypatch.setattr(cli, "StopFlag", lambda: StopAfter(100))   # stops at step 350: samples 0..300
    code, _out, err = run_main(capsys, "train", "--resume", run, "--quiet")
    assert code == 1 and "No space left on device" in err, err
    assert (run / "model.npz").read_bytes() == before
    assert diagnose.UpdateRatios.load(run / diagnose.RATIOS).steps == [0, 100, 200, 300]
    monkeypatch.undo()
    assert cli.main(["train", "--resume", str(run), "--quiet", "--no-plots"]) == 0
    assert diagnose.UpdateRatios.load(run / diagnose.RATIOS).steps == [0, 100, 200, 300]
