"""One-core cells by process CPU time: an older fast engine, the current one and JAX jit, alternating
in one process, so that other programs on a shared machine (which stretch wall time) move each
peer alike.

    git show COMMIT:npmlp/fast/engine.py > /tmp/engine_before.py
    taskset -c 0 python -m benchmarks.cpu_cells /tmp/engine_before.py [--repeats 9]

The older file is loaded as a module of the installed npmlp's fast tier (its relative imports must
still resolve: an engine.py of the current layout, npmlp/fast/). Each cell (H 200, 1000 x B 1, 32,
256, 1024, 4096) runs blocks of ~60,000 row-steps per peer, the order reversed every repeat, and
prints the medians of process CPU µs per step and the medians of the per-repeat ratios. JAX runs
with one thread, as bench.py's one-core setting.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time


def load_engine(path):
    spec = importlib.util.spec_from_file_location("npmlp.fast.engine_before", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["npmlp.fast.engine_before"] = mod
    spec.loader.exec_module(mod)
    return mod


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_cells", description=__doc__.split("\n\n")[0])
    p.add_argument("before", help="an older npmlp/fast/engine.py")
    p.add_argument("--repeats", type=int, default=9, help="alternating repeats per cell (default: 9)")
    a = p.parse_args(argv)
    os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = "1"
    import numpy as np

    import npmlp.fast.engine as after
    from npmlp.mlp import MLP
    from npmlp.train import TrainConfig

    from .bench import load_split
    from .peers import Batches, make_jax
    before = load_engine(a.before)
    X, Y, V = load_split(None)                                   # the lecture's training split, T = 3

    def fast_peer(mod, init, B, total):
        model = MLP(init)
        cfg = TrainConfig(steps=total, batch_size=B, lr=0.1, lr_decayed=0.1)
        batches, lossi = mod.Chunks(model, B), np.zeros(total, np.float32)
        return lambda start, n: mod.sgd(model, X, Y, cfg, lossi, start, start + n, batches=batches)

    print(f"after: ARITHMETIC {after.ARITHMETIC}; before: {a.before}")
    for H in (200, 1000):
        for B in (1, 32, 256, 1024, 4096):
            init = MLP.init(V, n_hidden=H).params
            steps = max(2, int(60000 / (B * H / 200 + 20)))
            total = steps * (a.repeats + 2) + 10
            peers = {"before": fast_peer(before, init, B, total), "after": fast_peer(after, init, B, total),
                     "jax": make_jax(init, X, Y, Batches(TrainConfig().seed, len(X), B), 0.1, total)}
            us = {k: [] for k in peers}
            for run in peers.values():
                run(0, 2)                                         # warm-up (JAX: the compile)
            for r in range(a.repeats):
                for k, run in (list(peers.items()) if r % 2 == 0 else list(peers.items())[::-1]):
                    t = time.process_time()
                    run(2 + r * steps, steps)
                    us[k].append((time.process_time() - t) / steps * 1e6)
            m = {k: float(np.median(v)) for k, v in us.items()}

            def ratio(x, y, us=us):                                # this cell's repeats
                return float(np.median(np.array(us[x]) / np.array(us[y])))

            print(f"H={H:4d} B={B:5d}: before {m['before']:9.1f}  after {m['after']:9.1f}  jax {m['jax']:9.1f} µs  "
                  f"before/after {ratio('before', 'after'):.2f}  jax/before {ratio('jax', 'before'):.2f}  "
                  f"jax/after {ratio('jax', 'after'):.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
