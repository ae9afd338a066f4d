"""Part 1's neural bigram (npmlp/bigram.py, `--model bigram`): its gradient against torch and finite
differences, on rows of context and on makemore.py's sequences; its fast engine (fast/counts.py)
against the reference; the lecture's recipe as the default; every command.

Legend: B batch, V vocab size."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import StopAfter, check, make_names, names_file, needs_torch, run_main

from npmlp import Bigram, gradcheck
from npmlp.app import cli
from npmlp.app.checkpoint import load_checkpoint
from npmlp.contract import from_makemore, to_makemore
from npmlp.data import Vocab, build_dataset, build_sequences
from npmlp.fast import engine
from npmlp.train import TrainConfig, sgd


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return names_file(tmp_path_factory.mktemp("data"), 300, seed=8)


def pairs(n=300, seed=8):
    words = make_names(n, seed)
    vocab = Vocab.from_words(words)
    return vocab, *build_dataset(words, vocab, 1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_gradient_against_torch_and_finite_differences(dtype):
    vocab, X, Y = pairs()
    model = Bigram.init(vocab.size, dtype=dtype, seed=3)
    rep = gradcheck.report(model, *gradcheck.minibatch(X, Y, 64, seed=1), coords=10)
    assert [r.name for r in rep.rows] == ["logits", "W"]
    assert all(r.fd_ok for r in rep.rows), gradcheck.format_table(rep.rows, dtype)
    if gradcheck.NOT_CHECKED != rep.rows[0].torch_verdict:     # with torch: held to its autograd
        assert all(r.torch_verdict in ("exact", "approx") for r in rep.rows), gradcheck.format_table(rep.rows, dtype)


def test_the_gradient_is_the_row_sums_of_dlogits():
    """dW[x] adds the dlogits of every pair that starts with x: the one-hot matmul xenc.T @ dlogits."""
    vocab, X, Y = pairs()
    model = Bigram.init(vocab.size, dtype=np.float64)
    _, c = model.forward(X, Y)
    grads, dacts = model.backward(c)
    xenc = np.eye(vocab.size)[X[:, 0]]                                       # (B, V)
    check("dW", grads["W"], xenc.T @ dacts["logits"], 1e-12)


@needs_torch
def test_makemore_s_bigram_on_sequences_is_torch_s():
    """from_makemore + loss_and_grads on makemore.py's (B, T) sequences (-1 masked) + to_makemore give
    the loss and gradient of its `logits` table under F.cross_entropy(ignore_index=-1)."""
    import torch
    import torch.nn.functional as F
    words = make_names(200, 2)
    vocab = Vocab.from_words(words)
    X, Y = build_sequences(words[:40], vocab, max(map(len, words)) + 1)
    logits = torch.randn(vocab.size, vocab.size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    table = logits.clone().requires_grad_(True)
    out = table[torch.as_tensor(X.astype(np.int64))]                         # (B, T, V)
    loss = F.cross_entropy(out.view(-1, vocab.size), torch.as_tensor(Y.astype(np.int64)).view(-1), ignore_index=-1)
    loss.backward()
    model = from_makemore({"logits": logits}, "bigram")
    mine, grads = model.loss_and_grads(X, Y)
    assert mine == pytest.approx(loss.item(), rel=1e-12)
    check("dlogits", to_makemore(model, grads)["logits"], table.grad.numpy(), 1e-12)
    assert set(to_makemore(model)) == {"logits"}


@pytest.mark.parametrize("cfg", [
    TrainConfig(steps=60, batch_size=None, lr=50.0, decay_at=1.0, reg=0.01),      # the lecture's recipe
    TrainConfig(steps=300, batch_size=16, lr=5.0, lr_decayed=1.0, decay_at=0.5),
    TrainConfig(steps=300, batch_size=32, optimizer="adamw", lr=0.05, weight_decay=0.01),
], ids=["full batch, reg", "minibatch, sgd", "adamw"])
def test_the_fast_engine_follows_the_reference(cfg):
    """fast/counts.py's step from pair counts against bigram.py + train.sgd, float64."""
    vocab, X, Y = pairs()
    ref, fast = (Bigram.init(vocab.size, dtype=np.float64, seed=5) for _ in range(2))
    lossi_ref, _ = sgd(ref, X, Y, cfg)
    lossi_fast, _ = engine.sgd(fast, X, Y, cfg)
    check("W", fast.params["W"], ref.params["W"], 1e-10)
    check("lossi", lossi_fast, lossi_ref, 1e-6)                               # lossi is float32


