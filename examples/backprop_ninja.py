"""makemore part 4, "becoming a backprop ninja": its four exercises in NumPy, on npmlp.

Open it as a notebook:   marimo edit examples/backprop_ninja.py   (then "Run all": it opens with nothing run)
Run it as an app:        marimo run examples/backprop_ninja.py    (every cell run, the results on the page)
Run it top to bottom:    python examples/backprop_ninja.py        (the same results on the terminal)
Data: as in examples/lecture2.py, the names come from $NPMLP_DATA, npmlp's cache, or the lecture's
URL (a checked download); without any of them the notebook stops and says what to do.
torch is optional: with it every hand-written gradient is held against torch autograd, without it
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
    # makemore part 4: becoming a backprop ninja

    Part 4 takes the BatchNorm MLP of part 3 and drops `loss.backward()`. Every gradient is
    written by hand, in four exercises:

    1. split the forward into its smallest steps ("atoms") and backpropagate through each one;
    2. the cross-entropy backward as one formula;
    3. the BatchNorm backward as one formula;
    4. train the network with the hand-written backward alone.

    ```
    C[X] -> concat -> @ W1 + b1 -> BatchNorm (bngain, bnbias) -> tanh -> @ W2 + b2 -> cross-entropy
    (B,T,E)  (B,T*E)      (B,H)              (B,H)                (B,H)     (B,V)        ()
    ```

    Everything below is NumPy. torch, when it is installed, only checks the answers.
    """)


@app.cell
def _():
    import inspect

    import numpy as np
    from threadpoolctl import threadpool_limits

    from npmlp import gradcheck, layers
    from npmlp.app import plots
    from npmlp.bn import BNMLP, PARAM_NAMES
    from npmlp.data import Vocab, build_dataset, split_words
    from npmlp.layers import BN_EPS as EPS
    from npmlp.mlp import Intermediates
    from npmlp.train import TrainConfig, evaluate, sample, sgd

    try:  # optional: torch only checks the gradients below
        import torch
        import torch.nn.functional as F
    except ImportError:
        torch = F = None
    return (Intermediates, BNMLP, EPS, F, PARAM_NAMES, TrainConfig, Vocab, build_dataset, evaluate,
            gradcheck, inspect, layers, np, plots, sample, sgd, split_words, threadpool_limits, torch)


@app.cell
def _(load_names, mo):
    words = load_names()               # $NPMLP_DATA, npmlp's cache, or the lecture's URL
    mo.md(f"{len(words):,} names, e.g. {', '.join(words[:8])}")
    return (words,)


@app.cell
def _(Vocab, build_dataset, mo, split_words, words):
    block_size = 3                                     # T: how many characters predict the next
    vocab = Vocab.from_words(words)
    _tr, _dev, _te = split_words(words)                # the lecture's random.seed(42); shuffle
    Xtr, Ytr = build_dataset(_tr, vocab, block_size)   # (N, T), (N,)
    Xdev, Ydev = build_dataset(_dev, vocab, block_size)
    mo.md(f"vocabulary of {vocab.size}: `{''.join(vocab.itos)}`; rows: train {len(Xtr):,}, "
          f"dev {len(Xdev):,}")
    return Xdev, Xtr, Ydev, Ytr, block_size, vocab


