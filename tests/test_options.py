"""Bad options to `npmlp train`: exit 2, one line naming the option and the offending value,
and nothing written. And `npmlp --version`."""
from __future__ import annotations

import pytest
from helpers import TINY_RUN, assert_user_error, run_cli

import npmlp
from npmlp.app import options

BAD = [
    # (options, what the message must name)
    (["--steps", "0"], ["--steps", "got 0"]),
    (["--steps", "-5"], ["--steps", "got -5"]),
    (["--steps", "1e3"], ["--steps", "'1e3'"]),
    (["--batch-size", "0"], ["--batch-size", "got 0"]),
    (["--batch-size", "-32"], ["--batch-size", "got -32"]),
    (["--block-size", "0"], ["--block-size", "got 0"]),
    (["--n-embd", "0"], ["--n-embd", "got 0"]),
    (["--n-hidden", "-200"], ["--n-hidden", "got -200"]),
    (["--lr", "0"], ["--lr", "got 0"]),
    (["--lr", "-0.1"], ["--lr", "got -0.1"]),
    (["--lr", "nan"], ["--lr", "got nan"]),
    (["--lr", "inf"], ["--lr", "got inf"]),
    (["--lr", "fast"], ["--lr", "'fast'"]),
    (["--lr-decayed", "0"], ["--lr-decayed", "got 0"]),
    (["--decay-at", "1.5"], ["--decay-at", "'1.5'"]),
    (["--dtype", "float16"], ["--dtype", "'float16'", "float32", "float64"]),
    (["--init", "xavier"], ["--init", "'xavier'"]),
    (["--seed", "-1"], ["--seed", "got -1"]),
    (["--processes", "0"], ["--processes", "got 0"]),
    (["--processes", "two"], ["--processes", "'two'"]),
    (["--engine", "turbo"], ["--engine", "'turbo'", "fast", "reference"]),
    (["--split-seed", "-1"], ["--split-seed", "got -1"]),
    (["--split-seed", "random"], ["--split-seed", "'random'"]),
    (["--no-such-option"], ["--no-such-option"]),
]


@pytest.mark.parametrize("opts, needles", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_option_is_a_usage_error(tmp_path, small_names, opts, needles):
    out = tmp_path / "run"
    r = run_cli("train", "--data", small_names, "--steps", 10, "--out", out, *TINY_RUN, *opts)
    line = assert_user_error(r, 2, *needles)
    assert "--help`)" in line
    assert not out.exists()


def test_missing_command_is_a_usage_error():
    assert_user_error(run_cli(), 2, "required", "COMMAND")


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"npmlp {npmlp.__version__}\n" and r.stderr == ""


def test_processes_with_the_reference_engine_is_refused_before_training(tmp_path, small_names):
    """--processes shares the fast engine's chunks: with --engine reference it is a usage error,
    before any file is made."""
    out = tmp_path / "run"
    r = run_cli("train", "--data", small_names, "--steps", 10, "--engine", "reference", "--processes", 2,
                "--out", out, *TINY_RUN)
    assert_user_error(r, 2, "--processes", "--engine reference")
    assert not out.exists()


def test_batch_larger_than_the_training_split(tmp_path, small_names):
    # small_names: 300 names -> 240 train names -> 1,578 training rows
    out = tmp_path / "run"
    r = run_cli("train", "--data", small_names, "--steps", 10, "--batch-size", 5000, "--out", out, *TINY_RUN)
    assert_user_error(r, 2, "--batch-size 5000", "larger than the training split", "1,578 rows", "at most 1,578")
    assert not out.exists()
    ok = run_cli("train", "--data", small_names, "--steps", 3, "--batch-size", 1578, "--out", out, *TINY_RUN)
    assert ok.returncode == 0, ok.stderr


def test_out_that_is_a_file_is_refused_before_training(tmp_path, small_names):
    r = run_cli("train", "--data", small_names, "--steps", 10, "--out", small_names, *TINY_RUN)
    assert_user_error(r, 2, "cannot create the folder", str(small_names), "--out")


@pytest.mark.parametrize("command", [["lr-find", "--steps", "10"], ["plot", None]])
def test_reading_commands_refuse_an_out_that_is_a_file_before_working(tmp_path, small_names, command):
    if command[0] == "plot":                      # plot needs a run to redraw
        run = tmp_path / "run"
        assert run_cli("train", "--data", small_names, "--steps", 20, "--out", run, *TINY_RUN).returncode == 0
        command = ["plot", run]
    r = run_cli(*command, "--data", small_names, "--out", small_names, "--quiet")
    assert_user_error(r, 2, "cannot create the folder", str(small_names), "--out")


@pytest.mark.parametrize("opts, needles", [
    (["--steps", str(10**13)], ["not enough memory: --steps 10000000000000 needs", "GiB",
                                "the losses of 10,000,000,000,000 steps", "use a smaller --steps"]),
    # allocates lazily (memory is overcommitted): without the estimate the kernel kills the process
    (["--steps", "10", "--n-hidden", str(10**8)], ["--n-hidden 100000000", "GiB", "use a smaller --n-hidden"]),
])
def test_more_memory_than_exists_is_a_usage_error(tmp_path, small_names, opts, needles):
    r = run_cli("train", "--data", small_names, "--out", tmp_path / "run", *TINY_RUN, *opts)
    assert_user_error(r, 2, *needles)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, named, not_named", [
    # the options that make the largest part large; not the defaults beside them (it used to name
    # --n-embd 10 --n-hidden 100 --steps 10 for 30,000 layers)
    (["--model", "deep", "--n-layers", "30000", "--steps", "10"], "--model deep --n-layers 30000 needs",
     ["--n-embd", "--n-hidden", "--steps"]),
    (["--block-size", "100000", "--n-embd", "1000"], "--block-size 100000 --n-embd 1000 need", ["--steps"]),
    (["--block-size", "1000000", "--n-embd", "1", "--n-hidden", "1"], "--block-size 1000000 needs",
     ["--n-embd", "--n-hidden"]),
    (["--batch-size", "1000000", "--n-hidden", "100000"], "--batch-size 1000000 --n-hidden 100000 need", ["--steps"]),
])
def test_the_memory_refusal_names_what_makes_it_large(tmp_path, small_names, argv, named, not_named):
    r = run_cli("train", "--data", small_names, "--out", tmp_path / "run", "--quiet", *argv)
    line = assert_user_error(r, 2, f"not enough memory: {named}", "GiB", "use a smaller")
    for option in not_named:
        assert option not in line, (option, line)
    assert not (tmp_path / "run").exists()


