"""makemore part 3's health readings (npmlp/diagnose.py, `npmlp diagnose`, `npmlp train --diagnose`):
each number recomputed here from the definitions (saturated share, means and stds of the tanh
outputs and of the gradients reaching them, grad:data, update:data) on the model's own
intermediates and on torch autograd's gradients; the update:data samples against a step of the
reference loop; running statistics untouched; figures that exist and parse; resume keeps the samples."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import StopAfter, make_names, needs_torch

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
    for a, g in zip(r.activations, r.gradients):
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
