"""Helpers shared by the tests: generated names and datasets, a CLI runner, the real names file,
the example notebooks run as scripts, in-process and exported with their outputs (what their
pages show), checks that explain themselves, and how a user error must look.

Import them with `from helpers import ...` (pytest puts tests/ on sys.path); fixtures are in conftest.py.
"""
from __future__ import annotations

import contextlib
import hashlib
import html
import importlib.util
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_RUN = ("--n-hidden", "8", "--n-embd", "2", "--quiet")   # a quiet lecture-2 model that trains at ~10k steps/s
SMALL_MLP = ("--n-embd", "4", "--n-hidden", "16")            # a small lecture-2 model, for gradcheck and lr-find
HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed (pip install -e '.[test]' on "
                                                        "Python 3.11): the reference it checks against is missing")


# ----------------------------------------------------------------------------- data

def real_names_path() -> Path:
    """The lecture's names.txt, found the way npmlp finds it: $NPMLP_DATA, then the cache, then
    the checked download (into the cache). Offline with no copy, the whole suite stops once, with
    one line saying to set NPMLP_DATA (pytest takes no --data)."""
    from npmlp.data import DataError
    from npmlp.loading import cache_path, data_source, load_words
    path = data_source(None)
    try:
        load_words(path)                                # reads, or fills the cache
        problem = None
    except DataError as e:
        problem = str(e).split("; ")[0]                  # what is wrong; the loader's advice names --data
    if problem:                                         # outside the except: no chained traceback
        pytest.exit(f"the tests need the lecture's names.txt ({problem}); set NPMLP_DATA=path/to/names.txt "
                    f"and run them again", returncode=4)
    return path or cache_path()


def make_names(n: int = 300, seed: int = 0) -> list[str]:
    """n pronounceable lower-case names from a fixed seed: small, varied, fast to train on."""
    rng = random.Random(seed)
    on, vo = "bcdfghjklmnprstvwz", "aeiouy"
    return ["".join(rng.choice(on) + rng.choice(vo) for _ in range(rng.randint(1, 4))) + rng.choice(["", "n", "a"])
            for _ in range(n)]


def small_dataset(n: int = 400, seed: int = 0, block_size: int = 3):
    """(vocab, X, Y) built from make_names(n, seed): a small training set for in-process tests."""
    from npmlp.data import Vocab, build_dataset
    words = make_names(n, seed=seed)
    vocab = Vocab.from_words(words)
    return (vocab, *build_dataset(words, vocab, block_size))


# ----------------------------------------------------------------------------- the command line

