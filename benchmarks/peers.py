"""The training steps being compared. Each peer runs the lecture's model on the same data, from the
same initial parameters, on the same minibatch indices, and records every step's loss as a Python
float (the lecture's `lossi`), so every peer does the same work as `npmlp train`.

Legend: B batch, T block_size, E n_embd, H n_hidden, V vocab size, N training rows.

A peer is built by `make_<peer>(init, X, Y, batches, lr, total_steps)` and returns `run(start, n) -> losses`:
run steps start .. start+n-1, step k using the rows `batches(k)` (B,). `init` is a dict of float32
NumPy arrays; X (N, T) and Y (N,) are the uint8 training split.

  npmlp            the fast engine as `npmlp train` runs it: npmlp.fast.sgd with parallel.make_batches's batches
  npmlp_reference  npmlp.train.sgd: the readable lecture loop (layers.py pairs, mlp.MLP); what the
                   fast engine's tricks buy is the ratio of these two
  torch_eager      the lecture's loop: forward, F.cross_entropy, loss.backward(), p.data += -lr * p.grad
  torch_manual     the same hand-written backward as npmlp, in torch ops under no_grad
  torch_compile    torch.compile (inductor) of torch_manual's whole step: gather, forward, backward, update
  jax              jax.jit of the whole step (gather, value_and_grad, update)

The bn model (makemore part 4: npmlp.bn.BNMLP, BatchNorm between the first linear layer and tanh)
has its own makers, BN_MAKERS, with the same contract; `init` then holds BNMLP's seven params:

  npmlp            the fast engine's BNEngine (the whole batch at once, never chunked)
  npmlp_reference  npmlp.train.sgd on BNMLP: the atom-by-atom backward of bn.py
  torch_eager      part 4's loop: hprebn.mean / .var(unbiased=True), (bnvar + 1e-5)**-0.5, gain and
                   bias, tanh, F.cross_entropy, loss.backward(), p.data += -lr * p.grad
  torch_compile    torch.compile of that step whole, its gradient by torch.func.grad_and_value

The layer-object networks (makemore part 3's deep.Deep, part 5's wavenet.Wavenet) share one set of
makers, LAYERS_MAKERS, with the same contract; `kind` says which model, `init` holds its params:

  npmlp            the fast engine's StackEngine (npmlp/fast/stack.py; never chunked)
  npmlp_reference  npmlp.train.sgd on the model: its Sequential of layer objects, layer by layer
  torch_eager      the lectures' loop with autograd over the package's torch mirror of the network
                   (npmlp.torch_mirrors.deep_forward / wavenet_forward, the npmlp model's initial
                   values): forward, F.cross_entropy, loss.backward(), the update; the mirror updates
                   the running statistics each step
  torch_compile    torch.compile of that whole step, the same mirror, its gradient by
                   torch.func.grad_and_value, returning the new parameters and running statistics
"""
from __future__ import annotations

import functools

import numpy as np

PEERS = ("npmlp", "npmlp_reference", "torch_eager", "torch_manual", "torch_compile", "jax")
LABELS = {"npmlp": "npmlp fast engine (NumPy, hand-written backward)",
          "npmlp_reference": "npmlp reference loop (the lecture in NumPy)",
          "torch_eager": "torch eager + autograd (the lecture's loop)",
          "torch_manual": "torch, hand-written backward under no_grad",
          "torch_compile": "torch.compile (inductor) of the whole manual step",
          "jax": "JAX jit of the whole step (value_and_grad)"}


# ----------------------------------------------------------------------------- npmlp

