"""makemore part 2, cell by cell, on npmlp.

Open it as a notebook:   marimo edit examples/lecture2.py
Run it top to bottom:    python examples/lecture2.py
Data: --data is not available here; the names come from $NPMLP_DATA, the cached download, or the
lecture's URL (as `npmlp train` finds them). Offline without any of those, a small set of
generated names stands in so every cell still runs.
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
    mo.md(r"""
    # makemore part 2: an MLP language model, with every gradient written by hand

    The model of Bengio et al. (2003), as the lecture builds it: each character is looked up in an
    embedding table `C`, the `block_size` embeddings of the context are concatenated, go through a
    `tanh` hidden layer and an output layer that scores every next character.

    ```
    C[X] -> concat -> @ W1 + b1 -> tanh -> @ W2 + b2 -> cross-entropy
    (B,T,E)  (B,T*E)      (B,H)      (B,H)     (B,V)        ()
    ```

    Here nothing is torch: the forward and the backward are the NumPy functions of `npmlp`, and
    torch appears only to check them.
    """)
    return


@app.cell
def _():
    import inspect
    import random

    import numpy as np

    from npmlp import gradcheck
    from npmlp.app import plots
    from npmlp.data import DataError as NpmlpError
    from npmlp.data import Vocab, build_dataset, load_words, split_words
    from npmlp.mlp import MLP
    from npmlp.train import TrainConfig, evaluate, sample, sgd
    return (MLP, NpmlpError, TrainConfig, Vocab, build_dataset, evaluate, gradcheck, inspect,
            load_words, np, plots, random, sample, sgd, split_words)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## The data

    Every name becomes `len(name) + 1` examples: the context of the last `block_size` characters
    (padded with `'.'`) and the character that follows. The last one predicts the closing `'.'`.
    """)
    return


@app.cell
def _(NpmlpError, load_words, mo, random):
    try:
        words = load_words()           # $NPMLP_DATA, the cache, or the lecture's URL
        data_note = mo.md(f"{len(words):,} names, e.g. {', '.join(words[:8])}")
    except NpmlpError as _e:           # offline, no copy: generated names keep the notebook running
        _rng = random.Random(0)
        words = ["".join(_rng.choice("bdklmnrstv") + _rng.choice("aeiou") for _ in range(_rng.randint(1, 4)))
                 for _ in range(2000)]
        data_note = mo.callout(mo.md(f"Could not load names.txt ({_e}); using {len(words):,} generated "
                                     f"names. Set `NPMLP_DATA=path/to/names.txt` for the real data."),
                               kind="warn")
    data_note
    return (words,)


@app.cell
def _(Vocab, build_dataset, mo, split_words, words):
    block_size = 3                                     # T: how many characters predict the next
    vocab = Vocab.from_words(words)
    _tr, _dev, _te = split_words(words)                # the lecture's random.seed(42); shuffle
    Xtr, Ytr = build_dataset(_tr, vocab, block_size)   # (N, T), (N,)
    Xdev, Ydev = build_dataset(_dev, vocab, block_size)
    _X, _Y = build_dataset(words[:1], vocab, block_size)
    _rows = "\n".join(f"    {vocab.decode(x)} ---> {vocab.itos[y]}" for x, y in zip(_X, _Y))
    mo.md(f"vocabulary of {vocab.size}: `{''.join(vocab.itos)}`; rows train {len(Xtr):,}, "
          f"dev {len(Xdev):,}\n\nThe rows of *{words[0]}*:\n\n{_rows}")
    return Xdev, Xtr, Ydev, Ytr, block_size, vocab


@app.cell(hide_code=True)
def _(mo):
    lr = mo.ui.slider(steps=[0.01, 0.02, 0.05, 0.1, 0.2, 0.5], value=0.1, label="learning rate",
                      show_value=True)
    n_hidden = mo.ui.slider(10, 400, step=10, value=200, label="hidden units H", show_value=True)
    n_embd = mo.ui.slider(2, 20, value=10, label="embedding size E", show_value=True)
    steps = mo.ui.slider(steps=[1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000, 200_000], value=2000,
                         label="SGD steps", show_value=True)
    mo.vstack([mo.md("## The model\n\nMove a slider and every cell below reruns. The lecture "
                     "trains 200,000 steps at 0.1, then 0.01."), lr, n_hidden, n_embd, steps])
    return lr, n_embd, n_hidden, steps


