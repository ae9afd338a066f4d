"""One training step of makemore.py's bag of words and Transformer: npmlp's fast engine
(npmlp/fast/transformer.py, what `npmlp train` runs), its reference loop (train.sgd) and
makemore.py's loop in torch eager (its modules, torch_mirrors.transformer_module, with
torch.optim.AdamW as makemore.py makes it), on names.txt at makemore.py's sizes and recipe
(batch 32, AdamW lr 5e-4, dropout 0), one thread each; then the fast step's time by op class and
its share of this core's sgemm peak.

    NPMLP_DATA=path/to/names.txt taskset -c 1 python -m benchmarks.makemore_models --model transformer

Every peer starts from the same parameters and trains on the same minibatches (train.batch_rows);
their first losses must agree to 1e-4 before anything is timed. Each repeat times `--steps` steps
of each peer in turn (fast, reference, torch, fast, ...), so a busy moment hits them all; the
table gives the median of the repeats and the median of the pair-by-pair ratios.
"""
from __future__ import annotations

import argparse
import collections
import os
import time

import numpy as np
from threadpoolctl import threadpool_limits

from npmlp.contract import to_makemore
from npmlp.data import Vocab, build_sequences
from npmlp.fast import engine as fast
from npmlp.fast import transformer as fast_transformer
from npmlp.loading import load_words
from npmlp.train import TrainConfig, batch_rows, optimizer, sgd
from npmlp.transformer import BoW, Transformer

CLASSES = {"bow": BoW, "transformer": Transformer}
STEPS = {"bow": 200, "transformer": 30}


def config(cls) -> TrainConfig:
    return TrainConfig(**{k: v for k, v in cls.spec.train.items() if k in TrainConfig.__dataclass_fields__
                          and k != "steps"}, steps=10 ** 7)


class Peers:
    """Each peer's model, optimiser and next step, kept across repeats (every peer trains on)."""

    def __init__(self, kind: str, X, Y):
        import torch

        from npmlp.torch_mirrors import transformer_module
        torch.set_num_threads(1)
        cls = CLASSES[kind]
        self.X, self.Y, self.cfg = X, Y, config(cls)
        model = cls.init(int(X.max()) + 1, X.shape[1])
        self.fast_model, self.ref_model = (model.like({k: p.copy() for k, p in model.params.items()}) for _ in "ab")
        self.fast_opt, self.ref_opt = optimizer(self.cfg, self.fast_model.params), optimizer(self.cfg,
                                                                                          self.ref_model.params)
        self.batches = fast.Chunks(self.fast_model, self.cfg.batch_size)
        self.torch, self.tX, self.tY = torch, torch.as_tensor(X.astype(np.int64)), torch.as_tensor(Y.astype(np.int64))
        self.module = transformer_module(kind, model.vocab_size, **model.sizes)
        self.module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in to_makemore(model).items()})
        self.torch_opt = torch.optim.AdamW(self.module.parameters(), lr=self.cfg.lr, betas=(self.cfg.beta1,
                                           self.cfg.beta2), eps=self.cfg.eps, weight_decay=self.cfg.weight_decay)
        self.next = {"fast": 0, "reference": 0, "torch": 0}

    def run(self, peer: str, steps: int) -> list[float]:
        """`steps` more steps of `peer` -> their losses."""
        start = self.next[peer]
        self.next[peer] += steps
        if peer == "fast":
            with np.errstate(over="ignore"):
                lossi, _ = fast.sgd(self.fast_model, self.X, self.Y, self.cfg, None, start, start + steps,
                                    batches=self.batches, opt=self.fast_opt)
            return list(lossi[start:start + steps])
        if peer == "reference":
            lossi, _ = sgd(self.ref_model, self.X, self.Y, self.cfg, None, start, start + steps, opt=self.ref_opt)
            return list(lossi[start:start + steps])
        losses = []
        for step in range(start, start + steps):               # makemore.py's loop
            ix = self.torch.as_tensor(np.array(batch_rows(self.cfg, step, len(self.X))))
            _, loss = self.module(self.tX[ix], self.tY[ix])
            self.module.zero_grad(set_to_none=True)
            loss.backward()
            self.torch_opt.step()
            losses.append(loss.item())
        return losses