def _npmlp_peer(engine, init, X, Y, batches, lr, total_steps, kind="mlp"):
    """`engine`'s steps on the `kind` model (npmlp.app.registry) as `npmlp train` runs them
    (npmlp.fast.steps): they draw step k's rows from batch_block(seed, k // BLOCK), exactly what
    `batches(k)` returns, so no index is handed over."""
    import contextlib

    from npmlp.app.registry import model_class
    from npmlp.fast import steps as engine_steps
    from npmlp.train import TrainConfig

    model = model_class(kind)(init)
    cfg = TrainConfig(steps=total_steps, batch_size=batches.B, lr=lr, lr_decayed=lr, seed=batches.seed)
    lossi = np.zeros(total_steps, np.float32)
    # the fast engine's helper processes (one per usable core for a batch of several chunks, none
    # when pinned to one core) are made once here, not per timed call: forking costs milliseconds
    stack = contextlib.ExitStack()
    steps = stack.enter_context(engine_steps(engine, model, batches.B))

    def run(start, n):
        losses = []
        steps(X, Y, cfg, lossi, start, start + n, lambda step, loss: losses.append(loss))
        return losses

    run.model, run.close = model, stack.close
    return run


def make_npmlp(init, X, Y, batches, lr, total_steps):
    """The fast engine (npmlp/fast/engine.py, helpers from npmlp/fast/parallel.py): what `npmlp train` runs."""
    return _npmlp_peer("fast", init, X, Y, batches, lr, total_steps)


def make_npmlp_reference(init, X, Y, batches, lr, total_steps):
    """npmlp.train.sgd: the lecture's loop over the layers.py pairs (`npmlp train --engine reference`)."""
    return _npmlp_peer("reference", init, X, Y, batches, lr, total_steps)


# ----------------------------------------------------------------------------- torch

def _torch_setup(init, X, Y, requires_grad):
    import torch
    P = {k: torch.tensor(v, requires_grad=requires_grad) for k, v in init.items()}
    return torch, P, torch.from_numpy(X.astype(np.int64)), torch.from_numpy(Y.astype(np.int64))


def flush_denormals(run):
    """Run a torch peer with torch.set_flush_denormal(True), off again afterwards (it sets the CPU's
    flush-to-zero mode, which would also speed up NumPy code in the same thread). The lecture's init
    makes some softmax entries denormal at H=1000, and torch is several times slower there without
    flushing. JAX flushes by default; npmlp's fast engine floors its shifted logits instead
    (EXP_FLOOR in npmlp/fast/engine.py); its reference loop does neither."""
    import torch

    def wrapped(start, n):
        torch.set_flush_denormal(True)
        try:
            return run(start, n)
        finally:
            torch.set_flush_denormal(False)
    return wrapped


def autograd_loop(parameters, loss_of, Xt, Yt, batches, lr):
    """run(start, n): the lecture's loop with autograd, loss_of(Xb, Yb) being the model's forward:
    forward, zero the grads, backward, p.data += -lr * p.grad, the loss as a Python float."""
    def run(start, n):
        losses = []
        for k in range(start, start + n):
            ix = batches.torch(k)                               # (B,)
            loss = loss_of(Xt[ix], Yt[ix])
            for p in parameters:
                p.grad = None
            loss.backward()
            for p in parameters:
                p.data += -lr * p.grad
            losses.append(loss.item())
        return losses

    return flush_denormals(run)


def make_torch_eager(init, X, Y, batches, lr, total_steps):
    """The lecture's training loop, line for line (minus the random draw: rows come from `batches`)."""
    torch, P, Xt, Yt = _torch_setup(init, X, Y, requires_grad=True)
    import torch.nn.functional as F
    C, W1, b1, W2, b2 = (P[k] for k in ("C", "W1", "b1", "W2", "b2"))

    def lecture_loss(Xb, Yb):
        emb = C[Xb]                                             # (B, T, E)
        h = torch.tanh(emb.view(emb.shape[0], -1) @ W1 + b1)    # (B, H)
        logits = h @ W2 + b2                                    # (B, V)
        return F.cross_entropy(logits, Yb)

    return autograd_loop([C, W1, b1, W2, b2], lecture_loss, Xt, Yt, batches, lr)


