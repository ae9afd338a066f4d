"""The benchmark command on a tiny sweep, so it never rots: it runs, every peer agrees with npmlp
before it is timed, and the JSON, Markdown and PNG it writes exist and parse; the lectures' torch
loops as programs (`python -m benchmarks.torch_lecture`; benchmarks.torch_layers, --model deep and
wavenet) train exactly what npmlp's reference loop trains.
The sections of makemore parts 3-5's models (bn, deep, wavenet) run one tiny cell each, B=8, H=8,
with the same checks; the deep and wavenet torch peers (npmlp.torch_mirrors' networks) keep the
running statistics npmlp keeps. The README's quick look, on tiny sizes and without --out, leaves
the checkout as it was; a cell measured on a busy machine is marked and never called the fastest.

The sweep runs npmlp (the fast engine) and npmlp_reference always, torch_eager and torch_manual when
torch is installed, and asks for JAX (which runs if installed, else the report says it was skipped
and why). torch.compile is left out (its compile alone takes seconds a configuration; set
NPMLP_BENCH_SMOKE_COMPILE=1 to include it). A second, smaller run hides torch behind a module that
fails on import, to show that the npmlp-only benchmark never imports it. No assertion is about speed.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import HAVE_TORCH, REPO, make_names

from npmlp.data import Vocab
from npmlp.fast import engine as fast_engine

sys.path.insert(0, str(REPO))                    # `benchmarks` lives beside `npmlp`, not installed
from benchmarks.bench import flops_per_step, layers_flops

HAS_JAX = importlib.util.find_spec("jax") is not None
TORCH_PEERS = ["torch_eager", "torch_manual"] if HAVE_TORCH else []
QUICK_BENCH = ["--hidden", "8", "--threads", "1", "--min-time", "0.01", "--eval-hidden", "8", "--eval-repeats", "1",
        "--bn-hidden", "8", "--bn-batch-sizes", "8", "--deep-hidden", "8", "--deep-batch-sizes", "8",
        "--wavenet-hidden", "8", "--wavenet-batch-sizes", "8"]
SECTION_PEERS = {"npmlp", "npmlp_reference", "torch_eager", "torch_compile"}   # peers.MAKERS_OF of bn, deep, wavenet


def test_flops_formula_is_the_lectures_342_B_H():
    for B, H in ((32, 200), (1, 1), (4096, 1000)):
        assert flops_per_step(B, H, 27) == 342 * B * H       # T=3, E=10, V=27


def test_flops_of_the_layer_networks_count_each_linear_on_its_positions():
    from npmlp.deep import Deep
    from npmlp.wavenet import Wavenet
    # deep: (3*10 -> 100), four (100 -> 100), (100 -> 27), each on B rows
    assert layers_flops(Deep.init(27), 32) == 6 * 32 * (30 * 100 + 4 * 100 * 100 + 100 * 27)
    # wavenet: 4 positions of (2*24 -> 128), 2 of (2*128 -> 128), 1 of (2*128 -> 128), then (128 -> 27)
    assert layers_flops(Wavenet.init(27), 32) == 6 * 32 * (4 * 48 * 128 + 2 * 256 * 128 + 256 * 128 + 128 * 27)


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    path = tmp_path_factory.mktemp("names") / "names.txt"
    words = make_names(300, seed=2)
    path.write_text("\n".join(words) + "\n")
    return path, Vocab.from_words(words).size


def run_bench(*args, env=None, timeout=240):
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench", *map(str, args)], cwd=REPO, capture_output=True,
                       text=True, timeout=timeout, env=env, check=False)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, names):
    path, V = names
    peers = ["npmlp", "npmlp_reference", *TORCH_PEERS, "jax"]
    if os.environ.get("NPMLP_BENCH_SMOKE_COMPILE") and HAVE_TORCH:
        peers.append("torch_compile")
    out = tmp_path_factory.mktemp("bench") / "results"
    r = run_bench("--data", path, "--out", out, "--name", "smoke", "--batch-sizes", "1", "8", *QUICK_BENCH,
                  "--peers", *peers, "--repeats", "2", "--profile-batch-sizes", "8", "--profile-time", "0.05",
                  "--e2e-repeats", "1", "--e2e-steps", "30")
    return r, out, peers, V


def test_writes_json_with_every_number(bench_run):
    _, out, peers, V = bench_run
    rep = json.loads((out / "smoke.json").read_text())
    assert rep["machine"]["cpus"] >= 1 and rep["machine"]["versions"]["numpy"]
    (run,) = rep["runs"]
    assert run["label"] == "1 core" and run["thread_report"]["affinity"] and run["sgemm_peak_gflops"] > 0
    assert run["thread_report"]["env"]["OPENBLAS_NUM_THREADS"] == "1"
    ran = [p for p in peers if p not in run["skipped"]]
    assert {"npmlp", "npmlp_reference", *TORCH_PEERS} <= set(ran)
    assert [(c["H"], c["B"]) for c in run["configs"]] == [(8, 1), (8, 8)]
    for c in run["configs"]:
        assert c["flops"] == flops_per_step(c["B"], 8, V) == 6 * c["B"] * 8 * (3 * 10 + V)
        assert sorted(c["peers"]) == sorted(ran)
        for p, res in c["peers"].items():
            assert len(res["us"]) == 2 and all(u > 0 for u in res["us"]), p
            assert res["min_us"] <= res["median_us"] <= res["max_us"]
            assert res["agree_max_rel"] <= 1e-4, (p, res["agree_losses"])
            assert len(res["agree_losses"]) == 3
        npmlp = c["peers"]["npmlp"]
        assert npmlp["speedup_vs_reference"] == pytest.approx(
            c["peers"]["npmlp_reference"]["median_us"] / npmlp["median_us"])
    from benchmarks.bench import init_model
    for kind in ("bn", "deep", "wavenet"):
        (c,) = run[f"{kind}_configs"]
        flops = flops_per_step(8, 8, V) if kind == "bn" else layers_flops(init_model(kind, V, 8), 8)
        assert (c["H"], c["B"], c["model"], c["flops"]) == (8, 8, kind, flops)
        assert sorted(c["peers"]) == sorted(p for p in ran if p in SECTION_PEERS), kind
        for p, res in c["peers"].items():
            assert len(res["us"]) == 2 and res["min_us"] <= res["median_us"] <= res["max_us"], (kind, p)
            assert len(res["agree_losses"]) == 3 and res["agree_max_rel"] <= 1e-4, (kind, p, res["agree_losses"])
        assert c["peers"]["npmlp"]["speedup_vs_reference"] == pytest.approx(
            c["peers"]["npmlp_reference"]["median_us"] / c["peers"]["npmlp"]["median_us"])
    (ev,) = run["eval"]
    assert ev["max_rel_diff"] <= 1e-5 and ev["ms"]["npmlp"]["median"] > 0
    (prof,) = run["profiles"]
    assert prof["plain_step_us"] > 0 and prof["instrumented_step_us"] > 0
    ops = {(row["layer"], row["op"].split()[0]) for row in prof["rows"]}
    assert {("forward_loss", "np.dot"), ("backward", "np.dot")} <= ops
    assert ("forward_loss", "np.tanh" if fast_engine.TANH[np.dtype(np.float32)] == "np.tanh" else "np.exp") in ops
    e2e = {e["program"]: e for e in rep["e2e"]}
    assert sorted(e2e) == sorted(["npmlp train", *(["torch lecture"] if HAVE_TORCH else [])])
    for e in e2e.values():
        assert e["steps"] == 30 and e["batch_size"] == 32 and e["wall_s"] > 0 and e["dev_loss"] > 0


def test_torch_peers_match_npmlp_and_set_the_ratio(bench_run):
    pytest.importorskip("torch")
    _, out, _, _ = bench_run
    rep = json.loads((out / "smoke.json").read_text())
    run = rep["runs"][0]
    for c in run["configs"] + run["bn_configs"] + run["deep_configs"] + run["wavenet_configs"]:
        assert c["peers"]["torch_eager"]["ratio_vs_torch_eager"] == pytest.approx(1.0)
        assert c["peers"]["npmlp"]["ratio_vs_torch_eager"] > 0
    a, b = (e for e in rep["e2e"])                   # the same run in two programs: the same dev loss
    assert a["dev_loss"] == pytest.approx(b["dev_loss"], rel=1e-4)


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
    assert "| H | B | npmlp | npmlp reference |" in md and "fast vs reference" in md
    assert "## Where npmlp loses" in md and "## What the fast engine's tricks buy" in md and "smoke.png" in md
    assert "## Per-op profile" in md and "## End to end" in md and "| npmlp train | 1 core |" in md
    assert "## bn model (makemore part 4)" in md and "| setting | H | B | npmlp | npmlp reference |" in md
    assert "## deep model (makemore part 3)" in md and "## wavenet model (makemore part 5)" in md
    assert md.count("| 1 core | 8 | 8 |") == 3
    if HAVE_TORCH:
        assert "| torch lecture | 1 core |" in md and "pair by pair" in md
    png = (out / "smoke.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    img = plt.imread(out / "smoke.png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_npmlp_peers_alone_never_import_torch(tmp_path, names):
    """A `torch` that fails on import comes first on the path: the benchmark of npmlp's two engines
    (steps, evaluation, profile, the end-to-end `npmlp train`) must not touch it."""
    path, _ = names
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('the benchmark imported torch, asked for no torch peer')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "results"
    r = run_bench("--data", path, "--out", out, "--name", "np", "--batch-sizes", "8", *QUICK_BENCH,
                  "--peers", "npmlp", "npmlp_reference", "--repeats", "1", "--profile-batch-sizes", "8",
                  "--profile-time", "0.01", "--e2e-repeats", "1", "--e2e-steps", "5", env=env)
    rep = json.loads((out / "np.json").read_text())
    (run,) = rep["runs"]
    assert "torch_threads" not in run["thread_report"]
    assert sorted(run["configs"][0]["peers"]) == ["npmlp", "npmlp_reference"]
    for kind in ("bn", "deep", "wavenet"):
        assert sorted(run[f"{kind}_configs"][0]["peers"]) == ["npmlp", "npmlp_reference"], kind
    assert [e["program"] for e in rep["e2e"]] == ["npmlp train"]
    md = (out / "np.md").read_text()
    assert "No other library ran" in md and "torch lecture" not in md, r.stdout


# the torch programs of whole-process comparisons (modules of benchmarks/, run from the repository's
# root): the lecture's loop (lecture 2's MLP) and the lectures' layer-object loops (parts 3 and 5),
# each with the options that pick its npmlp model
TORCH_PROGRAMS = [pytest.param("benchmarks.torch_lecture", [], 120, id="lecture"),
                  pytest.param("benchmarks.torch_layers", ["--model", "deep"], 300, id="deep"),
                  pytest.param("benchmarks.torch_layers", ["--model", "wavenet"], 300, id="wavenet")]


@pytest.mark.parametrize("program, model_args, timeout", TORCH_PROGRAMS)
def test_torch_program_trains_what_npmlp_reference_trains(tmp_path, names, program, model_args, timeout):
    """`python -m PROGRAM` and `npmlp train --engine reference` with its defaults: the same names,
    split, init and minibatches, so after 20 steps (the rate drops after 10; deep's after 15) the
    same train and dev loss, up to float32 rounding."""
    pytest.importorskip("torch")
    path, _ = names
    r = subprocess.run([sys.executable, "-m", program, *model_args, "--data", str(path), "--steps", "20",
                        "--threads", "1"], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr, r.stderr              # e.g. torch on a read-only array
    theirs = {k: float(v) for k, v in (line.split() for line in r.stdout.splitlines())}
    env = {k: v for k, v in os.environ.items() if k != "NPMLP_DATA"}
    n = subprocess.run([sys.executable, "-m", "npmlp", "train", *model_args, "--data", str(path), "--steps", "20",
                        "--engine", "reference", "--quiet", "--no-plots", "--out", str(tmp_path / "run")], cwd=REPO,
                       capture_output=True, text=True, timeout=timeout, env=env, check=False)
    assert n.returncode == 0, n.stderr
    mine = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for k in ("train_loss", "dev_loss"):
        assert theirs[k] == pytest.approx(mine[k], rel=1e-4), (k, theirs[k], mine[k])
    assert theirs["train_seconds"] > 0


@pytest.mark.parametrize("program, model_args, timeout", TORCH_PROGRAMS)
def test_torch_program_refuses_a_bad_option(program, model_args, timeout):
    """Refused by argparse before torch is imported: this runs without torch too."""
    r = subprocess.run([sys.executable, "-m", program, *model_args, "--steps", "0"], cwd=REPO,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and "--steps must be >= 1" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("kind, hidden", [("bn", [200, 1000]), ("deep", [100]), ("wavenet", [128])])
def test_a_section_skips_with_0_or_no_sizes_and_refuses_a_batch_of_1(bench_run, capsys, kind, hidden):
    from benchmarks.bench import parse_args
    from benchmarks.report import markdown
    sizes = f"{kind}_batch_sizes"
    assert getattr(parse_args([]), sizes) == [32, 256] and getattr(parse_args([]), f"{kind}_hidden") == hidden
    assert getattr(parse_args([f"--{kind}-batch-sizes", "0"]), sizes) == []
    assert getattr(parse_args([f"--{kind}-batch-sizes"]), sizes) == []
    with pytest.raises(SystemExit) as e:
        parse_args([f"--{kind}-batch-sizes", "1"])
    assert e.value.code == 2 and "at least 2 rows" in capsys.readouterr().err
    _, out, _, _ = bench_run                         # a report without the section has no table of it
    rep = json.loads((out / "smoke.json").read_text())
    title = f"## {kind} model"
    assert title in markdown(rep)
    for run in rep["runs"]:
        run[f"{kind}_configs"] = []
    assert title not in markdown(rep)
    for run in rep["runs"]:                          # nor has one from before the section existed
        del run[f"{kind}_configs"]
    assert title not in markdown(rep)


@pytest.mark.parametrize("kind", ["deep", "wavenet"])
def test_layer_peers_keep_the_running_statistics_npmlp_keeps(names, kind):
    """The torch peers of the deep and wavenet sections update their BatchNorm's running mean and
    variance every step, as npmlp's engines do: after 5 steps they agree to float32 rounding.
    torch.compile's peer is checked too with NPMLP_BENCH_SMOKE_COMPILE=1 (its compile takes seconds)."""
    pytest.importorskip("torch")
    from benchmarks.bench import init_model, load_split
    from benchmarks.peers import MAKERS_OF, Batches
    path, V = names
    model = init_model(kind, V, 8)
    X, Y, _ = load_split(str(path), model.block_size)
    batches = Batches(42, len(X), 8)
    peers = ["npmlp", "npmlp_reference", "torch_eager"]
    if os.environ.get("NPMLP_BENCH_SMOKE_COMPILE"):
        peers.append("torch_compile")
    runs = {p: MAKERS_OF[kind][p](model.params, X, Y, batches, 0.1, 100) for p in peers}
    losses = {p: run(0, 5) for p, run in runs.items()}
    names_ = list(model.buffers)                     # running_mean1, running_var1, ...
    stats = {p: runs[p].model.buffers for p in ("npmlp", "npmlp_reference")}
    stats.update({p: runs[p].buffers() for p in peers if p.startswith("torch")})
    assert all(sorted(stats[p]) == sorted(names_) for p in peers)
    ref = stats["npmlp_reference"]
    for p in peers:
        assert losses[p] == pytest.approx(losses["npmlp_reference"], rel=1e-5), p
        for k in names_:
            assert not np.allclose(ref[k], model.buffers[k])        # five steps moved them
            np.testing.assert_allclose(stats[p][k], ref[k], rtol=2e-5, atol=1e-6, err_msg=f"{p} {k}")
    for run in runs.values():
        getattr(run, "close", lambda: None)()


def test_unknown_peer_is_a_usage_error():
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench", "--peers", "tensorflow"], cwd=REPO,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and "unknown peer" in r.stderr and "Traceback" not in r.stderr



def test_every_option_says_what_it_does_and_its_default():
    from benchmarks.bench import parser
    shown = [a for a in parser()._actions if a.option_strings and a.help != argparse.SUPPRESS and a.dest != "help"]
    assert len(shown) > 20
    for action in shown:
        assert action.help and "default" in action.help, action.option_strings


def quick_look():
    """The arguments of the README's quick look: the line of its first code block marked so."""
    block = re.search(r"```bash\n(.*?)```", (REPO / "benchmarks" / "README.md").read_text(), re.S).group(1)
    (line,) = [line for line in block.replace("\\\n", " ").splitlines() if "# the quick look" in line]
    args = shlex.split(line.split("#")[0])
    assert args[:3] == ["python", "-m", "benchmarks.bench"], line
    return args[3:]


def _checkout_state():
    """Every file of the checkout with its size and mtime, and `git status --porcelain`: what a
    benchmark run must leave as it was. Not .git, the virtual environments (.venv*) and the caches
    of Python, pytest, hypothesis, marimo and the linters: CI installs, type-checks and runs the
    other suite beside this one, and they write there."""
    skip = {".git", ".mypy_cache", ".ruff_cache", ".hypothesis", ".pytest_cache", "__pycache__", "__marimo__"}
    files = {}
    for root, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in skip and not d.startswith(".venv")]
        for name in names:
            st = os.stat(os.path.join(root, name))
            files[os.path.relpath(os.path.join(root, name), REPO)] = (st.st_size, st.st_mtime_ns)
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout
    return files, status


