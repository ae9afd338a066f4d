"""Every command against every kind of hostile input (issue 17), as one table: an unwritable
output, a damaged side file, extreme sizes, a closed stdout, bad values in a checkpoint, options
the model lacks. Each case ends in one `npmlp: error: ...` line with its exit code (2 usage, 1
runtime) and nothing else on stderr, or in the behaviour docs/troubleshooting.md documents;
never a traceback. A pair that does not apply says why in NOT_APPLICABLE, and a test holds the
table to the CLI's commands, so a new command cannot slip past it.

Simulated here, because the tests may run as root (whom no permission stops):
  - an unwritable folder: /proc (a directory no one can create files in, even root; Linux), and
    read_only(), which makes every file or folder creation under one folder fail with EROFS;
  - a small machine: options.machine_memory patched to 8 MiB, for runs whose sizes are legal;
  - a closed stdout: a real pipe whose reading end is closed before npmlp writes (`| head -0`).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from helpers import TINY_RUN, StopAfter, assert_png, assert_user_error, names_file, run_main, snapshot

from npmlp.app import cli, diagnose, options

UNWRITABLE, SIDE_FILE, EXTREME, CLOSED_STDOUT, BAD_VALUES, LACKS = KINDS = (
    "unwritable output", "damaged side file", "extreme sizes", "closed stdout", "bad values in a checkpoint",
    "options the model lacks")
COMMANDS = ("train", "train --resume", "gradcheck", "gradcheck --run", "lr-find", "sample", "eval", "plot",
            "diagnose", "import-makemore", "export-makemore")
PROC = Path("/proc")
needs_proc = pytest.mark.skipif(not PROC.is_dir(), reason="/proc (the unwritable folder) is Linux's")
SMALL = ("--n-embd", "2", "--n-hidden", "8")
HUGE = ("--model", "deep", "--n-layers", "100000", "--n-hidden", "1000")   # ~10^11 parameters: on any machine


class Result(NamedTuple):      # what assert_user_error reads
    returncode: int
    stdout: str
    stderr: str


# ----------------------------------------------------------------------------- runs to be hostile to

@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return names_file(tmp_path_factory.mktemp("data"), 300, seed=5)


@pytest.fixture(scope="module")
def runs(names, tmp_path_factory):
    """Two bn runs (the model with a calibrated variance) trained with --diagnose: 'finished' (300
    steps) and 'stopped' (Ctrl-C after 150 of 300, resumable). Cases copy them before changing them."""
    base = tmp_path_factory.mktemp("runs")
    argv = ["train", "--data", str(names), "--model", "bn", "--steps", "300", "--diagnose", *SMALL, "--quiet"]
    assert cli.main([*argv, "--out", str(base / "finished")]) == 0
    mp = pytest.MonkeyPatch()
    mp.setattr(cli, "StopFlag", lambda: StopAfter(150))
    try:
        assert cli.main([*argv, "--out", str(base / "stopped")]) == 130
    finally:
        mp.undo()
    return {"finished": base / "finished", "stopped": base / "stopped"}


class Hostile:
    """What a case needs: the runs, a scratch folder, and the two ways to run npmlp."""

    def __init__(self, names, runs, tmp, monkeypatch, capsys):
        self.names, self.runs, self.tmp, self.mp, self.capsys = names, runs, tmp, monkeypatch, capsys

    def main(self, *argv) -> Result:
        """In-process (cli.main), so monkeypatches apply."""
        return Result(*run_main(self.capsys, *argv))

    def closed_stdout(self, *argv) -> Result:
        """A real process whose stdout is a pipe closed before it writes a byte (`npmlp ... | head -0`)."""
        env = {k: v for k, v in os.environ.items() if k != "NPMLP_DATA"}
        p = subprocess.Popen([sys.executable, "-m", "npmlp", *map(str, argv)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=self.tmp)
        p.stdout.close()
        err = p.stderr.read()
        return Result(p.wait(timeout=300), "", err)

    def copy(self, run: str) -> Path:
        dst = self.tmp / f"copy-{run}"
        shutil.copytree(self.runs[run], dst)
        return dst

    def arrays(self, run: Path, change) -> Path:
        """Rewrite run/model.npz with change(arrays, meta) applied (the file otherwise intact)."""
        with np.load(run / "model.npz") as z:
            a = {k: z[k] for k in z.files}
        meta = json.loads(str(a["meta"]))
        change(a, meta)
        a["meta"] = np.array(json.dumps(meta))
        np.savez(run / "model.npz", **a)
        return run

    def small_machine(self):
        """This machine as one with 8 MiB of memory: a tiny run's sizes become too large."""
        self.mp.setattr(options, "machine_memory", lambda: 8 * 2**20)

    def read_only(self, folder: Path):
        """Every file or folder creation under `folder` fails as on a read-only file system."""
        folder = Path(folder).resolve()
        real_mkstemp, real_mkdir = tempfile.mkstemp, os.mkdir

        def inside(p):
            return p is not None and (Path(p).resolve() == folder or folder in Path(p).resolve().parents)

        def mkstemp(*a, dir=None, **k):
            if inside(dir):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            return real_mkstemp(*a, dir=dir, **k)

        def mkdir(path, *a, **k):
            if inside(os.path.dirname(os.path.abspath(path))):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            return real_mkdir(path, *a, **k)
        self.mp.setattr(tempfile, "mkstemp", mkstemp)
        self.mp.setattr(os, "mkdir", mkdir)


