"""The one rule for what a model is given (contract.Model.check_inputs), held for every model of
the registry through every way in (forward, logits, loss, loss_and_grads): indices and targets in
0..V-1 (-1 masking a position of a sequence model's targets), at least one row, integers. NumPy
reads a negative index from the end of a table: `logits([[0, 0, -1]])` silently read row 26 of
C, and `loss(X, [13, -1])` returned a number; an empty batch raised a reshape error in three
models and returned (0, 27) in a fourth."""
from __future__ import annotations

import numpy as np
import pytest

from npmlp.app.registry import MODELS
from npmlp.contract import SEQUENCES

V = 27
SMALL = {"mlp": dict(n_embd=2, n_hidden=4), "bn": dict(n_embd=2, n_hidden=4), "bigram": {},
         "deep": dict(n_embd=2, n_hidden=4, n_layers=2), "wavenet": dict(n_embd=2, n_hidden=4),
         "rnn": dict(n_embd=4, n_hidden=4), "gru": dict(n_embd=4, n_hidden=4), "lstm": dict(n_embd=4, n_hidden=4),
         "bow": dict(n_embd=4, n_hidden=4), "transformer": dict(n_embd=4, n_layers=1, n_head=2)}


def test_every_model_is_held_to_the_rule():
    assert set(SMALL) == set(MODELS), "a model this test does not check"


@pytest.fixture(params=sorted(MODELS), scope="module")
def case(request):
    """(model, X, Y): a small model of each kind and a valid batch of two rows for it."""
    kind = request.param
    cls = MODELS[kind]
    sequences = cls.spec.data == SEQUENCES
    T = 5 if sequences else {"bigram": 1, "wavenet": 8}.get(kind, 3)
    model = cls.init(V, block_size=T, **SMALL[kind], dtype=np.float64)
    rng = np.random.default_rng(0)
    X = rng.integers(0, V, (2, T))
    Y = rng.integers(0, V, (2, T) if sequences else 2)
    return model, X, Y


def ways_in(model, X, Y):
    """Every entry point that reads X (and Y, where given)."""
    yield lambda: model.logits(X)
    if Y is not None:
        yield lambda: model.loss(X, Y)
        yield lambda: model.forward(X, Y)
        yield lambda: model.loss_and_grads(X, Y)


def refused(model, X, Y, match):
    for call in ways_in(model, X, Y):
        with pytest.raises(ValueError, match=match):
            call()


def test_a_valid_batch_works(case):
    model, X, Y = case
    assert np.isfinite(model.loss(X, Y)) and np.isfinite(model.loss_and_grads(X, Y)[0])


@pytest.mark.parametrize("value", [-1, -V, V, 10**6])
def test_an_index_outside_the_vocabulary_is_refused(case, value):
    model, X, Y = case
    bad = X.copy()
    bad[-1, -1] = value
    refused(model, bad, Y, rf"X holds {value} at \(1, {X.shape[1] - 1}\), outside 0\.\.{V - 1}")


@pytest.mark.parametrize("value", [-1, -2, V])
def test_a_target_outside_the_vocabulary_is_refused(case, value):
    """A sequence model's -1 masks a position (and works); -1 is no row's target, nor is -2 anyone's."""
    model, X, Y = case
    bad = Y.copy()
    bad.flat[-1] = value
    if Y.ndim == 2 and value == -1:
        assert np.isfinite(model.loss(X, bad)) and np.isfinite(model.loss_and_grads(X, bad)[0])
        return
    low = -1 if Y.ndim == 2 else 0
    for call in list(ways_in(model, X, bad))[1:]:
        with pytest.raises(ValueError, match=rf"Y holds {value} at .*, outside {low}\.\.{V - 1}"):
            call()


def test_an_empty_batch_is_refused_the_same_way_everywhere(case):
    model, X, Y = case
    refused(model, X[:0], Y[:0], r"no rows; a batch needs at least one")


@pytest.mark.parametrize("what", ["float X", "float Y", "Y of another length"])
def test_what_is_not_integer_indices_is_refused(case, what):
    model, X, Y = case
    if what == "float X":
        refused(model, X.astype(np.float64), Y, r"X has shape .* \(float64\); the model takes integer")
    elif what == "float Y":
        for call in list(ways_in(model, X, Y.astype(np.float64)))[1:]:
            with pytest.raises(ValueError, match="Y holds float64 values"):
                call()
    else:
        for call in list(ways_in(model, X, Y[:1]))[1:]:
            with pytest.raises(ValueError, match=r"Y has shape \(1,"):
                call()
