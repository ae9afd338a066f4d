"""Per-op profile of THE npmlp training step (npmlp.train.sgd), with a floor for every op.

Every layer function that npmlp/model.py calls is wrapped with a timer (the same monkeypatching the
reading tests use), and the `np` that npmlp/layers.py sees is replaced by a proxy that times each
NumPy call and notes its FLOPs and bytes. Then real sgd steps run. Operators (`out += b`,
`counts[rows, Y]`) and `C.take` are not seen by the proxy: they show up as a layer's "rest".

The floor of a NumPy call is the largest of
  - the per-call cost of NumPy itself (a ufunc on a 1-element array, measured),
  - its matmul FLOPs at the measured sgemm peak,
  - the bytes it reads and writes at the measured copy bandwidth of a cache-sized array.
Timers add ~0.1-0.3 us per call: the instrumented step is slower than the plain one (both shown).
"""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

MATMULS = ("np.matmul", "np.dot")
LAYER_FUNCS = ("embedding_forward", "linear_forward", "tanh_forward", "cross_entropy_forward",
               "cross_entropy_backward", "linear_backward", "tanh_backward", "embedding_backward")


def _nbytes(args, kwargs, result):
    seen, total = set(), 0
    for a in (*args, *kwargs.values(), result):
        if isinstance(a, np.ndarray) and id(a) not in seen:
            seen.add(id(a))
            total += a.nbytes
    return total


def _flops(name, args):
    if name in ("np.matmul", "np.dot") and len(args) >= 2:
        a, b = np.shape(args[0]), np.shape(args[1])
        if len(a) == 2 and len(b) == 2:
            return 2 * a[0] * a[1] * b[1]
    return 0


class _Sink:
    def __init__(self):
        self.layer = "-"                       # the layer call we are inside
        self.times = defaultdict(int)          # (layer, op) -> total ns
        self.calls = defaultdict(int)
        self.cost = {}                         # (layer, op) -> (FLOPs, bytes) of one call
        self.layouts = {}                      # matmul key -> [(shape, transposed)] of a, b, out


class _Timed:
    """A NumPy function (or ufunc method) that records its time under the current layer. The FLOPs
    and bytes of a call are noted once per (layer, op): they are the same every step."""

    def __init__(self, fn, name, sink):
        self._fn, self._name, self._sink = fn, name, sink

    def __call__(self, *args, **kwargs):
        t = time.perf_counter_ns()
        r = self._fn(*args, **kwargs)
        dt = time.perf_counter_ns() - t
        s = self._sink
        # each matmul of a layer gets its own row: (layer, op, operand shapes)
        key = (s.layer, self._name, (args[0].shape, args[1].shape) if self._name in MATMULS else None)
        s.times[key] += dt
        s.calls[key] += 1
        if key not in s.cost:
            s.cost[key] = (_flops(self._name, args), _nbytes(args, kwargs, r))
            if self._name in MATMULS:
                s.layouts[key] = [(a.shape, not a.flags.c_contiguous) for a in (args[0], args[1], r)]
        return r

    def __getattr__(self, attr):                 # np.add.reduce, np.maximum.reduce: cached on self
        v = getattr(self._fn, attr)
        v = _Timed(v, f"{self._name}.{attr}", self._sink) if callable(v) else v
        setattr(self, attr, v)
        return v


class _NumpyProxy:
    """Stands in for `np` inside npmlp/layers.py. Attributes are cached on the instance, so after the
    first step a lookup costs what np.<name> costs."""

    def __init__(self, sink):
        self._sink = sink

    def __getattr__(self, name):
        v = getattr(np, name)
        v = _Timed(v, "np." + name, self._sink) if callable(v) and not isinstance(v, type) else v
        setattr(self, name, v)
        return v


def instrumentation_overhead_us(sink):
    """What one timed call adds outside its own timed region (its frame, the bookkeeping)."""
    noop = _Timed(lambda *a, **k: None, "noop", sink)
    plain = min(_best(lambda: None, 20000) for _ in range(5))
    timed = min(_best(lambda: noop(1, out=None), 20000) for _ in range(5))
    for k in [k for k in sink.times if k[1] == "noop"]:
        del sink.times[k], sink.calls[k]
    return (timed - plain) * 1e6


