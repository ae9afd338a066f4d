"""makemore.py's own training loop, as a whole program, for a whole-process comparison with
`npmlp train --model KIND` at equal steps. makemore.py itself is not part of npmlp: give the path
of a clone's makemore.py (https://github.com/karpathy/makemore). Run from the repository's root:

    python -m benchmarks.makemore_loop --makemore ../makemore/makemore.py --type rnn --steps 5000

What runs is makemore.py's: its model classes (ModelConfig, RNN, Transformer, BoW...), its
CharDataset and InfiniteDataLoader (num_workers=0), torch.optim.AdamW(lr 5e-4, betas (0.9, 0.99),
eps 1e-8, weight decay 0.01) and its step (zero_grad, backward, step); one torch thread; no periodic
evaluation or sampling. The names and their 80/10/10 split are npmlp's (the lecture's), so both
programs train on the same words. `--type lstm`, which makemore.py lists but never wrote, trains
npmlp's torch mirror of it (npmlp.torch_mirrors.makemore_module) in that same loop. At the end,
the per-character loss over the whole train and dev splits (the sum of cross-entropy over the
unmasked targets / their count, npmlp's). It prints, one `key value` a line:

    train_loss FLOAT     per-character loss over the training split after the last step
    dev_loss FLOAT       ... over the dev split
    train_seconds FLOAT  the training loop alone
"""
from __future__ import annotations

import importlib.util
import sys
import time
import types

from benchmarks.torch_lecture import checked, program_parser, report


def load_makemore(path: str):
    """makemore.py as a module (its tensorboard import stubbed: the loop here writes no logs)."""
    if "torch.utils.tensorboard" not in sys.modules:
        stub = types.ModuleType("torch.utils.tensorboard")
        stub.SummaryWriter = object                            # type: ignore[attr-defined]
        sys.modules["torch.utils.tensorboard"] = stub
    spec = importlib.util.spec_from_file_location("makemore", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"makemore_loop: error: {path} is not a Python file; give a clone's makemore.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(mm, kind: str, vocab_size: int, block_size: int, a):
    """makemore.py's model of --type `kind` (its ModelConfig's sizes from the options)."""
    config = mm.ModelConfig(vocab_size=vocab_size, block_size=block_size, n_layer=a.n_layer, n_head=a.n_head,
                            n_embd=a.n_embd, n_embd2=a.n_embd2)
    classes = {"transformer": mm.Transformer, "bigram": mm.Bigram, "bow": mm.BoW}
    if kind in ("rnn", "gru"):
        return mm.RNN(config, cell_type=kind)
    if kind == "lstm":
        from npmlp.torch_mirrors import makemore_module
        return makemore_module("lstm", vocab_size=vocab_size, n_embd=a.n_embd, n_hidden=a.n_embd2,
                               block_size=block_size)
    return classes[kind](config)


def main(argv=None):
    p = program_parser("makemore_loop", __doc__)
    p.set_defaults(steps=5000)
    p.add_argument("--makemore", required=True, metavar="PATH", help="a clone's makemore.py")
    p.add_argument("--type", required=True, choices=("bigram", "rnn", "gru", "lstm", "bow", "transformer"))
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=64)
    p.add_argument("--n-embd2", type=int, default=64)
    p.add_argument("--seed", type=int, default=3407, help="torch.manual_seed (default 3407, makemore.py's)")
    a = checked(p, argv)
    import numpy as np
    import torch
    import torch.nn.functional as F

    from npmlp.data import DataError, split_words
    from npmlp.loading import load_words

    torch.set_num_threads(a.threads or 1)
    torch.manual_seed(a.seed)
    mm = load_makemore(a.makemore)
    try:
        words = load_words(a.data)
    except DataError as e:
        raise SystemExit(f"makemore_loop: error: {e}") from None
    train_words, dev_words, _ = split_words(words)
    chars, longest = sorted(set("".join(words))), max(map(len, words))
    train_set, dev_set = (mm.CharDataset(w, chars, longest) for w in (train_words, dev_words))
    model = build(mm, a.type, train_set.get_vocab_size(), train_set.get_output_length(), a)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01, betas=(0.9, 0.99), eps=1e-8)
    loader = mm.InfiniteDataLoader(train_set, batch_size=a.batch_size, pin_memory=False, num_workers=0)

    t = time.perf_counter()
    for _ in range(a.steps):
        X, Y = loader.next()
        _, loss = model(X, Y)
        model.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t

    @torch.inference_mode()
    def per_character(dataset) -> float:
        total, count = 0.0, 0
        for i in range(0, len(dataset), 1000):
            rows = [dataset[j] for j in range(i, min(i + 1000, len(dataset)))]
            X, Y = torch.stack([x for x, _ in rows]), torch.stack([y for _, y in rows])
            logits, _ = model(X)
            total += F.cross_entropy(logits.view(-1, logits.size(-1)), Y.view(-1), ignore_index=-1,
                                     reduction="sum").item()
            count += int((Y != -1).sum())
        return total / count

    model.eval()
    return report(per_character(train_set), per_character(dev_set), float(np.float64(seconds)))


if __name__ == "__main__":
    sys.exit(main())
