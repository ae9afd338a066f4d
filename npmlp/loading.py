"""names.txt: where it is found (a file, $NPMLP_DATA, the cache, a checked download), how its
bytes become names, and the one way npmlp writes a file, whole or not at all. The last file of
the course: what it reads is data.py's.

Splits is what every command trains and evaluates on: the words of a file, their vocabulary
and the three splits of rows, built as data.py builds them.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
import unicodedata
from pathlib import Path

import numpy as np

from .contract import SEQUENCES, WINDOWS
from .data import DOT, DataError, Vocab, build_dataset, build_sequences, split_words

URL = "https://raw.githubusercontent.com/karpathy/makemore/master/names.txt"
SHA256 = "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"
OFFLINE_HINT = "pass a local copy with --data FILE or set NPMLP_DATA=FILE"


# ----------------------------------------------------------------------------- words

def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "npmlp" / "names.txt"


def data_source(path: str | os.PathLike | None = None) -> Path | None:
    """The file `load_words(path)` reads: `path`, else $NPMLP_DATA, else None (the checked download)."""
    if path is None and os.environ.get("NPMLP_DATA"):
        path = os.environ["NPMLP_DATA"]
    return None if path is None else Path(path)


def words_digest(words) -> str:
    """SHA-256 of the parsed names: a run records it so --resume can refuse different data."""
    return hashlib.sha256("\n".join(words).encode("utf-8")).hexdigest()


def load_words(path: str | os.PathLike | None = None, notes: list[str] | None = None) -> list[str]:
    """The names, one per line. Looks in: `path`, $NPMLP_DATA, the cache, then downloads. A file
    that is the lecture's names.txt (its SHA-256) fills an empty cache, so a later run finds it
    with no --data and no network.

    What was normalised (blank lines, stray spaces...) is appended to `notes` as sentences.
    """
    notes = [] if notes is None else notes
    path = data_source(path)
    cached = cache_path()
    if path is not None:
        data = _read_file(path)
        if not cached.is_file() and hashlib.sha256(data).hexdigest() == SHA256:
            fill_cache(cached, data)                         # the lecture's own file: later runs need no --data
        return parse_words(data, str(path), notes)
    if cached.is_file():
        try:
            data = cached.read_bytes()
        except OSError:
            data = b""
        if hashlib.sha256(data).hexdigest() == SHA256:
            return parse_words(data, str(cached), notes)
        notes.append(f"cached {cached} failed its SHA-256 check (damaged or cut short); downloading it again")
        try:  # so a failed download below leaves no bad file behind
            cached.unlink()
        except OSError:
            pass
    return parse_words(download(cached), str(cached), notes)


MAX_BYTES = 64 * 2**20    # the largest names file read (names.txt is 228 KB): an endless device is not read forever
CHUNK = 2**20


def _read_file(path: Path) -> bytes:
    """The bytes of a names file, at most MAX_BYTES: a larger file is refused with its size, before
    it is read; a pipe (/dev/stdin, <(...)) or device is read in chunks up to the cap, and only up to
    the first chunk holding a NUL byte (/dev/zero, /dev/urandom), which parse_words refuses."""
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a names file; give the path of a text file with one name per line")
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISREG(st.st_mode) and st.st_size > MAX_BYTES:
                raise DataError(f"data file {path} is {size_text(st.st_size)}, more than the {size_text(MAX_BYTES)} "
                                f"npmlp reads as a names file; give a smaller file of names")
            chunks: list[bytes] = []
            got = 0
            while got <= MAX_BYTES:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
                if b"\x00" in chunk:                          # binary: refused by parse_words
                    break
    except FileNotFoundError:
        raise DataError(f"data file {path} does not exist; check the path given to --data or NPMLP_DATA") from None
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e.strerror}") from None
    if got > MAX_BYTES and b"\x00" not in chunks[-1]:
        raise DataError(f"data file {path} gives more than {size_text(MAX_BYTES)} (an endless stream?), more than "
                        f"npmlp reads as a names file; give a file of names")
    return b"".join(chunks)


def size_text(n: int) -> str:
    """Bytes as a person reads them: '228 KiB', '3.1 GiB'."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def download_timeout() -> float:
    """Seconds to wait for the server to connect or send more bytes: $NPMLP_DOWNLOAD_TIMEOUT, default 30."""
    s = os.environ.get("NPMLP_DOWNLOAD_TIMEOUT", "30")
    try:
        v = float(s)
    except ValueError:
        v = float("nan")
    if not (np.isfinite(v) and v > 0):
        raise DataError(f"NPMLP_DOWNLOAD_TIMEOUT must be a positive number of seconds, got {s!r}", exit_code=2)
    return v


def fill_cache(dest: Path, data: bytes) -> None:
    """Keep the checked names.txt in the cache; a cache that cannot be written is not fatal: the
    bytes are in hand, and the next run reads its file again."""
    try:
        with atomic_open(dest) as f:
            f.write(data)
    except OSError:
        pass