@app.cell
def _(BNMLP, Xtr, Ytr, block_size, gradcheck, mo, np, vocab):
    # part 4's exercise network: n_hidden 64, float64 so that every check below is exact to round-off
    model0 = BNMLP.init(vocab.size, block_size, n_embd=10, n_hidden=64, dtype=np.float64)
    P = {k: v.copy() for k, v in model0.params.items()}   # C, W1, b1, bngain, bnbias, W2, b2
    n = 32                                                 # the batch size, short for the formulas
    Xb, Yb = gradcheck.minibatch(Xtr, Ytr, n, seed=0)      # (B, T), (B,)
    _shapes = ", ".join(f"`{k}` {v.shape}" for k, v in P.items())
    mo.md(f"""
    ## The network and one minibatch

    `BNMLP.init` draws part 4's init: `W1` scaled by (5/3)/sqrt(T*E), `b1`, `W2`, `b2` and `bnbias`
    by 0.1, and `bngain` = 1 + 0.1 * randn. On purpose, none of them is exactly 0 or 1: a backward
    that forgets a term can still pass a check when the parameter it multiplies is 1 or 0.
    {model0.num_params:,} parameters: {_shapes}. A minibatch of n = {n} rows.
    """)
    return P, Xb, Yb, n


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Exercise 1: backprop through every atom

    The forward below is the lecture's, one small step per line, each result kept under its name
    (an `Intermediates` dict, npmlp's model cache: `fwd.emb`, `fwd.hprebn`, ...). The
    cross-entropy is spelled out too: the softmax through `logit_maxes`, `counts`,
    `counts_sum_inv`, the log, and the mean over the rows.
    """)


@app.cell
def _(Intermediates, EPS, P, PARAM_NAMES, Xb, Yb, model0, np, show):
    def forward_atoms(P, Xb, Yb, at=None):
        """Part 4's forward, atom by atom. -> Intermediates with every intermediate and the loss.
        `at`: {name: array} keeps that array in place of the computed atom, so that a finite
        difference can perturb one intermediate and rerun the rest of the forward."""
        C, W1, b1, bngain, bnbias, W2, b2 = (P[k] for k in PARAM_NAMES)
        n = len(Xb)
        a = Intermediates(at)
        a.emb = C[Xb]                                          # (B, T, E) embed the characters
        a.embcat = a.emb.reshape(n, -1)                        # (B, T*E) concatenate the vectors
        # linear layer 1
        a.hprebn = a.embcat @ W1 + b1                          # (B, H) pre-activation
        # BatchNorm
        a.bnmeani = 1 / n * a.hprebn.sum(0, keepdims=True)     # (1, H)
        a.bndiff = a.hprebn - a.bnmeani                        # (B, H)
        a.bndiff2 = a.bndiff ** 2                              # (B, H)
        a.bnvar = 1 / (n - 1) * a.bndiff2.sum(0, keepdims=True)  # (1, H) Bessel: n - 1, not n
        a.bnvar_inv = (a.bnvar + EPS) ** -0.5                  # (1, H)
        a.bnraw = a.bndiff * a.bnvar_inv                       # (B, H)
        a.hpreact = bngain * a.bnraw + bnbias                  # (B, H)
        # non-linearity
        a.h = np.tanh(a.hpreact)                               # (B, H)
        # linear layer 2
        a.logits = a.h @ W2 + b2                               # (B, V)
        # cross-entropy, one atom at a time
        a.logit_maxes = a.logits.max(1, keepdims=True)         # (B, 1)
        a.norm_logits = a.logits - a.logit_maxes               # (B, V) exp cannot overflow
        a.counts = np.exp(a.norm_logits)                       # (B, V)
        a.counts_sum = a.counts.sum(1, keepdims=True)          # (B, 1)
        a.counts_sum_inv = a.counts_sum ** -1                  # (B, 1)
        a.probs = a.counts * a.counts_sum_inv                  # (B, V)
        a.logprobs = np.log(a.probs)                           # (B, V)
        a.loss = -a.logprobs[np.arange(n), Yb].mean()          # ()
        return a

    fwd = forward_atoms(P, Xb, Yb)
    _lib_loss, _ = model0.forward(Xb, Yb)
    _rows = "\n".join(f"| `{k}` | {np.shape(v)} |" for k, v in fwd.items() if k != "loss")
    _loss = (f"loss **{fwd.loss:.6f}** (`BNMLP.forward`, which fuses the cross-entropy: {_lib_loss:.6f}; "
             f"the lecture's torch run, on its own minibatch: 3.3377)")
    show(f"{_loss}\n\n| atom | shape |\n|---|---|\n{_rows}", _loss)
    return forward_atoms, fwd


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ### The backward, atom by atom

    Each line below takes the gradient of one atom from the gradients of the atoms computed from
    it, in the reverse order of the forward. Three patterns carry most of it:

    - **broadcast forward, sum backward.** `bnmeani` (1, H) was subtracted from every row of
      `hprebn`, so its gradient adds up the contributions of all rows: `.sum(0, keepdims=True)`.
      The same holds for `counts_sum_inv`, `logit_maxes`, the biases and `bngain`.
    - **sum forward, broadcast backward.** `counts_sum` adds the row's `counts`, so each count
      receives the sum's gradient unchanged: `np.ones_like(counts) * dcounts_sum`.
    - **used twice, gradients add.** `counts` feeds both `probs` and `counts_sum`; `logits` feeds
      `norm_logits` and the max; `bndiff` feeds `bnraw` and `bndiff2`; `hprebn` feeds `bndiff` and
      the mean. The first line sets the gradient, the second adds with `+=`.

    The max picks one logit per row, so `dlogit_maxes` goes back to that position only (a one-hot
    of `argmax`). Its value is zero up to round-off: the softmax does not change when a row is
    shifted, and the max is there only to keep `exp` from overflowing.
    """)