def run_cli(*args, env: dict | None = None, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    """Run `python -m npmlp ARGS` as a user would; NPMLP_DATA is unset unless env sets it."""
    full_env = {k: v for k, v in os.environ.items() if k != "NPMLP_DATA"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "npmlp", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd)


PROGRESS = re.compile(r"\|\s*(\d+)/(\d+) \[")


def interrupt(args, signum, after_step: int, then=(), gap: float = 0.0):
    """Start `npmlp ARGS` (with its progress bar on), wait until the bar passes `after_step`, send
    `signum` (then each signal of `then`, `gap` seconds apart), and return (exit code, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "NPMLP_DATA"}
    p = subprocess.Popen([sys.executable, "-m", "npmlp", *map(str, args)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=env)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: p.stderr.read1(4096), b"")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while True:
        done = [int(m.group(1)) for m in PROGRESS.finditer(b"".join(chunks).decode(errors="replace"))]
        if done and done[-1] > after_step:
            break
        assert p.poll() is None, f"npmlp ended before it could be interrupted:\n{b''.join(chunks).decode()}"
        assert time.monotonic() < deadline, "no training progress within 120 s"
        time.sleep(0.02)
    for s in (signum, *then):
        p.send_signal(s)
        time.sleep(gap)
    code = p.wait(timeout=120)
    reader.join(timeout=10)
    return code, b"".join(chunks).decode()


def run_main(capsys, *argv):
    """`npmlp ARGV` in-process through cli.main -> (exit code, stdout, stderr); argparse's own
    errors (which exit) give their exit code too."""
    from npmlp.app import cli
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def names_file(folder: Path, n: int = 300, seed: int = 0) -> Path:
    """folder/names.txt holding make_names(n, seed)."""
    p = Path(folder) / "names.txt"
    p.write_text("\n".join(make_names(n, seed)) + "\n")
    return p


# ----------------------------------------------------------------------------- notebooks

@contextlib.contextmanager
def notebook_env(env: dict | None = None, hide_torch: bool = False):
    """Our environment with env added (and MPLBACKEND=Agg). hide_torch: a `torch` package first on
    the path whose import fails."""
    with tempfile.TemporaryDirectory() as hide:
        full_env = {**os.environ, "MPLBACKEND": "Agg", **(env or {})}
        if hide_torch:
            (Path(hide) / "torch").mkdir()
            (Path(hide) / "torch" / "__init__.py").write_text('raise ImportError("torch is hidden by this test")\n')
            full_env["PYTHONPATH"] = os.pathsep.join(p for p in (hide, full_env.get("PYTHONPATH")) if p)
        yield full_env


def notebook_script(path: Path, env: dict | None = None, hide_torch: bool = False,
                    timeout: float = 300) -> subprocess.CompletedProcess:
    """`python NOTEBOOK` as a script in notebook_env(env, hide_torch), whatever its exit."""
    with notebook_env(env, hide_torch) as full_env:
        return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=full_env,
                              timeout=timeout, check=False)


def run_notebook(path: Path, env: dict | None = None, hide_torch: bool = False,
                 timeout: float = 300) -> subprocess.CompletedProcess:
    """notebook_script(...), which must exit 0 without a traceback."""
    r = notebook_script(path, env, hide_torch, timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return r


class NotebookRun(NamedTuple):
    defs: dict      # the names its cells defined
    stdout: str     # what it printed: what `python NOTEBOOK` shows on the terminal
    page: str       # the text of its cells' outputs (page_text), what the page shows


def notebook_run(path: Path, names: Path) -> NotebookRun:
    """Run the notebook's marimo app in this process on NPMLP_DATA=names (marimo's script mode, as
    `python NOTEBOOK` runs it). Its figures are closed after."""
    import marimo as mo
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NPMLP_DATA", str(names))
        spec = importlib.util.spec_from_file_location(Path(path).stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            outputs, defs = module.app.run()
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
    page = "\n".join(page_text(o.text) for o in outputs if isinstance(o, mo.Html))
    return NotebookRun(defs, out.getvalue(), page)


def cmp_lines(stdout: str) -> list[str]:
    """The notebooks' printed cmp lines: `name | exact: ... | approximate: ... | maxdiff: ...`."""
    return [line for line in stdout.splitlines() if "| approximate: " in line]


def printed(stdout: str, label: str) -> float:
    """The number on the one printed line `label X`."""
    found = re.findall(rf"^{re.escape(label)} (\S+)", stdout, re.M)
    assert len(found) == 1, f"want one line '{label} X', got {found} in:\n{stdout}"
    return float(found[0])


CMP_LINE = re.compile(r"^(.*?)\s*\| exact: (\w+)\s*\| approximate: (\w+)\s*\| maxdiff: (\S+)$")


def page_text(output: str) -> str:
    """The text a reader sees in one cell output, marimo's HTML or markdown: components that carry
    their content in an attribute (a callout's data-html) opened, each table row on a line as
    `| cell | cell |`, tags dropped, entities decoded."""
    def opened(m):
        return page_text(json.loads(html.unescape(m.group(1))))
    s = re.sub(r"<[\w-]+ [^>]*?data-html='([^']*)'[^>]*>", opened, output)
    s = re.sub(r"\s*(</?(?:table|thead|tbody|tr|th|td)\b[^>]*>)\s*", r"\1", s)   # cells: no stray newlines
    s = re.sub(r"<tr\b[^>]*>", "\n|", s)
    s = re.sub(r"<t[hd]\b[^>]*>", " ", s)
    s = re.sub(r"</t[hd]>", " |", s)
    s = re.sub(r"<(?:br|/p|/li|/h\d|/pre|/div|/table)\b[^>]*>", "\n", s)
    return html.unescape(re.sub(r"<[^>]+>", "", s))


def plain(line: str) -> str:
    """A line of text or markdown as a comparison sees it: no emphasis, code marks, heading or list
    markers; whitespace collapsed."""
    line = re.sub(r"^\s*(?:#+|[-*]) ", "", line).replace("**", "").replace("`", "")
    return " ".join(line.split())


