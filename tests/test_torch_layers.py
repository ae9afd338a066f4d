"""benchmarks/torch_layers.py, the lectures' layer-object loops in torch as programs (the peers of
`npmlp train --model deep/wavenet` in whole-process comparisons), train exactly what npmlp's
reference loop trains: the same names, split, init and minibatches give the same losses."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO, make_names

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    path = tmp_path_factory.mktemp("names") / "names.txt"
    path.write_text("\n".join(make_names(400, seed=3)) + "\n")
    return path


@pytest.mark.parametrize("kind", ["deep", "wavenet"])
def test_torch_layers_trains_what_npmlp_reference_trains(tmp_path, names, kind):
    """20 steps with the rate dropping after 15 (deep's 0.75): the same train and dev loss, up to
    float32 rounding, as `npmlp train --model KIND --engine reference` with its defaults."""
    r = subprocess.run([sys.executable, "benchmarks/torch_layers.py", "--model", kind, "--data", str(names),
                        "--steps", "20", "--threads", "1"], cwd=REPO, capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr
    theirs = {k: float(v) for k, v in (line.split() for line in r.stdout.splitlines())}
    env = {k: v for k, v in os.environ.items() if k != "NPMLP_DATA"}
    n = subprocess.run([sys.executable, "-m", "npmlp", "train", "--model", kind, "--data", str(names), "--steps",
                        "20", "--engine", "reference", "--quiet", "--no-plots", "--out", str(tmp_path / "run")],
                       cwd=REPO, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert n.returncode == 0, n.stderr
    mine = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for k in ("train_loss", "dev_loss"):
        assert theirs[k] == pytest.approx(mine[k], rel=1e-4), (k, theirs[k], mine[k])
    assert theirs["train_seconds"] > 0


def test_torch_layers_refuses_a_bad_option():
    r = subprocess.run([sys.executable, "benchmarks/torch_layers.py", "--steps", "0"], cwd=REPO,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and "--steps must be >= 1" in r.stderr and "Traceback" not in r.stderr
