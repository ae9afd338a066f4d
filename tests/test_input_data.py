"""Bad dataset input, met through `npmlp train --data FILE`: each case is either refused with one
clear line (exit 1, no run directory created) or normalised with a note on stderr."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_RUN, assert_user_error, make_names, notes, run_cli, snapshot

from npmlp import loading
from npmlp.app.checkpoint import load_checkpoint
from npmlp.app.rundir import Splits
from npmlp.data import DataError, Vocab, build_dataset
from npmlp.loading import load_words, parse_words

NAMES = make_names(60, seed=3)


def train(data, out, *extra, env=None, quiet=True):
    opts = TINY_RUN if quiet else [o for o in TINY_RUN if o != "--quiet"]
    return run_cli("train", "--data", data, "--steps", 50, "--out", out, *opts, *extra, env=env)


# ----------------------------------------------------------------------------- refused

REFUSED = {
    # case: (file bytes or None for "no such file" or "dir" for a directory, words the message must hold)
    "missing file": (None, ["does not exist", "--data", "NPMLP_DATA"]),
    "a directory": ("dir", ["is a directory", "one name per line"]),
    "empty file": (b"", ["holds no names"]),
    "only blank lines": (b"\n \n\t\n\n", ["holds no names"]),
    "binary file": (bytes(range(256)) * 4, ["binary", "NUL"]),
    "not UTF-8": ("emma\nzoë\n".encode("latin-1"), ["not UTF-8", "offset 7", "re-save it as UTF-8"]),
    "UTF-16": ("emma\nava\n".encode("utf-16"), ["UTF-16", "re-save it as UTF-8"]),
    "single name": (b"emma\n", ["only 1 name:", "train split", "at least 10 names"]),
    "split empty": (b"emma\nava\nmia\nzoe\nida\n", ["only 5 names", "dev split", "at least 10 names"]),
    "dot in a name": (b"emma\nmary.ann\nava\n", ["line 2", "'mary.ann'", "'.'", "start/end token"]),
}


@pytest.mark.parametrize("case", REFUSED)
def test_bad_data_file_is_refused(tmp_path, case):
    content, needles = REFUSED[case]
    data = tmp_path / "names.txt"
    if content == "dir":
        data.mkdir()
    elif content is not None:
        data.write_bytes(content)
    out = tmp_path / "run"
    r = train(data, out)
    assert_user_error(r, 1, str(data), *needles)
    assert not out.exists(), "a refused data file must not leave a run directory behind"


def test_npmlp_data_env_names_the_file(tmp_path):
    missing = tmp_path / "nowhere.txt"
    r = run_cli("train", "--steps", 5, "--out", tmp_path / "run", *TINY_RUN, env={"NPMLP_DATA": str(missing)})
    assert_user_error(r, 1, str(missing), "does not exist", "NPMLP_DATA")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- normalised

def test_windows_line_endings_give_the_same_words_and_the_same_model(tmp_path):
    lf, crlf = tmp_path / "lf.txt", tmp_path / "crlf.txt"
    lf.write_bytes(("\n".join(NAMES) + "\n").encode())
    crlf.write_bytes(("\r\n".join(NAMES) + "\r\n").encode())
    assert load_words(crlf) == load_words(lf) == NAMES
    r1, r2 = train(lf, tmp_path / "a"), train(crlf, tmp_path / "b", quiet=False)
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
    assert notes(r2) == [], "CRLF is read silently, like any text file"
    with np.load(tmp_path / "a" / "model.npz") as a, np.load(tmp_path / "b" / "model.npz") as b:
        for k in ("C", "W1", "b1", "W2", "b2", "lossi"):
            assert np.array_equal(a[k], b[k]), k


@pytest.mark.parametrize("text, words, note", [
    ("emma\n\nava\n\n\nmia\n", ["emma", "ava", "mia"], "3 blank lines skipped"),
    ("emma\r\n\r\nava\r\n", ["emma", "ava"], "1 blank line skipped"),
    ("  emma\nava \n\tmia\t\nzoe\n", ["emma", "ava", "mia", "zoe"], "3 names had leading/trailing spaces removed"),
    ("Emma\nava\nMIA\n", ["Emma", "ava", "MIA"],
     "2 names contain upper-case letters, kept as distinct characters (lower-case the file to merge them)"),
    ("\ufeffemma\nava", ["emma", "ava"], None),  # a byte-order mark and no final newline: silent
])
def test_parse_words_normalises_and_says_so(text, words, note):
    got_notes: list[str] = []
    assert parse_words(text.encode(), "f", got_notes) == words
    assert got_notes == ([note] if note else [])


@pytest.mark.parametrize("text", ["emma\nava\nmia\n", "emma\nava", "z\n", "emma\nava\n\n", "\nemma\n",
                                  "emma\nAva\n", "emma\nav a\n", "emma\nav.a\n", "\n", ""])
def test_plain_file_fast_path_reads_as_the_line_by_line_checks(text):
    """parse_words' shortcut for a plain a-z file gives what its line-by-line checks give: the
    same names (here read from the same lines with CRLF endings, which take the checks) and the
    same notes or error; a file the shortcut cannot vouch for takes the checks."""
    def parsed(data):
        got: list[str] = []
        try:
            return parse_words(data, "f", got), got
        except DataError as e:
            return str(e), got
    assert parsed(text.encode()) == parsed(text.replace("\n", "\r\n").encode())
    if text == "emma\nava\nmia\n":
        assert parsed(text.encode()) == (["emma", "ava", "mia"], [])


def test_untidy_file_trains_with_notes_and_keeps_case(tmp_path):
    lines = [f"  {w}" if i % 10 == 0 else w for i, w in enumerate(NAMES)]
    lines[1] = "Ada"
    data = tmp_path / "names.txt"
    data.write_bytes(("\r\n".join(lines[:30]) + "\r\n\r\n\r\n" + "\r\n".join(lines[30:]) + "\r\n").encode())
    out = tmp_path / "run"
    r = train(data, out, quiet=False)
    assert r.returncode == 0, r.stderr
    assert notes(r) == ["2 blank lines skipped", "6 names had leading/trailing spaces removed",
                        ("1 name contains upper-case letters, kept as distinct characters "
                         "(lower-case the file to merge them)")]
    _, vocab, _, _ = load_checkpoint(out / "model.npz")
    assert "A" in vocab.itos and "a" in vocab.itos and " " not in vocab.itos
    assert notes(train(data, tmp_path / "quiet")) == [], "--quiet silences the notes"


# ----------------------------------------------------------------------------- spaces and invisible characters

ZWJ_NOTE = ("1 name contains invisible or control characters (U+200D ZERO WIDTH JOINER; line 2: 'jo\\u200dhn'), "
            "kept as characters; remove them if they are not meant to be part of names")


@pytest.mark.parametrize("text, note", [
    ("emma\nmary ann\nava\n", "1 name contains a space inside (line 2: 'mary ann'), the space kept as a character"),
    ("emma\nava\nanna  lee\nmary ann\n",
     "2 names contain spaces inside (first at line 3: 'anna  lee'), the space kept as a character"),
    ("emma\njo\u200dhn\n", ZWJ_NOTE),
    ("emma\nli\u00adsa\nx\ty\nzo\u00a0e\nab\u2028c\nd\x01e\nf\u200bg\n",
     ("6 names contain invisible or control characters (U+0001 control character, U+0009 TAB, "
      "U+00A0 NO-BREAK SPACE, U+00AD SOFT HYPHEN and 2 more; first at line 2: 'li\\xadsa'), kept as characters; "
      "remove them if they are not meant to be part of names")),
])
def test_spaces_and_invisible_characters_are_kept_with_a_note(text, note):
    got: list[str] = []
    words = parse_words(text.encode(), "f", got)
    assert words == [line for line in text.split("\n") if line]
    assert got == [note]
    assert set("".join(words)) - set(Vocab.from_words(words).itos) == set(), "kept as characters"


def test_spaces_edges_and_visible_unicode_are_silent():
    got: list[str] = []
    # leading/trailing spaces and tabs are stripped (their own note); letters with marks, CJK and
    # emoji are visible characters: no note about invisible ones
    assert parse_words(" emma\t\nzoë\n北京\n\U0001F600\nn\u0303\n".encode(), "f", got) == \
        ["emma", "zoë", "北京", "\U0001F600", "n\u0303"]
    assert got == ["1 name had leading/trailing spaces removed"]


def test_spaces_and_invisible_characters_are_noted_by_train(tmp_path):
    names = make_names(40, seed=5)
    names[13], names[6], names[20] = "mary ann", "jo\u200dhn", "ann lee"
    data = tmp_path / "names.txt"
    data.write_text("\n".join(names) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    r = run_cli("train", "--data", data, "--steps", 5, "--n-hidden", 8, "--n-embd", 2, "--no-plots", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "Warning" not in r.stderr, r.stderr
    assert notes(r) == ["2 names contain spaces inside (first at line 14: 'mary ann'), the space kept as a character",
                        ("1 name contains invisible or control characters (U+200D ZERO WIDTH JOINER; "
                         "line 7: 'jo\\u200dhn'), kept as characters; remove them if they are not meant to be "
                         "part of names")]
    _, vocab, _, _ = load_checkpoint(out / "model.npz")
    assert " " in vocab.itos and "\u200d" in vocab.itos
    quiet = run_cli("train", "--data", data, "--steps", 5, *TINY_RUN, "--no-plots", "--out", tmp_path / "q")
    assert quiet.returncode == 0 and notes(quiet) == [], "--quiet silences the notes"


# ----------------------------------------------------------------------------- outside the vocabulary

def test_characters_outside_the_training_vocabulary_are_named(tmp_path):
    data = tmp_path / "names.txt"
    data.write_text("\n".join(NAMES) + "\n")
    out = tmp_path / "run"
    assert train(data, out).returncode == 0
    _, vocab, _, _ = load_checkpoint(out / "model.npz")
    assert vocab == Vocab.from_words(NAMES)
    with pytest.raises(DataError, match="'Zë'"):
        build_dataset(["zoë", "Zed"], vocab, 3)
    with pytest.raises(DataError, match="'ë' in 'zoë'"):
        vocab.encode("zoë")
    # the path every command with a trained model takes: the run's vocabulary, another file
    other = tmp_path / "other.txt"
    other.write_text("\n".join(NAMES[:20] + ["zoë"]) + "\n")
    with pytest.raises(DataError, match=r"characters 'ë' are not in the model's vocabulary \(names from .*other.txt\)"):
        Splits(other, 42, 3, vocab)


def test_eval_with_characters_outside_the_vocabulary(tmp_path):
    """`npmlp eval RUN --data OTHER`: a file with characters the model never saw is refused by name."""
    data = tmp_path / "names.txt"
    data.write_text("\n".join(NAMES) + "\n")
    out = tmp_path / "run"
    assert train(data, out).returncode == 0
    before = snapshot(out)
    other = tmp_path / "other.txt"
    other.write_text("\n".join(NAMES[:-1] + ["zoë"]) + "\n")
    r = run_cli("eval", out, "--data", other, "--quiet")
    assert_user_error(r, 1, "characters 'ë' are not in the model's vocabulary", str(other))
    same_chars = tmp_path / "fewer.txt"
    same_chars.write_text("\n".join(NAMES[:-1]) + "\n")
    r = run_cli("eval", out, "--data", same_chars, "--quiet")
    assert_user_error(r, 1, str(same_chars), "differ from the ones this run was trained on")
    r = run_cli("eval", out, "--quiet")
    assert r.returncode == 0 and "dev loss" in r.stdout, r.stderr
    assert snapshot(out) == before


# ----------------------------------------------------------------------------- endless, huge, piped

@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_an_endless_device_is_refused_without_reading_it_to_the_end(tmp_path, device):
    """It was read until memory ran out: a names file is read in chunks, and a chunk holding a NUL
    byte ends the reading (parse_words refuses binary data)."""
    if not Path(device).exists():
        pytest.skip(f"{device} is not on this system")
    r = train(device, tmp_path / "run")
    assert_user_error(r, 1, device, "binary", "NUL")
    assert not (tmp_path / "run").exists()


def test_a_names_file_larger_than_the_cap_is_refused_with_its_size(tmp_path, monkeypatch):
    """Refused from its size, before a byte is read; a file within the cap reads as usual."""
    monkeypatch.setattr(loading, "MAX_BYTES", 2**20)
    big = tmp_path / "big.txt"
    big.write_bytes(b"emma\n" * (3 * 2**20 // 10))                 # 1.5 MiB
    with pytest.raises(DataError, match=r"big.txt is 1.5 MiB, more than the 1 MiB npmlp reads as a names file; "
                                        r"give a smaller file of names"):
        load_words(big)
    big.write_bytes(b"emma\n" * 1000)
    assert load_words(big) == ["emma"] * 1000


@pytest.mark.skipif(not Path("/dev/stdin").exists() or shutil.which("bash") is None, reason="a POSIX shell's pipes")
def test_pipes_are_read_and_an_endless_one_is_cut_at_the_cap(tmp_path):
    """/dev/stdin and <(...) are names files too; an endless one (`yes emma |`) stops at the cap."""
    names = tmp_path / "names.txt"
    names.write_text("\n".join(NAMES) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "NPMLP_DATA"}
    npmlp_train = f"{shlex.quote(sys.executable)} -m npmlp train --steps 5 --quiet --no-plots --n-embd 2 --n-hidden 8"
    quoted = shlex.quote(str(names))
    for i, (data, stdin) in enumerate([("/dev/stdin", f"< {quoted}"), (f"<(cat {quoted})", "")]):
        run = tmp_path / f"run{i}"
        cmd = f"{npmlp_train} --data {data} --out {run} {stdin}"
        r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        assert load_checkpoint(run / "model.npz")[1] == Vocab.from_words(NAMES)
    r = subprocess.run(["bash", "-c", f"yes emma | {npmlp_train} --data /dev/stdin --out {tmp_path / 'endless'}"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert_user_error(r, 1, "/dev/stdin gives more than 64 MiB", "an endless stream")
    assert not (tmp_path / "endless").exists()