def manual_grads(C, W1, b1, W2, b2, Xb, Yb):
    """Loss and gradients with makemore part 4's hand-written backward, in torch ops: the same math
    as npmlp/layers.py, for torch's sake. Call under no_grad."""
    import torch
    B = Xb.shape[0]
    emb = C[Xb]                                                 # (B, T, E)
    embcat = emb.view(B, -1)                                    # (B, T*E)
    hpreact = embcat @ W1 + b1                                  # (B, H)
    h = torch.tanh(hpreact)                                     # (B, H)
    logits = h @ W2 + b2                                        # (B, V)
    norm_logits = logits - logits.amax(1, keepdim=True)         # (B, V)
    counts = norm_logits.exp()                                  # (B, V)
    counts_sum = counts.sum(1, keepdim=True)                    # (B, 1)
    rows = torch.arange(B)
    loss = (counts_sum.log().squeeze(1) - norm_logits[rows, Yb]).mean()
    dlogits = counts / counts_sum                               # (B, V) softmax
    dlogits[rows, Yb] -= 1
    dlogits /= B
    dh = dlogits @ W2.T                                         # (B, H)
    dW2 = h.T @ dlogits                                         # (H, V)
    db2 = dlogits.sum(0)                                        # (V,)
    dhpreact = (1.0 - h * h) * dh                               # (B, H)
    dembcat = dhpreact @ W1.T                                   # (B, T*E)
    dW1 = embcat.T @ dhpreact                                   # (T*E, H)
    db1 = dhpreact.sum(0)                                       # (H,)
    dC = torch.zeros_like(C).index_add_(0, Xb.reshape(-1), dembcat.view(-1, C.shape[1]))  # (V, E)
    return loss, (dC, dW1, db1, dW2, db2)


def make_torch_manual(init, X, Y, batches, lr, total_steps):
    """The hand-written backward in eager torch; the update in place, as the lecture's p.data += ..."""
    torch, P, Xt, Yt = _torch_setup(init, X, Y, requires_grad=False)
    params = [P[k] for k in ("C", "W1", "b1", "W2", "b2")]

    def run(start, n):
        losses = []
        with torch.no_grad():
            for k in range(start, start + n):
                ix = batches.torch(k)
                loss, grads = manual_grads(*params, Xt[ix], Yt[ix])
                for p, g in zip(params, grads, strict=True):
                    p.add_(g, alpha=-lr)
                losses.append(loss.item())
        return losses

    return flush_denormals(run)


def compiled_step(C, W1, b1, W2, b2, Xt, Yt, ix, lr: float):
    """The whole step for torch.compile: gather, forward, backward, update. It returns the new
    parameters instead of updating in place: compiled in-place updates (p.add_ on the inputs) gave
    wrong W1 and W2 with torch 2.13.0 here, which the loss agreement check caught."""
    import torch
    with torch.no_grad():
        loss, grads = manual_grads(C, W1, b1, W2, b2, Xt[ix], Yt[ix])
        return loss, [p - lr * g for p, g in zip((C, W1, b1, W2, b2), grads, strict=True)]


def compiled_loop(step, state, Xt, Yt, batches, lr):
    """run(start, n) with a compiled step(*params, Xt, Yt, rows, lr) -> (loss, new params)."""
    def run(start, n):
        losses = []
        for k in range(start, start + n):
            loss, state[:] = step(*state, Xt, Yt, batches.torch(k), lr)
            losses.append(loss.item())
        return losses

    return flush_denormals(run)


def make_torch_compile(init, X, Y, batches, lr, total_steps):
    """torch.compile (inductor, default mode) of compiled_step. The caller times the first call (the
    compile) separately."""
    import torch
    torch._dynamo.reset()                         # a fresh compile per configuration, no cache limit hit
    step = torch.compile(compiled_step, dynamic=False, fullgraph=True)
    _, P, Xt, Yt = _torch_setup(init, X, Y, requires_grad=False)
    state = [P[k] for k in ("C", "W1", "b1", "W2", "b2")]

    return compiled_loop(step, state, Xt, Yt, batches, lr)


# ----------------------------------------------------------------------------- the bn model (part 4)

BN_PARAMS = ("C", "W1", "b1", "bngain", "bnbias", "W2", "b2")


def make_bn_npmlp(init, X, Y, batches, lr, total_steps):
    """The fast engine on the bn model (fast.BNEngine; never chunked, so no helper processes)."""
    return _npmlp_peer("fast", init, X, Y, batches, lr, total_steps, kind="bn")


