"""Per-op profile of npmlp's fast training step (npmlp.fast.sgd), with a floor for every op.

The `np` that npmlp/fast/engine.py sees is replaced by a proxy that times each NumPy call and notes its
FLOPs and bytes, and the engine's methods, Engine.forward_loss (Engine.forward_windows for a batch
run as its distinct windows) and Engine.backward, are wrapped with a timer (they are the "layers"
of the table: every chunk of a batch calls a forward and the backward once).
Then real fast.sgd steps run in this one process, on a fresh fast.Chunks made while the proxy is
in place (the engine keeps some NumPy functions in its buffers). Calls outside the two methods
(the minibatch gather, the sum of the chunk updates) are listed under "sgd loop". Operators
(`c -= maxes`, `dlogits[rows, Y] -= ...`, the update `flat += update`) and array methods (`X.take`,
`onehot.fill`) are not seen by the proxy: they show up as a layer's "rest".

The floor of a NumPy call is the largest of
  - the per-call cost of NumPy itself (a ufunc on a 1-element array, measured),
  - its matmul FLOPs at the measured sgemm peak,
  - the bytes it reads and writes at the measured copy bandwidth of a cache-sized array.
The timers add to every call: the instrumented step is slower than the plain one, and the plain
step (no proxy, no wrappers) is timed too, in one process and, where `npmlp train` would use helper
processes (parallel.make_batches), with them.
"""
from __future__ import annotations

import sys
import time
from collections import defaultdict

import numpy as np

from npmlp.contract import SEED

MATMULS = ("np.matmul", "np.dot")
# the methods of npmlp.fast.Engine that are timed (forward_windows: a batch run as its distinct windows)
LAYER_FUNCS = ("forward_loss", "forward_windows", "backward")
OUTSIDE = "sgd loop"                             # the label of the calls outside them


def _nbytes(args, kwargs, result):
    seen, total = set(), 0
    for a in (*args, *kwargs.values(), result):
        if isinstance(a, np.ndarray) and id(a) not in seen:
            seen.add(id(a))
            total += a.nbytes
    return total


def _flops(name, args):
    if name in MATMULS and len(args) >= 2:
        a, b = np.shape(args[0]), np.shape(args[1])
        if len(a) == 2 and len(b) == 2:
            return 2 * a[0] * a[1] * b[1]
    return 0


class _Sink:
    def __init__(self):
        self.clear()

    def clear(self):
        self.layer = OUTSIDE                   # the layer call we are inside
        self.rows = set()                      # the chunk sizes of a batch run as distinct windows
        self.times = defaultdict(int)          # (layer, op, shapes) -> total ns
        self.calls = defaultdict(int)
        self.cost = {}                         # (layer, op, shapes, line) -> (FLOPs, bytes) of one call
        self.layouts = {}                      # matmul key -> [(shape, transposed)] of a, b, out


class _Timed:
    """A NumPy function (or ufunc method) that records its time under the current layer. Each
    (layer, op, shapes of its array arguments, calling line) is counted apart; its FLOPs and bytes
    are noted once: they are the same every time."""

    def __init__(self, fn, name, sink):
        self._fn, self._name, self._sink = fn, name, sink

    def __call__(self, *args, **kwargs):
        t = time.perf_counter_ns()
        r = self._fn(*args, **kwargs)
        dt = time.perf_counter_ns() - t
        s = self._sink
        key = (s.layer, self._name, tuple(a.shape for a in args if isinstance(a, np.ndarray)),
               sys._getframe(1).f_lineno)
        s.times[key] += dt
        s.calls[key] += 1
        if key not in s.cost:
            s.cost[key] = (_flops(self._name, args), _nbytes(args, kwargs, r))
            if self._name in MATMULS and np.ndim(args[0]) == np.ndim(args[1]) == 2:   # not a dot of vectors
                out = kwargs.get("out", r)
                s.layouts[key] = [(a.shape, not a.flags.c_contiguous) for a in (args[0], args[1], out)]
        return r

    def __getattr__(self, attr):                 # np.add.reduce, np.maximum.reduce: cached on self
        v = getattr(self._fn, attr)
        v = _Timed(v, f"{self._name}.{attr}", self._sink) if callable(v) else v
        setattr(self, attr, v)
        return v


class _NumpyProxy:
    """Stands in for `np` inside npmlp/fast/engine.py. Attributes are cached on the instance, so after the
    first step a lookup costs what np.<name> costs."""

    def __init__(self, sink):
        self._sink = sink

    def __getattr__(self, name):
        v = getattr(np, name)
        v = _Timed(v, "np." + name, self._sink) if callable(v) and not isinstance(v, type) else v
        setattr(self, name, v)
        return v