@pytest.fixture
def h(names, runs, tmp_path, monkeypatch, capsys):
    return Hostile(names, runs, tmp_path, monkeypatch, capsys)


def documented(r: Result, code: int = 0):
    """A documented behaviour: exit `code`, no traceback, nothing on stderr but `npmlp:` lines."""
    assert r.returncode == code, f"exit {r.returncode}, expected {code}\nstderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    stray = [line for line in r.stderr.splitlines() if not line.startswith("npmlp: ")]
    assert not stray, f"stray stderr lines: {stray}"


def figures(folder: Path, *names: str):
    for name in names:
        assert_png(folder / name)


# ----------------------------------------------------------------------------- the table

CASES: dict = {}


def case(command: str, kind: str):
    def register(fn):
        CASES[command, kind] = fn
        return fn
    return register


NOT_APPLICABLE = {
    ("gradcheck", UNWRITABLE): "writes no file",
    ("gradcheck --run", UNWRITABLE): "writes no file",
    ("sample", UNWRITABLE): "writes no file",
    ("eval", UNWRITABLE): "writes no file",
    ("gradcheck", SIDE_FILE): "reads no run",
    ("lr-find", SIDE_FILE): "reads no run",
    ("train", BAD_VALUES): "reads no checkpoint (an --out holding one is refused unread: test_options.py)",
    ("gradcheck", BAD_VALUES): "reads no checkpoint",
    ("lr-find", BAD_VALUES): "reads no checkpoint",
    ("export-makemore", EXTREME): "takes no size: it writes the run's model as it is",
}


def test_the_table_covers_every_command_and_every_kind():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(COMMANDS) == {*sub.choices, "train --resume", "gradcheck --run"}, "a command without hostile cases"
    for command in COMMANDS:
        for kind in KINDS:
            assert ((command, kind) in CASES) != ((command, kind) in NOT_APPLICABLE), (command, kind)


# ----------------------------------------------------------------------------- an unwritable output

@needs_proc
@case("train", UNWRITABLE)
def _(h):
    r = h.main("train", "--data", h.names, "--steps", "10", "--out", PROC, *TINY_RUN)
    assert_user_error(r, 2, "cannot write in /proc", "choose another --out")
    r = h.main("train", "--data", h.names, "--steps", "10", "--out", PROC / "npmlp-run", *TINY_RUN)
    assert_user_error(r, 2, "cannot create the folder /proc/npmlp-run", "choose another --out")


@case("train --resume", UNWRITABLE)
def _(h):
    """A read-only run folder: a finished run says it is finished (not 'choose another --out');
    an unfinished one says how to resume it (never 'choose another --out', which --resume refuses)."""
    finished, stopped = h.copy("finished"), h.copy("stopped")
    h.read_only(h.tmp)
    r = h.main("train", "--resume", finished, "--quiet")
    assert_user_error(r, 2, "finished all 300 steps already", "nothing to resume")
    before = snapshot(stopped)
    r = h.main("train", "--resume", stopped, "--quiet")
    line = assert_user_error(r, 2, f"cannot write in {stopped}", "make", "writable", "resume the copy")
    assert "--out" not in line
    assert snapshot(stopped) == before
    r = h.main("train", "--resume", stopped, "--quiet", "--out", h.tmp / "elsewhere")
    assert_user_error(r, 2, "drop --out")