def _layer_timer(fn, name, sink, counter):
    def wrapped(*args, **kwargs):
        counter[name] += 1
        label = name + ("" if name not in ("linear_forward", "linear_backward")
                        else (" 1" if counter[name] % 2 == (1 if name == "linear_forward" else 0) else " 2"))
        outer, sink.layer = sink.layer, label
        t = time.perf_counter_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            sink.times[(label, "total", None)] += time.perf_counter_ns() - t
            sink.calls[(label, "total", None)] += 1
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
    try:
        import torch
    except ImportError:
        return np_us, None
    if not with_torch:
        return np_us, None
    at, bt = torch.from_numpy(a), torch.from_numpy(b)
    torch_us = min(_best(lambda: torch.matmul(at, bt), n) for _ in range(reps)) * 1e6
    return np_us, torch_us


def _best(f, n):
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n


def profile_step(X, Y, vocab_size, B, H, steps, peak_gflops, seed=2147483647, mkl_reference=True):
    """-> dict with the plain and instrumented step times and one row per (layer, op).
    mkl_reference: also time each matmul alone in torch (MKL); meant for one thread, where a busy
    second core cannot stall torch's threads."""
    import npmlp.layers as L
    import npmlp.model as M
    from npmlp.train import TrainConfig, sgd

    total = 2 * steps + 10
    cfg = TrainConfig(steps=total, batch_size=B, lr=0.01, lr_decayed=0.01, seed=seed)
    model = M.MLP.init(vocab_size, 3, 10, H, seed=seed)
    lossi = np.zeros(total, np.float32)
    sgd(model, X, Y, cfg, lossi, start=0, stop=5)                        # warm up
    t = time.perf_counter()
    sgd(model, X, Y, cfg, lossi, start=5, stop=5 + steps)
    plain_us = (time.perf_counter() - t) / steps * 1e6

    sink, counter = _Sink(), defaultdict(int)
    saved = {name: getattr(M, name) for name in LAYER_FUNCS}
    saved_np = L.np
    try:
        for name in LAYER_FUNCS:
            setattr(M, name, _layer_timer(getattr(L, name), name, sink, counter))
        L.np = _NumpyProxy(sink)
        t = time.perf_counter()
        sgd(model, X, Y, cfg, lossi, start=5 + steps, stop=5 + 2 * steps)
        instr_us = (time.perf_counter() - t) / steps * 1e6
    finally:
        for name, f in saved.items():
            setattr(M, name, f)
        L.np = saved_np

    call_us, bw = measure_floors()
    overhead = instrumentation_overhead_us(sink)
    rows = []
    layers = [k[0] for k in sink.times if k[1] == "total"]
    for layer in layers:
        layer_us = sink.times[(layer, "total", None)] / steps / 1e3
        ops = [k for k in sink.times if k[0] == layer and k[1] != "total"]
        op_sum = 0.0
        for k in sorted(ops, key=lambda k: -sink.times[k]):
            us = sink.times[k] / steps / 1e3
            op_sum += us
            calls = sink.calls[k] / steps
            flops, byts = (c * calls for c in sink.cost[k])
            floors = {"call": calls * call_us, "flops": flops / (peak_gflops * 1e3), "bytes": byts / (bw * 1e3)}
            bound = max(floors, key=floors.get)
            op = k[1] if k[2] is None else f"{k[1]} {k[2][0]}@{k[2][1]}".replace(", ", ",")
            row = {"layer": layer, "op": op, "calls": calls, "us": us, "floor_us": floors[bound],
                   "bound": bound, "mflop": flops / 1e6, "kbytes": byts / 1e3}
            if k in sink.layouts:
                np_us, torch_us = matmul_reference(sink.layouts[k], np.dot if k[1] == "np.dot" else np.matmul,
                                                   with_torch=mkl_reference)
                row["alone_numpy_us"] = np_us * calls
                row["alone_torch_us"] = None if torch_us is None else torch_us * calls
            rows.append(row)
        n_calls = sum(sink.calls[k] for k in ops) / steps
        rows.append({"layer": layer, "op": "rest (operators, C.take, Python)", "calls": None,
                     "us": layer_us - op_sum - n_calls * overhead, "floor_us": None, "bound": None,
                     "mflop": 0, "kbytes": 0})
    layer_total = sum(sink.times[(lay, "total", None)] for lay in layers) / steps / 1e3
    return {"B": B, "H": H, "steps": steps, "plain_step_us": plain_us, "instrumented_step_us": instr_us,
            "layers_us": layer_total, "outside_layers_us": instr_us - layer_total,
            "timer_overhead_us_per_call": overhead,
            "call_overhead_us": call_us, "copy_bandwidth_gbs": bw, "peak_gflops": peak_gflops, "rows": rows}