def download(dest: Path, url: str | None = None, timeout: float | None = None) -> bytes:
    """Fetch names.txt, check its SHA-256, and write it to `dest` atomically (a cut download
    raises before anything is written, so it never leaves a bad cache file)."""
    import requests  # only needed on the first run without a local copy

    url = url or os.environ.get("NPMLP_DATA_URL") or URL
    timeout = download_timeout() if timeout is None else timeout
    try:
        r = requests.get(url, timeout=timeout)
        r.raise_for_status()
        data = r.content
    except requests.Timeout:
        raise DataError(f"downloading {url} timed out after {timeout:g}s; {OFFLINE_HINT}") from None
    except requests.HTTPError as e:
        status = f"HTTP {e.response.status_code} {e.response.reason}" if e.response is not None else "HTTP error"
        raise DataError(f"downloading {url} failed: {status}; {OFFLINE_HINT}") from None
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError):
        raise DataError(f"downloading {url} was cut off before the end; {OFFLINE_HINT}") from None
    except requests.ConnectionError as e:
        if "timed out" in str(e):  # a stall mid-body comes wrapped as a ConnectionError
            raise DataError(f"downloading {url} timed out after {timeout:g}s; {OFFLINE_HINT}") from None
        raise DataError(f"cannot connect to {url} (no network or server down); {OFFLINE_HINT}") from None
    except requests.RequestException as e:
        raise DataError(f"cannot download {url} ({type(e).__name__}); {OFFLINE_HINT}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise DataError(f"downloaded {url} ({len(data)} bytes) has SHA-256 {digest[:12]}..., "
                         f"expected {SHA256[:12]}... (truncated or changed); {OFFLINE_HINT}")
    fill_cache(dest, data)
    return data


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb"):
    """Yield a file object for a temporary file beside `path`; on a clean exit it is flushed to
    disk and renamed over `path`, on an error (Ctrl-C included) deleted. A crash mid-write leaves
    the old file (or none), never a half-written one. The one way npmlp writes a file: the
    download cache here, and checkpoints, figures and metrics (npmlp/app/files.py)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a finished file gets the usual mode
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):    # make the rename itself durable (Windows cannot open a folder)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# Python's unicodedata has no names for control characters; these are the ones a text file may hold
PLAIN = b"abcdefghijklmnopqrstuvwxyz\n"   # the bytes of a names file parse_words has nothing to say of
CONTROL_NAMES = {"\t": "TAB", "\x0b": "LINE TABULATION", "\x0c": "FORM FEED", "\x1b": "ESCAPE",
                 "\x7f": "DELETE", "\x85": "NEXT LINE"}


def invisible(c: str) -> bool:
    """A character that prints as nothing (or moves the cursor) in a sample: control (Cc), format
    (Cf: zero-width joiner, soft hyphen...), and separators (Zs, Zl, Zp) other than the ASCII space,
    which is visible enough in a name ('mary ann') to get its own note."""
    return c != " " and unicodedata.category(c) in ("Cc", "Cf", "Zs", "Zl", "Zp")


def char_name(c: str) -> str:
    """'U+200D ZERO WIDTH JOINER', the way a note names a character that cannot be shown."""
    return f"U+{ord(c):04X} {unicodedata.name(c, None) or CONTROL_NAMES.get(c, 'control character')}"


def parse_words(data: bytes, name: str = "<data>", notes: list[str] | None = None) -> list[str]:
    """Bytes of a names file -> list of names. Refuses what cannot be names; notes what it cleaned."""
    notes = [] if notes is None else notes
    # the common file (names.txt): lower-case a-z, one name a line, no blank line. Deleting those
    # bytes leaves nothing, in a fraction of the line-by-line checks' time, which find nothing to note
    if data[:1].isalpha() and b"\n\n" not in data and not data.translate(None, PLAIN):
        return data.decode("ascii").split()
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError(f"{name} is UTF-16 text; re-save it as UTF-8")
    if b"\x00" in data:
        raise DataError(f"{name} looks like a binary file (it contains NUL bytes); give a text file with one name "
                        f"per line")
    try:
        text = data.decode("utf-8-sig")  # tolerate a byte-order mark
    except UnicodeDecodeError as e:
        raise DataError(f"{name} is not UTF-8 text (bad byte at offset {e.start}); re-save it as UTF-8") from None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    words, blank, stripped, upper = [], 0, 0, 0
    spaced: list[tuple[int, str]] = []      # (line, name) of names with a space inside
    hidden: list[tuple[int, str]] = []      # ... with invisible or control characters
    for lineno, line in enumerate(lines, 1):
        word = line.strip()
        if not word:
            blank += lineno < len(lines)  # the newline at the end of the file is not a blank line
            continue
        if DOT in word:
            raise DataError(f"{name} line {lineno}: {word!r} contains '.', which npmlp reserves as the "
                             f"start/end token; remove or replace it")
        stripped += word != line
        upper += word != word.lower()
        if " " in word:
            spaced.append((lineno, word))
        if not word.isprintable() and any(invisible(c) for c in word):  # isprintable: a fast superset
            hidden.append((lineno, word))
        words.append(word)
    if not words:
        raise DataError(f"{name} holds no names; give a text file with one name per line")
    if blank:
        notes.append(f"{blank} blank line{'s' * (blank > 1)} skipped")
    if stripped:
        notes.append(f"{stripped} name{'s' * (stripped > 1)} had leading/trailing spaces removed")
    if upper:
        notes.append(f"{upper} name{'s' * (upper > 1)} contain{'s' * (upper == 1)} upper-case letters, "
                     f"kept as distinct characters (lower-case the file to merge them)")
    if spaced:
        n, (lineno, word) = len(spaced), spaced[0]
        where = f"line {lineno}: {word!r}" if n == 1 else f"first at line {lineno}: {word!r}"
        space = "a space" if n == 1 and word.count(" ") == 1 else "spaces"
        notes.append(f"{n} name{'s' * (n > 1)} contain{'s' * (n == 1)} {space} inside ({where}), "
                     f"the space kept as a character")
    if hidden:
        n, (lineno, word) = len(hidden), hidden[0]
        # the names are shown with repr(), which spells these characters as escapes (\u200d, \t)
        chars = sorted({c for _, w in hidden for c in w if invisible(c)})
        listed = ", ".join(char_name(c) for c in chars[:4]) + (f" and {len(chars) - 4} more" if len(chars) > 4 else "")
        where = f"line {lineno}: {word!r}" if n == 1 else f"first at line {lineno}: {word!r}"
        notes.append(f"{n} name{'s' * (n > 1)} contain{'s' * (n == 1)} invisible or control characters "
                     f"({listed}; {where}), kept as characters; remove them if they are not meant to be "
                     f"part of names")
    return words


# ----------------------------------------------------------------------------- a run's three splits

class Splits:
    """words -> vocab -> the three (X, Y) splits, as the lecture builds them: rows of context
    (form WINDOWS: build_dataset's) or whole names (SEQUENCES: build_sequences', makemore.py's).

    vocab: a trained model's vocabulary (characters outside it are refused); digest: the
    words_digest a run recorded (other names are refused, so a resume sees the same rows).
    split_seed None keeps the file's order. block_size: the context (windows), or the positions
    of a trained sequence model (None: the longest name + 1). build: the windows' builder,
    build_dataset or its vectorised twin (npmlp/fast/dataset.py). check(n_rows, vocab, T), if
    given, is called before any row is built, with the number of rows the three splits will hold
    and their T (the app's memory check). What the data loader cleaned up is in `notes`; the
    names of each split are in `words`."""

    def __init__(self, data, split_seed, block_size: int | None, vocab: Vocab | None = None,
                 digest: str | None = None, build=build_dataset, check=None, form: str = WINDOWS):
        self.notes: list[str] = []
        words = load_words(data, self.notes)
        self.source = data_source(data)            # None: the checked download of the lecture's file
        where = self.source or "the downloaded names.txt"
        self.vocab = vocab or Vocab.from_words(words)
        parts = split_words(words, split_seed)
        self.n_words = len(words)
        for name, part in zip(("train", "dev", "test"), parts, strict=True):
            if not part:
                raise DataError(f"{where} holds only {len(words)} name{'s' * (len(words) != 1)}: the {name} "
                                f"split of the 80/10/10 split is empty; give at least 10 names")
        self.form = form
        if form == SEQUENCES:
            longest = max(len(w) for w in words)
            T = longest + 1 if block_size is None else block_size
            if longest + 1 > T:
                raise DataError(f"{where} holds a name of {longest} characters; the model reads sequences of "
                                f"{T} positions, names of up to {T - 1}: use the names it was trained on")
            n_rows = len(words)                                    # one row per name
        else:
            assert block_size is not None
            T, n_rows = block_size, sum(len(w) + 1 for w in words)  # N = sum(len(w) + 1), as build_dataset makes
        self.block_size = T
        if check is not None:
            check(n_rows, self.vocab, T)
        try:
            if form == SEQUENCES:
                self.train, self.dev, self.test = (build_sequences(p, self.vocab, T) for p in parts)
            else:
                self.train, self.dev, self.test = (build(p, self.vocab, T) for p in parts)
        except DataError as e:                      # characters the model never saw
            raise DataError(f"{e} (names from {where}); use data with the training run's characters") from None
        self.words = dict(zip(("train", "dev", "test"), parts, strict=True))
        self.digest = words_digest(words)
        if digest is not None and digest != self.digest:  # checked last: the messages above say more
            raise DataError(f"the names in {where} differ from the ones this run was trained on; "
                            f"give the original file with --data FILE")

    def items(self):
        return {"train": self.train, "dev": self.dev, "test": self.test}.items()

    def summary(self) -> str:
        what = f"sequences of {self.block_size}" if self.form == SEQUENCES else "rows"
        return (f"{self.n_words:,} names, vocab {self.vocab.size}, {what} train/dev/test "
                f"{len(self.train[0]):,}/{len(self.dev[0]):,}/{len(self.test[0]):,}")