@app.cell
def _(EPS, P, Xb, Yb, fwd, n, np):
    C, W1, bngain, W2 = P["C"], P["W1"], P["bngain"], P["W2"]
    V = W2.shape[1]                                            # vocabulary size
    # cross-entropy
    dlogprobs = np.zeros_like(fwd.logprobs)                    # (B, V) only the picked entries count
    dlogprobs[np.arange(n), Yb] = -1.0 / n                     # loss = -(their mean)
    dprobs = (1.0 / fwd.probs) * dlogprobs                     # (B, V) d log(p) = 1/p
    dcounts_sum_inv = (fwd.counts * dprobs).sum(1, keepdims=True)  # (B, 1) broadcast over V: sum
    dcounts = fwd.counts_sum_inv * dprobs                      # (B, V) counts, 1st use: probs
    dcounts_sum = -fwd.counts_sum ** -2 * dcounts_sum_inv      # (B, 1) d x^-1 = -x^-2
    dcounts += np.ones_like(fwd.counts) * dcounts_sum          # (B, V) counts, 2nd use: the row sum
    dnorm_logits = fwd.counts * dcounts                        # (B, V) d exp(x) = exp(x)
    dlogits = dnorm_logits.copy()                              # (B, V) logits, 1st use
    dlogit_maxes = -dnorm_logits.sum(1, keepdims=True)         # (B, 1)
    dlogits += np.eye(V)[fwd.logits.argmax(1)] * dlogit_maxes  # (B, V) logits, 2nd use: the max
    # linear layer 2
    dh = dlogits @ W2.T                                        # (B, H)
    dW2 = fwd.h.T @ dlogits                                    # (H, V)
    db2 = dlogits.sum(0)                                       # (V,)
    # tanh
    dhpreact = (1.0 - fwd.h ** 2) * dh                         # (B, H) d tanh(x) = 1 - tanh(x)^2
    # BatchNorm
    dbngain = (fwd.bnraw * dhpreact).sum(0)                    # (H,)
    dbnbias = dhpreact.sum(0)                                  # (H,)
    dbnraw = bngain * dhpreact                                 # (B, H)
    dbndiff = fwd.bnvar_inv * dbnraw                           # (B, H) bndiff, 1st use: bnraw
    dbnvar_inv = (fwd.bndiff * dbnraw).sum(0, keepdims=True)   # (1, H)
    dbnvar = -0.5 * (fwd.bnvar + EPS) ** -1.5 * dbnvar_inv     # (1, H)
    dbndiff2 = 1.0 / (n - 1) * np.ones_like(fwd.bndiff2) * dbnvar  # (B, H)
    dbndiff += 2 * fwd.bndiff * dbndiff2                       # (B, H) bndiff, 2nd use: bndiff2
    dhprebn = dbndiff.copy()                                   # (B, H) hprebn, 1st use: bndiff
    dbnmeani = -dbndiff.sum(0, keepdims=True)                  # (1, H)
    dhprebn += 1.0 / n * np.ones_like(fwd.hprebn) * dbnmeani   # (B, H) hprebn, 2nd use: the mean
    # linear layer 1
    dembcat = dhprebn @ W1.T                                   # (B, T*E)
    dW1 = fwd.embcat.T @ dhprebn                               # (T*E, H)
    db1 = dhprebn.sum(0)                                       # (H,)
    # embedding: row X[b, t] of C was copied to emb[b, t], so dC adds up every copy's gradient.
    # `dC[Xb] += demb` would keep one write per repeated character; np.add.at keeps all of them
    demb = dembcat.reshape(fwd.emb.shape)                      # (B, T, E)
    dC = np.zeros_like(C)                                      # (V, E)
    np.add.at(dC, Xb, demb)

    grads = {"logprobs": dlogprobs, "probs": dprobs, "counts_sum_inv": dcounts_sum_inv,
             "counts_sum": dcounts_sum, "counts": dcounts, "norm_logits": dnorm_logits,
             "logit_maxes": dlogit_maxes, "logits": dlogits, "h": dh, "W2": dW2, "b2": db2,
             "hpreact": dhpreact, "bngain": dbngain, "bnbias": dbnbias, "bnraw": dbnraw,
             "bnvar_inv": dbnvar_inv, "bnvar": dbnvar, "bndiff2": dbndiff2, "bndiff": dbndiff,
             "bnmeani": dbnmeani, "hprebn": dhprebn, "embcat": dembcat, "W1": dW1, "b1": db1,
             "emb": demb, "C": dC}             # every gradient, in the order computed
    return dbnbias, dbngain, dhpreact, dhprebn, dlogits, grads


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ### Checking every atom

    The lecture's `cmp` prints, for each gradient: is it bitwise equal to torch's (`exact`), is it
    equal up to round-off (`approximate`: here `npmlp.gradcheck.verdict`, `allclose` with rtol
    1e-10 in float64), and the largest difference. With torch installed, the reference is the
    same atoms written in torch and differentiated by autograd. In the lecture, torch checked
    torch and every line came out `exact`; here NumPy meets torch, whose kernels add up sums
    and matrix products in another order, so most lines agree to the last bit or two:
    `approximate`. Without torch, the reference is central finite differences of the NumPy
    forward above: perturb one number of an atom (or a parameter) by ±1e-5, rerun the rest of
    the forward, and divide the change of the loss by 2e-5, at 20 random places of each tensor
    (rtol 1e-5; the differences are good to about 1e-10). A gradient that is zero up to
    round-off (`b1`, whose shift BatchNorm subtracts again, and `logit_maxes`) is judged
    against 1% of the largest gradient in the table.
    """)


@app.cell
def _(EPS, P, Xb, Yb, forward_atoms, fwd, gradcheck, grads, np, torch):
    def torch_atom_grads(P, Xb, Yb):
        """The lecture's forward in torch, atom by atom: {name: gradient} from autograd."""
        T = {k: torch.tensor(v, requires_grad=True) for k, v in P.items()}
        X, Y = torch.as_tensor(Xb.astype(np.int64)), torch.as_tensor(Yb.astype(np.int64))
        n = X.shape[0]
        emb = T["C"][X]
        embcat = emb.view(n, -1)
        hprebn = embcat @ T["W1"] + T["b1"]
        bnmeani = 1 / n * hprebn.sum(0, keepdim=True)
        bndiff = hprebn - bnmeani
        bndiff2 = bndiff ** 2
        bnvar = 1 / (n - 1) * bndiff2.sum(0, keepdim=True)
        bnvar_inv = (bnvar + EPS) ** -0.5
        bnraw = bndiff * bnvar_inv
        hpreact = T["bngain"] * bnraw + T["bnbias"]
        h = torch.tanh(hpreact)
        logits = h @ T["W2"] + T["b2"]
        logit_maxes = logits.max(1, keepdim=True).values
        norm_logits = logits - logit_maxes
        counts = norm_logits.exp()
        counts_sum = counts.sum(1, keepdim=True)
        counts_sum_inv = counts_sum ** -1
        probs = counts * counts_sum_inv
        logprobs = probs.log()
        loss = -logprobs[range(n), Y].mean()
        atoms = {"logprobs": logprobs, "probs": probs, "counts_sum_inv": counts_sum_inv,
                 "counts_sum": counts_sum, "counts": counts, "norm_logits": norm_logits,
                 "logit_maxes": logit_maxes, "logits": logits, "h": h, "hpreact": hpreact,
                 "bnraw": bnraw, "bnvar_inv": bnvar_inv, "bnvar": bnvar, "bndiff2": bndiff2,
                 "bndiff": bndiff, "bnmeani": bnmeani, "hprebn": hprebn, "embcat": embcat, "emb": emb}
        for t in atoms.values():
            t.retain_grad()
        loss.backward()
        return {name: (atoms[name] if name in atoms else T[name]).grad.numpy() for name in grads}

    def fd_grads(P, Xb, Yb, coords=20, seed=0):
        """{name: central differences at `coords` random places of each tensor, NaN elsewhere}."""
        rng = np.random.default_rng(seed)
        out = {}
        for name, g in grads.items():
            if name in P:                  # a parameter: perturb it in P and rerun the forward
                x = P[name]
                at = None
            else:                          # an atom: perturb a copy, keep it, rerun what follows
                x = np.array(fwd[name])
                at = {name: x}
            idx = np.sort(rng.choice(g.size, min(coords, g.size), replace=False))
            ref = np.full(g.shape, np.nan)
            ref.flat[idx] = gradcheck.central_difference(
                lambda at=at: forward_atoms(P, Xb, Yb, at).loss, x, idx, eps=1e-5)
            out[name] = ref
        return out

    if torch is not None:
        ref_kind, ref_rtol = "torch autograd (float64)", 1e-10
        ref = torch_atom_grads(P, Xb, Yb)
    else:
        ref_kind, ref_rtol = "central differences of the NumPy forward (torch is not installed)", 1e-5
        ref = fd_grads(P, Xb, Yb)
    return ref, ref_kind, ref_rtol


