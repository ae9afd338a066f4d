"""The lectures' layer-object training loops in torch, as whole programs: makemore part 3's
(`--model deep`) and part 5's (`--model wavenet`), with their own Linear, BatchNorm1d, Tanh,
Embedding and FlattenConsecutive classes and autograd, on the same split, init and minibatches as
`npmlp train --model KIND`, for a whole-process comparison with it (start-up, data, training and
evaluation all counted), as benchmarks/torch_lecture.py is for lecture 2.

    python benchmarks/torch_layers.py --model deep                 # 200,000 steps at batch 32
    python benchmarks/torch_layers.py --model wavenet --steps 20000 --threads 1

Shared with npmlp, so both train on the same rows from the same start: the names (npmlp's
load_words), the 80/10/10 split, build_dataset with the model's context, the init (the model's
own `init`, float32, its default sizes), and step i's minibatch rows (npmlp.train.batch_rows, where
the lecture draws torch.randint). The rest is the lecture's: the layers' forward in order,
F.cross_entropy, zero grads, loss.backward(), p.data += -lr * p.grad (lr 0.1, then 0.01 from the
model's decay step), the loss as a Python float each step; then the loss of the train and dev
splits with the layers in eval mode. BatchNorm1d normalises as the npmlp model does (deep: the
biased variance, as torch.nn.BatchNorm1d; wavenet: part 5's unbiased one) and keeps unbiased
running statistics with momentum 0.1. It prints, one `key value` a line:

    train_loss FLOAT     mean loss over the training split after the last step
    dev_loss FLOAT       ... over the dev split
    train_seconds FLOAT  the training loop alone (npmlp's metrics.json `seconds` measures the same)
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the npmlp beside this folder


def parse_args(argv=None):
    from benchmarks.torch_lecture import checked, program_parser
    p = program_parser("torch_layers.py", __doc__)
    p.add_argument("--model", choices=("deep", "wavenet"), default="deep", help="part 3's or part 5's network")
    return checked(p, argv)


def lecture_layers(torch):
    """The lectures' layer classes, in torch (parts 3 and 5)."""

    class Linear:
        def __init__(self, weight, bias=None):
            self.weight, self.bias = weight, bias

        def __call__(self, x):
            self.out = x @ self.weight
            if self.bias is not None:
                self.out = self.out + self.bias
            return self.out

        def parameters(self):
            return [self.weight] + ([] if self.bias is None else [self.bias])

    class BatchNorm1d:
        def __init__(self, gamma, beta, running_mean, running_var, unbiased, eps=1e-5, momentum=0.1):
            self.gamma, self.beta, self.running_mean, self.running_var = gamma, beta, running_mean, running_var
            self.unbiased, self.eps, self.momentum, self.training = unbiased, eps, momentum, True

        def __call__(self, x):
            dim = 0 if x.ndim == 2 else (0, 1)       # part 5: every axis but the channels
            if self.training:
                xmean = x.mean(dim, keepdim=True)
                xvar = x.var(dim, keepdim=True, unbiased=self.unbiased)
            else:
                xmean, xvar = self.running_mean, self.running_var
            self.out = self.gamma * (x - xmean) / torch.sqrt(xvar + self.eps) + self.beta
            if self.training:
                with torch.no_grad():
                    m = self.momentum
                    self.running_mean.mul_(1 - m).add_(m * xmean.reshape(-1))
                    self.running_var.mul_(1 - m).add_(m * x.var(dim, unbiased=True).reshape(-1))
            return self.out

        def parameters(self):
            return [self.gamma, self.beta]

    class Tanh:
        def __call__(self, x):
            self.out = torch.tanh(x)
            return self.out

        def parameters(self):
            return []

    class Embedding:
        def __init__(self, weight):
            self.weight = weight

        def __call__(self, ix):
            self.out = self.weight[ix]
            return self.out

        def parameters(self):
            return [self.weight]

    class FlattenConsecutive:
        def __init__(self, n):
            self.n = n

        def __call__(self, x):
            B, T, C = x.shape
            x = x.view(B, T // self.n, C * self.n)
            if x.shape[1] == 1:
                x = x.squeeze(1)
            self.out = x
            return self.out

        def parameters(self):
            return []

    return Linear, BatchNorm1d, Tanh, Embedding, FlattenConsecutive


def torch_network(model, torch):
    """The npmlp model's layers as the lecture's torch layers, sharing its initial values."""
    Linear, BatchNorm1d, Tanh, Embedding, FlattenConsecutive = lecture_layers(torch)
    leaf = lambda k: torch.tensor(model.params[k], requires_grad=True)
    layers, width = [Embedding(leaf("C"))], model.n_embd
    for layer in model.net.layers:
        kind = type(layer).__name__
        if kind == "Linear":
            I = model.params[layer.W].shape[0]
            if I != width:                                # deep flattens the whole context first
                layers.append(FlattenConsecutive(I // width))
            layers.append(Linear(leaf(layer.W), leaf(layer.b) if layer.b else None))
            width = model.params[layer.W].shape[1]
        elif kind == "BatchNorm1d":
            layers.append(BatchNorm1d(leaf(layer.gamma), leaf(layer.beta), torch.tensor(model.buffers[layer.mean]),
                                      torch.tensor(model.buffers[layer.var]), layer.unbiased))
        elif kind == "Tanh":
            layers.append(Tanh())
        elif kind == "FlattenConsecutive":
            layers.append(FlattenConsecutive(layer.n))
            width *= layer.n
        else:
            raise SystemExit(f"torch_layers: error: no torch twin for a {kind} layer")
    return layers


def main(argv=None):
    a = parse_args(argv)
    import torch
    import torch.nn.functional as F

    from benchmarks.torch_lecture import report, training_rows
    from npmlp.app.registry import MODELS, train_default
    from npmlp.train import TrainConfig, batch_rows

    if a.threads:
        torch.set_num_threads(a.threads)
    Model = MODELS[a.model]
    vocab, Xtr, Ytr, Xdev, Ydev = training_rows(a, "torch_layers", Model.spec.defaults["block_size"])  # (N, T), (N,)
    model = Model.init(vocab.size)                                # the lecture's sizes, npmlp's seed, float32
    layers = torch_network(model, torch)
    parameters = [p for layer in layers for p in layer.parameters()]
    cfg = TrainConfig(steps=a.steps, batch_size=a.batch_size, decay_at=train_default(a.model, "decay_at", 0.5))

    t = time.perf_counter()
    for i in range(a.steps):
        ix = torch.from_numpy(batch_rows(cfg, i, len(Xtr)).copy())   # (B,) npmlp's rows of step i
        x = Xtr[ix]
        for layer in layers:
            x = layer(x)
        loss = F.cross_entropy(x, Ytr[ix])
        for p in parameters:
            p.grad = None
        loss.backward()
        lr = cfg.lr_at(i)
        for p in parameters:
            p.data += -lr * p.grad
        loss.item()
    seconds = time.perf_counter() - t

    for layer in layers:
        layer.training = False

    @torch.no_grad()
    def split_loss(X, Y):
        x = X
        for layer in layers:
            x = layer(x)
        return F.cross_entropy(x, Y).item()

    return report(split_loss(Xtr, Ytr), split_loss(Xdev, Ydev), seconds)


if __name__ == "__main__":
    sys.exit(main())