def make_bn_npmlp_reference(init, X, Y, batches, lr, total_steps):
    """npmlp.train.sgd on bn.BNMLP: the atom-by-atom backward (`npmlp train --model bn --engine reference`)."""
    return _npmlp_peer("reference", init, X, Y, batches, lr, total_steps, kind="bn")


def bn_loss(params, Xb, Yb):
    """makemore part 4's forward as its training loop writes it, on the rows Xb (B, T), Yb (B,)."""
    import torch
    import torch.nn.functional as F

    from npmlp.layers import BN_EPS
    C, W1, b1, bngain, bnbias, W2, b2 = params
    emb = C[Xb]                                                 # (B, T, E)
    embcat = emb.view(emb.shape[0], -1)                         # (B, T*E)
    hprebn = embcat @ W1 + b1                                   # (B, H)
    bnmean = hprebn.mean(0, keepdim=True)                       # (1, H)
    bnvar = hprebn.var(0, keepdim=True, unbiased=True)          # (1, H) Bessel's correction, as bn.py
    bnvar_inv = (bnvar + BN_EPS) ** -0.5                        # (1, H)
    bnraw = (hprebn - bnmean) * bnvar_inv                       # (B, H)
    hpreact = bngain * bnraw + bnbias                           # (B, H)
    h = torch.tanh(hpreact)                                     # (B, H)
    logits = h @ W2 + b2                                        # (B, V)
    return F.cross_entropy(logits, Yb)


def make_bn_torch_eager(init, X, Y, batches, lr, total_steps):
    """Part 4's training loop with autograd (minus the random draw: rows come from `batches`)."""
    _, P, Xt, Yt = _torch_setup(init, X, Y, requires_grad=True)
    parameters = [P[k] for k in BN_PARAMS]
    return autograd_loop(parameters, lambda Xb, Yb: bn_loss(parameters, Xb, Yb), Xt, Yt, batches, lr)


def bn_compiled_step(C, W1, b1, bngain, bnbias, W2, b2, Xt, Yt, ix, lr: float):
    """torch_eager's step as one function for torch.compile: gather, forward, autograd's backward
    (torch.func.grad_and_value: loss.backward() would break the graph), update. It returns the new
    parameters, as compiled_step does (in-place updates compiled wrong with torch 2.13.0)."""
    import torch
    params = (C, W1, b1, bngain, bnbias, W2, b2)
    grads, loss = torch.func.grad_and_value(bn_loss)(params, Xt[ix], Yt[ix])
    return loss, [p - lr * g for p, g in zip(params, grads, strict=True)]


def make_bn_torch_compile(init, X, Y, batches, lr, total_steps):
    """torch.compile (inductor, default mode) of bn_compiled_step; the first call is the compile."""
    import torch
    torch._dynamo.reset()
    step = torch.compile(bn_compiled_step, dynamic=False, fullgraph=True)
    _, P, Xt, Yt = _torch_setup(init, X, Y, requires_grad=False)
    state = [P[k] for k in BN_PARAMS]

    return compiled_loop(step, state, Xt, Yt, batches, lr)


# ----------------------------------------------------------------------------- the layer objects (parts 3, 5)

def _layers_model(kind, init):
    """The npmlp model of `kind` with the parameters `init` and fresh running statistics (mean 0,
    variance 1), as every peer of a cell starts, and its torch mirror: the function of
    npmlp.torch_mirrors that its spec names (deep_forward, wavenet_forward), told the model's sizes."""
    from npmlp import torch_mirrors
    from npmlp.app.registry import model_class
    model = model_class(kind)(init)               # the constructor copies the arrays
    return model, functools.partial(getattr(torch_mirrors, model.spec.mirror), **model.sizes)


def make_layers_npmlp(kind, init, X, Y, batches, lr, total_steps):
    """The fast engine on a layer-object network (fast/stack.py's StackEngine; never chunked)."""
    return _npmlp_peer("fast", init, X, Y, batches, lr, total_steps, kind=kind)


def make_layers_npmlp_reference(kind, init, X, Y, batches, lr, total_steps):
    """npmlp.train.sgd on the model: its layer objects' forward and backward, one by one."""
    return _npmlp_peer("reference", init, X, Y, batches, lr, total_steps, kind=kind)


