"""Properties over random inputs (hypothesis): the vocab round-trips any alphabet, build_dataset's
rows have the sliding-context structure, and the model's loss/grads behave for any size.

Legend: N rows, B batch, T block_size, E n_embd, H n_hidden, V vocab size.
"""
from __future__ import annotations

import numpy as np
from helpers import magnitude_scales
from hypothesis import given, settings
from hypothesis import strategies as st

from npmlp.data import Vocab, build_dataset
from npmlp.mlp import MLP, PARAM_NAMES, param_shapes

SETTINGS = settings(max_examples=40, deadline=None)

# any character but '.', the reserved start/end token, and surrogates (not encodable text)
chars = st.characters(exclude_characters=".", exclude_categories=("Cs",))
alphabets = st.lists(chars, min_size=1, max_size=40, unique=True)


@st.composite
def word_lists(draw, min_words=0):
    alphabet = draw(alphabets)
    word = st.lists(st.sampled_from(alphabet), min_size=1, max_size=12).map("".join)
    return draw(st.lists(word, min_size=min_words, max_size=30))


@SETTINGS
@given(words=word_lists(min_words=1))
def test_vocab_round_trip(words):
    vocab = Vocab.from_words(words)
    assert vocab.itos[0] == "." and len(set(vocab.itos)) == vocab.size
    assert list(vocab.itos[1:]) == sorted(set("".join(words)))
    for w in words:
        ids = vocab.encode(w)
        assert all(1 <= i < vocab.size for i in ids)
        assert vocab.decode(ids) == w
    assert vocab.decode(vocab.encode("".join(words))) == "".join(words)


@SETTINGS
@given(words=word_lists(min_words=1), T=st.integers(1, 8))
def test_build_dataset_structure(words, T):
    vocab = Vocab.from_words(words)
    X, Y = build_dataset(words, vocab, T)
    lens = np.array([len(w) for w in words])
    N = int(lens.sum()) + len(words)            # every char, plus one closing '.' per word
    assert X.shape == (N, T) and Y.shape == (N,)
    assert X.dtype == Y.dtype == vocab.index_dtype()
    starts = np.concatenate([[0], np.cumsum(lens + 1)[:-1]])   # each word's first row
    ends = starts + lens                                        # each word's last row (target '.')
    # each word's targets are its characters then '.'
    for w, s, e in zip(words, starts, ends, strict=True):
        assert Y[s:e + 1].tolist() == vocab.encode(w) + [0]
    # each word starts from an all-'.' context
    assert not X[starts].any()
    # within a word the context slides by one: next context = this context[1:] + this target
    inner = np.setdiff1d(np.arange(N), ends)
    np.testing.assert_array_equal(X[inner + 1, :-1], X[inner, 1:])
    np.testing.assert_array_equal(X[inner + 1, -1], Y[inner])
    # '.' (0) is a target exactly once per word
    assert int((Y == 0).sum()) == len(words)


sizes = st.fixed_dictionaries({"V": st.integers(2, 60), "T": st.integers(1, 8), "E": st.integers(1, 16),
                               "H": st.integers(1, 64), "B": st.integers(1, 64), "seed": st.integers(0, 2**31)})


def _model_and_batch(s, dtype):
    rng = np.random.default_rng(s["seed"])
    params = {k: rng.standard_normal(shape).astype(dtype)
              for k, shape in param_shapes(s["V"], s["T"], s["E"], s["H"]).items()}
    X = rng.integers(0, s["V"], size=(s["B"], s["T"])).astype(np.uint8)
    Y = rng.integers(0, s["V"], size=s["B"]).astype(np.uint8)
    return MLP(params), X, Y


@SETTINGS
@given(s=sizes, dtype=st.sampled_from([np.float32, np.float64]))
def test_loss_finite_and_grads_shaped_like_params(s, dtype):
    model, X, Y = _model_and_batch(s, dtype)
    loss, grads = model.loss_and_grads(X, Y)
    assert np.isfinite(loss) and loss >= 0
    assert set(grads) == set(PARAM_NAMES)
    for k in PARAM_NAMES:
        assert grads[k].shape == model.params[k].shape and grads[k].dtype == dtype
        assert np.all(np.isfinite(grads[k]))
    # dlogits rows sum to zero, so db2 sums to zero
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert abs(float(grads["b2"].astype(np.float64).sum())) <= tol


@SETTINGS
@given(s=sizes, k=st.integers(2, 5))
def test_duplicated_batch_leaves_loss_and_grads_unchanged(s, k):
    """The loss is a mean over rows: the same rows k times over give the same loss and gradients
    (to round-off, measured against the magnitudes summed into each gradient: with standard-normal
    params many tanh units saturate, and a cancelled gradient is no yardstick, see test_model)."""
    model, X, Y = _model_and_batch(s, np.float64)
    loss, cache = model.forward(X, Y)
    grads, _ = model.backward(cache)
    scales = magnitude_scales(model, cache, X, Y)
    loss_k, grads_k = model.loss_and_grads(np.tile(X, (k, 1)), np.tile(Y, k))
    assert abs(loss_k - loss) <= 1e-12 * max(abs(loss), 1.0), (loss_k, loss)
    for name in PARAM_NAMES:
        g, gk = grads[name], grads_k[name]
        assert np.abs(gk - g).max() <= 1e-12 * scales[name], \
            f"d{name}: maxdiff {np.abs(gk - g).max():.3e}, scale {scales[name]:.3e}"