def instrumentation_overhead_us(sink):
    """What one timed call adds outside its own timed region (its frame, the key, the bookkeeping),
    for a call with two array arguments and an `out`, like most of the engine's."""
    a, b = np.ones(4, np.float32), np.empty(4, np.float32)
    noop = _Timed(lambda *args, **kw: None, "noop", sink)
    plain = min(_best(lambda: None, 20000) for _ in range(5))
    timed = min(_best(lambda: noop(a, b, out=b), 20000) for _ in range(5))
    for k in [k for k in sink.times if k[1] == "noop"]:
        del sink.times[k], sink.calls[k], sink.cost[k]
    return (timed - plain) * 1e6


def _layer_timer(fn, name, sink):
    def wrapped(*args, **kwargs):
        outer, sink.layer = sink.layer, name
        if name == "forward_windows":
            sink.rows.add(len(args[1]))        # (self, xb, ...): this chunk's distinct windows
        t = time.perf_counter_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            sink.times[(name, "total", None)] += time.perf_counter_ns() - t
            sink.calls[(name, "total", None)] += 1
            sink.layer = outer
    return wrapped


def measure_floors():
    """(per-call overhead in us, copy bandwidth in GB/s of a 1 MiB array)."""
    one = np.ones(1, np.float32)
    out = np.empty(1, np.float32)
    best = min(_best(lambda: np.negative(one, out=out), 20000) for _ in range(5))
    a = np.ones(1 << 18, np.float32)            # 1 MiB: stays in L2, like a chunk's arrays
    b = np.empty_like(a)
    t = min(_best(lambda: np.copyto(b, a), 200) for _ in range(5))
    return best * 1e6, 2 * a.nbytes / t / 1e9


def matmul_reference(layouts, fn=np.matmul, reps=7, with_torch=True):
    """The same matmul (shapes and memory layouts) alone, in NumPy and in torch: -> (numpy us,
    torch us or None). torch's CPU build multiplies with MKL; NumPy's wheels with OpenBLAS."""
    rng = np.random.default_rng(0)

    def make(shape, transposed):
        a = rng.standard_normal(shape).astype(np.float32)
        return np.asfortranarray(a) if transposed else a
    (sa, ta), (sb, tb), (so, to) = layouts
    a, b, out = make(sa, ta), make(sb, tb), make(so, to)
    n = max(1, int(2e6 / max(1, 2 * sa[0] * sa[1] * sb[1])))
    np_us = min(_best(lambda: fn(a, b, out=out), n) for _ in range(reps)) * 1e6
    if not with_torch:
        return np_us, None
    try:
        import torch
    except ImportError:
        return np_us, None
    at, bt = torch.from_numpy(a), torch.from_numpy(b)
    torch_us = min(_best(lambda: torch.matmul(at, bt), n) for _ in range(reps)) * 1e6
    return np_us, torch_us


def _best(f, n):
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n


def _shapes_of(members):
    """The shapes of one call's arrays over its calls, each size that varies given as n."""
    members = list(members)
    first = members[0]
    if any(len(m) != len(first) or any(len(a) != len(b) for a, b in zip(m, first, strict=True)) for m in members):
        return first
    return tuple(tuple(d if all(m[i][j] == d for m in members) else "n" for j, d in enumerate(sh))
                 for i, sh in enumerate(first))


def _op_label(k):
    """'np.matmul (32,31)@(31,200)', 'np.add.reduce (32,27)': the op and its arrays' shapes."""
    shapes = [str(sh).replace(", ", ",").replace(",)", ")").replace("'", "") for sh in k[2]]
    if k[1] in MATMULS and len(shapes) >= 2:
        return f"{k[1]} {shapes[0]}@{shapes[1]}"
    return f"{k[1]} {' '.join(shapes)}".rstrip()


def _steps_us(fn, steps):
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) / steps * 1e6