@app.cell
def _(gradcheck, grads, np):
    # a gradient that is zero up to round-off is judged against 1% of the table's largest
    floor = gradcheck.FLOOR * max(float(np.abs(g).max()) for g in grads.values())

    def cmp(name, mine, ref, rtol=1e-10, floor=floor):
        """The lecture's cmp: bitwise equal? equal up to round-off (gradcheck.verdict)? largest
        difference? Entries where `ref` is NaN (finite differences not taken there) are skipped.
        -> a row of cmp_table, with the verdict, the shape and how many entries were compared."""
        mine, ref = np.asarray(mine, np.float64), np.asarray(ref, np.float64)
        assert mine.shape == ref.shape, f"{name}: shape {mine.shape} != {ref.shape}"
        known = ~np.isnan(ref)
        m, r = mine[known], ref[known]
        verdict = gradcheck.verdict(m, r, rtol, floor)
        return {"name": name, "shape": mine.shape, "exact": verdict == "exact",
                "approximate": verdict != "FAIL", "maxdiff": float(np.abs(m - r).max(initial=0.0)),
                "verdict": verdict, "compared": int(known.sum())}
    return (cmp,)


@app.cell
def _(cmp, cmp_table, grads, mo, ref, ref_kind, ref_rtol):
    cmp_rows = [cmp(name, g, ref[name], rtol=ref_rtol) for name, g in grads.items()]
    _bad = [r["name"] for r in cmp_rows if not r["approximate"]]
    mo.vstack([cmp_table(f"exercise 1: every atom's gradient against {ref_kind}", cmp_rows),
               mo.callout(f"all {len(cmp_rows)} gradients agree" if not _bad else "FAIL: " + ", ".join(_bad),
                          kind="success" if not _bad else "danger")])
    return (cmp_rows,)


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Exercise 2: the cross-entropy backward in one line

    For one row with logits $l$ and target $y$, the loss is
    $-\log p_y = -l_y + \log \sum_j e^{l_j}$. Its derivative by $l_j$ is
    $e^{l_j} / \sum_k e^{l_k} - [j = y] = p_j - [j = y]$: the log cancels the exponential, and
    everything between `logits` and `loss` in exercise 1 collapses to the softmax minus a one-hot.
    The loss is the mean over $n$ rows, so each row's gradient is divided by $n$. Every row of
    `dlogits` therefore sums to zero: the gradient pulls the target's logit up exactly as hard as
    it pushes the others down. `npmlp.layers.cross_entropy_backward` is this formula.
    """)


@app.cell
def _(Yb, cmp, cmp_table, dlogits, fwd, layers, mo, np, ref, ref_kind, ref_rtol, show):
    loss_fast, _ce_cache = layers.cross_entropy_forward(fwd.logits, Yb)
    dlogits_fast = layers.cross_entropy_backward(1.0, _ce_cache)   # (B, V) (softmax - onehot(Yb)) / n
    ce_rows = [cmp("logits (chain)", dlogits_fast, dlogits),
               cmp("logits (ref)", dlogits_fast, ref["logits"], rtol=ref_rtol)]
    mo.vstack([show(f"loss of the atoms {fwd.loss:.12f}, fused forward {loss_fast:.12f} "
                    f"(diff {abs(fwd.loss - loss_fast):.1e}); largest row sum of `dlogits_fast`: "
                    f"{np.abs(dlogits_fast.sum(1)).max():.1e}"),
               cmp_table("exercise 2: the fused cross-entropy backward `dlogits_fast` against the atom chain's "
                         f"`dlogits` and against the reference, {ref_kind}", ce_rows)])
    return ce_rows, dlogits_fast


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ## Exercise 3: the BatchNorm backward in one line

    Per column, with $x$ = `hprebn`, $\mu$ its batch mean,
    $\sigma^2 = \frac{1}{n-1}\sum_j (x_j-\mu)^2$, $s = (\sigma^2+\epsilon)^{-1/2}$ = `bnvar_inv`,
    $\hat x_i = (x_i-\mu)\,s$ = `bnraw` and $y_i = \gamma \hat x_i + \beta$ = `hpreact`.
    Write $g_i = \gamma\, dy_i$ (that is `dbnraw`). Each $x_i$ moves every $\hat x_j$ three
    ways: directly ($s$, only when $j = i$); through the mean, which moves by $1/n$ ($-s/n$ for
    every $j$); and through the variance, with $\partial\sigma^2/\partial x_i = \frac{2}{n-1}(x_i-\mu)$
    (the mean's own move drops out, because $\sum_j (x_j-\mu) = 0$) and $ds/d\sigma^2 = -s^3/2$,
    which gives $-\frac{s^3}{n-1}(x_i-\mu)(x_j-\mu) = -\frac{s}{n-1}\hat x_i \hat x_j$. Together:

    $$\frac{\partial \hat x_j}{\partial x_i} = s\Big([i=j] - \frac{1}{n} - \frac{\hat x_i \hat x_j}{n-1}\Big)$$

    Summing $g_j\,\partial \hat x_j/\partial x_i$ over $j$:

    $$dx_i = s\Big(g_i - \frac{1}{n}\sum_j g_j - \frac{\hat x_i}{n-1}\sum_j g_j \hat x_j\Big)
           = \frac{\gamma s}{n}\Big(n\,dy_i - \sum_j dy_j - \frac{n}{n-1}\,\hat x_i \sum_j dy_j\,\hat x_j\Big)$$

    The two sums are `dbnbias` and `dbngain` themselves, so the fused backward computes those
    first and reuses them: `npmlp.layers.batchnorm_backward`, with `unbiased=True` for part 4's
    $n-1$.
    """)


