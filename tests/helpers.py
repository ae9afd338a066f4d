"""Helpers shared by the tests: generated names and datasets, a CLI runner, the real names file,
the example notebooks run as scripts and in-process, checks that explain themselves, and how a
user error must look.

Import them with `from helpers import ...` (pytest puts tests/ on sys.path); fixtures are in conftest.py.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ("--n-hidden", "8", "--n-embd", "2", "--quiet")  # a model that trains at ~10k steps/s
HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed (pip install torch==2.13.0): "
                                                        "the reference it checks against is missing")


# ----------------------------------------------------------------------------- data

def real_names_path() -> Path:
    """The lecture's names.txt, found the way npmlp finds it: $NPMLP_DATA, then the cache, then
    the checked download (into the cache). Offline with no copy: one line saying how to pass one."""
    from npmlp.data import DataError
    from npmlp.loading import cache_path, data_source, load_words
    path = data_source(None)
    try:
        load_words(path)                                # reads, or fills the cache
        problem = None
    except DataError as e:
        problem = str(e)
    if problem:                                         # outside the except: no chained traceback
        pytest.fail(f"the tests need the lecture's names.txt: {problem}", pytrace=False)
    return path or cache_path()


def make_names(n: int = 300, seed: int = 0) -> list[str]:
    """n pronounceable lower-case names from a fixed seed: small, varied, fast to train on."""
    rng = random.Random(seed)
    on, vo = "bcdfghjklmnprstvwz", "aeiouy"
    return ["".join(rng.choice(on) + rng.choice(vo) for _ in range(rng.randint(1, 4))) + rng.choice(["", "n", "a"])
            for _ in range(n)]


def small_dataset(n: int = 400, seed: int = 0, block_size: int = 3):
    """(vocab, X, Y) built from make_names(n, seed): a small training set for in-process tests."""
    from npmlp.data import Vocab, build_dataset
    words = make_names(n, seed=seed)
    vocab = Vocab.from_words(words)
    return (vocab, *build_dataset(words, vocab, block_size))


# ----------------------------------------------------------------------------- the command line

def run_cli(*args, env: dict | None = None, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    """Run `python -m npmlp ARGS` as a user would; NPMLP_DATA is unset unless env sets it."""
    full_env = {k: v for k, v in os.environ.items() if k != "NPMLP_DATA"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "npmlp", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd)


PROGRESS = re.compile(r"\|\s*(\d+)/(\d+) \[")


def interrupt(args, signum, after_step: int, then=(), gap: float = 0.0):
    """Start `npmlp ARGS` (with its progress bar on), wait until the bar passes `after_step`, send
    `signum` (then each signal of `then`, `gap` seconds apart), and return (exit code, stderr)."""
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
    for s in (signum, *then):
        p.send_signal(s)
        time.sleep(gap)
    code = p.wait(timeout=120)
    reader.join(timeout=10)
    return code, b"".join(chunks).decode()


def run_main(capsys, *argv):
    """`npmlp ARGV` in-process through cli.main -> (exit code, stdout, stderr); argparse's own
    errors (which exit) give their exit code too."""
    from npmlp.app import cli
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def names_file(folder: Path, n: int = 300, seed: int = 0) -> Path:
    """folder/names.txt holding make_names(n, seed)."""
    p = Path(folder) / "names.txt"
    p.write_text("\n".join(make_names(n, seed)) + "\n")
    return p


# ----------------------------------------------------------------------------- notebooks

def run_notebook(path: Path, env: dict | None = None, hide_torch: bool = False,
                 timeout: float = 300) -> subprocess.CompletedProcess:
    """`python NOTEBOOK` as a script, with env added to ours (and MPLBACKEND=Agg); it must exit 0
    without a traceback. hide_torch: a `torch` package first on the path whose import fails."""
    with tempfile.TemporaryDirectory() as hide:
        full_env = {**os.environ, "MPLBACKEND": "Agg", **(env or {})}
        if hide_torch:
            (Path(hide) / "torch").mkdir()
            (Path(hide) / "torch" / "__init__.py").write_text('raise ImportError("torch is hidden by this test")\n')
            full_env["PYTHONPATH"] = os.pathsep.join(p for p in (hide, full_env.get("PYTHONPATH")) if p)
        r = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=full_env,
                           timeout=timeout, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return r


def notebook_defs(path: Path, names: Path) -> tuple[dict, str]:
    """Run the notebook's marimo app in this process on NPMLP_DATA=names -> (the names its cells
    defined, what it printed). Its figures are closed after."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NPMLP_DATA", str(names))
        spec = importlib.util.spec_from_file_location(Path(path).stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            _, defs = module.app.run()
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
    return defs, out.getvalue()


def cmp_lines(stdout: str) -> list[str]:
    """The notebooks' printed cmp lines: `name | exact: ... | approximate: ... | maxdiff: ...`."""
    return [line for line in stdout.splitlines() if "| approximate: " in line]


PNG = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    """A real PNG of a sensible size that matplotlib can read back."""
    from matplotlib.image import imread

    data = Path(path).read_bytes()
    assert data[:8] == PNG, f"{path} is not a PNG"
    assert 5_000 < len(data) < 400_000, f"{path}: {len(data)} bytes"
    h, w = imread(path).shape[:2]
    assert h > 200 and w > 200, f"{path}: {w}x{h} px"


def assert_user_error(r, code: int, *needles: str) -> str:
    """Exit `code`, exactly one `npmlp: error: ...` line containing every needle, no traceback,
    and (runs use --quiet) nothing on stderr that is not an `npmlp:` line: no usage dump, no warnings."""
    assert r.returncode == code, f"exit {r.returncode}, expected {code}\nstderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    errors = [line for line in lines if line.startswith("npmlp: error: ")]
    assert len(errors) == 1, f"want one error line, got:\n{r.stderr}"
    stray = [line for line in lines if not line.startswith("npmlp: ")]
    assert not stray, f"stray stderr lines: {stray}"
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


def notes(r) -> list[str]:
    return [line[len("npmlp: note: "):] for line in r.stderr.splitlines() if line.startswith("npmlp: note: ")]


class StopAfter:
    """Stands in for cli.StopFlag: 'receives' SIGINT after `n` steps, so the checkpoint is made by the
    real interrupt path of cmd_train at an exact step (test_resume.py sends real signals)."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    @property
    def signum(self):
        self.calls += 1
        return signal.SIGINT if self.calls >= self.n else None


# ----------------------------------------------------------------------------- files

def snapshot(folder: Path) -> dict[str, str]:
    """name -> SHA-256 of every file under `folder` (hidden temp files included), to prove nothing changed."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def temp_files(folder: Path) -> list[Path]:
    """Leftovers of an atomic write (loading.atomic_open names them .NAME.XXXX.tmp)."""
    return sorted(Path(folder).rglob(".*.tmp")) if Path(folder).exists() else []


# ----------------------------------------------------------------------------- numbers

def rel(mine, ref) -> float:
    """max |mine - ref| / max |ref| (shapes must agree)."""
    mine, ref = np.asarray(mine, np.float64), np.asarray(ref, np.float64)
    assert mine.shape == ref.shape, (mine.shape, ref.shape)
    return float(np.abs(mine - ref).max(initial=0.0) / max(np.abs(ref).max(initial=0.0), 1e-300))


def check(name, mine, ref, rtol, scale=None):
    """Assert max|mine - ref| <= rtol * scale (default max|ref|); on failure print shape, max abs
    diff, relative error and the worst few mine-vs-ref values. Returns the relative error."""
    mine, ref = np.asarray(mine), np.asarray(ref)
    assert mine.shape == ref.shape, f"{name}: shape {mine.shape} != reference {ref.shape}"
    diff = np.abs(mine.astype(np.float64) - ref.astype(np.float64))
    maxdiff = float(diff.max(initial=0.0))
    scale = max(float(np.abs(ref).max(initial=0.0)) if scale is None else scale, 1e-300)
    r = maxdiff / scale
    if not r <= rtol:  # also catches NaN
        worst = np.argsort(diff.ravel())[-4:][::-1]
        pairs = ", ".join(f"{mine.ravel()[i]:.10g} vs {ref.ravel()[i]:.10g}" for i in worst)
        pytest.fail(f"{name} {mine.shape} {mine.dtype}: maxdiff {maxdiff:.3e}, rel {r:.3e} > {rtol:g} "
                    f"(scale {scale:.3e}, max|ref| {float(np.abs(ref).max(initial=0)):.3e}); "
                    f"mine vs ref (worst): {pairs}")
    return r


def magnitude_scales(model, cache, X, Y):
    """{name: largest magnitude summed into that gradient}: the backward run on absolute values,
    with tanh' taken as 1. Floating-point sums are accurate relative to the sum of |terms|, not to
    a result that cancelled. Two cancellations are inherent, in torch as in npmlp: a saturated tanh
    unit's 1 - h^2 keeps only ~eps/(1 - h^2) of relative accuracy, and a confident softmax's
    p - 1 is accurate to eps/B in absolute terms. So a gradient flowing through either is compared
    relative to these magnitudes (>= |gradient|), not to its own possibly tiny size."""
    P = {k: np.abs(v.astype(np.float64)) for k, v in model.params.items()}
    B, T = X.shape
    logits = cache.logits.astype(np.float64)                                   # (B, V)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)                                               # (B, V) softmax
    s = {"logits": p.copy()}
    s["logits"][np.arange(B), Y] += 1
    s["logits"] /= B                                                           # (B, V) (p + onehot) / B
    s["W2"] = np.abs(cache.h.astype(np.float64)).T @ s["logits"]               # (H, V)
    s["b2"] = s["logits"].sum(0)                                               # (V,)
    s["h"] = s["logits"] @ P["W2"].T                                           # (B, H)
    s["hpreact"] = s["h"]                                                      # (B, H) tanh' <= 1
    s["W1"] = np.abs(cache.embcat.astype(np.float64)).T @ s["hpreact"]         # (T*E, H)
    s["b1"] = s["hpreact"].sum(0)                                              # (H,)
    s["embcat"] = s["hpreact"] @ P["W1"].T                                     # (B, T*E)
    s["emb"] = s["embcat"].reshape(B, T, -1)                                   # (B, T, E)
    s["C"] = np.zeros(P["C"].shape)
    np.add.at(s["C"], np.asarray(X, np.int64).ravel(), s["emb"].reshape(B * T, -1))  # (V, E)
    return {k: float(v.max(initial=0.0)) for k, v in s.items()}
