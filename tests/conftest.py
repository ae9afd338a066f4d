"""Shared fixtures: the real names file, small generated datasets, and a CLI runner."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def real_names_path() -> Path:
    p = Path(os.environ.get("NPMLP_DATA") or REPO.parent / "shared" / "data" / "names.txt")
    if not p.is_file():
        pytest.fail(f"the real names.txt is needed: set NPMLP_DATA (looked at {p})")
    return p


@pytest.fixture(scope="session")
def names_path() -> Path:
    return real_names_path()


def make_names(n: int = 300, seed: int = 0) -> list[str]:
    """n pronounceable lower-case names from a fixed seed: small, varied, fast to train on."""
    rng = random.Random(seed)
    on, vo = "bcdfghjklmnprstvwz", "aeiouy"
    return ["".join(rng.choice(on) + rng.choice(vo) for _ in range(rng.randint(1, 4))) + rng.choice(["", "n", "a"])
            for _ in range(n)]


@pytest.fixture
def small_names(tmp_path) -> Path:
    p = tmp_path / "names.txt"
    p.write_text("\n".join(make_names()) + "\n")
    return p


def run_cli(*args, env: dict | None = None, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    """Run `python -m npmlp ARGS` as a user would; NPMLP_DATA is unset unless env sets it."""
    full_env = {k: v for k, v in os.environ.items() if k != "NPMLP_DATA"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "npmlp", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd)


@pytest.fixture(scope="module")
def torch_one_thread():
    """torch's intra-op threads fight over this machine's 2 shared cores (35 ms a tiny step with
    2 threads vs 0.2 ms with 1); one thread keeps the reference fast. Restored afterwards.
    Modules that use torch: pytestmark = pytest.mark.usefixtures("torch_one_thread")."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def check(name, mine, ref, rtol, scale=None):
    """Assert max|mine - ref| <= rtol * scale (default max|ref|); on failure print shape, max abs
    diff, relative error and the worst few mine-vs-ref values. Returns the relative error."""
    import numpy as np
    mine, ref = np.asarray(mine), np.asarray(ref)
    assert mine.shape == ref.shape, f"{name}: shape {mine.shape} != reference {ref.shape}"
    diff = np.abs(mine.astype(np.float64) - ref.astype(np.float64))
    maxdiff = float(diff.max(initial=0.0))
    scale = max(float(np.abs(ref).max(initial=0.0)) if scale is None else scale, 1e-300)
    rel = maxdiff / scale
    if not rel <= rtol:  # also catches NaN
        worst = np.argsort(diff.ravel())[-4:][::-1]
        pairs = ", ".join(f"{mine.ravel()[i]:.10g} vs {ref.ravel()[i]:.10g}" for i in worst)
        pytest.fail(f"{name} {mine.shape} {mine.dtype}: maxdiff {maxdiff:.3e}, rel {rel:.3e} > {rtol:g} "
                    f"(scale {scale:.3e}, max|ref| {float(np.abs(ref).max(initial=0)):.3e}); "
                    f"mine vs ref (worst): {pairs}")
    return rel


def small_dataset(n: int = 400, seed: int = 0, block_size: int = 3):
    """(vocab, X, Y) built from make_names(n, seed): a small training set for in-process tests."""
    from npmlp.data import Vocab, build_dataset
    words = make_names(n, seed=seed)
    vocab = Vocab.from_words(words)
    return (vocab, *build_dataset(words, vocab, block_size))
