"""makemore part 5, "building a WaveNet": its new layers' gradients and its training loop in NumPy.

Open it as a notebook:   marimo edit examples/wavenet.py   (then "Run all": it opens with nothing run)
Run it as an app:        marimo run examples/wavenet.py    (every cell run, the results on the page)
Run it top to bottom:    python examples/wavenet.py        (the same results on the terminal)
Data: as in examples/lecture2.py, the names come from $NPMLP_DATA, npmlp's cache, or the lecture's
URL (a checked download); without any of them the notebook stops and says what to do.
torch is optional: with it each hand-written gradient is held against torch autograd, without it
against central finite differences of the NumPy forward.
"""
import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium")


@app.cell
def _():
    import marimo as mo
    return (mo,)


@app.cell(hide_code=True)
def _(mo):
    # The same cell in every notebook: how each result reaches the page and the terminal, and
    # what happens without the names. marimo's script mode (`python FILE`) shows no cell outputs,
    # so there each result is printed as well; in the browser it is only the cell's output.
    def show(md, text=None):
        """A result: markdown `md` as the cell's output. In a script run it is printed instead:
        `text` if given, else `md`, without markdown's marks (#, **, `) and blank lines."""
        if not mo.running_in_notebook():
            import inspect
            import re
            plain = re.sub(r"^#+ |\*\*|`", "", inspect.cleandoc(md if text is None else text), flags=re.M)
            print("\n".join(line for line in plain.splitlines() if line.strip()))
        return mo.md(md)

    def cmp_table(title, rows):
        """cmp's rows (name, exact, approximate, maxdiff) as a table under `title`, the cell's
        output; in a script run, `title` and the lecture's cmp lines printed."""
        width = max([15, *(len(r["name"]) for r in rows)])
        lines = [f"{r['name']:{width}s} | exact: {r['exact']!s:5s} | approximate: {r['approximate']!s:5s} | "
                 f"maxdiff: {r['maxdiff']:.3g}" for r in rows]
        table = [f"| {r['name']} | {r['exact']} | {r['approximate']} | {r['maxdiff']:.3g} |" for r in rows]
        return show("\n".join([f"**{title}**", "", "| name | exact | approximate | maxdiff |", "|---|---|---|---:|",
                               *table]), "\n".join([title, *lines]))

    def load_names():
        """npmlp's load_words(): the names of $NPMLP_DATA, else npmlp's cache, else the lecture's URL
        (a checked download). Without them the notebook stops and says why and what to do: in a
        callout on the page; in a script run, in one line on stderr, with exit status 1."""
        import html
        import sys
        from pathlib import Path

        from npmlp.data import DataError
        from npmlp.loading import data_source, load_words

        try:
            return load_words()
        except DataError as e:
            problem = str(e)
        if "--data" in problem:                   # the npmlp command's advice: a notebook has no --data
            problem = problem.rsplit("; ", 1)[0]
        problem += ("; check NPMLP_DATA, or unset it to use npmlp's cache or the checked download" if data_source()
                    else "; offline, set NPMLP_DATA=path/to/names.txt, a copy of the lecture's names.txt")
        notebook = f"examples/{Path(__file__).name}"
        if not mo.running_in_notebook():
            sys.exit(f"{notebook}: error: {problem}")
        mo.stop(True, mo.callout(mo.vstack([
            mo.md(f"**{notebook} stopped here: it has no names to work on.**"),
            mo.Html(f"<p>{html.escape(problem)}</p>"),
            mo.md(f"Every result below needs them. Fix that and start marimo again, for example with "
                  f"`NPMLP_DATA=path/to/names.txt marimo edit {notebook}`.")]), kind="danger"))

    return cmp_table, load_names, show


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    # makemore part 5: building a WaveNet

    Part 5 keeps part 3's layers and changes how the context reaches the network. The flat MLP
    squashes all 8 characters into one hidden layer at once; the WaveNet fuses them two at a time,
    level by level, so each layer sees a wider stretch of the name:

    ```
    X (B,8) -> Embedding -> emb (B,8,24)
       -> FlattenConsecutive(2) (B,4,48)  -> Linear (B,4,128)  -> BatchNorm1d -> Tanh
       -> FlattenConsecutive(2) (B,2,256) -> Linear (B,2,128)  -> BatchNorm1d -> Tanh
       -> FlattenConsecutive(2) (B,256)   -> Linear (B,128)    -> BatchNorm1d -> Tanh
       -> Linear (B,27) -> cross-entropy
    ```

    Two layers are new, and both now meet 3-D inputs `(B, T, C)`: `FlattenConsecutive`, and a
    `BatchNorm1d` whose statistics must run over the batch *and* the positions. Below, their
    backwards written out and checked, the bug the lecture found in the second one, and the
    training loop with every gradient by hand.
    """)
    return


@app.cell
def _():
    import matplotlib.pyplot as plt
    import numpy as np
    from threadpoolctl import threadpool_limits

    from npmlp import gradcheck, layers
    from npmlp.data import Vocab, build_dataset, split_words
    from npmlp.deep import BatchNorm1d, Linear, Tanh
    from npmlp.layers import BN_EPS as EPS
    from npmlp.mlp import SEED
    from npmlp.train import sample
    from npmlp.wavenet import Embedding, FlattenConsecutive, Wavenet

    try:  # optional: torch only checks the gradients below
        import torch
    except ImportError:
        torch = None
    return (BatchNorm1d, EPS, Embedding, FlattenConsecutive, Linear, SEED, Tanh, Vocab, Wavenet, build_dataset,
            gradcheck, layers, np, plt, sample, split_words, threadpool_limits, torch)


@app.cell
def _(load_names, mo):
    words = load_names()               # $NPMLP_DATA, npmlp's cache, or the lecture's URL
    mo.md(f"{len(words):,} names, e.g. {', '.join(words[:8])}")
    return (words,)


@app.cell
def _(Vocab, build_dataset, mo, split_words, words):
    block_size = 8                                     # T: the context grows from 3 to 8
    vocab = Vocab.from_words(words)
    _tr, _dev, _te = split_words(words)                # the lecture's random.seed(42) shuffle, 80/10/10
    Xtr, Ytr = build_dataset(_tr, vocab, block_size)   # (N, 8), (N,)
    Xdev, Ydev = build_dataset(_dev, vocab, block_size)
    _rows = "\n".join(f"    {vocab.decode(x)} --> {vocab.itos[y]}" for x, y in zip(Xtr[:8], Ytr[:8], strict=True))
    mo.md(f"vocabulary of {vocab.size}; rows: train {len(Xtr):,}, dev {len(Xdev):,} (the lecture: 182,625 "
          f"and 22,655). The first rows:\n\n```\n{_rows}\n```")
    return Xdev, Xtr, Ydev, Ytr, block_size, vocab


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Checking a gradient: `cmp`

    As in part 4: is the hand-written gradient bitwise equal to the reference (`exact`), equal up
    to round-off (`approximate`, `gradcheck.verdict`: rtol 1e-10 in float64), and by how much do
    they differ? With torch, the reference is the same forward in torch, differentiated by
    autograd. Without it, central finite differences of the NumPy forward: the checked function
    is `L = sum(out * dout)` for a random `dout`, each input perturbed by ±1e-5 at 20 random places
    (rtol 1e-5).
    """)
    return


