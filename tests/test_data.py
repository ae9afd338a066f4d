"""Data: the real names.txt, the lecture's vocab / split / row counts, both tiers of build_dataset
(data.build_dataset, the lecture's loop, and fast.dataset.build_dataset, its vectorised twin)
against the lecture's verbatim loop and each other, unicode alphabets, index dtypes, and where
load_words looks (no network).

Legend: N rows, T block_size, V vocab size.
"""
from __future__ import annotations

import random
import shutil
import string

import numpy as np
import pytest

from npmlp import loading
from npmlp.data import DataError, Vocab, build_dataset, split_words
from npmlp.fast.dataset import build_dataset as build_dataset_fast
from npmlp.loading import load_words, parse_words

BUILDERS = {"reference": build_dataset, "fast": build_dataset_fast}


def lecture_build_dataset(words, block_size):
    """The lecture's loop, verbatim apart from the vocab (built here the lecture's way too)."""
    chars = sorted(list(set("".join(words))))  # noqa: C414 (the lecture's line)
    stoi = {s: i + 1 for i, s in enumerate(chars)}
    stoi["."] = 0
    X, Y = [], []
    for w in words:
        context = [0] * block_size
        for ch in w + ".":
            ix = stoi[ch]
            X.append(context)
            Y.append(ix)
            context = context[1:] + [ix]
    return np.array(X, dtype=np.int64).reshape(-1, block_size), np.array(Y, dtype=np.int64)


def assert_rows_equal(words, T, vocab=None):
    """Both tiers' rows equal the lecture's loop's (and so each other's). -> the reference's X, Y."""
    vocab = vocab or Vocab.from_words(words)
    _rows_equal(BUILDERS["fast"], words, T, vocab)
    return _rows_equal(BUILDERS["reference"], words, T, vocab)


def _rows_equal(build, words, T, vocab):
    X, Y = build(words, vocab, T)
    Xl, Yl = lecture_build_dataset(words, T)
    assert X.shape == Xl.shape and Y.shape == Yl.shape, (X.shape, Xl.shape)
    assert X.dtype == Y.dtype == vocab.index_dtype()
    bad = np.flatnonzero((X.astype(np.int64) != Xl).any(1) | (Y.astype(np.int64) != Yl))
    assert bad.size == 0, f"T={T}: {bad.size} rows differ from the lecture's loop, first at row {bad[:1]}: " \
                          f"{X[bad[0]]}->{Y[bad[0]]} vs {Xl[bad[0]]}->{Yl[bad[0]]}"
    return X, Y


