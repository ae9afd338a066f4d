"""The benchmark command on a tiny sweep, so it never rots: it runs, every peer agrees with npmlp
before it is timed, and the JSON, Markdown and PNG it writes exist and parse.

torch.compile is left out (its compile alone takes ~10 s a configuration; set
NPMLP_BENCH_SMOKE_COMPILE=1 to include it); JAX runs if installed, else the report says it was
skipped and why. No assertion is about speed.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, make_names

from npmlp.data import Vocab

sys.path.insert(0, str(REPO))                    # `benchmarks` lives beside `npmlp`, not installed
from benchmarks.bench import flops_per_step  # noqa: E402

HAS_JAX = importlib.util.find_spec("jax") is not None


def test_flops_formula_is_the_lectures_342_B_H():
    for B, H in ((32, 200), (1, 1), (4096, 1000)):
        assert flops_per_step(B, H, 27) == 342 * B * H       # T=3, E=10, V=27


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    names = tmp / "names.txt"
    words = make_names(300, seed=2)
    names.write_text("\n".join(words) + "\n")
    peers = ["npmlp", "torch_eager", "torch_manual", "jax"]
    if os.environ.get("NPMLP_BENCH_SMOKE_COMPILE"):
        peers.append("torch_compile")
    out = tmp / "results"
    cmd = [sys.executable, "-m", "benchmarks.bench", "--data", str(names), "--out", str(out), "--name", "smoke",
           "--batch-sizes", "1", "8", "--hidden", "8", "--threads", "1", "--peers", *peers,
           "--repeats", "2", "--min-time", "0.01", "--eval-hidden", "8", "--eval-repeats", "1",
           "--profile-batch-sizes", "8", "--profile-time", "0.05", "--e2e-repeats", "1", "--e2e-steps", "30"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r, out, peers, Vocab.from_words(words).size


def test_writes_json_with_every_number(bench_run):
    r, out, peers, V = bench_run
    rep = json.loads((out / "smoke.json").read_text())
    assert rep["machine"]["cpus"] >= 1 and rep["machine"]["versions"]["numpy"]
    (run,) = rep["runs"]
    assert run["label"] == "1 core" and run["thread_report"]["affinity"] and run["sgemm_peak_gflops"] > 0
    assert run["thread_report"]["env"]["OPENBLAS_NUM_THREADS"] == "1"
    ran = [p for p in peers if p not in run["skipped"]]
    assert [(c["H"], c["B"]) for c in run["configs"]] == [(8, 1), (8, 8)]
    for c in run["configs"]:
        assert c["flops"] == flops_per_step(c["B"], 8, V) == 6 * c["B"] * 8 * (3 * 10 + V)
        assert sorted(c["peers"]) == sorted(ran)
        for p, res in c["peers"].items():
            assert len(res["us"]) == 2 and all(u > 0 for u in res["us"]), p
            assert res["min_us"] <= res["median_us"] <= res["max_us"]
            assert res["agree_max_rel"] <= 1e-4, (p, res["agree_losses"])
            assert len(res["agree_losses"]) == 3
        assert c["peers"]["torch_eager"]["ratio_vs_torch_eager"] == pytest.approx(1.0)
    (ev,) = run["eval"]
    assert ev["max_rel_diff"] <= 1e-5 and ev["ms"]["npmlp"]["median"] > 0
    (prof,) = run["profiles"]
    assert prof["plain_step_us"] > 0 and any(row["op"].startswith("np.matmul") for row in prof["rows"])
    (e2e,) = rep["e2e"]
    assert e2e["steps"] == 30 and e2e["wall_s"] > 0 and e2e["dev_loss"] > 0


def test_missing_jax_is_skipped_with_one_clear_line(bench_run):
    r, out, _, _ = bench_run
    run = json.loads((out / "smoke.json").read_text())["runs"][0]
    if HAS_JAX:
        assert "jax" not in run["skipped"] and "jax" in run["configs"][0]["peers"]
    else:
        assert "not installed" in run["skipped"]["jax"]
        lines = [line for line in r.stdout.splitlines() if "jax: skipped" in line]
        assert len(lines) == 1 and "pip install" in lines[0], r.stdout


def test_writes_markdown_and_png(bench_run):
    _, out, _, _ = bench_run
    md = (out / "smoke.md").read_text()
    assert "| H | B | npmlp |" in md and "## Where npmlp loses" in md and "smoke.png" in md
    assert "## Per-op profile" in md and "## End to end" in md
    png = (out / "smoke.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    img = plt.imread(out / "smoke.png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_unknown_peer_is_a_usage_error():
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench", "--peers", "tensorflow"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown peer" in r.stderr and "Traceback" not in r.stderr