def test_the_quick_look_leaves_the_checkout_as_it_was(names):
    """The README's quick look, on tiny sizes and without --out: its results go to a new folder
    outside the checkout, which it names; no file of the checkout is written (git status included)."""
    path, _ = names
    before = _checkout_state()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    r = run_bench(*quick_look(), "--data", path, "--batch-sizes", "8", "--hidden", "8", "--threads", "1",
                  "--repeats", "1", "--min-time", "0.01", "--eval-hidden", "--profile-batch-sizes", env=env)
    after = _checkout_state()
    named = re.findall(r"the results go to (.+)", r.stdout)
    try:
        assert after[1] == before[1], f"git status changed:\n{after[1]}"
        changed = sorted(k for k in before[0].keys() | after[0].keys() if before[0].get(k) != after[0].get(k))
        assert not changed, f"the benchmark wrote into the checkout: {changed}\n{r.stdout}"
        (out,) = map(Path, named)
        assert REPO.resolve() not in out.resolve().parents
        assert sorted(f.name for f in out.iterdir()) == ["bench.json", "bench.md", "bench.png"]
        assert f"wrote {out / 'bench.json'}" in r.stdout
    finally:
        for folder in named:
            shutil.rmtree(folder, ignore_errors=True)


def _cell(median, lo=None, hi=None, ratio=None):
    return {"median_us": median, "min_us": lo or median, "max_us": hi or median, "ratio_vs_torch_eager": ratio}