@needs_proc
@case("lr-find", UNWRITABLE)
def _(h):
    r = h.main("lr-find", "--data", h.names, "--steps", "20", "--out", PROC, *TINY_RUN)
    assert_user_error(r, 2, "cannot write in /proc", "choose another --out")


@needs_proc
@case("plot", UNWRITABLE)
def _(h):
    r = h.main("plot", h.runs["finished"], "--out", PROC, "--quiet")
    assert_user_error(r, 2, "cannot write in /proc", "choose another --out")
    run = h.copy("finished")
    h.read_only(run)                              # no --out: the figures go into the run folder
    before = snapshot(run)
    r = h.main("plot", run, "--quiet")
    assert_user_error(r, 2, f"cannot write in {run}", "give --out DIR")
    assert snapshot(run) == before


@needs_proc
@case("diagnose", UNWRITABLE)
def _(h):
    r = h.main("diagnose", h.runs["finished"], "--out", PROC, "--quiet")
    assert_user_error(r, 2, "cannot write in /proc", "choose another --out")
    assert r.stdout == "", "the tables were printed before the refusal"
    r = h.main("diagnose", h.runs["finished"], "--out", h.names, "--quiet")     # a file in the way
    assert_user_error(r, 2, "cannot create the folder", "choose another --out")
    assert r.stdout == ""


# ----------------------------------------------------------------------------- a damaged side file

def damage(run: Path) -> Path:
    """update_ratio.npz cut in half: every reader must see it, none may drop its samples silently."""
    path = run / diagnose.RATIOS
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


@case("train", SIDE_FILE)
def _(h):
    """A new run into a folder that holds another run's update_ratio.npz (and no model.npz)."""
    out = h.tmp / "out"
    out.mkdir()
    shutil.copy(h.runs["finished"] / diagnose.RATIOS, out)
    damage(out)
    before = snapshot(out)
    r = h.main("train", "--data", h.names, "--steps", "10", "--out", out, *TINY_RUN)
    assert_user_error(r, 2, str(out), "update_ratio.npz of another run", "no checkpoint to resume",
                      "choose another --out")
    assert snapshot(out) == before


@case("train --resume", SIDE_FILE)
def _(h):
    run = h.copy("stopped")
    path = damage(run)
    before = snapshot(run)
    r = h.main("train", "--resume", run, "--quiet")
    assert_user_error(r, 1, str(path), "corrupt or truncated", "restore it from a copy")
    assert snapshot(run) == before, "the run was touched"


@case("diagnose", SIDE_FILE)
def _(h):
    run = h.copy("finished")
    path = damage(run)
    r = h.main("diagnose", run, "--quiet", "--out", h.tmp / "figures")
    assert_user_error(r, 1, str(path), "corrupt or truncated")
    assert not (h.tmp / "figures").exists()


def ignores_the_side_file(h, *argv):
    """A command that does not read update_ratio.npz works as usual and leaves it as it was."""
    run = h.copy("finished")
    damage(run)
    before = snapshot(run)
    r = h.main(*[run if a == "RUN" else a for a in argv])
    documented(r)
    assert snapshot(run) == before
    return r


@case("gradcheck --run", SIDE_FILE)
def _(h):
    assert "gradients pass" in ignores_the_side_file(h, "gradcheck", "--run", "RUN", "--quiet").stdout


@case("sample", SIDE_FILE)
def _(h):
    assert len(ignores_the_side_file(h, "sample", "RUN", "-n", "5").stdout.splitlines()) == 5


@case("eval", SIDE_FILE)
def _(h):
    assert "dev loss" in ignores_the_side_file(h, "eval", "RUN", "--quiet").stdout


@case("plot", SIDE_FILE)
def _(h):
    ignores_the_side_file(h, "plot", "RUN", "--quiet", "--out", h.tmp / "figures")
    figures(h.tmp / "figures", "loss.png", "embedding.png", "gradients.png")


