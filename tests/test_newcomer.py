"""A newcomer's afternoon: the last run found without typing it, names.txt found again offline once
given, every subcommand's help with a description, an example and its manual page, one meaning of
--quiet, and a torch hint that is right for the running Python."""
from __future__ import annotations

import hashlib
import sys

import pytest
from helpers import TINY_RUN, assert_user_error, run_cli, run_main

from npmlp.app import cli
from npmlp.loading import SHA256
from npmlp.torch_mirrors import torch_hint


def test_the_reading_commands_take_the_newest_run(tmp_path, small_names, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _out, err = run_main(capsys, "sample", "-n", "3")
    assert code == 2 and "no run under runs/" in err and "npmlp train" in err, err
    for name in ("runs/a", "runs/b"):
        assert run_main(capsys, "train", "--data", small_names, "--steps", "20", "--out", name, "--no-plots",
                        *TINY_RUN)[0] == 0
    code, out, err = run_main(capsys, "eval")
    assert code == 0 and out.startswith("train loss ") and "reading the newest run, runs/b" in err, err
    code, out, err = run_main(capsys, "sample", "-n", "3", "--quiet")
    assert code == 0 and len(out.split()) == 3 and err == "", err
    code, out, err = run_main(capsys, "plot", "--out", "figures", "--quiet")
    assert code == 0 and (tmp_path / "figures" / "loss.png").is_file(), err


def test_the_lectures_names_given_once_are_found_again_offline(tmp_path, names_path):
    """--data names.txt (its SHA-256) fills the cache: the next run needs neither --data nor a network."""
    assert hashlib.sha256(names_path.read_bytes()).hexdigest() == SHA256
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "NPMLP_DATA_URL": "http://127.0.0.1:9/names.txt",
           "NPMLP_DOWNLOAD_TIMEOUT": "2"}
    r = run_cli("train", "--data", names_path, "--steps", "5", "--out", tmp_path / "a", "--no-plots", *TINY_RUN,
                env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cache" / "npmlp" / "names.txt").read_bytes() == names_path.read_bytes()
    r = run_cli("train", "--steps", "5", "--out", tmp_path / "b", "--no-plots", *TINY_RUN, env=env)
    assert r.returncode == 0, r.stderr


def test_other_names_leave_the_cache_alone(tmp_path, small_names):
    r = run_cli("train", "--data", small_names, "--steps", "5", "--out", tmp_path / "a", "--no-plots", *TINY_RUN,
                env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "cache").exists()


def subcommands():
    parser = cli.build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_subcommand_says_what_it_does_with_an_example_and_its_page(name):
    text = subcommands()[name].format_help()
    usage, description = text.split("\n\n")[:2]
    assert usage.startswith(f"usage: npmlp {name}") and len(description) > 20, text
    assert f"example:\n  npmlp {name} " in text and "manual: docs/" in text, text
    options = text.split("\noptions:\n")[1]
    if "  --quiet" in options:                            # one meaning: no progress, no notes, results printed
        assert "no notes; the results (and errors) are printed" in " ".join(options.split("  --quiet")[1].split())


def test_gradcheck_says_it_exits_1_on_a_failure_and_that_torch_is_optional():
    text = " ".join(subcommands()["gradcheck"].format_help().split())
    assert "Exits 1 if any gradient fails" in text and "torch is optional" in text


def test_the_torch_hint_fits_the_running_python():
    hint = torch_hint()
    assert "download.pytorch.org/whl/cpu" in hint
    assert ("torch==2.13.0" in hint) == (sys.version_info[:2] == (3, 11))


def test_reading_commands_on_a_folder_without_a_run(tmp_path):
    r = run_cli("eval", tmp_path)
    assert_user_error(r, 2, f"{tmp_path} holds no model.npz")