def profile_step(X, Y, vocab_size, B, H, steps, peak_gflops, seed=SEED, mkl_reference=True):
    """-> dict with the plain and instrumented step times of fast.sgd and one row per (layer, op).
    mkl_reference: also time each matmul alone in torch (MKL); meant for one thread, where a busy
    second core cannot stall torch's threads. False never imports torch."""
    import npmlp.fast.engine as F
    import npmlp.fast.tanh as FT
    from npmlp.fast.parallel import make_batches
    from npmlp.mlp import MLP
    from npmlp.train import TrainConfig

    total = 3 * steps + 20
    cfg = TrainConfig(steps=total, batch_size=B, lr=0.01, lr_decayed=0.01, seed=seed)
    model = MLP.init(vocab_size, 3, 10, H, seed=seed)
    lossi = np.zeros(total, np.float32)
    nxt = 0

    def run(batches, n):
        nonlocal nxt
        F.sgd(model, X, Y, cfg, lossi, start=nxt, stop=nxt + n, batches=batches)
        nxt += n

    with F.Chunks(model, B) as batches:                                      # one process: what is instrumented
        run(batches, 5)                                                      # warm up
        plain_us = _steps_us(lambda: run(batches, steps), steps)
    pool_us, processes = None, 1
    with make_batches(model, B) as batches:                                     # as `npmlp train` runs it
        processes = len(getattr(batches, "procs", ())) + 1
        if processes > 1:
            run(batches, 5)
            pool_us = _steps_us(lambda: run(batches, steps), steps)

    sink = _Sink()
    saved = {name: getattr(F.Engine, name) for name in LAYER_FUNCS}
    saved_np = F.np
    try:
        for name in LAYER_FUNCS:
            setattr(F.Engine, name, _layer_timer(saved[name], name, sink))
        F.np = FT.np = _NumpyProxy(sink)                                  # the engine's calls and its tanh's
        with F.Chunks(model, B) as batches:                                  # its buffers hold the proxy's functions
            run(batches, 5)
            sink.clear()                                                  # the warm-up made the buffers
            instr_us = _steps_us(lambda: run(batches, steps), steps)
    finally:
        for name, f in saved.items():
            setattr(F.Engine, name, f)
        F.np = FT.np = saved_np

    call_us, bw = measure_floors()
    overhead = instrumentation_overhead_us(sink)
    layers = [name for name in LAYER_FUNCS if (name, "total", None) in sink.times]
    layer_total = sum(sink.times[(lay, "total", None)] for lay in layers) / steps / 1e3
    outside_us = instr_us - layer_total
    rows = []
    for layer in [*layers, OUTSIDE]:
        layer_us = outside_us if layer == OUTSIDE else sink.times[(layer, "total", None)] / steps / 1e3
        ops = [k for k in sink.times if k[0] == layer and k[1] != "total"]
        # one row of the table per call in the engine's code: a batch run as distinct windows has
        # chunks of varying rows, each shown as n
        groups: dict = defaultdict(list)
        for k in ops:
            groups[(k[0], k[1], k[3])].append(k)
        op_sum = 0.0
        for ks in sorted(groups.values(), key=lambda ks: -sum(sink.times[k] for k in ks)):
            g = (ks[0][0], ks[0][1], _shapes_of(k[2] for k in ks))
            us = sum(sink.times[k] for k in ks) / steps / 1e3
            op_sum += us
            calls = sum(sink.calls[k] for k in ks) / steps
            flops, byts = (sum(sink.cost[k][i] * sink.calls[k] for k in ks) / steps for i in (0, 1))
            floors = {"call": calls * call_us, "flops": flops / (peak_gflops * 1e3), "bytes": byts / (bw * 1e3)}
            bound = max(floors, key=floors.get)
            row = {"layer": layer, "op": _op_label(g), "calls": calls, "us": us, "floor_us": floors[bound],
                   "bound": bound, "mflop": flops / 1e6, "kbytes": byts / 1e3}
            k = max(ks, key=lambda k: sink.calls[k])                  # the commonest shape, alone
            if k in sink.layouts:
                np_us, torch_us = matmul_reference(sink.layouts[k], np.dot if k[1] == "np.dot" else np.matmul,
                                                   with_torch=mkl_reference)
                scale = flops / sink.cost[k][0]                       # its calls that make the group's FLOPs
                row["alone_numpy_us"] = np_us * scale
                row["alone_torch_us"] = None if torch_us is None else torch_us * scale
            rows.append(row)
        n_calls = sum(sink.calls[k] for k in ops) / steps
        if layer == OUTSIDE:                                              # the layer timers run out here
            n_calls += sum(sink.calls[(lay, "total", None)] for lay in layers) / steps
        rows.append({"layer": layer, "op": "rest (operators, array methods, Python)", "calls": None,
                     "us": layer_us - op_sum - n_calls * overhead, "floor_us": None, "bound": None,
                     "mflop": 0, "kbytes": 0})
    return {"B": B, "H": H, "steps": steps, "engine": "fast", "plain_step_us": plain_us,
            "pool_step_us": pool_us, "pool_processes": processes, "instrumented_step_us": instr_us,
            "layers_us": layer_total, "outside_layers_us": outside_us, "chunks": len(F.batch_chunks(B)),
            "window_chunk_rows": sorted(sink.rows),
            "timer_overhead_us_per_call": overhead, "ops_seen": len(sink.cost),
            "call_overhead_us": call_us, "copy_bandwidth_gbs": bw, "peak_gflops": peak_gflops, "rows": rows}


def _calls(c):
    return "" if c is None else f"{c:.0f}" if abs(c - round(c)) < 1e-9 else f"{c:.2f}"