def shows(page: str, text: str) -> bool:
    """Whether `text` (a line) is in a page_text, as a reader sees both (plain)."""
    return plain(text) in plain(page.replace("\n", " "))


def table_rows(page: str) -> list[list[str]]:
    """The cells of every table row of a page_text (or markdown): `| a | b |` -> ['a', 'b']."""
    return [[plain(c) for c in line.strip().strip("|").split("|")]
            for line in page.splitlines() if line.strip().startswith("|")]


def cmp_rows(page: str) -> list[list[str]]:
    """The rows of the page's cmp tables: [name, exact, approximate, maxdiff]."""
    return [row for row in table_rows(page) if len(row) == 4 and {row[1], row[2]} <= {"True", "False"}]


def assert_printed_on_page(stdout: str, page: str) -> None:
    """Nothing the notebook printed is only on the terminal: every cmp line is a row of a table on
    the page (name, exact, approximate, maxdiff), every other line is in the page's text (markdown's
    table rules and blank lines aside)."""
    rows = table_rows(page)
    missing = []
    for line in stdout.splitlines():
        m = CMP_LINE.match(line.strip())
        if m:
            want = [plain(g) for g in m.groups()]
            if want not in rows:
                missing.append(line)
        elif plain(line) and not re.fullmatch(r"[|:\- ]+", line.strip()) and not shows(page, line):
            missing.append(line)
    assert not missing, "printed but not on the page:\n" + "\n".join(missing)


class Page(NamedTuple):
    text: str               # every output a reader sees (display data), as page_text
    printed: str            # what the cells printed to stdout while marimo ran them
    errors: list[str]       # the cells' errors, "ename: evalue"


def export_page(path: Path, env: dict, folder: Path, hide_torch: bool = False, timeout: float = 900) -> Page:
    """`marimo export ipynb --include-outputs NOTEBOOK` in notebook_env(env, hide_torch): the
    notebook run as `marimo run` runs it, and what its page shows."""
    import nbformat
    out = Path(folder) / f"{Path(path).stem}.ipynb"
    with notebook_env(env, hide_torch) as full_env:
        r = subprocess.run([sys.executable, "-m", "marimo", "export", "ipynb", "--include-outputs", "-f", str(path),
                            "-o", str(out)], capture_output=True, text=True, timeout=timeout, env=full_env)
    assert r.returncode == 0 and out.is_file(), r.stderr[-3000:]
    shown, printed, errors = [], [], []
    for cell in nbformat.read(out, as_version=4).cells:
        for o in cell.get("outputs", []):
            if o.output_type in ("display_data", "execute_result"):
                data = o.get("data", {})
                shown += [page_text(data[k]) for k in ("text/html", "text/markdown", "text/plain") if k in data][:1]
            elif o.output_type == "stream" and o.name == "stdout":
                printed.append(o.text)
            elif o.output_type == "error":
                errors.append(f"{o.ename}: {o.evalue}")
    return Page("\n".join(shown), "".join(printed), errors)


def assert_data_failure(path: Path, env: dict, *needles: str) -> str:
    """`python NOTEBOOK` without usable names: exit 1, nothing on stdout, no traceback, and one line
    on stderr, `examples/NAME.py: error: PROBLEM; FIX`, holding every needle and the notebooks'
    advice (NPMLP_DATA, never the command's --data). Torch is hidden: the data come first."""
    r = notebook_script(path, env, hide_torch=True)
    lines = r.stderr.splitlines()
    assert r.returncode == 1 and len(lines) == 1, f"exit {r.returncode}, stderr:\n{r.stderr[-3000:]}"
    assert r.stdout == "", r.stdout
    line = lines[0]
    assert line.startswith(f"examples/{Path(path).name}: error: "), line
    assert "NPMLP_DATA" in line and "--data" not in line, line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


NO_NAMES = ("missing file", "binary file", "offline")
# examples/bigram.py's tests try every case of NO_NAMES; the other notebooks' data cell is bigram's
# (each file's test_*_shares_the_bigram_helpers), so theirs try the first: each stops at its data
SOME_NO_NAMES = NO_NAMES[:1]


