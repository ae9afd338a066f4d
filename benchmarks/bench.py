"""CPU benchmark: npmlp's training step (the fast engine, and the readable reference loop) against
torch eager, torch with a hand-written backward, torch.compile and JAX jit, plus the same against
torch eager and torch.compile for the models of makemore parts 3-5 (bn: part 4's BatchNorm MLP;
deep: part 3's six Linear -> BatchNorm1d layers; wavenet: part 5's), full-split evaluation, a
per-op profile of the fast step, and whole-process runs of `npmlp train` and of the lecture's
torch loop (benchmarks/torch_lecture.py).

Run from the repository's root:

    python -m benchmarks.bench                      # the full sweep
    python -m benchmarks.bench --help               # smaller sweeps, other peers, other output

It writes NAME.json (every repeat), NAME.md (the tables) and NAME.png (the plot) into a new folder
under the system's temp dir, or into --out DIR, and prints where; nothing in the checkout changes.

Legend: B batch, H n_hidden; the model is the lecture's (block_size 3, n_embd 10, vocab 27), float32;
the bn section's is npmlp.bn.BNMLP of the same sizes (`--bn-hidden`, `--bn-batch-sizes`), the deep
and wavenet sections' are the registry's models with their defaults but n_hidden (`--deep-hidden`,
`--deep-batch-sizes`, `--wavenet-hidden`, `--wavenet-batch-sizes`).

How it measures (see benchmarks/README.md):
  - each thread setting runs in its own subprocess, because thread counts must be fixed before
    NumPy / torch / JAX load: "1 core" = pinned to one CPU with one thread in every library,
    "N cores" = every CPU of the machine with N threads in every library;
  - every peer starts from the same parameters and trains on the same minibatch indices (those
    npmlp's engines draw); the first 3 steps' losses must agree with npmlp's before any timing;
  - after a warm-up, each peer runs REPEATS timed blocks of steps, peers alternating (the order
    rotates every repeat), so a busy moment on this shared machine hits every peer alike;
  - a step is what `npmlp train` does per step: gather the minibatch rows, forward, backward,
    SGD update, and the loss as a Python float (the lecture's lossi);
  - reported: median us/step with min-max over repeats, the ratio to torch eager (and, for npmlp,
    to its reference loop), the step's matmul GFLOP/s (6*B*H*(T*E + V) FLOPs per step) and its
    fraction of a measured sgemm peak;
  - a cell whose repeats spread by more than report.BUSY_SPREAD (max/min), or whose median is more
    than report.BUSY_FACTOR times the median of its row's other peers, is marked as measured on a
    busy machine, and never bolded as the fastest;
  - torch is imported only when a torch peer is asked for (`--peers npmlp npmlp_reference` runs
    without it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from npmlp.contract import SEED  # the lecture's

REPO = Path(__file__).resolve().parents[1]
T, E = 3, 10                                     # the lecture's block_size and n_embd

# the sections after the lecture model's cells: each model's kind (npmlp.app.registry), its default
# n_hidden values and batch sizes (options --KIND-hidden, --KIND-batch-sizes), and what it is
SECTIONS = {"bn": ([200, 1000], [32, 256], "makemore part 4's BatchNorm MLP"),
            "deep": ([100], [32, 256], "makemore part 3's six Linear -> BatchNorm1d layers"),
            "wavenet": ([128], [32, 256], "makemore part 5's WaveNet")}

AGREE_STEPS = 3
AGREE_RTOL = 1e-4                                # float32 losses after 3 identical steps


def flops_per_step(B, H, V, T=T, E=E):
    """Matmul FLOPs of one step: forward x@W1 (2*B*T*E*H) and h@W2 (2*B*H*V); the backward has two
    matmuls of the same size per forward one (the input's and the weight's gradient)."""
    return 6 * B * H * (T * E + V)


def layers_flops(model, B):
    """Matmul FLOPs of one step of a layer-object network (deep, wavenet): each Linear (I, O) runs on
    B rows times the positions left after flattening its input, 2 FLOPs per multiply-add, and the
    backward's two matmuls per forward one; BatchNorm adds none."""
    width, positions, total = model.n_embd, model.block_size, 0
    for layer in model.net.layers:
        if type(layer).__name__ == "Linear":
            I, O = model.params[layer.W].shape
            positions //= I // width                 # deep flattens the whole context, wavenet two at a time
            total += 6 * B * positions * I * O
            width = O
    return total