def profile_markdown(p):
    """A Markdown table of one profile."""
    batches = "" if not p.get("pool_step_us") else (
        f", {p['pool_step_us']:.1f} us with {p['pool_processes']} processes as `npmlp train` runs it")
    windows = p.get("window_chunk_rows")
    cut = (f"its distinct windows, in chunks of n = {windows[0]}-{windows[-1]} rows" if windows else
           f"{p['chunks']} chunk{'s' * (p['chunks'] != 1)} of at most {-(-p['B'] // p['chunks'])} rows")
    head = (f"**B={p['B']}, H={p['H']}** ({cut}): plain step {p['plain_step_us']:.1f} us in one process{batches}; "
            f"instrumented {p['instrumented_step_us']:.1f} us (Engine.forward_loss and backward "
            f"{p['layers_us']:.1f} us, outside them -- minibatch gather, run_chunks, sum of the chunk "
            f"updates, SGD update, loop -- {p['outside_layers_us']:.1f} us). Floors: "
            f"{p['call_overhead_us']:.2f} us per NumPy call, {p['peak_gflops']:.0f} GFLOP/s sgemm peak, "
            f"{p['copy_bandwidth_gbs']:.0f} GB/s copy bandwidth (1 MiB). Each layer's \"rest\" has the timers' "
            f"own cost ({p['timer_overhead_us_per_call']:.2f} us per timed call) taken out.")
    if not p.get("ops_seen", 1):
        head += (" **No NumPy call was seen**: npmlp/fast/engine.py no longer reaches NumPy through its "
                 "module's `np`, so this profile shows only the layers' totals.")
    lines = [head, "",
             "| layer | op | calls/step | us/step | floor us | bound by | MFLOP | kB moved "
             "| alone: NumPy / torch (MKL) us |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in p["rows"]:
        floor = "" if r["floor_us"] is None else f"{r['floor_us']:.2f}"
        alone = ""
        if r.get("alone_numpy_us") is not None:
            mkl = r["alone_torch_us"]
            alone = f"{r['alone_numpy_us']:.1f} / " + ("–" if mkl is None else f"{mkl:.1f}")
        lines.append(f"| {r['layer']} | {r['op']} | {_calls(r['calls'])} | {r['us']:.2f} | {floor} | "
                     f"{r['bound'] or ''} | {r['mflop']:.2f} | {r['kbytes']:.0f} | {alone} |")
    lines += ["", summary_markdown(p)]
    return "\n".join(lines)


def summary(p):
    """Where the step's time goes: inside the engine's forward/backward (matmuls, other NumPy
    calls, operators and Python) and outside them, each with its floor."""
    inside = [r for r in p["rows"] if r["layer"] != OUTSIDE]
    outside = [r for r in p["rows"] if r["layer"] == OUTSIDE]
    mm = [r for r in inside if r["op"].split()[0] in MATMULS]
    other = [r for r in inside if r["calls"] is not None and r["op"].split()[0] not in MATMULS]
    out = {"matmul_us": sum(r["us"] for r in mm), "matmul_floor_us": sum(r["floor_us"] for r in mm),
           "matmul_alone_numpy_us": sum(r.get("alone_numpy_us") or 0 for r in mm),
           "other_numpy_us": sum(r["us"] for r in other), "other_numpy_floor_us": sum(r["floor_us"] for r in other),
           "operators_python_us": sum(r["us"] for r in inside if r["calls"] is None),
           "outside_numpy_us": sum(r["us"] for r in outside if r["calls"] is not None),
           "outside_numpy_floor_us": sum(r["floor_us"] for r in outside if r["calls"] is not None),
           "outside_layers_us": p["outside_layers_us"]}
    torch_mm = [r.get("alone_torch_us") for r in mm]
    out["matmul_alone_torch_us"] = None if None in torch_mm else sum(torch_mm)
    return out


def summary_markdown(p):
    s = summary(p)
    mkl = "" if s["matmul_alone_torch_us"] is None else (
        f"; the same products alone take {s['matmul_alone_numpy_us']:.0f} µs in NumPy (OpenBLAS) and "
        f"{s['matmul_alone_torch_us']:.0f} µs in torch (MKL)")
    return (f"Summary (instrumented step): in Engine.forward_loss/backward, matmuls {s['matmul_us']:.0f} µs "
            f"(floor at the sgemm peak {s['matmul_floor_us']:.0f} µs{mkl}), other NumPy calls "
            f"{s['other_numpy_us']:.0f} µs (floor {s['other_numpy_floor_us']:.0f} µs), operators and Python "
            f"{s['operators_python_us']:.0f} µs; outside them {s['outside_layers_us']:.0f} µs, of which NumPy "
            f"calls {s['outside_numpy_us']:.0f} µs (floor {s['outside_numpy_floor_us']:.0f} µs).")