def no_names(how: str, folder: Path) -> tuple[dict, str]:
    """One of NO_NAMES as a notebook's environment -> (env, what its error must say): NPMLP_DATA
    naming a file that is not there, or a binary file; or no NPMLP_DATA, an empty cache and no
    server (a closed port) for the download."""
    folder = Path(folder)
    if how == "missing file":
        return {"NPMLP_DATA": str(folder / "missing.txt")}, f"data file {folder / 'missing.txt'} does not exist"
    if how == "binary file":
        (folder / "names.bin").write_bytes(bytes(range(256)) * 4)
        return {"NPMLP_DATA": str(folder / "names.bin")}, "looks like a binary file"
    assert how == "offline", how
    return ({"NPMLP_DATA": "", "XDG_CACHE_HOME": str(folder / "cache"), "NPMLP_DATA_URL": "http://127.0.0.1:9/names.txt"},
            "cannot connect to http://127.0.0.1:9/names.txt")


def assert_page_stops_without_names(page: Page, needle: str) -> None:
    """An exported page without names: the callout that names the problem and the fix, and every
    cell that needs the names stopped by it, not failed."""
    assert "stopped here: it has no names to work on" in page.text and needle in page.text, page.text[-3000:]
    assert "NPMLP_DATA=path/to/names.txt marimo edit examples/" in page.text, page.text[-3000:]
    assert page.errors and all(e.startswith("ancestor-stopped") for e in page.errors), page.errors
    assert not page.printed, page.printed


def notebook_cell(path: Path, marker: str) -> str:
    """The source of the one cell of the notebook that contains `marker`."""
    cells = [c for c in Path(path).read_text().split("@app.cell") if marker in c]
    assert len(cells) == 1, f"{len(cells)} cells of {path} contain {marker!r}"
    return cells[0]


PNG = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    """A real PNG of a sensible size that matplotlib can read back."""
    from matplotlib.image import imread

    data = Path(path).read_bytes()
    assert data[:8] == PNG, f"{path} is not a PNG"
    assert 5_000 < len(data) < 400_000, f"{path}: {len(data)} bytes"
    h, w = imread(path).shape[:2]
    assert h > 200 and w > 200, f"{path}: {w}x{h} px"


def assert_user_error(r, code: int, *needles: str) -> str:
    """Exit `code`, exactly one `npmlp: error: ...` line containing every needle, no traceback,
    and (runs use --quiet) nothing on stderr that is not an `npmlp:` line: no usage dump, no warnings."""
    assert r.returncode == code, f"exit {r.returncode}, expected {code}\nstderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    errors = [line for line in lines if line.startswith("npmlp: error: ")]
    assert len(errors) == 1, f"want one error line, got:\n{r.stderr}"
    stray = [line for line in lines if not line.startswith("npmlp: ")]
    assert not stray, f"stray stderr lines: {stray}"
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


def notes(r) -> list[str]:
    return [line[len("npmlp: note: "):] for line in r.stderr.splitlines() if line.startswith("npmlp: note: ")]


class StopAfter:
    """Stands in for cli.StopFlag: 'receives' SIGINT after `n` steps, so the checkpoint is made by the
    real interrupt path of cmd_train at an exact step (test_resume.py sends real signals)."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    @property
    def signum(self):
        self.calls += 1
        return signal.SIGINT if self.calls >= self.n else None


# ----------------------------------------------------------------------------- files

def snapshot(folder: Path) -> dict[str, str]:
    """name -> SHA-256 of every file under `folder` (hidden temp files included), to prove nothing changed."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def temp_files(folder: Path) -> list[Path]:
    """Leftovers of an atomic write (loading.atomic_open names them .NAME.XXXX.tmp)."""
    return sorted(Path(folder).rglob(".*.tmp")) if Path(folder).exists() else []


# ----------------------------------------------------------------------------- numbers

def rel(mine, ref) -> float:
    """max |mine - ref| / max |ref| (shapes must agree)."""
    mine, ref = np.asarray(mine, np.float64), np.asarray(ref, np.float64)
    assert mine.shape == ref.shape, (mine.shape, ref.shape)
    return float(np.abs(mine - ref).max(initial=0.0) / max(np.abs(ref).max(initial=0.0), 1e-300))


