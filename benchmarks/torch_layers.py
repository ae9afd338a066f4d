"""The lectures' layer-object training loops in torch, as whole programs: makemore part 3's
(`--model deep`) and part 5's (`--model wavenet`), trained with autograd through the package's torch
mirror of the network (npmlp.torch_mirrors: deep_forward, wavenet_forward), on the same split,
init and minibatches as `npmlp train --model KIND`, for a whole-process comparison with it
(start-up, data, training and evaluation all counted), as benchmarks/torch_lecture.py is for
lecture 2. Run from the repository's root:

    python -m benchmarks.torch_layers --model deep                 # 200,000 steps at batch 32
    python -m benchmarks.torch_layers --model wavenet --steps 20000 --threads 1

Shared with npmlp, so both train on the same rows from the same start: the names (npmlp's
load_words), the 80/10/10 split, build_dataset with the model's context, the init (the model's
own `init`, float32, its default sizes), and step i's minibatch rows (npmlp.train.batch_rows, where
the lecture draws torch.randint). The rest is the lecture's: the mirror's forward (its BatchNorm
normalises as the npmlp model does: deep the biased variance, as torch.nn.BatchNorm1d, the
wavenet part 5's unbiased one; both update unbiased running statistics with momentum 0.1),
F.cross_entropy, zero grads, loss.backward(), p.data += -lr * p.grad (lr 0.1, then 0.01 from the
model's decay step), the loss as a Python float each step. The mirror has no inference mode, so
the loss of the train and dev splits afterwards, with the running statistics, is npmlp's
evaluation (npmlp.train.evaluate) of the trained tensors. It prints, one `key value` a line:

    train_loss FLOAT     mean loss over the training split after the last step
    dev_loss FLOAT       ... over the dev split
    train_seconds FLOAT  the training loop alone (npmlp's metrics.json `seconds` measures the same)
"""
from __future__ import annotations

import functools
import sys
import time

from .torch_lecture import checked, program_parser, report, training_rows


def parse_args(argv=None):
    p = program_parser("torch_layers", __doc__)
    p.add_argument("--model", choices=("deep", "wavenet"), default="deep",
                   help="part 3's or part 5's network (default: deep)")
    return checked(p, argv)


def main(argv=None):
    a = parse_args(argv)
    import torch

    from npmlp import torch_mirrors
    from npmlp.app.registry import MODELS, train_default
    from npmlp.train import TrainConfig, batch_rows, evaluate

    if a.threads:
        torch.set_num_threads(a.threads)
    Model = MODELS[a.model]
    vocab, Xtr, Ytr, Xdev, Ydev = training_rows(a, "torch_layers", Model.spec.defaults["block_size"])  # (N, T), (N,)
    model = Model.init(vocab.size)                                # the lecture's sizes, npmlp's seed, float32
    mirror = functools.partial(getattr(torch_mirrors, model.spec.mirror), **model.sizes)
    P = {k: torch.tensor(v, requires_grad=True) for k, v in model.params.items()}
    buffers = {k: torch.tensor(v) for k, v in model.buffers.items()}   # running_meanI, running_varI
    parameters = list(P.values())
    cfg = TrainConfig(steps=a.steps, batch_size=a.batch_size, decay_at=train_default(a.model, "decay_at", 0.5))

    t = time.perf_counter()
    for i in range(a.steps):
        ix = torch.from_numpy(batch_rows(cfg, i, len(Xtr)).copy())   # (B,) npmlp's rows of step i
        loss, _ = mirror(P, Xtr[ix], Ytr[ix], buffers)              # F.cross_entropy; the buffers updated in place
        for p in parameters:
            p.grad = None
        loss.backward()
        lr = cfg.lr_at(i)
        for p in parameters:
            p.data += -lr * p.grad
        loss.item()
    seconds = time.perf_counter() - t

    trained = model.from_params({k: p.detach().numpy() for k, p in P.items()}, model.sizes,
                                {k: b.numpy() for k, b in buffers.items()})
    return report(evaluate(trained, Xtr.numpy(), Ytr.numpy()), evaluate(trained, Xdev.numpy(), Ydev.numpy()), seconds)


if __name__ == "__main__":
    sys.exit(main())