@pytest.fixture(scope="module")
def words(names_path):
    return load_words(names_path)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to download fails the test loudly instead of touching the network."""
    import requests

    def refuse(*a, **k):
        raise AssertionError(f"test tried to use the network: {a} {k}")
    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(requests.Session, "request", refuse)


# ----------------------------------------------------------------------------- the real file

def test_real_file_words_and_vocab(words, names_path):
    assert len(words) == 32_033
    assert words[:3] == ["emma", "olivia", "ava"]
    assert words == names_path.read_text().splitlines()
    vocab = Vocab.from_words(words)
    assert vocab.size == 27
    assert vocab.itos == (".", *string.ascii_lowercase)
    assert vocab.stoi["."] == 0 and vocab.stoi["a"] == 1 and vocab.stoi["z"] == 26
    assert vocab.index_dtype() == np.uint8


def test_lecture_split_row_counts(words):
    vocab = Vocab.from_words(words)
    tr, dev, te = split_words(words, seed=42)
    assert (len(tr), len(dev), len(te)) == (25_626, 3_203, 3_204)
    counts = [len(build_dataset(s, vocab, 3)[0]) for s in (tr, dev, te)]
    assert counts == [182_625, 22_655, 22_866]


def test_split_words_is_the_lectures_shuffle_and_leaves_random_alone(words):
    state = random.getstate()
    try:
        random.seed(42)
        expected = list(words)
        random.shuffle(expected)
    finally:
        random.setstate(state)
    orig = list(words)
    try:
        # a state of our own: had split_words seeded the global RNG, the state left behind by an
        # earlier split_words(seed=42) call would look "unchanged" here
        random.seed("sentinel")
        before = random.getstate()
        tr, dev, te = split_words(words, seed=42)
        assert random.getstate() == before, "split_words must not touch the global random state"
    finally:
        random.setstate(state)
    assert words == orig, "split_words must not shuffle its argument in place"
    n1, n2 = int(0.8 * len(words)), int(0.9 * len(words))
    assert tr == expected[:n1] and dev == expected[n1:n2] and te == expected[n2:]
    assert split_words(words, seed=43)[0] != tr


def test_split_words_seed_none_keeps_file_order(words):
    tr, dev, te = split_words(words, seed=None)
    assert tr + dev + te == words
    assert (len(tr), len(dev), len(te)) == (25_626, 3_203, 3_204)


def test_build_dataset_equals_lecture_loop_full_file_T3(words):
    X, Y = assert_rows_equal(words, 3)
    assert X.shape == (228_146, 3)  # 182,625 + 22,655 + 22,866: every char plus one '.' per word
    assert X.flags.c_contiguous and Y.flags.c_contiguous


@pytest.mark.parametrize("T", range(1, 9))
def test_build_dataset_equals_lecture_loop_subset(words, T):
    sub = split_words(words, seed=T)[1]  # 3,203 words, a different sample per T
    assert_rows_equal(sub, T, Vocab.from_words(words))


@pytest.mark.parametrize("build", BUILDERS.values(), ids=BUILDERS)
def test_build_dataset_edge_cases(build):
    vocab = Vocab.from_words(["ab"])
    X, Y = build([], vocab, 3)
    assert X.shape == (0, 3) and Y.shape == (0,)
    X, Y = build(["a"], vocab, 1)
    assert X.tolist() == [[0], [1]] and Y.tolist() == [1, 0]
    with pytest.raises(DataError, match="block_size"):
        build(["a"], vocab, 0)
    with pytest.raises(DataError, match="'c'"):
        build(["abc"], vocab, 3)


@pytest.mark.parametrize("words,T", [
    (["a", "b", "ab", "ba", "abababababab"], 5),             # shorter and longer than the context
    (list("abcdefghij"), 3),                                 # one-letter names only
    (["ab" * 400, "a", "b" * 1000], 4),                      # very long names
    (["ab", "ba", "aab"], 20),                               # a context longer than every name
    (["a"], 1),
])
def test_the_two_tiers_of_build_dataset_agree_on_odd_inputs(words, T):
    # each tier's rows equal the loop's, shape and values, in vocab.index_dtype(): so each other's too
    assert_rows_equal(words, T, Vocab.from_words(words))


# ----------------------------------------------------------------------------- unicode, dtypes

UNICODE_WORDS = ["ñandú", "zoë", "αλφα", "βήτα", "ωμέγα", "北京", "東京都", "𝔘𝔫𝔦", "şeyma", "ab", "ñ"]


@pytest.mark.parametrize("T", [1, 3, 8])
def test_unicode_round_trip_and_rows(T, tmp_path):
    vocab = Vocab.from_words(UNICODE_WORDS)
    assert vocab.itos[0] == "." and list(vocab.itos[1:]) == sorted(set("".join(UNICODE_WORDS)))
    for w in UNICODE_WORDS:
        ids = vocab.encode(w)
        assert len(ids) == len(w) and 0 not in ids and vocab.decode(ids) == w
    assert_rows_equal(UNICODE_WORDS, T, vocab)
    p = tmp_path / "names.txt"
    p.write_text("\n".join(UNICODE_WORDS) + "\n", encoding="utf-8")
    assert load_words(p) == UNICODE_WORDS


@pytest.mark.parametrize("n_chars,dtype", [(26, np.uint8), (255, np.uint8), (256, np.int32), (300, np.int32)])
def test_index_dtype_by_vocab_size(n_chars, dtype):
    alphabet = [chr(0x4E00 + i) for i in range(n_chars)]   # CJK ideographs
    rng = random.Random(n_chars)
    words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(400)] + alphabet
    vocab = Vocab.from_words(words)
    assert vocab.size == n_chars + 1 and vocab.index_dtype() == dtype
    _, Y = assert_rows_equal(words, 3, vocab)
    assert int(Y.max()) == n_chars  # the last character's index survives the dtype


def test_vocab_rejects_unknown_and_dot():
    vocab = Vocab.from_words(["abc"])
    with pytest.raises(DataError, match="'z'"):
        vocab.encode("abz")
    with pytest.raises(DataError):
        Vocab.from_words(["a.b"])


def test_parse_words_normalises():
    notes = []
    assert parse_words("\ufeffemma\r\n  olivia \n\nAva\n".encode(), "x", notes) == ["emma", "olivia", "Ava"]
    assert len(notes) == 3 and any("blank" in n for n in notes)
    with pytest.raises(DataError, match="'.'"):
        parse_words(b"a.b\n")


@pytest.mark.parametrize("c, hidden, name", [
    ("\u200d", True, "U+200D ZERO WIDTH JOINER"),
    ("\u00ad", True, "U+00AD SOFT HYPHEN"),
    ("\t", True, "U+0009 TAB"),
    ("\x1f", True, "U+001F control character"),
    ("\u00a0", True, "U+00A0 NO-BREAK SPACE"),
    ("\u3000", True, "U+3000 IDEOGRAPHIC SPACE"),
    ("\u2029", True, "U+2029 PARAGRAPH SEPARATOR"),
    ("\u202e", True, "U+202E RIGHT-TO-LEFT OVERRIDE"),
    (" ", False, "U+0020 SPACE"),         # visible enough in 'mary ann': a note of its own
    ("\u0303", False, "U+0303 COMBINING TILDE"),
    ("北", False, "U+5317 CJK UNIFIED IDEOGRAPH-5317"),
])
def test_invisible_characters_by_unicode_category(c, hidden, name):
    assert loading.invisible(c) is hidden
    assert loading.char_name(c) == name


def test_real_file_reads_without_notes(names_path):
    notes = []
    load_words(names_path, notes)
    assert notes == []


# ----------------------------------------------------------------------------- where load_words looks

@pytest.fixture
def places(tmp_path, monkeypatch, names_path):
    """Three different files: an explicit one, one named by NPMLP_DATA, and a valid cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "npmlp" / "names.txt"
    assert loading.cache_path() == cache
    cache.parent.mkdir(parents=True)
    shutil.copyfile(names_path, cache)    # the real bytes: its SHA-256 matches
    explicit = tmp_path / "explicit.txt"
    explicit.write_text("explicit\nwords\n")
    env = tmp_path / "env.txt"
    env.write_text("from\nenv\n")
    return explicit, env, cache


