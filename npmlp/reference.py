"""torch autograd mirrors of npmlp's models, for tests, benchmarks and `npmlp gradcheck` only.

torch is imported inside the functions: `import npmlp` never needs it.
"""
from __future__ import annotations

import numpy as np


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def torch_forward(P, X, Y):
    """The lecture's forward in torch. P: dict of leaf tensors. Returns (loss, acts dict)."""
    import torch
    import torch.nn.functional as F

    B = X.shape[0]
    emb = P["C"][X]                              # (B, T, E)
    embcat = emb.view(B, -1)                     # (B, T*E)
    hpreact = embcat @ P["W1"] + P["b1"]         # (B, H)
    h = torch.tanh(hpreact)                      # (B, H)
    logits = h @ P["W2"] + P["b2"]               # (B, V)
    loss = F.cross_entropy(logits, Y)
    return loss, {"logits": logits, "h": h, "hpreact": hpreact, "embcat": embcat, "emb": emb}


FORWARDS = {"mlp": torch_forward}


def _tensors(params, X, Y):
    import torch
    P = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in params.items()}
    return P, torch.as_tensor(np.asarray(X, np.int64)), torch.as_tensor(np.asarray(Y, np.int64))


def torch_loss_and_grads(model, X, Y):
    """The same model in torch, from the same params (dtype kept), on X (B, T), Y (B,).
    -> (loss, grads, act_grads), all NumPy."""
    P, Xt, Yt = _tensors(model.params, X, Y)
    loss, acts = FORWARDS[model.kind](P, Xt, Yt)
    for a in acts.values():
        a.retain_grad()
    loss.backward()
    grads = {k: p.grad.numpy() for k, p in P.items()}
    dacts = {k: a.grad.numpy() for k, a in acts.items()}
    return loss.item(), grads, dacts


def torch_sgd(model, X, Y, batches, lrs):
    """The lecture's training loop in torch from the model's params: for each row-index batch,
    forward, backward, p.data += -lr * p.grad. Returns (losses, final params as NumPy)."""
    import torch

    P, Xt, Yt = _tensors(model.params, X, Y)
    losses = []
    for ix, lr in zip(batches, lrs):
        ix = torch.as_tensor(np.asarray(ix, np.int64))
        loss, _ = FORWARDS[model.kind](P, Xt[ix], Yt[ix])
        for p in P.values():
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for p in P.values():
                p += -lr * p.grad
        losses.append(loss.item())
    return np.array(losses), {k: v.detach().numpy() for k, v in P.items()}