@app.cell
def _(EPS, P, cmp, cmp_table, dbnbias, dbngain, dhpreact, dhprebn, fwd, layers, mo, np, show):
    hpreact_fast, _bn_cache = layers.batchnorm_forward(fwd.hprebn, P["bngain"], P["bnbias"], eps=EPS,
                                                       unbiased=True)                       # (B, H)
    dhprebn_fast, dbngain_fast, dbnbias_fast = layers.batchnorm_backward(dhpreact, _bn_cache)  # (B, H), (H,), (H,)
    bn_rows = [cmp("hprebn", dhprebn_fast, dhprebn), cmp("bngain", dbngain_fast, dbngain),
               cmp("bnbias", dbnbias_fast, dbnbias)]
    mo.vstack([show(f"forward: max |`hpreact_fast` - `hpreact`| = {np.abs(hpreact_fast - fwd.hpreact).max():.1e}"),
               cmp_table("exercise 3: the fused BatchNorm backward, `dhprebn_fast`, `dbngain_fast`, `dbnbias_fast`, "
                         "against the atom chain's", bn_rows)])
    return bn_rows, dbnbias_fast, dbngain_fast, dhprebn_fast


@app.cell(hide_code=True)
def _(mo):
    mo.md(r"""
    ### Bessel's correction: $n-1$ or $n$?

    Part 4 divides the batch variance by $n-1$ (Bessel's correction, the unbiased estimate),
    in training and again when it measures the statistics for inference. The BatchNorm paper,
    and `torch.nn.BatchNorm1d` after it, normalise a training batch with the biased $1/n$
    variance and keep the unbiased one only for the running estimate used at inference, so
    training and inference see slightly different scales. The lecture prefers $n-1$ in both
    places, which is why its network does not match `torch.nn.functional.batch_norm` in
    training mode.

    `npmlp.layers.batchnorm_forward` offers both: `unbiased=True` is the lecture's,
    `unbiased=False` is torch's. In the backward the choice shows up only as the factor
    $\frac{n}{n-1}$ in front of the last sum, which becomes 1 with the biased variance.
    At $n = 32$ the two normalised outputs differ by a factor $\sqrt{n/(n-1)} \approx 1.016$.
    """)