# ----------------------------------------------------------------------------- extreme sizes

@case("train", EXTREME)
def _(h):
    """Refused from the names' row count before build_dataset runs (it used to build 17 GiB of
    rows for a minute, then fail), naming the options that make it large."""
    out = h.tmp / "run"
    r = h.main("train", "--data", h.names, "--block-size", "100000", "--n-embd", "1000", "--out", out, "--quiet")
    assert_user_error(r, 2, "not enough memory", "--block-size 100000 --n-embd 1000", "GiB")
    r = h.main("train", "--data", h.names, "--model", "deep", "--n-layers", "30000", "--steps", "10", "--out", out,
               "--quiet")
    line = assert_user_error(r, 2, "not enough memory: --model deep --n-layers 30000 needs", "use a smaller --n-layers")
    assert "--n-embd" not in line and "--steps" not in line, "named options the user did not make large"
    assert not out.exists()


@case("train --resume", EXTREME)
def _(h):
    h.small_machine()
    run = h.copy("stopped")
    r = h.main("train", "--resume", run, "--quiet")
    assert_user_error(r, 2, "not enough memory", f"the run in {run}", "n_hidden 8", "more memory")


@case("gradcheck", EXTREME)
def _(h):
    r = h.main("gradcheck", "--data", h.names, *HUGE, "--quiet")
    assert_user_error(r, 2, "not enough memory: --model deep --n-hidden 1000 --n-layers 100000 need")


@case("gradcheck --run", EXTREME)
def _(h):
    h.small_machine()
    r = h.main("gradcheck", "--run", h.runs["finished"], "--quiet")
    assert_user_error(r, 2, "not enough memory", f"the run in {h.runs['finished'] / 'model.npz'}")


@case("lr-find", EXTREME)
def _(h):
    out = h.tmp / "sweep"
    r = h.main("lr-find", "--data", h.names, *HUGE, "--out", out, "--quiet")
    assert_user_error(r, 2, "not enough memory", "--n-layers 100000")
    assert not out.exists(), "a refused sweep left its folder behind"


@case("sample", EXTREME)
def _(h):
    """-n 10^23: names are printed as they are drawn, in constant memory; the reader that had
    enough ends it (exit 0)."""
    r = h.closed_stdout("sample", h.runs["finished"], "-n", str(10**23))
    documented(r)


@case("eval", EXTREME)
def _(h):
    h.small_machine()
    r = h.main("eval", h.runs["finished"], "--quiet")
    assert_user_error(r, 2, "not enough memory", "the run in")


@case("plot", EXTREME)
def _(h):
    h.small_machine()
    r = h.main("plot", h.runs["finished"], "--quiet", "--out", h.tmp / "figures")
    assert_user_error(r, 2, "not enough memory", "the run in")
    assert not (h.tmp / "figures").exists()


@case("diagnose", EXTREME)
def _(h):
    h.small_machine()
    r = h.main("diagnose", h.runs["finished"], "--quiet", "--out", h.tmp / "figures")
    assert_user_error(r, 2, "not enough memory", "the run in")
    assert r.stdout == "" and not (h.tmp / "figures").exists()


# ----------------------------------------------------------------------------- a closed stdout

# The reader is gone (`npmlp ... | head -0`): npmlp drops the rest of its output, still writes
# every file, and exits as it would have; no traceback, no "Exception ignored" at exit.

@case("train", CLOSED_STDOUT)
def _(h):
    out = h.tmp / "run"
    documented(h.closed_stdout("train", "--data", h.names, "--steps", "50", "--out", out, *TINY_RUN))
    assert (out / "model.npz").is_file() and (out / "metrics.json").is_file()
    figures(out, "loss.png", "embedding.png")


@case("train --resume", CLOSED_STDOUT)
def _(h):
    run = h.copy("stopped")
    documented(h.closed_stdout("train", "--resume", run, "--quiet"))
    assert json.loads((run / "metrics.json").read_text())["steps"] == 300
    figures(run, "loss.png", "update_ratio.png")


@case("gradcheck", CLOSED_STDOUT)
def _(h):
    documented(h.closed_stdout("gradcheck", "--data", h.names, *SMALL, "--quiet"))


