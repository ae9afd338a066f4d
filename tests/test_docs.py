"""docs/commands.md, followed as a reader follows it: every `npmlp ...` line of its ```bash blocks
run in the page's order, in one folder, on the lecture's names.txt; where an output block (```text
or a plain ```) comes right after a bash block, what that block's last command printed is held to
it: the lines exactly, the numbers to the digits that hold on any CPU. The page's tables name every
command and every model the program has."""
from __future__ import annotations

import contextlib
import difflib
import io
import re
import shlex
from typing import NamedTuple

import pytest
from helpers import HAVE_TORCH, REPO

from npmlp.app import cli
from npmlp.app.registry import MODELS

PAGE = REPO / "docs" / "commands.md"
FENCE = re.compile(r"^```(\w*)\s*$")


class Block(NamedTuple):
    start: int      # the line of its opening fence (1-based)
    end: int        # the line of its closing fence
    lang: str       # 'bash', 'text', '' (a plain block)
    body: str


class Example(NamedTuple):
    line: int               # where the command is on the page
    command: str            # as on the page, without its comment
    output: str | None      # the block quoted right after its bash block, if it is the block's last command


def blocks(text: str) -> list[Block]:
    found, start, lang, body = [], None, "", []
    for i, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if start is None and m:
            start, lang, body = i, m.group(1), []
        elif start is not None and line.rstrip() == "```":
            found.append(Block(start, i, lang, "\n".join(body)))
            start = None
        elif start is not None:
            body.append(line)
    assert start is None, f"{PAGE.name}: the block opened at line {start} is never closed"
    return found


def quoted_after(text: str, bash: Block, following: Block | None) -> str | None:
    """The output block right after `bash` (nothing but blank lines between), or None."""
    if following is None or following.lang not in ("text", ""):
        return None
    between = text.splitlines()[bash.end:following.start - 1]
    return following.body if not any(line.strip() for line in between) else None


def examples(text: str) -> list[Example]:
    found = []
    page_blocks = blocks(text)
    for i, b in enumerate(page_blocks):
        if b.lang != "bash":
            continue
        lines = [(b.start + 1 + k, line) for k, line in enumerate(b.body.splitlines())
                 if line.strip().startswith("npmlp ")]
        output = quoted_after(text, b, page_blocks[i + 1] if i + 1 < len(page_blocks) else None)
        for k, (n, line) in enumerate(lines):
            command = shlex.join(shlex.split(line, comments=True))
            found.append(Example(n, command, output if k == len(lines) - 1 else None))
    return found


TEXT = PAGE.read_text()
EXAMPLES = examples(TEXT)
QUOTED = [e for e in EXAMPLES if e.output is not None]


# ----------------------------------------------------------------------------- how the test runs them

# What the test runs differently from the page, and why; each key is a command on the page (a rule
# for a command the page no longer has fails test_the_page_has_examples_and_every_rule_names_one_of_them).
SHORTER = {
    "npmlp train --out runs/mlp": (
        ("--steps", "300"),
        "the lecture's 200,000 steps alone would take much of the suite's budget; 300 steps make a run "
        "that the later commands (gradcheck --run, plot, sample) read the same way"),
    "npmlp train --model transformer --out runs/transformer": (
        ("--steps", "20", "--eval-every", "10", "--n-layers", "1", "--n-embd", "16"),
        "20,000 steps of the four-layer Transformer are far beyond the suite's budget; a one-layer "
        "Transformer trained by the same recipe for 20 steps keeps a best.npz and exports and imports "
        "like the full one, which is what the page's later commands need"),
}
TORCH = {"npmlp export-makemore", "npmlp import-makemore"}   # they need torch (they say so, exit 1, without it)


class Rule(NamedTuple):
    why: str                          # what varies, and why
    slack: float = 0                  # a number may differ by this many units of its last printed digit,
    rel: float = 0.0                  # or by this fraction of its value
    ignore: str | None = None         # a regex of what varies entirely (a time): matches compare equal
    columns: tuple[str, ...] = ()     # gradcheck: the table's columns that vary (their cells need only be numbers)