@app.cell
def _(EPS, F, P, cmp, cmp_table, fwd, layers, mo, np, show, torch):
    _x, _g, _b = fwd.hprebn, P["bngain"], P["bnbias"]
    _y_unb, _ = layers.batchnorm_forward(_x, _g, _b, eps=EPS, unbiased=True)
    _y_bia, _c_bia = layers.batchnorm_forward(_x, _g, _b, eps=EPS, unbiased=False)
    _ratio = np.abs((_y_bia - _b) / (_y_unb - _b))
    _shown = [show(f"unbiased vs biased output: (y - beta) ratio {_ratio.min():.6f} .. {_ratio.max():.6f} "
                   f"(sqrt(n/(n-1)) = {np.sqrt(len(_x) / (len(_x) - 1)):.6f}, up to eps)")]
    bessel_rows = []
    if torch is not None:
        # torch's training-mode batch norm (biased variance) against unbiased=False, forward and backward
        _dy = np.random.default_rng(1).standard_normal(_x.shape)
        _tx, _tg, _tb = (torch.tensor(v, requires_grad=True) for v in (_x, _g, _b))
        _ty = F.batch_norm(_tx, None, None, _tg, _tb, training=True, eps=EPS)
        (_ty * torch.as_tensor(_dy)).sum().backward()
        _dx, _dg, _db = layers.batchnorm_backward(_dy, _c_bia)
        bessel_rows = [cmp("bn out", _y_bia, _ty.detach().numpy()), cmp("bn x", _dx, _tx.grad.numpy()),
                       cmp("bn gamma", _dg, _tg.grad.numpy()), cmp("bn beta", _db, _tb.grad.numpy())]
        _shown.append(cmp_table("`unbiased=False` against torch.nn.functional.batch_norm (training mode), "
                                "the output and its gradients", bessel_rows))
    else:
        _shown.append(show("(torch is not installed: the comparison with `F.batch_norm` is skipped)"))
    mo.vstack(_shown)
    return (bessel_rows,)