@app.cell
def _(MLP, Xtr, Ytr, block_size, gradcheck, mo, n_embd, n_hidden, np, vocab):
    # a fresh model, and one forward pass over a minibatch of 32 rows
    model0 = MLP.init(vocab.size, block_size, n_embd.value, n_hidden.value,
                      dtype=np.float64)   # float64: the check below is then exact to round-off
    Xb, Yb = gradcheck.minibatch(Xtr, Ytr, 32, seed=0)     # (B, T), (B,)
    loss0, cache = model0.forward(Xb, Yb)                    # the cache training's backward reads
    _shapes = "\n".join(f"| `{k}` | {getattr(cache, k).shape} |" for k in ("emb", "embcat", "hpreact", "h", "logits"))
    mo.md(f"### Forward\n\n{model0.num_params:,} parameters. Intermediates of one minibatch:\n\n"
          f"| name | shape |\n|---|---|\n{_shapes}\n\nloss **{loss0:.4f}** (uniform guessing would "
          f"give ln {vocab.size} = {np.log(vocab.size):.4f}: the plain normal init "
          f"is confidently wrong)")
    return Xb, Yb, cache, model0


@app.cell
def _(MLP, inspect, mo):
    mo.md("### Backward: the forward read upside down\n\n```python\n"
          + inspect.getsource(MLP.backward) + "```")
    return


@app.cell
def _(Xb, Yb, gradcheck, mo, model0):
    # every gradient of that minibatch: against torch autograd and float64 finite differences
    loss_chk, torch_loss_chk, grad_rows = gradcheck.report(model0, Xb, Yb)
    mo.vstack([mo.md("### Checking every gradient (`npmlp gradcheck`)"),
               mo.plain_text(gradcheck.format_table(grad_rows, model0.dtype)),
               mo.callout("all gradients pass" if all(r.ok for r in grad_rows) else
                          "FAIL: " + ", ".join(r.name for r in grad_rows if not r.ok),
                          kind="success" if all(r.ok for r in grad_rows) else "danger")])
    return (grad_rows,)


@app.cell
def _(Xb, Yb, model0, plots, vocab):
    # dlogits: one column per character; each row is softmax / B with 1 / B taken off the target
    plots.gradient_figure(model0, Xb, Yb, vocab.itos)
    return


@app.cell
def _(MLP, TrainConfig, Xtr, Ytr, block_size, lr, mo, n_embd, n_hidden, np, plots, sgd, steps, vocab):
    # training: the lecture's loop (minibatch, forward, backward, p += -lr * grad), 10x lower
    # learning rate for the second half; the plot redraws as it goes
    cfg = TrainConfig(steps=steps.value, lr=lr.value, lr_decayed=lr.value / 10)
    model = MLP.init(vocab.size, block_size, n_embd.value, n_hidden.value, seed=cfg.seed)
    lossi = np.zeros(cfg.steps, np.float32)
    _every = max(500, cfg.steps // 10)

    def _redraw(step, loss):
        if (step + 1) % _every == 0:
            mo.output.replace(plots.loss_figure(lossi[:step + 1], cfg.decay_step,
                                                cfg.lr, cfg.lr_decayed, cfg.batch_size))

    sgd(model, Xtr, Ytr, cfg, lossi, on_step=_redraw)
    plots.loss_figure(lossi, cfg.decay_step, cfg.lr, cfg.lr_decayed, cfg.batch_size)
    return lossi, model


@app.cell
def _(Xdev, Xtr, Ydev, Ytr, evaluate, mo, model):
    train_loss, dev_loss = evaluate(model, Xtr, Ytr), evaluate(model, Xdev, Ydev)
    mo.md(f"train loss **{train_loss:.4f}**, dev loss **{dev_loss:.4f}** (the lecture reaches about "
          f"2.12 / 2.17 after 200,000 steps)")
    return dev_loss, train_loss


@app.cell
def _(mo, model, plots, vocab):
    # the embedding table C (V, E): each character at its 2-D position (PCA when E > 2)
    mo.vstack([mo.md("### What the embedding learned\n\nCharacters that behave alike get nearby "
                     "vectors: after a full run the vowels sit together, apart from the consonants "
                     "and the `'.'`."),
               plots.embedding_figure(model.params["C"], vocab.itos, pca=model.n_embd > 2)])
    return


@app.cell
def _(mo, model, sample, vocab):
    # sampling: context all '.', draw from softmax(logits) until '.'
    samples = sample(model, vocab, 20)    # seed: the lecture's + 10
    mo.md("### Samples\n\n" + ", ".join(f"`{s}`" for s in samples))
    return (samples,)


if __name__ == "__main__":
    app.run()
