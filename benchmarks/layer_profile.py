"""Where a layer network's training step spends its time, layer by layer, forward and backward:
npmlp's fast engine (npmlp/fast/stack.py) beside the lectures' torch loop (autograd through the
package's torch mirror, as benchmarks/torch_layers.py runs it), one core, the same batches.

    python -m benchmarks.layer_profile --model wavenet          # or deep; --steps, --batch-size

npmlp: the `np` stack.py sees is replaced by a proxy that times every NumPy call and notes the
function and source line it came from, and the engine's closures are built again over it. A call
on a line at or above the previous call's line in a block's closure (StackEngine._program's
block_forward and block_backward) starts the next block: each runs top to bottom, the forwards in
order, the backwards in reverse. Operators and array methods (`C.take`, `onehot.fill`,
`dlogits[...] -=`) are not seen by the proxy: they are the rest of each phase, the step's time
minus the calls seen.
torch: torch.profiler over the same steps; an op nested under autograd's engine is the backward;
each op is put in the block whose row count its shapes carry (the same rows npmlp's blocks have),
else under "other" (the loss, the embedding gather, the update).
Every time is the mean per step in microseconds; the proxy's and the profiler's own overheads make
both tables slower than a plain step, which is timed beside them.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.layer_profile", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("deep", "wavenet"), default="wavenet")
    p.add_argument("--steps", type=int, default=2000, help="steps profiled (default 2000)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--top", type=int, default=20, help="how many of npmlp's slowest calls to list (default 20)")
    p.add_argument("--data", help="names file (default: $NPMLP_DATA, then npmlp's cache or download)")
    return p.parse_args(argv)


def _timed(f, name, sink):
    def timed(*args, **kwargs):
        t = time.perf_counter_ns()
        r = f(*args, **kwargs)
        frame = sys._getframe(1)
        sink.append((frame.f_code.co_name, frame.f_lineno, name, time.perf_counter_ns() - t))
        return r
    return timed


class _Ufunc:
    """A ufunc whose calls and methods (np.maximum.reduce) are timed."""

    def __init__(self, f, sink):
        self._f, self._sink = f, sink

    def __call__(self, *args, **kwargs):
        t = time.perf_counter_ns()
        r = self._f(*args, **kwargs)
        frame = sys._getframe(1)
        self._sink.append((frame.f_code.co_name, frame.f_lineno, self._f.__name__, time.perf_counter_ns() - t))
        return r

    def __getattr__(self, name):
        return _timed(getattr(self._f, name), f"{self._f.__name__}.{name}", self._sink)


class Proxy:
    """numpy, with every call timed: (caller's function, line, name, ns) appended to sink."""

    def __init__(self, sink):
        self._sink = sink

    def __getattr__(self, name):
        f = getattr(np, name)
        if isinstance(f, np.ufunc):
            return _Ufunc(f, self._sink)
        if not callable(f) or isinstance(f, type):
            return f
        return _timed(f, name, self._sink)


def npmlp_profile(model, X, Y, cfg, steps):
    """{(phase, layer): us per step} for the fast engine's step, and the plain step's us."""
    from npmlp.fast import stack
    from npmlp.train import batch_rows
    engine = stack.StackEngine(model)
    g = engine.views(np.zeros_like(engine.flat))

    phases: dict = defaultdict(float)           # the plain step's forward and backward, ns in all

    def step(i):
        ix = batch_rows(cfg, i, len(X))
        xb, yb = X[ix], Y[ix]
        t0 = time.perf_counter_ns()
        _, bufs = engine.forward_loss(xb, yb)
        t1 = time.perf_counter_ns()
        engine.backward(bufs, xb, yb, -cfg.lr, g)
        phases["forward"] += t1 - t0
        phases["backward"] += time.perf_counter_ns() - t1

    for i in range(100):
        step(i)
    phases.clear()
    t = time.perf_counter()
    for i in range(steps):
        step(i)
    plain = (time.perf_counter() - t) / steps * 1e6
    plain_phases = {k: v / steps / 1e3 for k, v in phases.items()}

    calls: list = []
    stack.np = Proxy(calls)
    engine._bufs.clear()                # each block's closures bind the proxy's functions when made
    try:
        for i in range(100):            # the buffers are made (and warmed) outside the timing
            step(i)
        calls.clear()
        t = time.perf_counter_ns()
        for i in range(steps):
            step(i)
        total = (time.perf_counter_ns() - t) / steps / 1e3
    finally:
        stack.np = np
        engine._bufs.clear()
    L = len(engine.blocks)
    out: dict = defaultdict(float)
    by_call: dict = defaultdict(float)
    block, last, func_last = 0, 10**9, None
    per_step = len(calls) // steps
    for k, (func, line, _name, ns) in enumerate(calls):
        if k % per_step == 0:
            func_last = None
        if func != func_last:                  # a new phase: its blocks' closures start again
            block, last, func_last = -1, 10**9, func
        if func in ("block_forward", "block_backward"):
            if line <= last:
                block += 1
            last = line
            b = block if func == "block_forward" else L - 1 - block
            layer = f"block {b}" if 0 <= b < L else "other"
        else:
            layer = "other"                    # the loss, the embedding, the running statistics
        phase = "backward" if func in ("backward", "block_backward") else "forward"
        out[(phase, layer)] += ns / steps / 1e3
        by_call[(phase, layer, f"{_name} (stack.py:{line})")] += ns / steps / 1e3
    seen = {ph: sum(v for (p, _), v in out.items() if p == ph) for ph in ("forward", "backward")}
    for ph in ("forward", "backward"):        # the plain phase's time the timed calls do not account for
        out[(ph, "rest (not seen)")] = max(plain_phases[ph] - seen[ph], 0.0)
    return dict(out), plain, total, engine.blocks, by_call


def torch_profile(model, X, Y, cfg, steps, blocks):
    """{(phase, layer): us per step} of the lectures' torch loop, and its plain step's us."""
    import functools

    import torch
    from torch.profiler import ProfilerActivity, profile

    from npmlp import torch_mirrors
    from npmlp.train import batch_rows
    torch.set_num_threads(1)
    mirror = functools.partial(getattr(torch_mirrors, model.spec.mirror), **model.sizes)
    P = {k: torch.tensor(v, requires_grad=True) for k, v in model.params.items()}
    buffers = {k: torch.tensor(v) for k, v in model.buffers.items()}
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)

    def step(i):
        ix = torch.from_numpy(batch_rows(cfg, i, len(X)).copy())
        loss, _ = mirror(P, Xt[ix], Yt[ix], buffers)
        for p in P.values():
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for p in P.values():
                p.data += -cfg.lr * p.grad
        loss.item()

    for i in range(100):
        step(i)
    t = time.perf_counter()
    for i in range(steps):
        step(i)
    plain = (time.perf_counter() - t) / steps * 1e6
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for i in range(steps):
            step(i)
    out: dict = defaultdict(float)
    for e in prof.events():
        if e.cpu_children:                          # leaf ops only: a parent's time is its children's
            continue
        parent, backward = e.cpu_parent, False
        while parent is not None:
            backward |= parent.name.startswith("autograd::engine::evaluate_function")
            parent = parent.cpu_parent
        # the block whose shapes the op's inputs carry most: its weight (I, O) counts 2, an activation
        # (rows..., width) with its rows and its in or out width 1 (the first block wins a tie)
        score = [0] * len(blocks)
        for shape in e.input_shapes or []:
            if len(shape) >= 2:
                rows, width = int(np.prod(shape[:-1])), shape[-1]
                for b, (n, I, O) in enumerate(blocks):
                    score[b] += 2 * (tuple(shape) == (I, O)) + (rows == n and width in (I, O))
        layer = f"block {score.index(max(score))}" if max(score, default=0) > 0 else "other"
        out[("backward" if backward else "forward", layer)] += e.self_cpu_time_total / steps
    return dict(out), plain