@app.cell
def _(EPS, F, P, fwd, gradcheck, layers, mo, show, torch):
    # npmlp's public checker for anyone's forward/backward pair: float64 central differences of
    # sum(out * dout) for a random dout, and torch autograd when a torch forward is given
    def _torch_bn(unbiased):
        if torch is None:
            return None
        if not unbiased:
            return lambda x, gamma, beta, eps, _: F.batch_norm(x, None, None, gamma, beta, training=True, eps=eps)
        return lambda x, gamma, beta, eps, _: (gamma * (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=True) + eps)
                                               + beta)

    pair_checks = {u: gradcheck.check_pair(layers.batchnorm_forward, layers.batchnorm_backward, fwd.hprebn,
                                           P["bngain"], P["bnbias"], EPS, u, torch_forward=_torch_bn(u))
                   for u in (True, False)}
    mo.vstack([mo.md("### The public checker: `gradcheck.check_pair`\n\n"
                     "`check_pair(batchnorm_forward, batchnorm_backward, x, gamma, beta, eps, unbiased, "
                     "torch_forward=...)`: the lecture's variance (`unbiased=True`, torch side: its "
                     "`hpreact_fast` line) and torch's (`unbiased=False`, torch side: `F.batch_norm`).")]
              + [show(f"`check_pair`, `unbiased={u}`: {'ok' if c.ok else 'FAIL'}\n\n```\n{c.text}\n```")
                 for u, c in pair_checks.items()])
    return (pair_checks,)


