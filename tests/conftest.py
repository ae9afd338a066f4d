"""Fixtures shared by the tests; the helpers they use are in helpers.py."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import HAVE_TORCH, names_file, real_names_path


@pytest.fixture(scope="session")
def names_path() -> Path:
    return real_names_path()


@pytest.fixture
def small_names(tmp_path) -> Path:
    return names_file(tmp_path)


@pytest.fixture(scope="session")
def tiny_names(tmp_path_factory) -> Path:
    """300 generated names, shared by the modules that read one small trained run."""
    return names_file(tmp_path_factory.mktemp("data"), 300, seed=3)


@pytest.fixture(scope="session")
def tiny_run(tiny_names, tmp_path_factory) -> Path:
    """A finished 400-step run of a small lecture-2 model on tiny_names (read it, don't change it)."""
    from npmlp.app import cli
    out = tmp_path_factory.mktemp("runs") / "run"
    assert cli.main(["train", "--data", str(tiny_names), "--steps", "400", "--quiet", "--out", str(out),
                     "--n-embd", "4", "--n-hidden", "16"]) == 0
    return out


@pytest.fixture(scope="session", autouse=HAVE_TORCH)
def torch_one_thread():
    """torch's intra-op threads fight over this machine's 2 shared cores (35 ms a tiny step with
    2 threads vs 0.2 ms with 1); one thread keeps the reference fast. Restored afterwards."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