def profile_markdown(p):
    """A Markdown table of one profile."""
    lines = [f"**B={p['B']}, H={p['H']}**: plain step {p['plain_step_us']:.1f} us, instrumented "
             f"{p['instrumented_step_us']:.1f} us (layer calls {p['layers_us']:.1f} us, outside the layers "
             f"-- batch gather, SGD update, loop -- {p['outside_layers_us']:.1f} us). Floors: "
             f"{p['call_overhead_us']:.2f} us per NumPy call, {p['peak_gflops']:.0f} GFLOP/s sgemm peak, "
             f"{p['copy_bandwidth_gbs']:.0f} GB/s copy bandwidth (1 MiB). Each layer's \"rest\" has the timers' "
             f"own cost ({p['timer_overhead_us_per_call']:.2f} us per timed call) taken out.", "",
             "| layer | op | calls/step | us/step | floor us | bound by | MFLOP | kB moved "
             "| alone: NumPy / torch (MKL) us |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in p["rows"]:
        calls = "" if r["calls"] is None else f"{r['calls']:.0f}"
        floor = "" if r["floor_us"] is None else f"{r['floor_us']:.2f}"
        alone = ""
        if r.get("alone_numpy_us") is not None:
            mkl = r["alone_torch_us"]
            alone = f"{r['alone_numpy_us']:.1f} / " + ("–" if mkl is None else f"{mkl:.1f}")
        lines.append(f"| {r['layer']} | {r['op']} | {calls} | {r['us']:.2f} | {floor} | {r['bound'] or ''} | "
                     f"{r['mflop']:.2f} | {r['kbytes']:.0f} | {alone} |")
    lines += ["", summary_markdown(p)]
    return "\n".join(lines)


def summary(p):
    """Where the step's time goes, in four parts, each with its floor."""
    rows = p["rows"]
    mm = [r for r in rows if r["op"].split()[0] in MATMULS]
    other = [r for r in rows if r["op"].startswith("np.") and r["op"].split()[0] not in MATMULS]
    rest = [r for r in rows if r["calls"] is None]
    out = {"matmul_us": sum(r["us"] for r in mm), "matmul_floor_us": sum(r["floor_us"] for r in mm),
           "matmul_alone_numpy_us": sum(r.get("alone_numpy_us") or 0 for r in mm),
           "other_numpy_us": sum(r["us"] for r in other), "other_numpy_floor_us": sum(r["floor_us"] for r in other),
           "operators_python_us": sum(r["us"] for r in rest), "outside_layers_us": p["outside_layers_us"]}
    torch_mm = [r.get("alone_torch_us") for r in mm]
    out["matmul_alone_torch_us"] = None if None in torch_mm else sum(torch_mm)
    return out


def summary_markdown(p):
    s = summary(p)
    mkl = "" if s["matmul_alone_torch_us"] is None else (
        f"; the same products alone take {s['matmul_alone_numpy_us']:.0f} µs in NumPy (OpenBLAS) and "
        f"{s['matmul_alone_torch_us']:.0f} µs in torch (MKL)")
    return (f"Summary (instrumented step): matmuls {s['matmul_us']:.0f} µs (floor at the sgemm peak "
            f"{s['matmul_floor_us']:.0f} µs{mkl}); other NumPy calls {s['other_numpy_us']:.0f} µs (floor "
            f"{s['other_numpy_floor_us']:.0f} µs); operators and Python inside the layers "
            f"{s['operators_python_us']:.0f} µs; outside the layers {s['outside_layers_us']:.0f} µs.")