@app.cell
def _(gradcheck, np, torch):
    ref_kind = "torch autograd (float64)" if torch is not None else \
        "central differences of the NumPy forward (torch is not installed)"

    def reference_grads(forward_np, forward_torch, inputs, dout, coords=20, seed=0):
        """The gradients of L = sum(forward(*inputs) * dout) with respect to each input: from torch
        autograd when torch is installed, else central differences at `coords` random places of
        each input (NaN elsewhere). -> (list of arrays, rtol for cmp)."""
        if torch is not None:
            tin = [torch.tensor(x, requires_grad=True) for x in inputs]
            (forward_torch(*tin) * torch.tensor(dout)).sum().backward()
            return [x.grad.numpy() for x in tin], 1e-10
        rng = np.random.default_rng(seed)
        xs = [np.array(x) for x in inputs]
        out = []
        for x in xs:
            idx = np.sort(rng.choice(x.size, min(coords, x.size), replace=False))
            g = np.full(x.shape, np.nan)
            g.flat[idx] = gradcheck.central_difference(lambda: float((forward_np(*xs) * dout).sum()), x, idx,
                                                       eps=1e-5)
            out.append(g)
        return out, 1e-5

    def cmp(name, mine, ref, rtol=1e-10):
        """The lecture's cmp: bitwise equal? equal up to round-off? largest difference? Entries
        where `ref` is NaN (no finite difference taken there) are skipped. -> a row of cmp_table."""
        mine, ref = np.asarray(mine, np.float64), np.asarray(ref, np.float64)
        assert mine.shape == ref.shape, f"{name}: shape {mine.shape} != {ref.shape}"
        known = ~np.isnan(ref)
        verdict = gradcheck.verdict(mine[known], ref[known], rtol)
        return {"name": name, "shape": mine.shape, "exact": verdict == "exact", "approximate": verdict != "FAIL",
                "maxdiff": float(np.abs(mine[known] - ref[known]).max(initial=0.0)), "verdict": verdict}
    return cmp, ref_kind, reference_grads


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## FlattenConsecutive: a reshape, and its backward

    `x.view(B, T//n, C*n)` puts each `n` consecutive positions side by side: row-major memory
    already holds position `2t` followed by `2t+1`, so nothing moves. Its backward is the inverse
    reshape: every number of `dout` goes back to the place it came from. When one position is
    left, the lecture squeezes it away, `(B, 1, C*n) -> (B, C*n)`, and the backward undoes that too.
    """)
    return


@app.cell
def _(cmp, cmp_table, np, ref_kind, reference_grads, torch):
    def flatten_forward(x, n):
        B, T, C = x.shape
        out = x.reshape(B, T // n, C * n)         # (B, T/n, C*n) positions nt .. nt+n-1 side by side
        if T // n == 1:
            out = out[:, 0]                       # (B, C*n) the squeeze
        return out

    def flatten_backward(dout, shape):
        return dout.reshape(shape)                # (B, T, C) each number back to its place

    def _torch_flatten(n):
        def f(x):
            B, T, C = x.shape
            out = x.view(B, T // n, C * n)
            return out.squeeze(1) if out.shape[1] == 1 else out
        return f

    _rng = np.random.default_rng(0)
    x_demo = _rng.standard_normal((4, 8, 10))                                 # (B, T, E)
    _out = flatten_forward(x_demo, 2)                                         # (4, 4, 20)
    assert np.array_equal(_out[:, 1], np.concatenate([x_demo[:, 2], x_demo[:, 3]], axis=1))
    flatten_rows = []
    for _n in (2, 8):                                                         # (4, 4, 20), then squeezed (4, 80)
        _dout = _rng.standard_normal(flatten_forward(x_demo, _n).shape)
        (_ref,), _rtol = reference_grads(lambda x, n=_n: flatten_forward(x, n), _torch_flatten(_n), [x_demo], _dout)
        flatten_rows.append(cmp(f"x (n={_n})", flatten_backward(_dout, x_demo.shape), _ref, _rtol))
    cmp_table(f"FlattenConsecutive backward against {ref_kind}: n = 2 gives (4, 4, 20); n = 8 leaves one position, "
              "squeezed to (4, 80)", flatten_rows)
    return flatten_backward, flatten_forward, flatten_rows


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## BatchNorm on (B, T, C): the same formula over B·T rows

    The Linear layer works on a `(B, T, C)` input unchanged (`x @ W` multiplies the last axis,
    and `dW` sums over every row of every leading axis). BatchNorm must decide what a "row" is.
    Each of the C channels is one feature, wherever in the name it was computed, so its mean and
    variance run over dims `(0, 1)`: n = B·T numbers per channel. With that n, part 4's fused
    backward carries over line for line. With `xhat = (x - mean) * s`, `s = (var + eps)^-1/2`,
    the unbiased variance divided by m = n - 1, and `g = gamma * dout`:

    ```
    dx = s * (g - sum(g)/n - xhat * sum(g * xhat)/m)      sums over the n rows of each channel
       = gamma * s / n * (n*dout - dbeta - n/m * xhat * dgamma)
    ```

    with `dbeta = sum(dout)` and `dgamma = sum(xhat * dout)` over dims (0, 1). The lecture's layer
    normalises with `x.var(dim)`, torch's default: unbiased, so m = n - 1 here.
    Below, `x` is a real activation: the first Linear's output on a minibatch, (32, 4, 68).
    """)
    return