def test_the_fast_gradient_is_gradchecks_column():
    vocab, X, Y = pairs()
    model = Bigram.init(vocab.size, dtype=np.float64, seed=5)
    Xb, Yb = X[:50], Y[:50]
    check("fast dW", engine.gradients(model, Xb, Yb)["W"], model.loss_and_grads(Xb, Yb)[1]["W"], 1e-12)


def test_a_bigram_reads_one_character_and_offers_two_inits():
    model = Bigram.init(27, scheme="zeros")
    assert model.sizes == {"block_size": 1} and model.num_params == 729 and not model.params["W"].any()
    assert Bigram.init(27).params["W"].std() == pytest.approx(1, abs=0.1)
    with pytest.raises(ValueError, match="one character of context"):
        Bigram.init(27, block_size=3)
    with pytest.raises(ValueError, match="block_size=1"):                  # rows of 3 with one target each
        Bigram.init(27).forward(np.zeros((4, 3), np.int64), np.zeros(4, np.int64))
    assert Bigram.init(27).logits(np.zeros((4, 3), np.int64)).shape == (4, 3, 27)   # makemore.py's sequences


def test_the_lectures_recipe_is_the_default(names_path, capsys, tmp_path):
    """`npmlp train --model bigram`: 100 steps of gradient descent on every pair at lr 50, with
    0.01 * mean(W**2), as part 1 trains it; the loss ends near the counting model's 2.45-2.47."""
    code, out, err = run_main(capsys, "train", "--model", "bigram", "--out", tmp_path / "r", "--quiet", "--no-plots")
    assert code == 0, err
    model, _, meta, lossi = load_checkpoint(tmp_path / "r" / "model.npz")
    cfg = meta["train"]
    assert (cfg["steps"], cfg["batch_size"], cfg["lr"], cfg["reg"], meta["run"]["engine"]) == (100, None, 50.0, 0.01,
                                                                                              "fast")
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert 2.44 < metrics["train_loss"] < 2.50 and lossi[-1] < lossi[0]


def test_every_command(names, capsys, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    argv = ["train", "--data", names, "--model", "bigram", "--steps", "40", "--quiet"]
    assert run_main(capsys, *argv, "--out", full)[0] == 0
    assert sorted(p.name for p in full.glob("*.png")) == ["loss.png"]          # no embedding: its rows are logits
    with pytest.MonkeyPatch.context() as m:
        m.setattr(cli, "StopFlag", lambda: StopAfter(17))
        assert run_main(capsys, *argv, "--out", part)[0] == 130
    assert run_main(capsys, "train", "--resume", part, "--quiet")[0] == 0
    with np.load(full / "model.npz") as a, np.load(part / "model.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files if k != "meta")
    code, out, err = run_main(capsys, "eval", full, "--quiet")
    assert code == 0 and out.startswith("train loss "), err
    code, out, err = run_main(capsys, "sample", full, "-n", "5", "--quiet")
    assert code == 0 and len(out.split()) == 5, err
    code, out, err = run_main(capsys, "gradcheck", "--data", names, "--model", "bigram", "--quiet", "--coords", "5")
    assert code == 0 and "all 2 gradients pass" in out, out + err
    code, out, err = run_main(capsys, "plot", full, "--out", tmp_path / "p", "--quiet")
    assert code == 0 and sorted(p.name for p in (tmp_path / "p").glob("*.png")) == ["gradients.png", "loss.png"]
    code, out, err = run_main(capsys, "plot", full, "--pca", "--out", tmp_path / "p2", "--quiet")
    assert code == 2 and "embeds no characters" in err
    code, out, err = run_main(capsys, "diagnose", full, "--out", tmp_path / "d", "--quiet")
    assert code == 0 and "none: the model has no tanh layer" in out and "W " in out, err
    assert sorted(p.name for p in (tmp_path / "d").glob("*.png")) == ["weight_grads.png"]
    code, out, err = run_main(capsys, "lr-find", "--data", names, "--model", "bigram", "--steps", "20", "--quiet",
                              "--out", tmp_path / "lr")
    assert code == 0 and "suggested learning rate" in out and "--model bigram" in out, err
