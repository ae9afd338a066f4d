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