def test_explicit_path_beats_env_and_cache(places, monkeypatch):
    explicit, env, _ = places
    monkeypatch.setenv("NPMLP_DATA", str(env))
    assert load_words(explicit) == ["explicit", "words"]
    assert load_words(str(explicit)) == ["explicit", "words"]


def test_env_beats_cache(places, monkeypatch):
    _, env, _ = places
    monkeypatch.setenv("NPMLP_DATA", str(env))
    assert load_words() == ["from", "env"]


def test_cache_used_when_nothing_else(places, monkeypatch, words):
    monkeypatch.delenv("NPMLP_DATA", raising=False)
    monkeypatch.setattr(loading, "download", lambda *a, **k: pytest.fail("downloaded despite a valid cache"))
    notes = []
    assert load_words(notes=notes) == words and notes == []


def test_bad_cache_is_downloaded_again(places, monkeypatch, names_path, words):
    _, _, cache = places
    monkeypatch.delenv("NPMLP_DATA", raising=False)
    cache.write_bytes(names_path.read_bytes()[:-100])   # truncated: the SHA-256 no longer matches
    calls = []

    def fake_download(dest, *a, **k):
        calls.append(dest)
        return names_path.read_bytes()
    monkeypatch.setattr(loading, "download", fake_download)
    notes = []
    assert load_words(notes=notes) == words
    assert calls == [cache] and any("SHA-256" in n for n in notes)


def test_download_checks_sha_and_writes_cache(tmp_path, monkeypatch, names_path):
    """download() with a stand-in for requests.get (no network): right bytes are cached, wrong refused."""
    import requests

    class Resp:
        def __init__(self, content):
            self.content = content

        def raise_for_status(self):
            pass
    real = names_path.read_bytes()
    dest = tmp_path / "c" / "npmlp" / "names.txt"
    monkeypatch.setattr(requests, "get", lambda url, timeout: Resp(real))
    assert loading.download(dest, url="http://example.invalid/names.txt") == real
    assert dest.read_bytes() == real
    monkeypatch.setattr(requests, "get", lambda url, timeout: Resp(real[:-1]))
    dest2 = tmp_path / "d" / "names.txt"
    with pytest.raises(DataError, match="SHA-256"):
        loading.download(dest2, url="http://example.invalid/names.txt")
    assert not dest2.exists()


def test_missing_explicit_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_words(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="directory"):
        load_words(tmp_path)
