"""`npmlp lr-find` and npmlp/lrfind.py: the lecture's learning-rate sweep, its suggestion rule,
and one training step per rate with either engine."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import PNG, SMALL_MLP, assert_png, names_file, run_main

import npmlp.fast
from npmlp.app import lrfind
from npmlp.mlp import MLP
from npmlp.train import TrainConfig, sgd


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return names_file(tmp_path_factory.mktemp("data"), 300, seed=3)


# ----------------------------------------------------------------------------- lr-find

def test_lr_find_writes_the_sweep_and_suggests_a_rate(capsys, names, tmp_path):
    code, out, err = run_main(capsys, "lr-find", "--data", names, "--steps", "300", "--out", tmp_path, "--quiet",
                              *SMALL_MLP)
    assert code == 0, err
    assert_png(tmp_path / "lr_find.png")
    line = next(l for l in out.splitlines() if l.startswith("suggested learning rate:"))
    lr = float(line.split(":")[1].split()[0])
    assert 1e-3 <= lr <= 1
    assert out.rstrip().endswith(str(tmp_path / "lr_find.png"))


def test_suggest_steps_back_from_the_smoothed_minimum():
    lre = np.linspace(-3, 0, 1000)
    noisy = (lre + 0.8) ** 2 + np.random.default_rng(0).normal(0, 0.05, 1000)
    suggested, best, smoothed = lrfind.suggest(lre, noisy)
    assert best == pytest.approx(-0.8, abs=0.05)
    assert suggested == pytest.approx(best - lrfind.MARGIN)
    assert smoothed.shape == lre.shape and np.std(np.diff(smoothed)) < np.std(np.diff(noisy))


def test_the_sweep_centres_on_the_models_rate():
    """From 1/100 to 10 times the default rate: the lecture's 10^-3 to 10^0 around its 0.1."""
    assert lrfind.sweep_range(0.1) == (-3, 0) and lrfind.sweep_range(5e-4) == pytest.approx((-5.3, -2.3))


@pytest.mark.parametrize("engine", npmlp.fast.ENGINES)
def test_sweep_uses_one_training_step_per_rate(engine):
    """Each sweep step is the reference loop's step at that rate (bit for bit with the reference
    engine, to round-off with the fast one)."""
    rng = np.random.default_rng(1)
    X, Y = rng.integers(0, 10, (200, 3)), rng.integers(0, 10, 200)
    a, b = MLP.init(10, 3, 4, 8, seed=5, dtype=np.float64), MLP.init(10, 3, 4, 8, seed=5, dtype=np.float64)
    with npmlp.fast.steps(engine, a, 16) as steps:
        lossa = lrfind.sweep(steps, X, Y, [-1.0, -0.5], TrainConfig(steps=2, batch_size=16, seed=9))
    lossb = np.zeros(2, np.float32)
    for i, lr in enumerate([0.1, 10 ** -0.5]):
        sgd(b, X, Y, TrainConfig(steps=2, batch_size=16, lr=lr, lr_decayed=lr, seed=9), lossb, i, i + 1)
    assert np.array_equal(lossa, lossb) if engine == "reference" else np.allclose(lossa, lossb, rtol=1e-6)
    for k in a.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=0 if engine == "reference" else 1e-12,
                                   atol=0 if engine == "reference" else 1e-12)


def test_lr_find_with_the_reference_engine_and_a_usage_error(capsys, names, tmp_path):
    code, out, err = run_main(capsys, "lr-find", "--data", names, "--steps", "30", "--out", tmp_path, "--quiet",
                         "--engine", "reference", *SMALL_MLP)
    assert code == 0, err
    assert (tmp_path / "lr_find.png").read_bytes()[:8] == PNG
    code, _out, err = run_main(capsys, "lr-find", "--data", names, "--steps", "30", "--out", tmp_path, "--quiet",
                         "--engine", "reference", "--processes", "2", *SMALL_MLP)
    assert code == 2 and "--processes" in err and err.count("\n") == 1




def test_the_suggestion_is_the_train_command_of_what_was_swept(capsys, names, tmp_path):
    """The suggested command trains the model the sweep swept: its --model, sizes and --data."""
    code, out, err = run_main(capsys, "lr-find", "--data", names, "--model", "deep", "--n-layers", "2",
                              "--no-batchnorm", "--steps", "30", "--out", tmp_path, "--quiet", *SMALL_MLP)
    assert code == 0, err
    line = next(l for l in out.splitlines() if l.startswith("suggested learning rate:"))
    command = line.split(": ", 1)[1].split("): ", 1)[1]
    assert command.startswith("npmlp train --model deep ") and " --lr " in command
    for option in ("--n-embd 4", "--n-hidden 16", "--n-layers 2", "--no-batchnorm", f"--data {names}"):
        assert f" {option} " in f" {command} ", (option, command)
    r = run_main(capsys, *command.split()[1:-2], "--steps", "5", "--out", tmp_path / "run", "--quiet",
                 "--lr", command.split()[-1])
    assert r[0] == 0, r[2]                         # the suggestion is a command that runs


def test_an_interrupted_sweep_leaves_no_empty_folder(capsys, names, tmp_path, monkeypatch):
    def ctrl_c(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(lrfind, "sweep", ctrl_c)
    out = tmp_path / "new" / "sweep"
    code, _out, err = run_main(capsys, "lr-find", "--data", names, "--steps", "30", "--out", out, "--quiet", *SMALL_MLP)
    assert code == 130 and err == "npmlp: interrupted\n"
    assert not (tmp_path / "new").exists(), "the folders made for the sweep were left behind"
    kept = tmp_path / "kept"
    (kept / "mine.txt").parent.mkdir()
    (kept / "mine.txt").write_text("the user's")
    code, _out, _err = run_main(capsys, "lr-find", "--data", names, "--steps", "30", "--out", kept, "--quiet",
                                *SMALL_MLP)
    assert code == 130 and (kept / "mine.txt").read_text() == "the user's"