@app.cell
def _(EPS, Xtr, Ytr, cmp, cmp_table, flatten_forward, gradcheck, layers, mo, np, ref_kind, reference_grads, torch,
      vocab):
    def bn3d_forward(x, gamma, beta):
        n = x.shape[0] * x.shape[1]                                   # rows per channel: B*T
        xmean = x.mean((0, 1), keepdims=True)                         # (1, 1, C)
        xvar = ((x - xmean) ** 2).sum((0, 1), keepdims=True) / (n - 1)  # (1, 1, C) unbiased, as x.var
        var_inv = (xvar + EPS) ** -0.5                                # (1, 1, C)
        xhat = (x - xmean) * var_inv                                  # (B, T, C)
        return gamma * xhat + beta, (xhat, var_inv)                   # (B, T, C)

    def bn3d_backward(dout, xhat, var_inv, gamma):
        n = dout.shape[0] * dout.shape[1]
        dbeta = dout.sum((0, 1))                                      # (C,) beta was added to every row
        dgamma = (xhat * dout).sum((0, 1))                            # (C,)
        dx = gamma * var_inv / n * (n * dout - dbeta - n / (n - 1) * xhat * dgamma)   # (B, T, C)
        return dx, dgamma, dbeta

    def _torch_bn3d(x, gamma, beta):                                  # the lecture's layer, training mode
        xmean, xvar = x.mean((0, 1), keepdim=True), x.var((0, 1), keepdim=True)
        return gamma * (x - xmean) / torch.sqrt(xvar + EPS) + beta

    _rng = np.random.default_rng(1)
    _Xb, _ = gradcheck.minibatch(Xtr, Ytr, 32, seed=0)                            # (32, 8)
    _C = _rng.standard_normal((vocab.size, 10))                                   # (V, E)
    _W1 = _rng.standard_normal((20, 68)) / 20 ** 0.5                              # (2E, H)
    x_bn = flatten_forward(_C[_Xb], 2) @ _W1                                      # (32, 4, 68)
    gamma_bn, beta_bn = 1 + 0.1 * _rng.standard_normal(68), 0.1 * _rng.standard_normal(68)  # not 1 and 0
    dout_bn = _rng.standard_normal(x_bn.shape)
    _out, (_xhat, _var_inv) = bn3d_forward(x_bn, gamma_bn, beta_bn)
    bn_grads = bn3d_backward(dout_bn, _xhat, _var_inv, gamma_bn)
    _refs, _rtol = reference_grads(lambda x, g, b: bn3d_forward(x, g, b)[0], _torch_bn3d,
                                   [x_bn, gamma_bn, beta_bn], dout_bn)
    bn_rows = [cmp(name, mine, ref, _rtol)
               for name, mine, ref in zip(("x", "gamma", "beta"), bn_grads, _refs, strict=True)]
    # the library's pair (layers.py) computes the same thing for any number of leading axes
    _lib_out, _cache = layers.batchnorm_forward(x_bn, gamma_bn, beta_bn, unbiased=True)
    lib_rows = [cmp(f"lib {name}", mine, ours, 1e-12) for name, mine, ours in
                zip(("x", "gamma", "beta"), layers.batchnorm_backward(dout_bn, _cache), bn_grads, strict=True)]
    mo.vstack([cmp_table(f"3-D BatchNorm backward against {ref_kind}", bn_rows),
               cmp_table("`layers.batchnorm_forward / batchnorm_backward(..., unbiased=True)`, which takes "
                         "statistics over every axis but the last, against the backward above", lib_rows)])
    return bn_grads, bn_rows, dout_bn, gamma_bn, lib_rows, x_bn


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## The bug and its fix, side by side

    Part 3's layer reduced over dim 0 only, `x.mean(0, keepdim=True)`. On a 2-D input that is the
    batch; on `(32, 4, 68)` it gives a mean of shape `(1, 4, 68)`: every position normalised on
    its own, as if the layer had 4 × 68 channels, each estimated from 32 numbers instead of 128.
    Nothing fails: broadcasting makes the shapes work, and the running statistics quietly become
    `(1, 4, 68)`. The fix reduces over `(0, 1)`.
    """)
    return


@app.cell
def _(np, show, x_bn):
    _bug_mean, _fix_mean = x_bn.mean(0, keepdims=True), x_bn.mean((0, 1), keepdims=True)
    _bug_var, _fix_var = x_bn.var(0, keepdims=True, ddof=1), x_bn.var((0, 1), keepdims=True, ddof=1)
    stat_shapes = {"bug": (_bug_mean.shape, _bug_var.shape), "fix": (_fix_mean.shape, _fix_var.shape)}
    _spread = np.abs(_bug_mean - _fix_mean).max()
    show(f"""
    | | reduces over | mean | var | numbers per statistic |
    |---|---|---|---|---:|
    | the bug | dim 0 | {_bug_mean.shape} | {_bug_var.shape} | {x_bn.shape[0]} |
    | the fix | dims (0, 1) | {_fix_mean.shape} | {_fix_var.shape} | {x_bn.shape[0] * x_bn.shape[1]} |

    On this minibatch the 4 positions' means differ from the shared one by up to {_spread:.3f}.
    """)
    return (stat_shapes,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## The network, and its training loop written out

    The lecture's model as a list of npmlp's layer objects, each with `forward(x) -> (out, cache)`
    and `backward(dout, cache) -> (dx, {param: gradient})` calling the pairs of `layers.py`. The
    init is part 5's: the embedding standard normal, each weight `randn / sqrt(fan_in)` (no
    gain: BatchNorm follows), the last one × 0.1, gamma 1, beta 0. The loop: forward through the
    layers, the cross-entropy, its backward, the layers' backwards in reverse, `p -= lr * grad`.
    """)
    return