# How each quoted output is compared where it may differ from the page; everything else is exact.
RULES = {
    "npmlp train --model bigram --out runs/bigram": Rule(
        "the training time varies; the losses are float32 sums over the whole split, whose order "
        "BLAS chooses per CPU", slack=1, ignore=r"in \d+(?:\.\d+)?s\)"),
    "npmlp eval runs/bigram": Rule("float32 sums over the whole split, in an order BLAS chooses per CPU", slack=1),
    "npmlp gradcheck": Rule(
        "max|mine-torch| and the finite differences' error are round-off, which the BLAS build and the CPU "
        "set; the verdicts, shapes, norms and the loss (float64) hold", columns=("max|mine-torch|", "fd rel err")),
    "npmlp lr-find --out runs/lr": Rule(
        "1,000 float32 training steps: the smoothed minimum may move by a point or two of the sweep's grid "
        "on another CPU", slack=2, rel=0.02),
}


class Printed(NamedTuple):
    code: int
    out: str
    err: str


def run(argv: list[str]) -> Printed:
    """`npmlp ARGV` in this process, its stdout and stderr captured (progress bars included)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as e:                     # --help, --version, argparse's errors
            code = e.code
    return Printed(code, out.getvalue(), err.getvalue())


def argv_of(e: Example) -> list[str]:
    extra, _why = SHORTER.get(e.command, ((), ""))
    return [*shlex.split(e.command)[1:], *extra]


def needs_torch(e: Example) -> bool:
    return any(e.command.startswith(c) for c in TORCH)


@pytest.fixture(scope="module")
def reader(names_path, tmp_path_factory) -> dict[int, Printed | None]:
    """Every example of the page run in order in one fresh folder, as a reader runs them: what each
    printed, by its line on the page (None: not run, for want of torch)."""
    folder = tmp_path_factory.mktemp("reader")
    printed: dict[int, Printed | None] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("NPMLP_DATA", str(names_path))
        mp.setenv("XDG_CACHE_HOME", str(folder / "cache"))     # the names fill this cache, not the user's
        for e in EXAMPLES:
            printed[e.line] = None if needs_torch(e) and not HAVE_TORCH else run(argv_of(e))
        printed[0] = run(["sample", "runs/bigram", "-n", "5"])  # for the claim about the seed
    return printed


# ----------------------------------------------------------------------------- comparing

NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:e[+-]?\d+)?")


def unit(number: str) -> float:
    """One unit of the last printed digit: '2.4735' -> 1e-4, '9.37e-17' -> 1e-19, '182,625' -> 1."""
    mantissa, _, exponent = number.partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def same_line(want: str, got: str, rule: Rule) -> bool:
    if rule.ignore:
        want, got = (re.sub(rule.ignore, "<varies>", s) for s in (want, got))
    if NUMBER.split(want) != NUMBER.split(got):      # the words and the layout between the numbers
        return False
    for a, b in zip(NUMBER.findall(want), NUMBER.findall(got), strict=True):
        x, y = float(a.replace(",", "")), float(b.replace(",", ""))
        if a != b and abs(x - y) > max(rule.slack * unit(a), rule.rel * abs(x)):
            return False
    return True


def mask_columns(lines: list[str], columns: tuple[str, ...]) -> list[str]:
    """A gradcheck table's cells in `columns` replaced by '~' (each checked to be a number first; a
    cell that is not stays, and fails the comparison)."""
    if not columns:
        return lines
    at = next((k for k, line in enumerate(lines) if line.split()[:1] == ["tensor"]), None)
    assert at is not None and at + 1 < len(lines), "no gradcheck table (a 'tensor ...' header) in:\n" + "\n".join(lines)
    spans, x = [], 0
    for dashes in lines[at + 1].split("  "):
        spans.append((x, x + len(dashes)))
        x += len(dashes) + 2
    head = [lines[at][a:b].strip() for a, b in spans]
    cut = [spans[head.index(c)] for c in columns]
    out = list(lines)
    for k in range(at + 2, len(lines)):
        if lines[k].startswith("-"):
            break
        for a, b in cut:
            if NUMBER.fullmatch(lines[k][a:b].strip()):
                out[k] = out[k][:a] + "~" * (b - a) + out[k][b:]
    return out


def differences(quoted: str, printed: Printed, rule: Rule) -> list[str]:
    """Where `printed` differs from the page's `quoted` output: its stdout against the quoted lines,
    its `npmlp: ` lines on stderr (notes, reports; not the progress bar) against the quoted lines
    that start so (a terminal interleaves the two)."""
    lines = [line.rstrip() for line in quoted.splitlines()]
    pairs = []
    for stream, got in (("stdout", printed.out.splitlines()),
                        ("stderr", [s for s in re.split(r"[\r\n]", printed.err) if s.startswith("npmlp: ")])):
        want = [line for line in lines if line.startswith("npmlp: ") == (stream == "stderr")]
        got = [line.rstrip() for line in got]
        if len(want) != len(got):
            return [f"{stream}: the page quotes {len(want)} lines, the command printed {len(got)} (- page, + printed):",
                    *difflib.unified_diff(want, got, "page", "printed", n=1, lineterm="")]
        pairs += zip(mask_columns(want, rule.columns if stream == "stdout" else ()),
                     mask_columns(got, rule.columns if stream == "stdout" else ()), strict=True)
    return [f"page: {w}\ngot:  {g}" for w, g in pairs if not same_line(w, g, rule)]


# ----------------------------------------------------------------------------- the tests

def test_the_page_has_examples_and_every_rule_names_one_of_them():
    commands = {e.command for e in EXAMPLES}
    assert len(EXAMPLES) >= 10 and len(QUOTED) >= 4, EXAMPLES
    stale = sorted(set(SHORTER) - commands) + sorted(set(RULES) - {e.command for e in QUOTED})
    assert not stale, f"rules for commands {PAGE.name} no longer has (or no longer quotes): {stale}"


def test_every_output_block_follows_a_command():
    """An output the test cannot attribute to a command would go unchecked: none may stand alone."""
    page_blocks = blocks(TEXT)
    quoted = {page_blocks[i + 1].start for i, b in enumerate(page_blocks[:-1])
              if b.lang == "bash" and quoted_after(TEXT, b, page_blocks[i + 1]) is not None}
    alone = [b.start for b in page_blocks if b.lang in ("text", "") and b.start not in quoted]
    assert not alone, f"{PAGE.name}: output blocks at lines {alone} follow no ```bash block directly"
    unknown = sorted({b.lang for b in page_blocks} - {"bash", "text", ""})
    assert not unknown, f"{PAGE.name}: blocks of {unknown}: use ```bash for commands, ```text for output"


def table_rows(title: str) -> list[str]:
    """The first cells of the markdown table under the heading `title` (up to the next heading)."""
    assert not title or f"\n{title}\n" in TEXT, f"{PAGE.name} has no section {title!r}"
    section = TEXT.split(f"\n{title}\n", 1)[1].split("\n#", 1)[0] if title else TEXT.split("\n## ", 1)[0]
    return [line.split("|")[1] for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]


def test_the_command_table_names_every_command_and_the_train_row_every_model():
    subcommands = next(a for a in cli.build_parser()._actions if a.dest == "command").choices
    rows = {re.match(r" `npmlp ([\w-]+)", cell).group(1) for cell in table_rows("") if "`npmlp " in cell}
    assert rows == set(subcommands), f"the command table lists {sorted(rows)}, npmlp has {sorted(subcommands)}"
    train = next(line for line in TEXT.splitlines() if line.startswith("| `npmlp train`"))
    missing = [k for k in MODELS if f"`{k}`" not in train]
    assert not missing, f"the command table's train row lacks the models {missing}"


def test_the_model_table_names_every_model():
    named = [k for cell in table_rows("## The models") for k in re.findall(r"`([\w-]+)`", cell)]
    assert sorted(named) == sorted(MODELS), f"the model table lists {named}, npmlp has {list(MODELS)}"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.command)
def test_every_example_runs(example, reader):
    if reader[example.line] is None:
        pytest.skip(f"{example.command} needs torch, which is not installed")
    r = reader[example.line]
    why = SHORTER.get(example.command, ((), ""))[1]
    assert r.code == 0 and "Traceback" not in r.err, (
        f"{PAGE.name}:{example.line}: `{shlex.join(['npmlp', *argv_of(example)])}` exited {r.code}"
        + (f" (run shorter: {why})" if why else "") + f"\nstdout:\n{r.out[-2000:]}\nstderr:\n{r.err[-2000:]}")


@pytest.mark.parametrize("example", QUOTED, ids=lambda e: e.command)
def test_what_the_page_quotes_is_what_the_command_prints(example, reader):
    assert example.command not in SHORTER, f"{example.command}: its output is quoted, so it must run as written"
    if reader[example.line] is None:
        pytest.skip(f"{example.command} needs torch, which is not installed")
    if example.command.startswith("npmlp gradcheck") and not HAVE_TORCH:
        pytest.skip("without torch the torch column says '-': the page quotes the table with torch")
    rule = RULES.get(example.command, Rule("exact"))
    problems = differences(example.output, reader[example.line], rule)
    assert not problems, (f"{PAGE.name}:{example.line}: `{example.command}` prints other than the page quotes "
                          f"(what may vary: {rule.why}):\n" + "\n".join(problems))


def test_sample_without_a_seed_repeats_the_first_names_train_printed(reader):
    """The page: without --seed, sample prints the names `npmlp train` printed; -n 5 the first five."""
    train = next(reader[e.line] for e in EXAMPLES if e.command == "npmlp train --model bigram --out runs/bigram")
    printed = train.out.split("samples:")[1].split("wrote:")[0].split()
    assert reader[0].code == 0 and reader[0].out.split() == printed[:5], (reader[0].out, printed)


def test_a_broken_tanh_backward_fails_where_the_page_says(monkeypatch, names_path, tmp_path):
    """The page: tanh_backward 1% too large leaves dlogits, dh, dW2, db2 passing; every row from
    dhpreact on fails torch and fd; the fast column from dW1 on; the error points at dhpreact."""
    from npmlp import gradcheck, mlp
    if not HAVE_TORCH:
        pytest.skip("the page's claim is about the torch column too")
    good = mlp.tanh_backward
    monkeypatch.setattr(mlp, "tanh_backward", lambda *a, **k: good(*a, **k) * 1.01)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    r = run(["gradcheck", "--data", str(names_path)])
    rows = gradcheck.parse_table(r.out)
    fails = {name: (row["torch"], row["fd"].split()[0], row["fast"]) for name, row in rows.items()}
    assert r.code == 1 and list(fails) == ["logits", "h", "hpreact", "embcat", "emb", "W2", "b2", "W1", "b1", "C"]
    for name in ("logits", "h", "W2", "b2"):
        assert "FAIL" not in fails[name], (name, fails[name])
    for name in ("hpreact", "embcat", "emb", "W1", "b1", "C"):
        assert fails[name][:2] == ("FAIL", "FAIL"), (name, fails[name])
    assert [n for n, f in fails.items() if f[2] == "FAIL"] == ["W1", "b1", "C"], fails
    assert "look first at dhpreact, the first to fail in backward order" in r.err, r.err


def test_the_page_names_no_local_path(names_path):
    """The examples run on the real names through NPMLP_DATA; the page never says where they are."""
    assert str(names_path) not in TEXT and str(names_path.parent) not in TEXT