def test_the_memory_check_runs_before_the_rows_are_built(tmp_path, small_names, monkeypatch, capsys):
    """--block-size 100000 on the lecture's names built 17 GiB of rows for a minute before failing:
    the estimate comes from the names' lengths, before build_dataset is called."""
    from helpers import run_main

    from npmlp.app import rundir

    def never(*a, **k):
        raise AssertionError("build_dataset ran before the memory check")
    monkeypatch.setattr(rundir, "build_dataset", never)
    monkeypatch.setattr(options, "machine_memory", lambda: 2**30)     # simulated: a 1 GiB machine
    code, _out, err = run_main(capsys, "train", "--data", small_names, "--block-size", "100000", "--out",
                               tmp_path / "run", "--quiet")
    assert code == 2 and "not enough memory: --block-size 100000" in err, err


def test_a_stacks_parameter_count_is_extrapolated_exactly():
    """num_params counts 10^9 layers without listing their shapes; for the sizes it can list, it
    is exactly the sum over the model's shapes."""
    import math

    from npmlp.app.registry import MODELS
    for L in (1, 2, 3, 9):
        for batchnorm in (0, 1):
            sizes = dict(block_size=3, n_embd=5, n_hidden=11, n_layers=L, batchnorm=batchnorm)
            want = sum(math.prod(s) for s in MODELS["deep"].shapes(27, **sizes).values())
            assert options.num_params("deep", sizes, 27) == want
    assert options.num_params("mlp", dict(block_size=3, n_embd=10, n_hidden=200), 27) == 11897   # the lecture's


@pytest.mark.parametrize("argv", [["train", "--data", ""], ["train", "--out", ""], ["train", "--resume", ""],
                                  ["lr-find", "--out", ""], ["eval", ""], ["sample", ""], ["plot", "RUN", "--out", ""],
                                  ["gradcheck", "--run", ""], ["export-makemore", "RUN", "--out", ""]],
                         ids=lambda a: " ".join(x or '""' for x in a))
def test_an_empty_path_is_refused_as_such(tmp_path, tiny_run, argv):
    """pathlib reads "" as the current folder: `--data ""` said that `.` is a directory, `--resume ""`
    and `--out ""` silently started a new run in runs/. Every path option and argument refuses it,
    before anything is made."""
    argv = [str(tiny_run) if a == "RUN" else a for a in argv]
    r = run_cli(*argv, *(["--steps", "10", "--quiet"] if argv[0] in ("train", "lr-find") else []), cwd=tmp_path)
    assert_user_error(r, 2, "must be a path, got an empty string")
    assert list(tmp_path.iterdir()) == [], "something was written"
