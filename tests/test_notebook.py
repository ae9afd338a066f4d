"""examples/lecture2.py, the marimo notebook, runs top to bottom as a plain script."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, make_names

pytest.importorskip("marimo", reason="marimo is not installed (pip install 'npmlp[notebook]')")
NOTEBOOK = REPO / "examples" / "lecture2.py"


@pytest.fixture
def names(tmp_path):
    p = tmp_path / "names.txt"
    p.write_text("\n".join(make_names(300, seed=4)) + "\n")
    return p


def test_notebook_runs_as_a_script(names):
    env = {**os.environ, "NPMLP_DATA": str(names), "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, str(NOTEBOOK)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr


def test_notebook_cells_compute_the_lecture(names, monkeypatch):
    """Run the app in-process and read what its cells defined."""
    monkeypatch.setenv("NPMLP_DATA", str(names))
    spec = importlib.util.spec_from_file_location("lecture2", NOTEBOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _, defs = module.app.run()
    assert defs["words"] == make_names(300, seed=4)            # the names of NPMLP_DATA
    assert all(r.ok for r in defs["grad_rows"]) and len(defs["grad_rows"]) == 10
    lossi = defs["lossi"]
    assert np.isfinite(lossi).all() and lossi[-100:].mean() < lossi[:100].mean()   # it learned
    vocab = defs["vocab"]
    assert len(defs["samples"]) == 20
    assert all(s.endswith(".") and set(s) <= set(vocab.itos) for s in defs["samples"])


def test_notebook_falls_back_to_generated_names_offline(tmp_path):
    env = {**os.environ, "NPMLP_DATA": str(tmp_path / "missing.txt"), "MPLBACKEND": "Agg",
           "XDG_CACHE_HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, str(NOTEBOOK)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