@case("gradcheck --run", CLOSED_STDOUT)
def _(h):
    documented(h.closed_stdout("gradcheck", "--run", h.runs["finished"], "--quiet"))


@case("lr-find", CLOSED_STDOUT)
def _(h):
    out = h.tmp / "sweep"
    documented(h.closed_stdout("lr-find", "--data", h.names, "--steps", "40", "--out", out, *TINY_RUN))
    figures(out, "lr_find.png")


@case("sample", CLOSED_STDOUT)
def _(h):
    documented(h.closed_stdout("sample", h.runs["finished"], "-n", "100000"))


@case("eval", CLOSED_STDOUT)
def _(h):
    documented(h.closed_stdout("eval", h.runs["finished"], "--quiet"))


@case("plot", CLOSED_STDOUT)
def _(h):
    documented(h.closed_stdout("plot", h.runs["finished"], "--quiet", "--out", h.tmp / "figures"))
    figures(h.tmp / "figures", "loss.png", "embedding.png", "gradients.png")


@case("diagnose", CLOSED_STDOUT)
def _(h):
    documented(h.closed_stdout("diagnose", h.runs["finished"], "--quiet", "--out", h.tmp / "figures"))
    figures(h.tmp / "figures", "activations.png", "activation_grads.png", "weight_grads.png", "update_ratio.png")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="/dev/full (a disk that is always full) is Linux's")
@pytest.mark.parametrize("stdout", [">&-", "> /dev/full"], ids=["closed from the start", "full"])
@pytest.mark.parametrize("command", ["sample", "diagnose"])
def test_a_stdout_closed_from_the_start_or_full(h, command, stdout):
    """`>&-`: Python has no sys.stdout at all; like a reader that went away, the output is dropped
    (exit 0). `> /dev/full`: the lines are lost for real, so after writing the files: one line, exit 1."""
    import shlex
    out = h.tmp / "figures"
    argv = [sys.executable, "-m", "npmlp", command, str(h.runs["finished"])] + (
        ["-n", "100000"] if command == "sample" else ["--quiet", "--out", str(out)] if command == "diagnose" else [])
    r = subprocess.run(["sh", "-c", f"exec {shlex.join(argv)} {stdout}"], capture_output=True, text=True, timeout=300)
    r = Result(r.returncode, r.stdout, r.stderr)
    if stdout == ">&-":
        documented(r)
    else:
        assert_user_error(r, 1, "cannot write to stdout: No space left on device", "the printed lines are lost")
    if command == "diagnose":
        figures(out, "activations.png", "update_ratio.png")


# ----------------------------------------------------------------------------- bad values in a checkpoint

def negative_variance(a, meta):
    a["bnvar"] = a["bnvar"].copy()
    a["bnvar"][3] = -0.5


def step_past_the_end(a, meta):
    meta["step"] = 10**9


def refused(h, run, *argv, needles):
    before = snapshot(run)
    r = h.main(*[run if x == "RUN" else x for x in argv])
    assert_user_error(r, 1, str(run / "model.npz"), *needles)
    assert snapshot(run) == before
    return r


VARIANCE = ["bnvar holds negative values", "a variance cannot be negative", "damaged"]
STEP = ["at step 1,000,000,000 of a 300-step run", "damaged"]


@case("train --resume", BAD_VALUES)
def _(h):
    refused(h, h.arrays(h.copy("stopped"), negative_variance), "train", "--resume", "RUN", "--quiet",
            needles=VARIANCE)


@case("gradcheck --run", BAD_VALUES)
def _(h):
    refused(h, h.arrays(h.copy("finished"), step_past_the_end), "gradcheck", "--run", "RUN", "--quiet", needles=STEP)


@case("sample", BAD_VALUES)
def _(h):
    r = refused(h, h.arrays(h.copy("finished"), negative_variance), "sample", "RUN", needles=VARIANCE)
    assert r.stdout == "", "sampled from a damaged model"


@case("eval", BAD_VALUES)
def _(h):
    r = refused(h, h.arrays(h.copy("finished"), negative_variance), "eval", "RUN", "--quiet", needles=VARIANCE)
    assert "nan" not in r.stdout


