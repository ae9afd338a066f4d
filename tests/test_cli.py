"""The reading commands of the CLI: the figures `npmlp train` writes, `plot`, `sample`, `eval`,
bad run directories, `--version`, and an import of the package that stays free of torch and
matplotlib. Commands run in-process through cli.main on generated names and a tiny model."""
from __future__ import annotations

import json
import subprocess
import sys
from itertools import combinations

import numpy as np
import pytest
from helpers import SMALL_MLP, assert_png, run_main

from npmlp import __version__
from npmlp.app import cli
from npmlp.app.checkpoint import load_checkpoint
from npmlp.data import build_dataset
from npmlp.train import evaluate, sample


@pytest.fixture(scope="module")
def names(tiny_names):
    return tiny_names


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run


# ----------------------------------------------------------------------------- figures

def test_train_writes_loss_and_embedding_figures(capsys, run_dir, names, tmp_path):
    for name in ("loss.png", "embedding.png"):
        assert_png(run_dir / name)
    code, _out, err = run_main(capsys, "train", "--data", names, "--steps", "50", "--quiet", "--no-plots",
                         "--out", tmp_path / "r", *SMALL_MLP)
    assert code == 0, err
    assert not list((tmp_path / "r").glob("*.png"))


def test_plot_redraws_a_run(capsys, run_dir, tmp_path):
    code, out, err = run_main(capsys, "plot", run_dir, "--out", tmp_path / "raw", "--quiet")
    assert code == 0, err
    written = out.split("wrote:")[1].split()
    assert [p.rsplit("/", 1)[1] for p in written] == ["loss.png", "embedding.png", "gradients.png"]
    for name in ("loss.png", "embedding.png", "gradients.png"):
        assert_png(tmp_path / "raw" / name)
    code, out, err = run_main(capsys, "plot", run_dir, "--out", tmp_path / "pca", "--pca", "--quiet")
    assert code == 0, err
    assert (tmp_path / "pca" / "embedding.png").read_bytes() != (tmp_path / "raw" / "embedding.png").read_bytes()


def test_pca_projection_keeps_the_most_variance():
    from npmlp.app.plots import embedding_2d

    C = np.random.default_rng(0).standard_normal((27, 6)) * [5, 1, 3, 0.1, 0.1, 0.1]
    pts, xlabel, _ = embedding_2d(C, pca=True)
    Z = C - C.mean(0)
    S = np.linalg.svd(Z, compute_uv=False)
    assert pts.var(0).sum() == pytest.approx((S[:2] ** 2).sum() / len(C))    # the top two components
    assert pts.var(0).sum() >= max(Z[:, [i, j]].var(0).sum() for i, j in combinations(range(6), 2))
    assert "PC 1" in xlabel
    assert np.array_equal(embedding_2d(C)[0], C[:, :2])


# ----------------------------------------------------------------------------- sample, eval

def test_sample_is_reproducible_and_well_formed(capsys, run_dir):
    model, vocab, _meta, _ = load_checkpoint(run_dir / "model.npz")
    code, out, err = run_main(capsys, "sample", run_dir, "-n", "15", "--seed", "3")
    assert code == 0, err
    names = out.split()
    assert names == sample(model, vocab, 15, seed=3)
    assert run_main(capsys, "sample", run_dir, "-n", "15", "--seed", "3")[1].split() == names
    assert run_main(capsys, "sample", run_dir, "-n", "15", "--seed", "4")[1].split() != names
    assert all(n.endswith(".") and set(n) <= set(vocab.itos) for n in names)
    # the default seed gives the names `npmlp train` printed
    default = run_main(capsys, "sample", run_dir)[1].split()
    assert default == json.loads((run_dir / "metrics.json").read_text())["samples"]
    hot = run_main(capsys, "sample", run_dir, "-n", "15", "--seed", "3", "--temperature", "0.3")[1].split()
    assert hot != names and all(n.endswith(".") for n in hot)


def test_sample_first_k_names_do_not_depend_on_n_and_tiny_temperature_is_greedy(run_dir):
    model, vocab, _, _ = load_checkpoint(run_dir / "model.npz")
    assert sample(model, vocab, 20, seed=3)[:4] == sample(model, vocab, 4, seed=3)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no warnings on the way
        greedy = sample(model, vocab, 3, seed=3, temperature=1e-310)
    assert len(set(greedy)) == 1 and greedy[0].endswith(".")
    # greedy: each character is the argmax of the logits given the context so far
    ctx, want = [0] * model.block_size, []
    while True:
        ix = int(np.argmax(model.logits(np.array([ctx]))[0]))
        want.append(ix)
        ctx = ctx[1:] + [ix]
        if ix == 0 or len(want) == 100:
            break
    assert greedy[0] == vocab.decode(want)