@app.cell(hide_code=True)
def _(BNMLP, inspect, mo):
    mo.vstack([mo.md(r"""
    ## Exercise 4: training with the hand-written backward

    `npmlp.bn.BNMLP` is part 4's network at the lecture's size (`n_hidden` 200). Its backward
    is exercise 1 with the cross-entropy fused (exercise 2); the BatchNorm stays atom by atom,
    and the tests hold it equal to the fused formula of exercise 3. `npmlp.train.sgd` runs the
    lecture's loop with it: a minibatch of 32, forward, this backward, `p -= lr * grad`, the
    rate dropping from 0.1 to 0.01 halfway. No torch anywhere.
    """), mo.md("```python\n" + inspect.getsource(BNMLP.backward) + "```")])


@app.cell(hide_code=True)
def _(mo):
    steps = mo.ui.slider(steps=[500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000, 200_000], value=2000,
                         label="SGD steps", show_value=True)
    mo.vstack([mo.md("Move the slider and the cells below rerun; the lecture trains 200,000 steps."), steps])
    return (steps,)


@app.cell
def _(BNMLP, TrainConfig, Xtr, Ytr, block_size, mo, np, plots, sgd, steps, vocab):
    cfg = TrainConfig(steps=steps.value)           # batch 32, lr 0.1, then 0.01 from steps // 2
    model = BNMLP.init(vocab.size, block_size, seed=cfg.seed)   # float32, as `npmlp train` runs
    lossi = np.zeros(cfg.steps, np.float32)
    _every = max(500, cfg.steps // 10)

    def _redraw(step, loss):
        if (step + 1) % _every == 0:
            mo.output.replace(plots.loss_figure(lossi[:step + 1], cfg.decay_step,
                                                cfg.lr, cfg.lr_decayed, cfg.batch_size))

    sgd(model, Xtr, Ytr, cfg, lossi, on_step=_redraw)
    plots.loss_figure(lossi, cfg.decay_step, cfg.lr, cfg.lr_decayed, cfg.batch_size)
    return cfg, lossi, model


@app.cell
def _(Xdev, Xtr, Ydev, Ytr, cfg, evaluate, model, show, threadpool_limits):
    # inference cannot use a batch's statistics (one name at a time has no batch): measure the
    # mean and the (n-1) variance of hprebn over the whole training split once, and use those.
    # One BLAS thread: on two busy cores OpenBLAS's second thread made these 1024-row products
    # ~10x slower (evaluating the training split: 2.9 s instead of 0.3 s)
    with threadpool_limits(1, user_api="blas"):
        model.calibrate(Xtr)
        train_loss, dev_loss = evaluate(model, Xtr, Ytr), evaluate(model, Xdev, Ydev)
    _result = (f"After {cfg.steps:,} steps, with the statistics calibrated over the {len(Xtr):,} training rows: "
               f"train loss **{train_loss:.4f}**, dev loss **{dev_loss:.4f}**.")
    show(f"""
    ### Calibrate, then evaluate

    {_result}

    The full run, `npmlp train --model bn` (200,000 steps), reaches train 2.0733 / dev 2.1156 /
    test 2.1065 in this project; the lecture's run reached train 2.0705 / dev 2.1099. NumPy
    cannot replay torch's random stream, so the init and the minibatches differ and only the
    statistics of the two runs agree.
    """, _result)
    return dev_loss, train_loss


@app.cell
def _(model, sample, show, vocab):
    # sampling with the calibrated statistics: context all '.', draw from softmax(logits) until '.'
    samples = sample(model, vocab, 20)    # seed: the lecture's + 10
    show("### Samples\n\n" + ", ".join(f"`{s}`" for s in samples))
    return (samples,)


if __name__ == "__main__":
    app.run()
