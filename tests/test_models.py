"""Every command for every model (npmlp/app/registry.py): train, --resume bit-identical, eval, sample,
plot, gradcheck (float64 and float32), lr-find and diagnose for mlp, bn and deep; checkpoints that
name their model and sizes and carry the statistics; options a model does not have refused.
Commands run in-process through cli.main on generated names and small sizes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import StopAfter, make_names, names_file, needs_torch, run_main

from npmlp import gradcheck
from npmlp.app import cli
from npmlp.app.checkpoint import load_checkpoint
from npmlp.data import Vocab, build_dataset, split_words
from npmlp.train import TrainConfig, evaluate

SMALL = {"mlp": ["--n-hidden", "16", "--n-embd", "4"], "bn": ["--n-hidden", "16", "--n-embd", "4"],
         "deep": ["--n-hidden", "12", "--n-embd", "4", "--n-layers", "2"]}
KINDS = list(SMALL)


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return names_file(tmp_path_factory.mktemp("data"), 300, seed=6)


@pytest.fixture(scope="module")
def runs(names, tmp_path_factory):
    """One finished 300-step run of each model."""
    out = {}
    for kind in KINDS:
        d = tmp_path_factory.mktemp(kind) / "run"
        assert cli.main(["train", "--data", str(names), "--model", kind, "--steps", "300", "--quiet",
                         "--out", str(d), *SMALL[kind]]) == 0
        out[kind] = d
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_names_its_model_and_eval_reads_it(capsys, runs, names, kind):
    model, vocab, meta, lossi = load_checkpoint(runs[kind] / "model.npz")
    assert meta["model"] == kind and model.kind == kind and meta["sizes"] == model.sizes
    assert meta["run"]["engine"] == "fast" and len(lossi) == 300
    with np.load(runs[kind] / "model.npz") as z:
        assert set(z.files) == {*model.params, *getattr(model, "buffers", {}), "lossi", "meta"}
    if kind == "bn":     # calibrated over the training split when saved
        words = split_words(names.read_text().split(), 42)[0]
        X, _ = build_dataset(words, vocab, 3)
        h = model.params["C"][X].reshape(len(X), -1) @ model.params["W1"] + model.params["b1"]
        np.testing.assert_allclose(model.buffers["bnmean"], h.mean(0, dtype=np.float64), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(model.buffers["bnvar"], h.var(0, ddof=1, dtype=np.float64), rtol=1e-4)
    code, out, err = run_main(capsys, "eval", runs[kind], "--quiet")
    assert code == 0, err
    got = dict(zip(out.split()[::3], map(float, out.split()[2::3]), strict=True))
    metrics = json.loads((runs[kind] / "metrics.json").read_text())
    assert got["train"] == pytest.approx(metrics["train_loss"], abs=1e-4)
    parts = split_words(names.read_text().split(), 42)
    assert got["dev"] == pytest.approx(evaluate(model, *build_dataset(parts[1], vocab, 3)), abs=1e-4)
    assert got["dev"] < lossi[0]                 # it learned something


@pytest.mark.parametrize("kind", KINDS)
def test_sample_plot_and_diagnose_for_every_model(capsys, runs, kind, tmp_path):
    code, out, err = run_main(capsys, "sample", runs[kind], "-n", "5", "--seed", "1")
    assert code == 0 and len(out.split()) == 5 and all(n.endswith(".") for n in out.split()), err
    code, out, err = run_main(capsys, "plot", runs[kind], "--out", tmp_path, "--quiet")
    assert code == 0, err
    assert {p.name for p in tmp_path.glob("*.png")} == {"loss.png", "embedding.png", "gradients.png"}
    code, out, err = run_main(capsys, "diagnose", runs[kind], "--out", tmp_path / "d", "--quiet")
    assert code == 0, err
    assert "saturated" in out and "grad:data" in out and "update:data: not recorded" in out
    assert {p.name for p in (tmp_path / "d").glob("*.png")} == {"activations.png", "activation_grads.png",
                                                                "weight_grads.png"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gradcheck_every_model(capsys, names, kind, dtype):
    code, out, err = run_main(capsys, "gradcheck", "--data", names, "--model", kind, "--dtype", dtype, "--quiet",
                         "--coords", "8", *SMALL[kind])
    assert code == 0, out + err
    rows = gradcheck.parse_table(out)
    assert all(r["fd"].startswith("ok") for r in rows.values())
    params = [name for name in rows if name in load_params(kind)]
    assert params and all(rows[k]["fast"] in ("exact", "approx") for k in params)   # every model has a fast engine
    assert all(r["fast"] == "-" for k, r in rows.items() if k not in params)         # it keeps no intermediates


def load_params(kind) -> set:
    """The parameter names of the model SMALL[kind] makes."""
    from npmlp.app.registry import MODELS
    sizes = {flag[2:].replace("-", "_"): int(v) for flag, v in zip(SMALL[kind][::2], SMALL[kind][1::2], strict=True)}
    return set(MODELS[kind].init(27, **sizes).params)


@needs_torch
@pytest.mark.parametrize("kind", ["bn", "deep"])
def test_gradcheck_every_model_against_torch(capsys, names, kind):
    code, out, err = run_main(capsys, "gradcheck", "--data", names, "--model", kind, "--quiet", "--coords", "5",
                         *SMALL[kind])
    assert code == 0, out + err
    rows = gradcheck.parse_table(out)
    assert all(r["torch"] in ("exact", "approx") for r in rows.values())
    assert "dbnvar_inv" in out if kind == "bn" else "dbatchnorm1" in out


@pytest.mark.parametrize("kind", ["bn", "deep"])
def test_resume_is_bit_identical_for_every_model(names, tmp_path, monkeypatch, kind):
    full, part = tmp_path / "full", tmp_path / "part"
    argv = ["train", "--data", str(names), "--model", kind, "--steps", "240", "--quiet", "--no-plots",
            *SMALL[kind]]
    assert cli.main([*argv, "--out", str(full)]) == 0
    with monkeypatch.context() as m:
        m.setattr(cli, "StopFlag", lambda: StopAfter(97))
        assert cli.main([*argv, "--out", str(part)]) == 130
    assert cli.main(["train", "--resume", str(part), "--quiet", "--no-plots"]) == 0
    with np.load(full / "model.npz") as a, np.load(part / "model.npz") as b:
        for k in a.files:
            if k != "meta":
                assert np.array_equal(a[k], b[k]), k


def test_lr_find_for_the_other_models(capsys, names, tmp_path):
    for kind in ("bn", "deep"):
        code, out, err = run_main(capsys, "lr-find", "--data", names, "--model", kind, "--steps", "40", "--quiet",
                             "--out", tmp_path / kind, *SMALL[kind])
        assert code == 0 and "suggested learning rate" in out, err


@pytest.mark.parametrize("argv, needles", [
    (["--model", "bn", "--batch-size", "1"], ["--batch-size 1", "at least 2"]),
    (["--model", "deep", "--batch-size", "1"], ["--batch-size 1", "at least 2"]),
    (["--model", "bn", "--init", "kaiming"], ["--init", "drop --init"]),
    (["--n-layers", "3"], ["--n-layers", "deep and transformer models only"]),
    (["--model", "bn", "--no-batchnorm"], ["--no-batchnorm", "deep model only"]),
    (["--model", "deep", "--engine", "reference", "--processes", "2"], ["--processes", "fast engine"]),
    (["--model", "cnn"], ["--model", "'cnn'"]),
])
def test_options_a_model_does_not_have_are_refused(capsys, names, tmp_path, argv, needles):
    code, _out, err = run_main(capsys, "train", "--data", names, "--steps", "5", "--quiet", "--out", tmp_path / "r",
                               *argv)
    assert code == 2 and err.count("\n") == 1 and err.startswith("npmlp: error:"), err
    assert all(n in err for n in needles), err
    assert not (tmp_path / "r").exists()


def test_deep_without_batchnorm_trains_with_a_batch_of_one(capsys, names, tmp_path):
    code, _out, err = run_main(capsys, "train", "--data", names, "--model", "deep", "--no-batchnorm", "--batch-size",
                               "1", "--steps", "50", "--quiet", "--no-plots", "--out", tmp_path / "r", *SMALL["deep"])
    assert code == 0, err
    model, *_ = load_checkpoint(tmp_path / "r" / "model.npz")
    assert model.batchnorm == 0 and model.num_params == sum(p.size for p in model.params.values())
    assert meta_of(tmp_path / "r")["train"]["decay_at"] == 0.75          # part 3's schedule is deep's default


def meta_of(run):
    return load_checkpoint(run / "model.npz")[2]


def set_default(monkeypatch, cls, name, value):
    """Option `name` of model class `cls` defaulting to `value` for this test, as if its spec said so
    (an Option is frozen: its field is changed in place, so every spec sharing it sees the change)."""
    monkeypatch.setitem(cls.spec.option(name).__dict__, "default", value)


def test_models_default_sizes_have_one_home(monkeypatch):
    """A model's spec is the one home of its sizes' defaults: changed there, the help text, the
    sizes the options give and the model's own init all follow; the training options' defaults are
    TrainConfig's."""
    from npmlp.app import options
    from npmlp.app.registry import MODELS
    set_default(monkeypatch, MODELS["mlp"], "n_hidden", 123)
    set_default(monkeypatch, MODELS["deep"], "n_layers", 7)
    help_text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "hidden units H (default 123; deep: 100; wavenet: 128; rnn: 64;" in help_text
    assert "hidden layers (default 7; transformer: 4)" in help_text
    for kind, want in (("mlp", {"n_hidden": 123}), ("deep", {"n_layers": 7})):
        args = cli.build_parser().parse(["train", "--model", kind])
        _, sizes, _ = options.model_options(args)
        assert sizes == {**MODELS[kind].spec.defaults, **want}
    vocab = Vocab.from_words(make_names(50))
    assert MODELS["mlp"].init(vocab.size).n_hidden == 123 and MODELS["deep"].init(vocab.size).n_layers == 7
    train = cli.build_parser().parse(["train"])
    assert (train.steps, train.batch_size, train.lr) == (options.TRAIN.steps, options.TRAIN.batch_size,
                                                         options.TRAIN.lr)
    assert options.TRAIN == TrainConfig()
