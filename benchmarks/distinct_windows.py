"""The measurement behind npmlp.fast.engine.DISTINCT_FROM: the lecture's MLP step at each batch
size, its batch cut into chunks of rows or run as its distinct windows of characters, alternating,
from the same params on the same batches, one core.

    python -m benchmarks.distinct_windows                      # --batch-sizes, --repeats, --rows

Each repeat runs both ways for the same steps (about --rows rows in all, at least 20 steps) and
times the whole training call (gather included); the table gives each way's median time per
step, the distinct windows a batch holds (mean), and the ratio pair by pair (median, slowest and
fastest). Both ways' first losses must agree (float32 round-off) before anything is timed.
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.distinct_windows", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024, 4096],
                   help="default: 32 64 128 256 512 1024 4096")
    p.add_argument("--repeats", type=int, default=5, help="alternating pairs per batch size (default 5)")
    p.add_argument("--rows", type=int, default=200_000, help="rows each timed run trains on (default 200000)")
    p.add_argument("--data", help="names file (default: $NPMLP_DATA, then npmlp's cache or download)")
    return p.parse_args(argv)


def timed_run(model, X, Y, cfg, distinct: bool) -> tuple[float, np.ndarray, float]:
    """cfg's steps from a copy of model, the batch cut one way -> (s per step, lossi, mean windows)."""
    from npmlp.fast.engine import Chunks, sgd
    m = copy.deepcopy(model)
    with Chunks(m, cfg.batch_size, distinct=distinct) as batches:
        t = time.perf_counter()
        lossi, _ = sgd(m, X, Y, cfg, batches=batches)
        dt = time.perf_counter() - t
        windows = float(batches.edges[:, -1].mean()) if distinct else float(cfg.batch_size)
    return dt / cfg.steps, lossi, windows


def main(argv=None):
    a = parse_args(argv)
    from npmlp.mlp import MLP
    from npmlp.train import TrainConfig

    from .torch_lecture import numpy_rows
    a.batch_size = max(a.batch_sizes)
    vocab, Xtr, Ytr, _, _ = numpy_rows(a, "distinct_windows", 3)
    X, Y = Xtr.astype(np.intp), Ytr.astype(np.intp)
    model = MLP.init(vocab.size)                        # float32, the lecture's sizes and seed
    print(f"the lecture's MLP, one core, {a.repeats} alternating pairs: ms per step")
    print(f"{'B':>5} {'as rows':>9} {'as windows':>11} {'windows':>8}  ratio (slowest-fastest)")
    for B in a.batch_sizes:
        cfg = TrainConfig(steps=max(20, a.rows // B), batch_size=B)
        short = TrainConfig(steps=3, batch_size=B)
        first = [timed_run(model, X, Y, short, d)[1] for d in (False, True)]
        if not np.allclose(first[0], first[1], rtol=1e-5):
            raise SystemExit(f"distinct_windows: the two ways' first losses differ at B={B}: {first}")
        rows, windows, ratios, U = [], [], [], 0.0
        for _ in range(a.repeats):
            r, _, _ = timed_run(model, X, Y, cfg, False)
            w, _, U = timed_run(model, X, Y, cfg, True)
            rows.append(r)
            windows.append(w)
            ratios.append(r / w)
        lo, mid, hi = np.min(ratios), np.median(ratios), np.max(ratios)
        print(f"{B:5d} {np.median(rows) * 1e3:9.3f} {np.median(windows) * 1e3:11.3f} {U:8.0f}  "
              f"{mid:.2f}x ({lo:.2f}-{hi:.2f})", flush=True)


if __name__ == "__main__":
    main()