@app.cell
def _(BatchNorm1d, Embedding, FlattenConsecutive, Linear, SEED, Tanh, layers, np):
    def make_wavenet(V, n_embd=24, n_hidden=128, levels=3, n=2, over_batch_only=False, seed=SEED):
        """-> (layers, params, buffers): the lecture's Sequential, its parameters and running statistics."""
        rng = np.random.default_rng(seed)
        P, S = {"C": rng.standard_normal((V, n_embd))}, {}
        net = [Embedding("emb", P, "C")]
        fan_in, T = n_embd * n, n ** levels
        for i in range(1, levels + 1):
            T //= n                                                    # positions left after this level
            P[f"W{i}"] = rng.standard_normal((fan_in, n_hidden)) / fan_in ** 0.5
            P[f"gamma{i}"], P[f"beta{i}"] = np.ones(n_hidden), np.zeros(n_hidden)
            stat = (T, n_hidden) if over_batch_only and T > 1 else (n_hidden,)
            S[f"mean{i}"], S[f"var{i}"] = np.zeros(stat), np.ones(stat)
            net += [FlattenConsecutive(f"flatten{i}", n),
                    Linear(f"linear{i}", P, f"W{i}"),
                    BatchNorm1d(f"batchnorm{i}", P, S, f"gamma{i}", f"beta{i}", f"mean{i}", f"var{i}",
                                unbiased=True, over_batch_only=over_batch_only),
                    Tanh(f"tanh{i}")]
            fan_in = n_hidden * n
        P[f"W{levels + 1}"] = rng.standard_normal((n_hidden, V)) / n_hidden ** 0.5 * 0.1   # less confident
        P[f"b{levels + 1}"] = np.zeros(V)
        net.append(Linear("logits", P, f"W{levels + 1}", f"b{levels + 1}"))
        return net, P, S

    def forward(net, X, training=True):
        x, caches = X, []
        for layer in net:
            x, cache = layer.forward(x, training)                      # (B, ...) each layer's output
            caches.append(cache)
        return x, caches                                               # logits (B, V)

    def train_loop(net, P, X, Y, steps, batch_size=32, seed=SEED):
        """The lecture's loop: lr 0.1, then 0.01 for the last quarter. -> lossi (steps,)."""
        rng = np.random.default_rng(seed)
        lossi = np.zeros(steps)
        for i in range(steps):
            ix = rng.integers(0, len(X), batch_size)                   # (B,) the minibatch
            logits, caches = forward(net, X[ix])                       # forward
            loss, ce = layers.cross_entropy_forward(logits, Y[ix])
            dx = layers.cross_entropy_backward(1.0, ce)                # (B, V) (softmax - onehot) / B
            grads = {}
            for layer, cache in zip(reversed(net), reversed(caches), strict=True):  # backward, last layer first
                dx, g = layer.backward(dx, cache)
                grads.update(g)
            lr = 0.1 if i < 0.75 * steps else 0.01
            for k, p in P.items():
                p -= lr * grads[k]                                     # update
            lossi[i] = loss
        return lossi

    def split_loss(net, X, Y, chunk=4096):
        """Inference: every BatchNorm1d with its running statistics."""
        total = 0.0
        for i in range(0, len(X), chunk):
            logits, _ = forward(net, X[i:i + chunk], training=False)
            total += layers.cross_entropy_forward(logits, Y[i:i + chunk])[0] * len(X[i:i + chunk])
        return total / len(X)
    return make_wavenet, split_loss, train_loop