def test_a_busy_cell_is_marked_and_never_the_fastest():
    """A torch cell hundreds of times slower than its row (another program held the core its
    second thread waits for), or repeats far apart, is marked, explained under the table, and
    never bolded as the fastest."""
    from benchmarks.report import BUSY, BUSY_LEGEND, readme_table, step_table
    rows = [  # quiet: npmlp the fastest
            {"npmlp": _cell(100, 95, 110, 4.0), "torch_eager": _cell(400, 390, 420, 1.0), "jax": _cell(150, ratio=2.7)},
            # torch eager 632x npmlp's step: its cell and every ratio against it are marked
            {"npmlp": _cell(100, 95, 110, 632.0), "torch_eager": _cell(63200, 60000, 64000, 1.0),
             "jax": _cell(150, ratio=421.3)},
            # npmlp's repeats spread 5x: fastest by its median, but not bolded (nor anything else)
            {"npmlp": _cell(90, 60, 300, 4.4), "torch_eager": _cell(400, 390, 420, 1.0), "jax": _cell(150, ratio=2.7)}]
    run = {"label": "2 cores", "configs": [{"H": 200, "B": 32, "peers": p} for p in rows]}
    for c in run["configs"]:
        c["peers"]["npmlp"].update(gflops=1.0, peak_frac=0.01)
    quiet, slow_torch, spread = readme_table({"runs": [run]}).splitlines()[2:5]
    assert quiet == "| 2 | 200 | 32 | **100 µs ×4.0** | 400 µs | 150 µs ×2.7 |"
    assert slow_torch == f"| 2 | 200 | 32 | **100 µs ×632.0{BUSY}** | 63.20 ms{BUSY} | 150 µs ×421.3{BUSY} |"
    assert spread == f"| 2 | 200 | 32 | 90.0 µs{BUSY} ×4.4 | 400 µs | 150 µs ×2.7 |"
    assert readme_table({"runs": [run]}).endswith(BUSY_LEGEND)
    assert BUSY_LEGEND in step_table(run, ["npmlp", "torch_eager", "jax"])
    run["configs"] = run["configs"][:1]
    assert BUSY not in readme_table({"runs": [run]}) and BUSY not in step_table(run, ["npmlp", "torch_eager", "jax"])