def profile(kind: str, X, Y, steps: int) -> tuple[dict, float, float]:
    """The fast step by op class: np in npmlp/fast/transformer.py replaced by a proxy timing each
    call -> ({class: seconds a step}, the step's seconds under the proxy, its matmul FLOPs)."""
    acc: dict = collections.defaultdict(float)
    flops = [0.0]

    def classify(name, args):
        if name in ("dot", "matmul"):
            a, b = np.asarray(args[0]), np.asarray(args[1])
            if a.ndim >= 2 and b.ndim >= 2:
                flops[0] += 2 * a.size * b.shape[-1]
                return "matmul (batched, attention)" if a.ndim > 2 else "matmul"
            return "gemv (sums over rows, channels)"
        if name in ("exp", "log", "sqrt"):
            return f"{name}"
        if name.endswith(".reduce") or name in ("count_nonzero",):
            return "reductions"
        if name in ("add", "subtract", "multiply", "divide", "greater_equal", "copyto"):
            return "element-wise"
        return "other"

    class Timed:
        def __init__(self, f, name):
            self.f, self.name = f, name

        def __call__(self, *a, **k):
            t0 = time.perf_counter()
            r = self.f(*a, **k)
            acc[classify(self.name, a)] += time.perf_counter() - t0
            return r

        def __getattr__(self, n):
            return Timed(getattr(self.f, n), f"{self.name}.{n}")

    class Proxy:
        def __getattr__(self, n):
            v = getattr(np, n)
            return Timed(v, n) if callable(v) and not isinstance(v, type) else v

    peers = Peers(kind, X, Y)
    peers.run("fast", 5)
    fast_transformer.np = Proxy()            # type: ignore[assignment]
    try:
        best: tuple = (float("inf"), {}, 0.0)
        for _ in range(5):
            acc.clear()
            flops[0] = 0.0
            t0 = time.perf_counter()
            peers.run("fast", steps)
            t = (time.perf_counter() - t0) / steps
            if t < best[0]:
                best = (t, {k: v / steps for k, v in acc.items()}, flops[0] / steps)
    finally:
        fast_transformer.np = np
        peers.batches.close()
    return best[1], best[0], best[2]


def sgemm_peak(n: int = 1024) -> float:
    """FLOP/s of one thread's float32 n x n product, the best of a few."""
    a, b = np.ones((n, n), np.float32), np.ones((n, n), np.float32)
    out = np.empty_like(a)
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        np.dot(a, b, out)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(CLASSES), default="transformer")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, help="steps per repeat (default: 30 transformer, 200 bow)")
    p.add_argument("--peers", nargs="+", default=["fast", "reference", "torch"])
    args = p.parse_args(argv)
    steps = args.steps or STEPS[args.model]
    words = load_words(os.environ.get("NPMLP_DATA") or "names.txt")
    X, Y = build_sequences(words, Vocab.from_words(words))
    with threadpool_limits(1):
        peers = Peers(args.model, X, Y)
        first = {peer: peers.run(peer, 3) for peer in args.peers}
        for peer, losses in first.items():
            if not np.allclose(losses, first[args.peers[0]], atol=1e-4):
                raise SystemExit(f"{peer}'s first losses {losses} are not {args.peers[0]}'s {first[args.peers[0]]}")
        times: dict = {peer: [] for peer in args.peers}
        for _ in range(args.repeats):
            for peer in args.peers:
                t0 = time.perf_counter()
                peers.run(peer, steps)
                times[peer].append((time.perf_counter() - t0) / steps)
        peers.batches.close()
        shares, profiled, flops = profile(args.model, X, Y, steps)
        peak = sgemm_peak()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.model}, B=32, one thread; load average {load:.2f}; {args.repeats} repeats of {steps} steps")
    print("| peer | ms/step (median) | min-max | fast is x faster (median pair) |\n|---|---:|---:|---:|")
    for peer, ts in times.items():
        ratio = np.median([t / f for t, f in zip(ts, times["fast"], strict=True)]) if "fast" in times else 1
        print(f"| {peer} | {np.median(ts) * 1e3:.2f} | {min(ts) * 1e3:.2f}-{max(ts) * 1e3:.2f} | {ratio:.2f} |")
    print(f"\nthe fast step under the profiler: {profiled * 1e3:.2f} ms (its best repeat); by op class:")
    shares["the rest (AdamW, gathers, takes, Python)"] = profiled - sum(shares.values())
    for k, v in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"  {k:40s} {v * 1e3:7.3f} ms  {v / profiled * 100:5.1f}%")
    print(f"matmuls: {flops / 1e6:.0f} MFLOP a step = {flops / peak * 1e3:.2f} ms at this core's sgemm peak "
          f"({peak / 1e9:.0f} GFLOP/s, 1024^3): {flops / peak / profiled * 100:.0f}% of the profiled step, "
          f"{flops / peak / np.median(times['fast']) * 100 if 'fast' in times else float('nan'):.0f}% of the "
          f"median step")


if __name__ == "__main__":
    main()
