"""A torch autograd mirror of the model, for tests, benchmarks and `npmlp gradcheck` only.

torch is imported inside the functions: `import npmlp` never needs it.
"""
from __future__ import annotations

import numpy as np

from .model import ACT_NAMES, PARAM_NAMES


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


def torch_loss_and_grads(params, X, Y):
    """params: dict of NumPy arrays (dtype kept). -> (loss, grads, act_grads), all NumPy."""
    import torch

    P = {k: torch.tensor(np.asarray(params[k]), requires_grad=True) for k in PARAM_NAMES}
    loss, acts = torch_forward(P, torch.as_tensor(np.asarray(X, np.int64)), torch.as_tensor(np.asarray(Y, np.int64)))
    for a in acts.values():
        a.retain_grad()
    loss.backward()
    grads = {k: P[k].grad.numpy() for k in PARAM_NAMES}
    dacts = {k: acts[k].grad.numpy() for k in ACT_NAMES}
    return loss.item(), grads, dacts


def torch_sgd(params, X, Y, batches, lrs):
    """The lecture's training loop in torch: for each row-index batch, forward, backward,
    p.data += -lr * p.grad. Returns (losses, final params as NumPy)."""
    import torch

    P = {k: torch.tensor(np.asarray(params[k]), requires_grad=True) for k in PARAM_NAMES}
    Xt, Yt = torch.as_tensor(np.asarray(X, np.int64)), torch.as_tensor(np.asarray(Y, np.int64))
    losses = []
    for ix, lr in zip(batches, lrs):
        ix = torch.as_tensor(np.asarray(ix, np.int64))
        loss, _ = torch_forward(P, Xt[ix], Yt[ix])
        for p in P.values():
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for p in P.values():
                p += -lr * p.grad
        losses.append(loss.item())
    return np.array(losses), {k: v.detach().numpy() for k, v in P.items()}