@pytest.mark.parametrize("kind", ["deep", "wavenet"])
def test_layer_profile_times_every_block_both_ways(names, kind, capsys):
    """benchmarks.layer_profile: a row of every block (blocks of one shape share one), forward and
    backward, each with npmlp's time (and torch's where torch is installed); stack.py's numpy is
    given back after."""
    from benchmarks import layer_profile
    from npmlp.app.registry import MODELS
    from npmlp.fast import stack
    layer_profile.main(["--model", kind, "--steps", "20", "--data", str(names[0]), "--top", "3"])
    out = capsys.readouterr().out
    assert stack.np is np
    named = sorted(set(re.findall(r"^forward\s+(blocks? [\d-]+) \(", out, re.M)))
    want = {"deep": ["block 0", "block 5", "blocks 1-4"], "wavenet": ["block 0", "block 1", "block 2", "block 3"]}
    assert named == want[kind] and len(stack.plan(MODELS[kind].init(names[1]))) in (4, 6), out
    for phase in ("forward", "backward"):
        for name in named:
            row = re.search(rf"^{phase}\s+{name} \(.*\)\s+(\S+)\s+(\S+)$", out, re.M)
            assert row and float(row[1]) > 0 and (float(row[2]) > 0) == HAVE_TORCH, (phase, name, out)
    assert re.search(r"^plain step: npmlp \d+", out, re.M) and out.count("stack.py:") == 3, out