def test_eval_prints_the_three_losses(capsys, run_dir, names):
    code, out, err = run_main(capsys, "eval", run_dir, "--quiet")
    assert code == 0, err
    cells = out.split()
    got = {cells[i]: float(cells[i + 2]) for i in range(0, len(cells), 3)}
    model, vocab, meta, _ = load_checkpoint(run_dir / "model.npz")
    from npmlp.data import split_words
    from npmlp.loading import load_words
    parts = split_words(load_words(names), meta["run"]["split_seed"])
    want = {k: evaluate(model, *build_dataset(p, vocab, model.block_size))
            for k, p in zip(("train", "dev", "test"), parts, strict=True)}
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=6e-5)


@pytest.mark.parametrize("command", ["sample", "eval", "plot"])
def test_bad_run_dirs_are_one_line_errors(capsys, tmp_path, command):
    code, out, err = run_main(capsys, command, tmp_path / "nope")
    assert code == 2 and err.startswith("npmlp: error: run directory") and err.count("\n") == 1
    code, out, err = run_main(capsys, command, tmp_path)
    assert code == 2 and "holds no model.npz" in err and err.count("\n") == 1
    (tmp_path / "model.npz").write_bytes(b"not a checkpoint")
    code, _out, err = run_main(capsys, command, tmp_path)
    assert code == 1 and err.startswith("npmlp: error:") and err.count("\n") == 1


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"npmlp {__version__}"


def test_import_npmlp_stays_light():
    """Neither torch nor matplotlib is imported by the package, the CLI or the reading tools."""
    code = ("import sys, npmlp, npmlp.app.cli, npmlp.gradcheck, npmlp.app.lrfind, npmlp.app.rundir, npmlp.fast.engine; "
            "bad = [m for m in ('torch', 'matplotlib') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ----------------------------------------------------------------------------- sample as a stream

def test_sample_prints_as_it_draws_and_ctrl_c_stops_it_cleanly(run_dir, tmp_path):
    """-n 10^23 cannot be held in memory: names are printed as they are drawn; a real SIGINT ends
    it with 130, one line saying how many were printed, and no name cut in two."""
    import signal
    import time
    out = tmp_path / "names.txt"
    with open(out, "w") as f:
        # SIGINT as Ctrl-C finds it in a terminal: a shell's background job (CI runs a suite as one)
        # starts its children with SIGINT ignored, and such a child rightly never sees it
        p = subprocess.Popen([sys.executable, "-m", "npmlp", "sample", str(run_dir), "-n", str(10**23)],
                             stdout=f, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 120
            while out.stat().st_size < 50_000 and p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)                   # until the names fill a few of stdout's buffers
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=60)     # a bound: never a suite that hangs
            code = p.returncode
        finally:
            p.kill()
    assert code == 130, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("npmlp: interrupted after ") and lines[0].endswith(
        f" of {10**23:,} names"), err
    printed = int(lines[0].split("after ")[1].split(" of")[0].replace(",", ""))
    names = out.read_text().split("\n")
    assert names[-1] == "" and len(names) - 1 == printed >= 1000
    model, vocab, _, _ = load_checkpoint(run_dir / "model.npz")
    assert names[:300] == sample(model, vocab, 300, seed=json.loads(
        (run_dir / "metrics.json").read_text())["config"]["seed"] + 10)


def overflowing(run_dir, tmp_path):
    """A copy of the run whose W2 is all 3e38 (finite, so the checkpoint loads): its logits overflow."""
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    with np.load(copy / "model.npz") as z:
        a = {k: z[k] for k in z.files}
    a["W2"] = np.full_like(a["W2"], 3e38)
    np.savez(copy / "model.npz", **a)
    return copy


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_a_model_that_overflows_is_refused_not_printed_as_nan(capsys, run_dir, tmp_path, command):
    """eval printed `train loss nan` with exit 0, sample printed '.' names: one line and exit 1 instead."""
    copy = overflowing(run_dir, tmp_path)
    code, out, err = run_main(capsys, command, copy)
    assert code == 1 and out == "", err
    assert err.startswith("npmlp: error: ") and err.count("\n") == 1, err
    assert str(copy / "model.npz") in err and "NaN/inf" in err and "overflow" in err