def make_layers_torch_eager(kind, init, X, Y, batches, lr, total_steps):
    """The lectures' loop with autograd over the package's torch mirror of the network
    (mirror(P, Xb, Yb, buffers), from the npmlp model's initial values): forward, F.cross_entropy,
    zero the grads, loss.backward(), p.data += -lr * p.grad. The mirror updates the running
    statistics in `buffers` each step, as npmlp's BatchNorm layers do."""
    import torch
    model, mirror = _layers_model(kind, init)
    P = {k: torch.tensor(v, requires_grad=True) for k, v in model.params.items()}
    buffers = {k: torch.tensor(v) for k, v in model.buffers.items()}
    Xt, Yt = torch.from_numpy(X.astype(np.int64)), torch.from_numpy(Y.astype(np.int64))

    def mirror_loss(Xb, Yb):
        return mirror(P, Xb, Yb, buffers)[0]

    def running_stats():
        return {k: v.numpy() for k, v in buffers.items()}

    run = autograd_loop(list(P.values()), mirror_loss, Xt, Yt, batches, lr)
    run.buffers = running_stats
    return run


def layers_compiled_step(mirror, names, buffer_names, Xt, Yt, ix, lr: float, *state):
    """torch_eager's step as one function for torch.compile: gather, the mirror's forward,
    autograd's backward (torch.func.grad_and_value: loss.backward() would break the graph), update.
    state is the parameters (in `names` order), then the running statistics (`buffer_names`). It
    returns the loss and the new state, as compiled_step does (in-place updates of the inputs
    compiled wrong with torch 2.13.0)."""
    import torch
    params = dict(zip(names, state[:len(names)], strict=True))
    buffers = {k: v.clone() for k, v in zip(buffer_names, state[len(names):], strict=True)}

    def loss_of(p, b):
        # the buffers are an argument, not captured: torch.func lets the mirror update a
        # function's inputs in place, never a tensor it closes over
        return mirror(p, Xt[ix], Yt[ix], b)[0]

    grads, loss = torch.func.grad_and_value(loss_of)(params, buffers)
    return loss, [params[k] - lr * grads[k] for k in names] + [buffers[k] for k in buffer_names]


def make_layers_torch_compile(kind, init, X, Y, batches, lr, total_steps):
    """torch.compile (inductor, default mode) of layers_compiled_step, the running statistics
    included; the first call is the compile."""
    import torch
    torch._dynamo.reset()
    model, mirror = _layers_model(kind, init)
    names, buffer_names = list(model.params), list(model.buffers)
    step = torch.compile(functools.partial(layers_compiled_step, mirror, names, buffer_names), dynamic=False,
                         fullgraph=True)
    state = [torch.tensor(model.params[k]) for k in names] + [torch.tensor(model.buffers[k]) for k in buffer_names]
    Xt, Yt = torch.from_numpy(X.astype(np.int64)), torch.from_numpy(Y.astype(np.int64))

    def run(start, n):
        losses = []
        for k in range(start, start + n):
            loss, state[:] = step(Xt, Yt, batches.torch(k), lr, *state)
            losses.append(loss.item())
        return losses

    def running_stats():
        return {k: v.numpy() for k, v in zip(buffer_names, state[len(names):], strict=True)}

    wrapped = flush_denormals(run)
    wrapped.buffers = running_stats
    return wrapped


# ----------------------------------------------------------------------------- JAX