@case("plot", BAD_VALUES)
def _(h):
    refused(h, h.arrays(h.copy("finished"), step_past_the_end), "plot", "RUN", "--quiet", needles=STEP)


@case("diagnose", BAD_VALUES)
def _(h):
    refused(h, h.arrays(h.copy("finished"), step_past_the_end), "diagnose", "RUN", "--quiet", needles=STEP)


def test_a_tampered_layer_count_is_refused_before_its_shapes_are_listed(h):
    """meta n_layers 10^9 in a deep run's checkpoint: listing 10^9 layers' shapes hung for minutes
    (then ran out of memory); no size can exceed the file's own elements, so it is refused at once."""
    run = h.tmp / "deep"
    assert h.main("train", "--data", h.names, "--model", "deep", "--n-layers", "2", "--steps", "20", "--no-plots",
                  "--out", run, *TINY_RUN).returncode == 0
    h.arrays(run, lambda a, meta: meta["sizes"].update(n_layers=10**9))
    for argv in (["eval", run, "--quiet"], ["sample", run], ["train", "--resume", run, "--quiet"]):
        assert_user_error(h.main(*argv), 1, "missing or malformed metadata")


def test_a_side_file_that_is_a_folder_or_a_lock_full_of_garbage(h):
    run = h.copy("stopped")
    (run / diagnose.RATIOS).unlink()
    (run / diagnose.RATIOS).mkdir()
    assert_user_error(h.main("diagnose", run, "--quiet"), 1, "is a directory, not an update:data ratios file")
    (run / diagnose.RATIOS).rmdir()
    (run / ".npmlp.lock").write_bytes(b"x\ny\x1b[31mred\n")      # a killed run's lock, overwritten with junk
    r = h.main("train", "--resume", run, "--quiet", "--no-plots")
    documented(r)
    assert f"npmlp: note: {run} was still marked as in use by pid unknown" in r.stderr


# ----------------------------------------------------------------------------- options the model lacks

@case("train", LACKS)
def _(h):
    out = h.tmp / "run"
    r = h.main("train", "--data", h.names, "--model", "bn", "--n-layers", "3", "--out", out, *TINY_RUN)
    assert_user_error(r, 2, "--n-layers applies to the deep and transformer models only")
    r = h.main("train", "--data", h.names, "--model", "bn", "--batch-size", "1", "--steps", "5", "--out", out,
               *TINY_RUN)
    assert_user_error(r, 2, "--batch-size 1", "at least 2")
    assert not out.exists()


@case("train --resume", LACKS)
def _(h):
    run = h.copy("stopped")
    before = snapshot(run)
    r = h.main("train", "--resume", run, "--n-layers", "3", "--quiet")      # was ignored without a word
    assert_user_error(r, 2, "--n-layers applies to the deep and transformer models only", f"{run} holds a bn model",
                      "drop --n-layers")
    r = h.main("train", "--resume", run, "--no-batchnorm", "--quiet")
    assert_user_error(r, 2, "--no-batchnorm applies to the deep model only", "drop --no-batchnorm")
    assert snapshot(run) == before
    deep = h.tmp / "deep"                          # a deep run with BatchNorm: it said "drop --batchnorm"
    h.mp.setattr(cli, "StopFlag", lambda: StopAfter(10))
    assert h.main("train", "--data", h.names, "--model", "deep", "--n-layers", "2", "--steps", "30", "--no-plots",
                  "--out", deep, *TINY_RUN).returncode == 130
    r = h.main("train", "--resume", deep, "--no-batchnorm", "--quiet")
    assert_user_error(r, 2, "--no-batchnorm differs from the run's BatchNorm", "drop --no-batchnorm,")


@case("gradcheck", LACKS)
def _(h):
    r = h.main("gradcheck", "--data", h.names, "--model", "bn", "--batch-size", "1", *SMALL, "--quiet")
    assert_user_error(r, 2, "--batch-size 1", "at least 2")       # was a ZeroDivisionError traceback
    r = h.main("gradcheck", "--data", h.names, "--model", "bn", "--init", "kaiming", "--quiet")
    assert_user_error(r, 2, "drop --init")