# ============================================================================= worker (one thread setting)

def thread_env(threads: int) -> dict:
    """Environment for a worker with `threads` threads in every library (set before they load)."""
    env = {k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    if threads == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    env["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"       # report a cold compile, not a cached one
    env["JAX_PLATFORMS"] = "cpu"
    return env


def log(*msg):
    print(*msg, flush=True)


def thread_report(threads, with_torch=True):
    """What every library says about its threads, after the settings (torch's only if with_torch)."""
    import numpy as np
    rep = {"affinity": sorted(os.sched_getaffinity(0)),
           "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "XLA_FLAGS")}}
    try:
        from threadpoolctl import threadpool_info
        rep["numpy_blas"] = [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                             for d in threadpool_info() if d.get("user_api") == "blas"]
    except ImportError:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        rep["numpy_blas"] = [{"internal_api": cfg.get("name"), "version": cfg.get("version"),
                              "num_threads": os.environ.get("OPENBLAS_NUM_THREADS")}]
    if with_torch:
        try:
            import torch
            torch.set_num_threads(threads)
            rep["torch_threads"] = torch.get_num_threads()
        except ImportError:
            pass
    return rep


def measure_sgemm_peak(n=1536, reps=5):
    """Best float32 GFLOP/s of an n x n x n NumPy matmul: the machine's reference peak."""
    import numpy as np
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    c = np.empty_like(a)
    np.matmul(a, a, out=c)
    best = min(_timed(lambda: np.matmul(a, a, out=c)) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def _timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def load_split(data, block_size=T):
    """The lecture's training split with a context of block_size: X (N, block_size), Y (N,) uint8,
    and the vocab size."""
    from npmlp.data import Vocab, build_dataset, split_words
    from npmlp.loading import load_words
    words = load_words(data)
    vocab = Vocab.from_words(words)
    Xtr, Ytr = build_dataset(split_words(words)[0], vocab, block_size)
    return Xtr, Ytr, vocab.size


def init_model(model, V, H):
    """A fresh `model` of npmlp.app.registry with n_hidden H: the lecture's T and E for mlp and bn,
    the model's own defaults for the rest (deep: block 3, n_embd 10; wavenet: block 8, n_embd 24)."""
    from npmlp.app.registry import model_class
    if model in ("mlp", "bn"):
        return model_class(model).init(V, T, E, H, seed=SEED)
    return model_class(model).init(V, n_hidden=H, seed=SEED)


def bench_config(peers, X, Y, V, B, H, a, model="mlp"):
    """Agreement check, warm-up and alternating timed repeats of every peer at one (B, H), on the
    `model` of npmlp.app.registry ("mlp": the lecture's; "bn", "deep", "wavenet": the sections',
    peers.MAKERS_OF); X (N, T) must have the model's block_size."""
    from .peers import MAKERS_OF, Batches

    makers = MAKERS_OF[model]
    fresh = init_model(model, V, H)
    init = {k: v.copy() for k, v in fresh.params.items()}
    batches = Batches(SEED, len(X), B)
    total = 10 ** 7 // max(B, 1) + 10 ** 5        # upper bound on the steps any peer runs here
    runs, nxt, res = {}, {}, {}
    ref = None
    for p in peers:
        runs[p] = makers[p](init, X, Y, batches, a.lr, total)
        t = time.perf_counter()
        losses = runs[p](0, AGREE_STEPS)          # the first call compiles (torch.compile, JAX)
        first = time.perf_counter() - t
        nxt[p] = AGREE_STEPS
        if ref is None:
            ref = losses
        rel = max(abs(x - r) / abs(r) for x, r in zip(losses, ref, strict=True))
        res[p] = {"agree_losses": losses, "agree_max_rel": rel, "first_call_s": first}
        if not rel <= AGREE_RTOL:
            raise SystemExit(f"bench: {p} at B={B} H={H} ({model}) computes a different loss: {losses} vs npmlp {ref} "
                             f"(max rel diff {rel:.2e} > {AGREE_RTOL})")
    for p in peers:                                # warm-up, and how many steps fill min_time
        t = time.perf_counter()
        runs[p](nxt[p], 2)
        est = max((time.perf_counter() - t) / 2, 1e-7)
        nxt[p] += 2
        n = max(3, min(int(a.min_time / est), 200_000))
        t = time.perf_counter()
        runs[p](nxt[p], max(1, n // 4))
        nxt[p] += max(1, n // 4)
        est = (time.perf_counter() - t) / max(1, n // 4)
        res[p]["steps_per_repeat"] = max(3, min(int(a.min_time / max(est, 1e-7)), 200_000))
        if p in ("torch_compile", "jax"):
            res[p]["compile_s"] = max(0.0, res[p]["first_call_s"] - AGREE_STEPS * est)
        res[p]["us"] = []
    for r in range(a.repeats):                     # alternate peers; rotate the order each repeat
        order = peers[r % len(peers):] + peers[:r % len(peers)]
        for p in order:
            n = res[p]["steps_per_repeat"]
            t = time.perf_counter()
            runs[p](nxt[p], n)
            res[p]["us"].append((time.perf_counter() - t) / n * 1e6)
            nxt[p] += n
    fl = flops_per_step(B, H, V) if model in ("mlp", "bn") else layers_flops(fresh, B)   # BatchNorm adds no matmul
    base = statistics.median(res["torch_eager"]["us"]) if "torch_eager" in res else None
    for p in peers:
        us = res[p]["us"]
        med = statistics.median(us)
        res[p].update(median_us=med, min_us=min(us), max_us=max(us), gflops=fl / med / 1e3,
                      peak_frac=fl / med / 1e3 / a.peak, ratio_vs_torch_eager=(base / med) if base else None)
    if "npmlp_reference" in res:                   # what the fast engine's tricks buy
        res["npmlp"]["speedup_vs_reference"] = res["npmlp_reference"]["median_us"] / res["npmlp"]["median_us"]
    for run in runs.values():
        getattr(run, "close", lambda: None)()      # npmlp's helper processes
    del runs
    return {"B": B, "H": H, "model": model, "flops": fl, "peers": res}


def bench_eval(X, Y, V, H, peers, repeats):
    """Forward-only loss over the whole training split (N rows), each library its natural way:
    npmlp.train.evaluate (chunked), torch eager under no_grad on all rows at once, jitted JAX."""
    import numpy as np

    from npmlp.mlp import MLP
    from npmlp.train import evaluate

    from .peers import flush_denormals

    model = MLP.init(V, T, E, H, seed=SEED)
    P = model.params
    fns = {"npmlp": lambda: evaluate(model, X, Y)}
    if "torch_eager" in peers:
        import torch
        import torch.nn.functional as F
        Pt = {k: torch.from_numpy(v.copy()) for k, v in P.items()}
        Xt, Yt = torch.from_numpy(X.astype(np.int64)), torch.from_numpy(Y.astype(np.int64))

        def torch_eval(start=None, n=None):
            with torch.no_grad():
                h = torch.tanh(Pt["C"][Xt].view(len(Xt), -1) @ Pt["W1"] + Pt["b1"])
                return F.cross_entropy(h @ Pt["W2"] + Pt["b2"], Yt).item()
        flushed = flush_denormals(torch_eval)
        fns["torch_eager"] = lambda: flushed(None, None)
    if "jax" in peers:
        import jax
        import jax.numpy as jnp
        Pj = [jnp.asarray(P[k]) for k in ("C", "W1", "b1", "W2", "b2")]
        Xj, Yj = jnp.asarray(X.astype(np.int32)), jnp.asarray(Y.astype(np.int32))

        @jax.jit
        def jax_loss(params, Xb, Yb):
            C, W1, b1, W2, b2 = params
            h = jnp.tanh(C[Xb].reshape(Xb.shape[0], -1) @ W1 + b1)
            lp = jax.nn.log_softmax(h @ W2 + b2)
            return -jnp.mean(jnp.take_along_axis(lp, Yb[:, None], axis=1))
        fns["jax"] = lambda: float(jax_loss(Pj, Xj, Yj))
    out, losses = {}, {}
    for name, f in fns.items():
        losses[name] = f()                        # warm-up (and JAX's compile)
    for _ in range(repeats):
        for name, f in fns.items():
            out.setdefault(name, []).append(_timed(f) * 1e3)
    ref = losses["npmlp"]
    return {"H": H, "rows": len(X), "loss": losses,
            "max_rel_diff": max(abs(v - ref) / abs(ref) for v in losses.values()),
            "ms": {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in out.items()}}


def worker(cfg_path):
    import warnings
    # JAX warns at every fork that forking a multithreaded process may deadlock; npmlp's helper
    # processes (parallel.py) run NumPy only and never touch JAX's threads or locks
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    a = argparse.Namespace(**json.loads(Path(cfg_path).read_text()))
    from npmlp.app.registry import model_class

    from .opprofile import profile_step
    from .peers import MAKERS_OF, TORCH_PEERS, available

    with_torch = any(p in TORCH_PEERS for p in a.peers)
    rep = {"threads": a.threads, "label": a.label, "load_before": os.getloadavg()}
    rep["thread_report"] = thread_report(a.threads, with_torch)
    a.peak = measure_sgemm_peak()
    rep["sgemm_peak_gflops"] = a.peak
    log(f"[{a.label}] threads: {json.dumps(rep['thread_report'])}")
    log(f"[{a.label}] sgemm peak (NumPy float32 1536^3): {a.peak:.0f} GFLOP/s")
    peers, skipped = [], {}
    for p in a.peers:
        why = available(p)
        if why:
            skipped[p] = why
            log(f"[{a.label}] {p}: skipped: {why}")
        else:
            peers.append(p)
    rep["skipped"] = skipped
    from npmlp.data import DataError
    try:
        X, Y, V = load_split(a.data)
    except DataError as e:
        raise SystemExit(f"bench: error: {e}") from None
    rep["configs"] = []
    for H in a.hidden:
        for B in a.batch_sizes:
            t = time.perf_counter()
            c = bench_config(peers, X, Y, V, B, H, a)
            rep["configs"].append(c)
            parts = "  ".join(f"{p} {c['peers'][p]['median_us']:.1f}" for p in peers)
            log(f"[{a.label}] B={B} H={H}: us/step  {parts}   ({time.perf_counter() - t:.0f}s)")
    for kind in SECTIONS:                          # bn, deep, wavenet: JSON "<kind>_configs"
        kind_peers = [p for p in peers if p in MAKERS_OF[kind]]
        rep[f"{kind}_configs"] = []
        sizes = getattr(a, f"{kind}_batch_sizes")
        if not sizes:
            continue
        block = model_class(kind).spec.defaults["block_size"]                 # the wavenet's is 8
        Xk, Yk = (X, Y) if block == T else load_split(a.data, block)[:2]
        for H in getattr(a, f"{kind}_hidden"):
            for B in sizes:
                t = time.perf_counter()
                c = bench_config(kind_peers, Xk, Yk, V, B, H, a, model=kind)
                rep[f"{kind}_configs"].append(c)
                parts = "  ".join(f"{p} {c['peers'][p]['median_us']:.1f}" for p in kind_peers)
                log(f"[{a.label}] {kind} B={B} H={H}: us/step  {parts}   ({time.perf_counter() - t:.0f}s)")
    rep["eval"] = []
    for H in a.eval_hidden:
        e = bench_eval(X, Y, V, H, peers, a.eval_repeats)
        rep["eval"].append(e)
        log(f"[{a.label}] eval {len(X)} rows H={H}: " + "  ".join(f"{k} {v['median']:.1f} ms"
                                                              for k, v in e["ms"].items()))
    rep["profiles"] = []
    for B in a.profile_batch_sizes:
        steps = max(20, int(a.profile_time * 1e6 / (60 + 1.2 * B)))
        p = profile_step(X, Y, V, B, 200, steps, a.peak, mkl_reference=a.threads == 1 and with_torch)
        rep["profiles"].append(p)
        log(f"[{a.label}] profile of the fast step, B={B} H=200: plain step {p['plain_step_us']:.1f} us")
    rep["load_after"] = os.getloadavg()
    Path(a.result).write_text(json.dumps(rep))


# ============================================================================= subprocesses

def _pin_one_cpu():
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def run_with_rss(cmd, **kw):
    """Run cmd; -> (returncode, stdout, stderr, wall seconds, peak RSS in MB of that child).

    The peak RSS comes from GNU time (/usr/bin/time -f %M); None without it. (Not from this process's
    wait4/getrusage: Linux counts what a child shared with its parent before exec into the child's
    peak, and the workers that loaded torch and JAX are children too.)"""
    import shutil
    gnu_time = shutil.which("time", path="/usr/bin:/bin")
    with tempfile.TemporaryDirectory(prefix="npmlp-bench-") as tmp:
        rss_file = Path(tmp) / "rss"
        if gnu_time:
            cmd = [gnu_time, "-f", "%M", "-o", str(rss_file), *cmd]
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
        out, err = proc.communicate()
        wall = time.perf_counter() - t
        rss = None
        if gnu_time and rss_file.is_file():
            try:
                rss = int(rss_file.read_text().split()[-1]) / 1024
            except (ValueError, IndexError):
                rss = None
    return proc.returncode, out, err, wall, rss


# ============================================================================= main

def machine_description():
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version
    versions = {"python": platform.python_version()}
    for mod in ("numpy", "torch", "jax", "jaxlib"):        # metadata only: importing torch or JAX here
        try:                                                # would inflate the peak RSS measured for
            versions[mod] = version(mod)                    # `npmlp train` (a child starts as a copy
        except PackageNotFoundError:                        # of this process)
            versions[mod] = None
    return {"cpu": model, "cpus": os.cpu_count(), "mem_gb": mem, "os": platform.platform(),
            "versions": versions}


def _listed(values):
    return " ".join(map(str, values)) or "none"


def parser() -> argparse.ArgumentParser:
    """The command's options, each with its help and its default."""
    from .peers import PEERS
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Run from the repository's root. What each number means: benchmarks/README.md.")
    batch_sizes, hidden = [1, 32, 256, 1024, 4096], [200, 1000]
    p.add_argument("--batch-sizes", metavar="B", type=int, nargs="+", default=batch_sizes,
                   help=f"batch sizes of the lecture model's cells (default: {_listed(batch_sizes)})")
    p.add_argument("--hidden", metavar="H", type=int, nargs="+", default=hidden,
                   help=f"n_hidden values of the lecture model's cells (default: {_listed(hidden)})")
    p.add_argument("--threads", metavar="N", type=int, nargs="+", default=None,
                   help="thread settings: 1 = one core, pinned; N = N threads unpinned (default: 1 and every CPU, "
                   f"here {_listed(sorted({1, os.cpu_count() or 1}))})")
    p.add_argument("--peers", metavar="PEER", nargs="+", default=list(PEERS),
                   help=f"which peers, of {', '.join(PEERS)} (default: all); npmlp always runs first; "
                   "torch is imported only for a torch peer")
    p.add_argument("--repeats", metavar="N", type=int, default=5,
                   help="timed repeats per peer and cell, the peers alternating (default: 5)")
    p.add_argument("--min-time", metavar="SECONDS", type=float, default=0.25,
                   help="seconds per timed repeat (default: 0.25)")
    p.add_argument("--lr", type=float, default=0.1, help="the SGD learning rate of every peer (default: 0.1)")
    for kind, (k_hidden, sizes, what) in SECTIONS.items():
        p.add_argument(f"--{kind}-hidden", metavar="H", type=int, nargs="*", default=k_hidden,
                       help=f"n_hidden values of the {kind} section ({what}; default: {_listed(k_hidden)})")
        p.add_argument(f"--{kind}-batch-sizes", metavar="B", type=int, nargs="*", default=sizes,
                       help=f"batch sizes of the {kind} section, each at least 2 (default: {_listed(sizes)}); "
                       "none or 0 to skip it. Its peers: npmlp, npmlp_reference, torch_eager, torch_compile, "
                       "where asked for")
    eval_hidden, profile_sizes = [200], [32, 4096]
    p.add_argument("--eval-hidden", metavar="H", type=int, nargs="*", default=eval_hidden,
                   help=f"n_hidden values of the full-split evaluation timing, none to skip it "
                   f"(default: {_listed(eval_hidden)})")
    p.add_argument("--eval-repeats", metavar="N", type=int, default=5, help="repeats of each evaluation (default: 5)")
    p.add_argument("--profile-batch-sizes", metavar="B", type=int, nargs="*", default=profile_sizes,
                   help=f"batch sizes of the per-op profile of the fast step (H=200), none to skip it "
                   f"(default: {_listed(profile_sizes)})")
    p.add_argument("--profile-time", metavar="SECONDS", type=float, default=1.0,
                   help="seconds of steps per profile (default: 1.0)")
    p.add_argument("--e2e-repeats", metavar="N", type=int, default=1,
                   help="whole-process runs per thread setting of `npmlp train` and, with torch_eager among "
                   "the peers, of `python -m benchmarks.torch_lecture`, alternating; 0: none (default: 1)")
    p.add_argument("--e2e-steps", metavar="N", type=int, default=200_000,
                   help="steps of those runs (default: 200000, the lecture's)")
    p.add_argument("--e2e-batch-size", metavar="B", type=int, default=32, help="batch size of those runs (default: 32)")
    p.add_argument("--data", metavar="FILE", help="names file (default: $NPMLP_DATA, then npmlp's cache or download)")
    p.add_argument("--out", metavar="DIR",
                   help="folder for the results (default: a new folder under the system's temp dir, printed at "
                   "the start and the end; nothing in the checkout is written)")
    p.add_argument("--name", default="bench",
                   help="file stem of the results: NAME.json, NAME.md, NAME.png (default: bench)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def parse_args(argv=None):
    from .peers import PEERS
    p = parser()
    a = p.parse_args(argv)
    if a.threads is None:
        a.threads = sorted({1, os.cpu_count() or 1})
    a.peers = ["npmlp"] + [x for x in dict.fromkeys(a.peers) if x != "npmlp"]
    bad = [x for x in a.peers if x not in PEERS]
    if bad:
        p.error(f"unknown peer(s) {bad}; choose from {', '.join(PEERS)}")
    for kind in SECTIONS:
        sizes = [b for b in getattr(a, f"{kind}_batch_sizes") if b != 0]
        setattr(a, f"{kind}_batch_sizes", sizes)
        if any(b < 2 for b in sizes):
            p.error(f"--{kind}-batch-sizes {' '.join(map(str, sizes))}: the {kind} model normalises with a "
                    "batch's own variance, which needs at least 2 rows (0 skips the section)")
        if any(h < 1 for h in getattr(a, f"{kind}_hidden")):
            p.error(f"--{kind}-hidden values must be >= 1")
    return a


def label_of(threads):
    return "1 core" if threads == 1 else f"{threads} cores"


# ============================================================================= end to end

def e2e_programs(a, data):
    """The whole processes the end-to-end section runs: `npmlp train` (the fast engine, figures
    included), and the lecture's torch loop as a program when torch_eager is among the peers."""
    from .peers import available
    size = ["--steps", str(a.e2e_steps), "--batch-size", str(a.e2e_batch_size)]
    data_args = ["--data", data] if data else []
    progs = [{"name": "npmlp train", "cmd": [sys.executable, "-m", "npmlp", "train", "--quiet", *size, *data_args],
              "shown": "python -m npmlp train --quiet --out DIR " + " ".join(size)}]
    if "torch_eager" in a.peers and available("torch_eager") is None:       # run from REPO (run_e2e's cwd)
        progs.append({"name": "torch lecture", "cmd": [sys.executable, "-m", "benchmarks.torch_lecture", *size,
                                                       *data_args],
                      "shown": "python -m benchmarks.torch_lecture --threads N " + " ".join(size)})
    return progs


def run_e2e(program, threads, a):
    """One whole-process run of `program` in the `threads` setting -> its record."""
    env = {**os.environ, **thread_env(threads)} if threads == 1 else dict(os.environ)
    pin = _pin_one_cpu if threads == 1 else None
    with tempfile.TemporaryDirectory(prefix="npmlp-bench-") as tmp:
        cmd = list(program["cmd"])
        if program["name"] == "npmlp train":
            cmd += ["--out", str(Path(tmp) / "run")]
        else:
            cmd += ["--threads", str(threads)]
        code, stdout, stderr, wall, rss = run_with_rss(cmd, env=env, cwd=REPO, preexec_fn=pin)
        if code != 0:
            raise SystemExit(f"bench: `{program['shown']}` failed (exit {code}):\n{stderr}")
        if program["name"] == "npmlp train":
            m = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
            train_s, train_loss, dev_loss = m["seconds"], m["train_loss"], m["dev_loss"]
        else:
            m = dict(kv for kv in (line.split() for line in stdout.splitlines()) if len(kv) == 2)
            train_s, train_loss, dev_loss = (float(m[k]) for k in ("train_seconds", "train_loss", "dev_loss"))
    return {"program": program["name"], "label": label_of(threads), "threads": threads, "wall_s": wall,
            "peak_rss_mb": rss, "command": program["shown"], "train_s": train_s,
            "us_per_step": train_s / a.e2e_steps * 1e6, "train_loss": train_loss, "dev_loss": dev_loss,
            "steps": a.e2e_steps, "batch_size": a.e2e_batch_size}


def main(argv=None):
    a = parse_args(argv)
    if a.worker:
        return worker(a.worker)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
    else:                                          # never the checkout: a run reports, it does not overwrite
        out = Path(tempfile.mkdtemp(prefix="npmlp-bench-"))
    log(f"bench: the results go to {out}")
    data = str(Path(a.data).resolve()) if a.data else None
    report = {"command": "python -m benchmarks.bench " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine_description(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "settings": {k: getattr(a, k) for k in ("batch_sizes", "hidden",
                                                      *(f"{kind}_{o}" for kind in SECTIONS
                                                        for o in ("hidden", "batch_sizes")),
                                                      "threads", "peers", "repeats", "min_time", "lr",
                                                      "e2e_steps", "e2e_batch_size")},
              "runs": [], "e2e": []}
    log(f"bench: {report['machine']['cpu']}, {report['machine']['cpus']} CPUs; "
        f"{json.dumps(report['machine']['versions'])}")
    for threads in a.threads:
        label = label_of(threads)
        with tempfile.TemporaryDirectory(prefix="npmlp-bench-") as tmp:
            cfg = {**vars(a), "threads": threads, "label": label, "data": data,
                   "result": str(Path(tmp) / "result.json")}
            Path(tmp, "cfg.json").write_text(json.dumps(cfg))
            env = {**os.environ, **thread_env(threads)}
            r = subprocess.run([sys.executable, "-m", "benchmarks.bench", "--worker", str(Path(tmp, "cfg.json"))],
                               env=env, cwd=REPO, preexec_fn=_pin_one_cpu if threads == 1 else None, check=False)
            if r.returncode != 0:
                raise SystemExit(f"bench: the {label} worker failed (exit {r.returncode})")
            report["runs"].append(json.loads(Path(cfg["result"]).read_text()))
    programs = e2e_programs(a, data)
    for threads in a.threads if a.e2e_repeats > 0 else []:
        for i in range(a.e2e_repeats):
            for program in programs:                  # alternating: a busy moment hits both
                e = run_e2e(program, threads, a)
                e["repeat"] = i
                report["e2e"].append(e)
                log(f"bench: {program['name']} ({e['label']}): {e['wall_s']:.1f} s wall, "
                    f"{e['peak_rss_mb'] or float('nan'):.0f} MB peak RSS, training {e['train_s']:.1f} s "
                    f"({e['us_per_step']:.1f} us/step), dev loss {e['dev_loss']:.4f}")
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    from npmlp.app.files import atomic_write_bytes, atomic_write_json

    from .report import markdown, plot
    atomic_write_json(out / f"{a.name}.json", report)
    atomic_write_bytes(out / f"{a.name}.md", markdown(report, f"{a.name}.png").encode())
    plot(report, out / f"{a.name}.png")
    log(f"bench: wrote {out / (a.name + '.json')}, {out / (a.name + '.md')}, {out / (a.name + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