def _regroup(times: dict, labels: dict) -> dict:
    """{(phase, "block b"): us} -> {(phase, its label): us}, summed over the blocks of one label."""
    out: dict = defaultdict(float)
    for (phase, layer), us in times.items():
        out[(phase, labels.get(layer, layer))] += us
    return dict(out)


def main(argv=None):
    a = parse_args(argv)
    from npmlp.app.registry import MODELS, train_default
    from npmlp.train import TrainConfig

    from .torch_lecture import numpy_rows
    Model = MODELS[a.model]
    vocab, Xtr, Ytr, _, _ = numpy_rows(a, "layer_profile", Model.spec.defaults["block_size"])
    X, Y = Xtr.astype(np.intp), Ytr.astype(np.intp)
    model = Model.init(vocab.size)                       # float32, the lecture's sizes and seed
    cfg = TrainConfig(steps=a.steps, batch_size=a.batch_size, decay_at=train_default(a.model, "decay_at", 0.5))
    mine, plain, instrumented, blocks, by_call = npmlp_profile(model, X, Y, cfg, a.steps)
    rows, n = [], a.batch_size * model.block_size
    for blk in blocks:
        n //= blk.fold
        rows.append(n)
    try:
        theirs, tplain = torch_profile(Model.init(vocab.size), X, Y, cfg, a.steps,
                                       [(r, blk.I, blk.O) for r, blk in zip(rows, blocks, strict=True)])
    except ImportError:
        theirs, tplain = {}, float("nan")
    print(f"{a.model}, batch {a.batch_size}, {a.steps} steps, one core: us per step")
    print(f"plain step: npmlp {plain:.0f}, torch {tplain:.0f} (ratio {tplain / plain:.2f}); "
          f"instrumented npmlp {instrumented:.0f}")
    # blocks of one shape (deep's hidden layers) are one row: torch's ops cannot be told apart
    labels, first = {}, 0
    keys = [(r, blk.I, blk.O, blk.bn is not None, blk.tanh) for r, blk in zip(rows, blocks, strict=True)]
    for b, key in enumerate(keys):
        first = first if b and key == keys[b - 1] else b
        last = next((j for j in range(b, len(keys)) if keys[j] != key), len(keys)) - 1
        name = f"block {b}" if first == last else f"blocks {first}-{last}"
        labels[f"block {b}"] = f"{name} ({key[0]} rows, {key[1]} -> {key[2]}{', BN' if key[3] else ''}" \
                               f"{', tanh' if key[4] else ''})"
    mine, theirs = (_regroup(d, labels) for d in (mine, theirs))
    layers = sorted({k for k in (*mine, *theirs)}, key=lambda k: (k[0] != "forward", k[1]))
    print(f"{'phase':9} {'layer':44} {'npmlp':>8} {'torch':>8}")
    for k in layers:
        print(f"{k[0]:9} {k[1]:44} {mine.get(k, 0):8.1f} {theirs.get(k, 0):8.1f}")
    print("npmlp's slowest calls (timed, us per step):")
    for k, v in sorted(by_call.items(), key=lambda kv: -kv[1])[:a.top]:
        print(f"  {v:7.1f}  {k[0]:9} {k[1]:8} {k[2]}")
    for ph in ("forward", "backward"):
        print(f"{ph:9} {'total':44} {sum(v for (p, _), v in mine.items() if p == ph):8.1f} "
              f"{sum(v for (p, _), v in theirs.items() if p == ph):8.1f}")


if __name__ == "__main__":
    sys.exit(main())