@case("gradcheck --run", LACKS)
def _(h):
    r = h.main("gradcheck", "--run", h.runs["finished"], "--n-layers", "2", "--quiet")
    assert_user_error(r, 2, "--n-layers sets a fresh model", "drop it")
    r = h.main("gradcheck", "--run", h.runs["finished"], "--split-seed", "7", "--quiet")   # was silently ignored
    assert_user_error(r, 2, "--split-seed sets a fresh model", "drop it")


@case("lr-find", LACKS)
def _(h):
    out = h.tmp / "sweep"
    r = h.main("lr-find", "--data", h.names, "--model", "bn", "--batch-size", "1", "--out", out, *TINY_RUN)
    assert_user_error(r, 2, "--batch-size 1", "at least 2")       # was a ZeroDivisionError in the fast engine
    r = h.main("lr-find", "--data", h.names, "--model", "wavenet", "--batchnorm-over-batch-only", "--engine", "fast",
               "--block-size", "4", "--out", out, *TINY_RUN)
    assert_user_error(r, 2, "--engine fast", "reference engine only", "drop --engine fast")
    assert not out.exists()


@case("sample", LACKS)
def _(h):
    assert_user_error(h.main("sample", h.runs["finished"], "--n-layers", "3"), 2, "unrecognized arguments: --n-layers")


@case("eval", LACKS)
def _(h):
    assert_user_error(h.main("eval", h.runs["finished"], "--dtype", "float64"), 2, "unrecognized arguments: --dtype")


@case("plot", LACKS)
def _(h):
    """--pca on a model that embeds in one dimension: there are no components to choose."""
    out = h.tmp / "run"
    assert h.main("train", "--data", h.names, "--steps", "20", "--n-embd", "1", "--n-hidden", "4", "--no-plots",
                  "--out", out, "--quiet").returncode == 0
    r = h.main("plot", out, "--pca", "--quiet", "--out", h.tmp / "figures")
    assert_user_error(r, 2, "--pca", "1 dimension", "drop --pca")
    assert not (h.tmp / "figures").exists()


@case("diagnose", LACKS)
def _(h):
    assert_user_error(h.main("diagnose", h.runs["finished"], "--pca"), 2, "unrecognized arguments: --pca")


# ----------------------------------------------------------------------------- makemore.py's checkpoints

def makemore_pt(h, kind: str = "rnn", change=None) -> Path:
    """A makemore.py model.pt of `kind` for h.names (npmlp's torch module of makemore.py's keys),
    its state_dict changed by change(sd) if given."""
    torch = pytest.importorskip("torch", reason="makemore.py's .pt files are torch's")
    from npmlp.data import Vocab
    from npmlp.torch_mirrors import makemore_module, transformer_module
    words = h.names.read_text().split()
    V, T = Vocab.from_words(words).size, max(map(len, words)) + 1
    module = transformer_module(kind, V, T) if kind in ("bow", "transformer") else \
        makemore_module(kind, vocab_size=V, block_size=T)
    sd = module.state_dict()
    if change is not None:
        change(sd)
    path = h.tmp / f"{kind}.pt"
    torch.save(sd, path)
    return path


def rnn_run(h) -> Path:
    out = h.tmp / "rnn-run"
    assert h.main("train", "--data", h.names, "--model", "rnn", "--steps", "20", "--n-embd", "4", "--n-hidden", "8",
                  "--no-plots", "--eval-every", "0", "--out", out, "--quiet").returncode == 0
    return out


@needs_proc
@case("import-makemore", UNWRITABLE)
def _(h):
    r = h.main("import-makemore", makemore_pt(h), "--type", "rnn", "--data", h.names, "--out", PROC / "npmlp-run")
    assert_user_error(r, 2, "cannot create the folder /proc/npmlp-run", "choose another --out")


@case("import-makemore", SIDE_FILE)
def _(h):
    """A model.pt cut short: one line, and no run directory left behind."""
    pt = makemore_pt(h)
    pt.write_bytes(pt.read_bytes()[:200])
    r = h.main("import-makemore", pt, "--type", "rnn", "--data", h.names, "--out", h.tmp / "run")
    assert_user_error(r, 1, f"cannot read {pt} as makemore.py's model.pt")
    assert not (h.tmp / "run").exists()


