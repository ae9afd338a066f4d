"""The lecture's training loop in torch, as a whole program: what makemore part 2's notebook does, on
the same split, init and minibatches as `npmlp train`, for a whole-process comparison with it
(start-up, data, training and evaluation all counted). Run from the repository's root:

    python -m benchmarks.torch_lecture                                # 200,000 steps at batch 32
    python -m benchmarks.torch_lecture --steps 300 --batch-size 4096 --threads 1

Shared with npmlp, so both train on the same rows from the same start: the names
(npmlp.loading.load_words: --data FILE, else $NPMLP_DATA, else npmlp's checked download), the 80/10/10
split (split_words(words), i.e. random.seed(42); random.shuffle(words)) and build_dataset,
the init (npmlp.mlp.MLP.init: the lecture's sizes and seed, float32), and step i's minibatch
rows (npmlp.train.batch_rows, where the lecture draws torch.randint). The rest is the lecture's:
C[X], view, @ W1 + b1, tanh, @ W2 + b2, F.cross_entropy, zero grads, backward, p.data += -lr * p.grad
with lr 0.1 for the first half of the steps and 0.01 after, the loss as a Python float each step;
then the loss of the whole train and dev splits. It prints, one `key value` a line:

    train_loss FLOAT     mean loss over the training split after the last step
    dev_loss FLOAT       ... over the dev split
    train_seconds FLOAT  the training loop alone (npmlp's metrics.json `seconds` measures the same)
"""
from __future__ import annotations

import argparse
import sys
import time


def program_parser(module: str, doc: str) -> argparse.ArgumentParser:
    """The options every torch program here shares: steps, batch size, threads, names file; `module`
    is the program's name in benchmarks/ (`python -m benchmarks.MODULE`)."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{module}", description=doc.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200_000, help="SGD steps (default 200000, the lecture's)")
    p.add_argument("--batch-size", type=int, default=32, help="minibatch size (default 32)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads(N) (default: torch's own choice)")
    p.add_argument("--data", help="names file (default: $NPMLP_DATA, then npmlp's cached download)")
    return p


def checked(p: argparse.ArgumentParser, argv=None):
    """p's arguments, the counts at least 1 (else argparse's one-line error, exit 2)."""
    a = p.parse_args(argv)
    for name in ("steps", "batch_size", "threads"):
        v = getattr(a, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    return a


def numpy_rows(a, prog: str, block_size: int):
    """npmlp's names (a.data, else its default), vocab and split, the train and dev rows with a
    context of block_size -> (vocab, Xtr, Ytr, Xdev, Ydev): X (N, T), Y (N,) as int64 arrays.
    A names file npmlp refuses, or a.batch_size above the training rows: `PROG: error: ...`, exit 1."""
    import numpy as np

    from npmlp.data import DataError, Vocab, build_dataset, split_words
    from npmlp.loading import load_words

    try:
        words = load_words(a.data)
    except DataError as e:
        raise SystemExit(f"{prog}: error: {e}") from None
    vocab = Vocab.from_words(words)
    tr, dev, _ = split_words(words)
    Xtr, Ytr, Xdev, Ydev = (v.astype(np.int64) for part in (tr, dev) for v in build_dataset(part, vocab, block_size))
    if a.batch_size > len(Xtr):
        raise SystemExit(f"{prog}: error: --batch-size {a.batch_size} is larger than the training split "
                         f"({len(Xtr):,} rows)")
    return vocab, Xtr, Ytr, Xdev, Ydev


def training_rows(a, prog: str, block_size: int):
    """numpy_rows(...) as torch int64 tensors."""
    import torch
    vocab, *rows = numpy_rows(a, prog, block_size)
    return (vocab, *(torch.from_numpy(r) for r in rows))


def report(train_loss: float, dev_loss: float, seconds: float) -> int:
    """The `key value` lines every torch program here prints (see the module's docstring)."""
    print(f"train_loss {train_loss:.8f}")
    print(f"dev_loss {dev_loss:.8f}")
    print(f"train_seconds {seconds:.3f}")
    return 0


def parse_args(argv=None):
    p = program_parser("torch_lecture", __doc__)
    p.add_argument("--flush-denormal", action="store_true",
                   help="torch.set_flush_denormal(True) (default: off, as the lecture; the benchmark's torch "
                   "peers turn it on)")
    return checked(p, argv)


def main(argv=None):
    a = parse_args(argv)
    import torch
    import torch.nn.functional as F

    from npmlp.mlp import MLP
    from npmlp.train import TrainConfig, batch_rows

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_flush_denormal(a.flush_denormal)
    vocab, Xtr, Ytr, Xdev, Ydev = training_rows(a, "torch_lecture", MLP.spec.defaults["block_size"])  # (N, T), (N,)
    model = MLP.init(vocab.size)                                  # the lecture's sizes and seed, float32
    C, W1, b1, W2, b2 = (torch.tensor(model.params[k]) for k in ("C", "W1", "b1", "W2", "b2"))
    parameters = [C, W1, b1, W2, b2]
    for p in parameters:
        p.requires_grad = True
    TE = W1.shape[0]                                              # block_size * n_embd: 30
    cfg = TrainConfig(steps=a.steps, batch_size=a.batch_size)     # batch_rows reads its seed and batch size

    lossi = []
    t = time.perf_counter()
    for i in range(a.steps):
        # minibatch construct: npmlp's rows of step i (the lecture: torch.randint); a copy, because
        # batch_rows returns a read-only view that torch would warn about
        ix = torch.from_numpy(batch_rows(cfg, i, len(Xtr)).copy())  # (B,)
        # forward pass
        emb = C[Xtr[ix]]                                          # (B, T, E)
        h = torch.tanh(emb.view(-1, TE) @ W1 + b1)                # (B, H)
        logits = h @ W2 + b2                                      # (B, V)
        loss = F.cross_entropy(logits, Ytr[ix])
        # backward pass
        for p in parameters:
            p.grad = None
        loss.backward()
        # update
        lr = 0.1 if i < a.steps // 2 else 0.01
        for p in parameters:
            p.data += -lr * p.grad
        # track stats (npmlp keeps the loss itself; the lecture plots its log10)
        lossi.append(loss.item())
    seconds = time.perf_counter() - t

    @torch.no_grad()
    def split_loss(X, Y):
        emb = C[X]                                                # (N, T, E)
        h = torch.tanh(emb.view(-1, TE) @ W1 + b1)                # (N, H)
        logits = h @ W2 + b2                                      # (N, V)
        return F.cross_entropy(logits, Y).item()

    return report(split_loss(Xtr, Ytr), split_loss(Xdev, Ydev), seconds)


if __name__ == "__main__":
    sys.exit(main())