def check(name, mine, ref, rtol, scale=None, slack=0.0):
    """Assert |mine - ref| <= rtol * scale (default max|ref|) + slack everywhere (slack: a scalar or
    an array of ref's shape, what ill-conditioned entries may add, e.g. adamw_slack's); on failure
    print shape, max abs diff beyond the slack, relative error and the worst few mine-vs-ref values.
    Returns the relative error."""
    mine, ref = np.asarray(mine), np.asarray(ref)
    assert mine.shape == ref.shape, f"{name}: shape {mine.shape} != reference {ref.shape}"
    diff = np.abs(mine.astype(np.float64) - ref.astype(np.float64)) - slack
    maxdiff = float(diff.max(initial=0.0))
    scale = max(float(np.abs(ref).max(initial=0.0)) if scale is None else scale, 1e-300)
    r = maxdiff / scale
    if not r <= rtol:  # also catches NaN
        worst = np.argsort(diff.ravel())[-4:][::-1]
        pairs = ", ".join(f"{mine.ravel()[i]:.10g} vs {ref.ravel()[i]:.10g}" for i in worst)
        beyond = " beyond the slack" if np.any(slack) else ""
        pytest.fail(f"{name} {mine.shape} {mine.dtype}: maxdiff {maxdiff:.3e}{beyond}, rel {r:.3e} > {rtol:g} "
                    f"(scale {scale:.3e}, max|ref| {float(np.abs(ref).max(initial=0)):.3e}); "
                    f"mine vs ref (worst): {pairs}")
    return r


def adamw_slack(opt, rtol: float, floor: float = 0.01) -> dict:
    """{name: what the first step of AdamW `opt` (train.AdamW, after it) may move each entry beyond
    round-off} when two right backwards give gradients g (its m / (1 - beta1)) that differ by rtol x
    the larger of max|g| of that parameter and floor x the step's largest (the rule the gradient
    checks hold them to). The step moves a parameter by lr * g / (|g| + eps), whose slope
    eps / (|g| + eps)^2 peaks at 1 / eps where g is round-off: a gradient of a few eps (a cancelled
    sum) moves its parameter by up to lr * (its error) / eps."""
    assert opt.t == 1, opt.t
    grads = {k: m / (1 - opt.beta1) for k, m in opt.m.items()}
    G = max(float(np.abs(g).max(initial=0.0)) for g in grads.values())
    return {k: opt.lr * opt.eps * rtol * floored(grads, k, floor * G) / (np.abs(g) + opt.eps) ** 2
            for k, g in grads.items()}


def floored(arrays: dict, k: str, floor: float) -> float:
    """max|arrays[k]|, or floor if larger: the scale a gradient that cancelled is judged against."""
    return max(float(np.abs(arrays[k]).max(initial=0.0)), floor)


def magnitude_scales(model, cache, X, Y):
    """{name: largest magnitude summed into that gradient}: the backward run on absolute values,
    with tanh' taken as 1. Floating-point sums are accurate relative to the sum of |terms|, not to
    a result that cancelled. Two cancellations are inherent, in torch as in npmlp: a saturated tanh
    unit's 1 - h^2 keeps only ~eps/(1 - h^2) of relative accuracy, and a confident softmax's
    p - 1 is accurate to eps/B in absolute terms. So a gradient flowing through either is compared
    relative to these magnitudes (>= |gradient|), not to its own possibly tiny size."""
    P = {k: np.abs(v.astype(np.float64)) for k, v in model.params.items()}
    B, T = X.shape
    logits = cache.logits.astype(np.float64)                                   # (B, V)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)                                               # (B, V) softmax
    s = {"logits": p.copy()}
    s["logits"][np.arange(B), Y] += 1
    s["logits"] /= B                                                           # (B, V) (p + onehot) / B
    s["W2"] = np.abs(cache.h.astype(np.float64)).T @ s["logits"]               # (H, V)
    s["b2"] = s["logits"].sum(0)                                               # (V,)
    s["h"] = s["logits"] @ P["W2"].T                                           # (B, H)
    s["hpreact"] = s["h"]                                                      # (B, H) tanh' <= 1
    s["W1"] = np.abs(cache.embcat.astype(np.float64)).T @ s["hpreact"]         # (T*E, H)
    s["b1"] = s["hpreact"].sum(0)                                              # (H,)
    s["embcat"] = s["hpreact"] @ P["W1"].T                                     # (B, T*E)
    s["emb"] = s["embcat"].reshape(B, T, -1)                                   # (B, T, E)
    s["C"] = np.zeros(P["C"].shape)
    np.add.at(s["C"], np.asarray(X, np.int64).ravel(), s["emb"].reshape(B * T, -1))  # (V, E)
    return {k: float(v.max(initial=0.0)) for k, v in s.items()}