@case("import-makemore", EXTREME)
def _(h):
    """As many heads as no embedding divides."""
    r = h.main("import-makemore", makemore_pt(h, "transformer"), "--type", "transformer", "--n-head", "1000000",
               "--data", h.names, "--out", h.tmp / "run")
    assert_user_error(r, 2, "--n-head 1000000", "n_embd=64")
    assert not (h.tmp / "run").exists()


@case("import-makemore", CLOSED_STDOUT)
def _(h):
    out = h.tmp / "run"
    documented(h.closed_stdout("import-makemore", makemore_pt(h), "--type", "rnn", "--data", h.names, "--out", out))
    assert (out / "model.npz").is_file()


@case("import-makemore", BAD_VALUES)
def _(h):
    """A state_dict with NaN in a weight, or a key another model has: refused before any file is written."""
    pt = makemore_pt(h, change=lambda sd: sd["lm_head.weight"].view(-1).__setitem__(0, float("nan")))
    r = h.main("import-makemore", pt, "--type", "rnn", "--data", h.names, "--out", h.tmp / "run")
    assert_user_error(r, 1, "lm_head.weight", "NaN")
    pt = makemore_pt(h, change=lambda sd: sd.update(extra=sd["start"]))
    r = h.main("import-makemore", pt, "--type", "rnn", "--data", h.names, "--out", h.tmp / "run")
    assert_user_error(r, 1, "not a makemore.py --type rnn state_dict")
    assert not (h.tmp / "run").exists()


@case("import-makemore", LACKS)
def _(h):
    r = h.main("import-makemore", makemore_pt(h), "--type", "rnn", "--n-head", "4", "--data", h.names,
               "--out", h.tmp / "run")
    assert_user_error(r, 2, "--n-head", "no attention heads", "drop it")
    r = h.main("import-makemore", makemore_pt(h), "--type", "mlp", "--data", h.names, "--out", h.tmp / "run")
    assert_user_error(r, 2, "--type mlp", "blank token")


@needs_proc
@case("export-makemore", UNWRITABLE)
def _(h):
    pytest.importorskip("torch", reason="makemore.py's .pt files are torch's")
    r = h.main("export-makemore", rnn_run(h), "--out", PROC / "model.pt")
    assert_user_error(r, 1, "cannot write /proc/model.pt", "choose another --out")


@case("export-makemore", SIDE_FILE)
def _(h):
    """A damaged best.npz (the checkpoint export reads by default) is refused; --last reads model.npz."""
    pytest.importorskip("torch", reason="makemore.py's .pt files are torch's")
    run = rnn_run(h)
    shutil.copy(run / "model.npz", run / "best.npz")
    (run / "best.npz").write_bytes((run / "best.npz").read_bytes()[:100])
    assert_user_error(h.main("export-makemore", run, "--out", h.tmp / "x.pt"), 1, "corrupt or truncated")
    documented(h.main("export-makemore", run, "--last", "--out", h.tmp / "y.pt"))
    assert (h.tmp / "y.pt").is_file() and not (h.tmp / "x.pt").exists()


@case("export-makemore", CLOSED_STDOUT)
def _(h):
    pytest.importorskip("torch", reason="makemore.py's .pt files are torch's")
    run = rnn_run(h)
    documented(h.closed_stdout("export-makemore", run, "--out", h.tmp / "model.pt"))
    assert (h.tmp / "model.pt").is_file()


@case("export-makemore", BAD_VALUES)
def _(h):
    run = rnn_run(h)
    h.arrays(run, lambda a, meta: a.update({"lm_head.weight": a["lm_head.weight"] * np.nan}))
    assert_user_error(h.main("export-makemore", run, "--out", h.tmp / "x.pt"), 1, "NaN or inf")


@case("export-makemore", LACKS)
def _(h):
    """A model makemore.py does not have."""
    r = h.main("export-makemore", h.runs["finished"], "--out", h.tmp / "x.pt")
    assert_user_error(r, 2, "makemore.py has no bn model")


# ----------------------------------------------------------------------------- the battery

@pytest.mark.parametrize("command, kind", sorted(CASES), ids=lambda x: x.replace(" ", "-"))   # after every case
def test_hostile(h, command, kind):
    CASES[command, kind](h)