@app.cell(hide_code=True)
def _(mo):
    steps = mo.ui.slider(steps=[500, 1000, 2000, 5000, 20_000, 50_000, 200_000], value=1000,
                         label="SGD steps", show_value=True)
    mo.vstack([mo.md("Move the slider and the cells below rerun; the lecture trains 200,000 steps "
                     "(`npmlp train --model wavenet`: about 1 ms a step on one core)."), steps])
    return (steps,)


@app.cell
def _(Wavenet, Xdev, Xtr, Ydev, Ytr, make_wavenet, np, show, split_loss, steps, threadpool_limits, train_loop,
      vocab):
    net, P, S = make_wavenet(vocab.size)
    n_params = sum(p.size for p in P.values())
    # the same draws as npmlp's model (Wavenet.init, here in float64), layer for layer
    same_init = all(np.array_equal(P[k], v) for k, v in Wavenet.init(vocab.size, dtype=np.float64).params.items())
    with threadpool_limits(1, user_api="blas"):    # small products: a second BLAS thread only waits
        lossi = train_loop(net, P, Xtr, Ytr, steps.value)
        train_loss, dev_loss = split_loss(net, Xtr, Ytr), split_loss(net, Xdev, Ydev)
    _result = (f"After {steps.value:,} steps: train loss **{train_loss:.4f}**, dev loss **{dev_loss:.4f}** "
               f"(mean minibatch loss of the last 100 steps {lossi[-100:].mean():.4f}).")
    show(f"""
    {n_params:,} parameters (the lecture: 76,579), {', '.join(layer.name for layer in net)}.

    {_result} The full run of 200,000 steps reaches train 1.7691 / dev 1.9913 with npmlp, 1.769 / 1.993
    in the lecture.
    """, _result)
    return P, S, dev_loss, lossi, n_params, same_init, train_loss