def make_jax(init, X, Y, batches, lr, total_steps):
    """jax.jit of the whole step, with JAX's own autodiff (value_and_grad): what a JAX user writes.
    The block of 1000 steps' row indices lives on the device; the step picks its row by index."""
    import jax
    import jax.numpy as jnp

    def loss_fn(params, Xb, Yb):
        C, W1, b1, W2, b2 = params
        B = Xb.shape[0]
        emb = C[Xb].reshape(B, -1)                              # (B, T*E)
        h = jnp.tanh(emb @ W1 + b1)                             # (B, H)
        logits = h @ W2 + b2                                    # (B, V)
        logprobs = jax.nn.log_softmax(logits)                   # (B, V)
        return -jnp.mean(jnp.take_along_axis(logprobs, Yb[:, None], axis=1))

    def step(params, Xall, Yall, block, i, lr):
        ix = jax.lax.dynamic_index_in_dim(block, i, keepdims=False)    # (B,)
        loss, grads = jax.value_and_grad(loss_fn)(params, Xall[ix], Yall[ix])
        return [p - lr * g for p, g in zip(params, grads, strict=True)], loss

    step = jax.jit(step, donate_argnums=0)
    state = {"params": [jnp.asarray(init[k]) for k in ("C", "W1", "b1", "W2", "b2")]}
    Xj, Yj = jnp.asarray(X.astype(np.int32)), jnp.asarray(Y.astype(np.int32))
    lr32 = np.float32(lr)

    def run(start, n):
        losses = []
        params = state["params"]
        for k in range(start, start + n):
            block, i = batches.jax_block(k)
            params, loss = step(params, Xj, Yj, block, i, lr32)
            losses.append(float(loss))
        state["params"] = params
        return losses

    return run


MAKERS = {"npmlp": make_npmlp, "npmlp_reference": make_npmlp_reference, "torch_eager": make_torch_eager,
          "torch_manual": make_torch_manual, "torch_compile": make_torch_compile, "jax": make_jax}


# the bn section's peers: torch_manual and jax have no bn version (a peer asked for runs in the
# bn section only if it is here)
BN_MAKERS = {"npmlp": make_bn_npmlp, "npmlp_reference": make_bn_npmlp_reference,
             "torch_eager": make_bn_torch_eager, "torch_compile": make_bn_torch_compile}

# the deep and wavenet sections' peers, each maker given the model's kind first
LAYERS_MAKERS = {"npmlp": make_layers_npmlp, "npmlp_reference": make_layers_npmlp_reference,
                 "torch_eager": make_layers_torch_eager, "torch_compile": make_layers_torch_compile}
MAKERS_OF = {"mlp": MAKERS, "bn": BN_MAKERS,
             **{kind: {p: functools.partial(f, kind) for p, f in LAYERS_MAKERS.items()}
                for kind in ("deep", "wavenet")}}


TORCH_PEERS = ("torch_eager", "torch_manual", "torch_compile")


def available(peer):
    """None if the peer can run here, else one line saying why not."""
    import importlib.util
    need = "torch" if peer in TORCH_PEERS else "jax" if peer == "jax" else None
    if need and importlib.util.find_spec(need) is None:
        extra = "jax" if need == "jax" else "bench"
        return f"{need} is not installed (pip install -e '.[{extra}]')"
    return None


class Batches:
    """Step k's minibatch rows, exactly as npmlp's engines draw them: batch_block(seed, k // BLOCK)
    row k % BLOCK. Blocks are cached (the index draw is not part of any peer's timing except npmlp's,
    whose engines draw their own: a disadvantage of a fraction of a microsecond a step, kept)."""

    def __init__(self, seed, N, B):
        from npmlp.train import BLOCK, batch_block
        self.seed, self.N, self.B, self.BLOCK, self._draw = seed, N, B, BLOCK, batch_block
        self._np, self._torch, self._jax = {}, {}, {}

    def block(self, b):
        if b not in self._np:
            self._np[b] = self._draw(self.seed, b, self.N, self.B)   # (BLOCK, B) int64
        return self._np[b]

    def __call__(self, k):
        return self.block(k // self.BLOCK)[k % self.BLOCK]

    def torch(self, k):
        b = k // self.BLOCK
        if b not in self._torch:
            import torch
            # a copy: batch_block's arrays are read-only, and torch warns on a tensor it may not write
            self._torch[b] = torch.from_numpy(self.block(b).copy())
        return self._torch[b][k % self.BLOCK]

    def jax_block(self, k):
        b = k // self.BLOCK
        if b not in self._jax:
            import jax.numpy as jnp
            self._jax[b] = jnp.asarray(self.block(b).astype(np.int32))
        return self._jax[b], k % self.BLOCK