def test_distinct_windows_times_both_ways_of_cutting_a_batch(names, capsys):
    """benchmarks.distinct_windows: a row per batch size with both ways' times, the windows a batch
    holds (one at B=1; at most B) and a ratio of pairs within its slowest-fastest range."""
    from benchmarks import distinct_windows
    distinct_windows.main(["--batch-sizes", "1", "300", "--repeats", "2", "--rows", "600", "--data", str(names[0])])
    out = capsys.readouterr().out
    rows = re.findall(r"^\s*(\d+)\s+(\S+)\s+(\S+)\s+(\d+)\s+(\S+)x \((\S+)-(\S+)\)$", out, re.M)
    assert [int(r[0]) for r in rows] == [1, 300], out
    for B, plain, windows, U, mid, lo, hi in rows:
        assert float(plain) > 0 and float(windows) > 0 and float(lo) <= float(mid) <= float(hi), out
        assert 1 <= int(U) <= int(B) and (int(U) == 1) == (B == "1"), out


def test_the_op_profile_of_a_batch_run_as_distinct_windows():
    """opprofile.profile_step at a batch the engine runs as its distinct windows: the forward is
    Engine.forward_windows, its products are rows of the table with their layouts timed alone, and
    its dots of two vectors (the loss's weighted sums) are timed but not taken for matmuls."""
    from benchmarks.opprofile import profile_step
    from npmlp.data import build_dataset
    words = make_names(400, seed=3)
    vocab = Vocab.from_words(words)
    X, Y = (a.astype(np.intp) for a in build_dataset(words, vocab))
    prof = profile_step(X, Y, vocab.size, fast_engine.DISTINCT_FROM, 8, 3, 80.0, mkl_reference=False)
    ops = {(row["layer"], row["op"].split()[0]) for row in prof["rows"]}
    assert {("forward_windows", "np.dot"), ("backward", "np.dot")} <= ops and ("forward_loss", "np.dot") not in ops
    products = [row for row in prof["rows"] if row["op"].startswith("np.dot") and row["mflop"] > 0]
    assert products and all(row["alone_numpy_us"] > 0 for row in products)
    # one row per op: the chunks' varying rows are shown as n
    assert len({(row["layer"], row["op"]) for row in products}) == len(products)
    assert any(re.search(r"[(,]n[,)]", row["op"]) for row in products), [row["op"] for row in products]
    from benchmarks.opprofile import profile_markdown
    assert "its distinct windows, in chunks of n = " in profile_markdown(prof)