@app.cell
def _(P, S, Wavenet, sample, show, vocab):
    # npmlp's sampler reads a model's logits: the trained arrays, put in a Wavenet
    samples = sample(Wavenet(P, {f"running_{k}": v for k, v in S.items()}), vocab, 20)
    show("### Samples\n\n" + ", ".join(f"`{s}`" for s in samples))
    return (samples,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## What the bug does to the loss

    The lecture's rows 3 and 4: the hierarchical network at 22,397 parameters (`n_embd` 10,
    `n_hidden` 68), trained with the bug and with the fix from the same init on the same
    minibatches.
    """)
    return


@app.cell
def _(Xdev, Xtr, Ydev, Ytr, make_wavenet, mo, plt, show, split_loss, steps, threadpool_limits, train_loop, vocab):
    bug_results = {}
    _fig, _ax = plt.subplots(figsize=(7, 3.5))
    with threadpool_limits(1, user_api="blas"):
        for _name, _bug in (("bug: dim 0", True), ("fix: dims (0, 1)", False)):
            _net, _P, _S = make_wavenet(vocab.size, n_embd=10, n_hidden=68, over_batch_only=_bug)
            _lossi = train_loop(_net, _P, Xtr, Ytr, steps.value)
            bug_results[_name] = {"train": split_loss(_net, Xtr, Ytr), "dev": split_loss(_net, Xdev, Ydev),
                                  "stats": {k: v.shape for k, v in _S.items()}}
            _w = max(1, steps.value // 50)
            _ax.plot(_lossi[:len(_lossi) // _w * _w].reshape(-1, _w).mean(1), label=_name)
    _ax.set(xlabel=f"step / {_w}", ylabel="mean minibatch loss", title="22,397 parameters, bug and fix")
    _ax.legend()
    _table = "\n".join([f"| after {steps.value:,} steps | train | dev | running means, levels 1-3 |",
                         "|---|---:|---:|---|",
                         *(f"| {k} | {r['train']:.4f} | {r['dev']:.4f} | {r['stats']['mean1']}, "
                           f"{r['stats']['mean2']}, {r['stats']['mean3']} |" for k, r in bug_results.items())])
    mo.vstack([show(_table + """

    Over the full 200,000 steps (docs/wavenet.md): the bug 1.9407 / 2.0233, the fix 1.9122 / 2.0159
    (the lecture: 1.941 / 2.029 and 1.912 / 2.022). A short run barely tells them apart; in the
    end the fix gains about 0.03 on train and 0.007 on dev, in npmlp as in the lecture: each
    statistic is estimated from 4 (or 2) times as many numbers, and every position shares one.
    """, _table), _fig])
    return (bug_results,)


if __name__ == "__main__":
    app.run()
