"""Signals and streams (hostile inputs, part 3): a save that has begun finishes, whatever arrives
during it (a second Ctrl-C prints one line that it is finishing; a third aborts it, and the
previous checkpoint stays intact); SIGHUP (a closed terminal or ssh session) saves like SIGTERM;
SIGTERM ends every command as Ctrl-C does (lr-find leaves no empty folder); a stderr that cannot
be written (closed, full) is dropped, not fatal. test_resume.py holds a resumed run to a run that
was never stopped."""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys

import numpy as np
import pytest
from helpers import TINY_RUN, StopAfter, interrupt, names_file, snapshot, temp_files

from npmlp.app import cli
from npmlp.app.checkpoint import load_checkpoint
from npmlp.bn import BNMLP

BN = ("--model", "bn", "--steps", "300", "--n-embd", "2", "--n-hidden", "8", "--quiet", "--no-plots")
FINISHING = re.compile(r"npmlp: SIGINT: finishing the save of (\S+) first; another Ctrl-C aborts it \(the previous "
                       r"checkpoint, if any, stays intact\)")


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return names_file(tmp_path_factory.mktemp("data"), 300, seed=7)


def ctrl_c_during_calibration(monkeypatch, times: int):
    """A bn run calibrates over the whole training split at each save: Ctrl-C `times` times there."""
    calibrate = BNMLP.calibrate

    def pressed(self, X, *a, **k):
        for _ in range(times):
            os.kill(os.getpid(), signal.SIGINT)     # handled before the next line runs
        calibrate(self, X, *a, **k)
    monkeypatch.setattr(BNMLP, "calibrate", pressed)


def test_a_second_ctrl_c_during_the_save_lets_it_finish(tmp_path, names, monkeypatch, capsys):
    """Ctrl-C stops training (StopAfter plays it); a second one while the checkpoint is written
    says the save is finishing, and the run is saved and resumable. It used to abort the save,
    and the run's folder, empty, went with it."""
    run = tmp_path / "run"
    monkeypatch.setattr(cli, "StopFlag", lambda: StopAfter(50))
    ctrl_c_during_calibration(monkeypatch, 1)
    code = cli.main(["train", "--data", str(names), *BN, "--out", str(run)])
    err = capsys.readouterr().err.splitlines()
    assert code == 130, err
    assert FINISHING.fullmatch(err[0]) and FINISHING.fullmatch(err[0]).group(1) == str(run / "model.npz"), err
    assert err[1:] == [f"npmlp: SIGINT: stopped after step 50 of 300; saved {run / 'model.npz'}",
                       f"npmlp: resume with: npmlp train --resume {shlex.quote(str(run))}"], err
    _, _, meta, lossi = load_checkpoint(run / "model.npz")
    assert meta["step"] == 50 and len(lossi) == 50 and temp_files(run) == []


def test_a_third_ctrl_c_aborts_the_save_and_keeps_the_previous_checkpoint(tmp_path, names, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setattr(cli, "StopFlag", lambda: StopAfter(50))
    assert cli.main(["train", "--data", str(names), *BN, "--out", str(run)]) == 130
    before = snapshot(run)
    capsys.readouterr()
    ctrl_c_during_calibration(monkeypatch, 2)
    code = cli.main(["train", "--resume", str(run), "--quiet", "--no-plots"])    # stops at step 100, then saves
    err = capsys.readouterr().err.splitlines()
    assert code == 130, err
    assert len(err) == 2 and FINISHING.fullmatch(err[0]), err
    assert err[1] == (f"npmlp: the save was aborted; {run / 'model.npz'} holds the checkpoint of an earlier save: "
                      f"resume with: npmlp train --resume {shlex.quote(str(run))}"), err
    assert snapshot(run) == before and temp_files(run) == [], "the previous checkpoint was touched"
    assert load_checkpoint(run / "model.npz")[2]["step"] == 50


def test_sighup_saves_like_sigterm(tmp_path, names):
    """A closed terminal or ssh session sends SIGHUP: the run finishes its step, saves and exits
    129 (it used to die with nothing saved); the fast engine's helpers ignore it too."""
    run = tmp_path / "run"
    code, err = interrupt(["train", "--data", names, "--steps", 10**6, *TINY_RUN[:-1], "--out", run], signal.SIGHUP, 0)
    assert code == 128 + signal.SIGHUP, err
    m = re.search(r"npmlp: SIGHUP: stopped after step ([\d,]+) of 1,000,000; saved (\S+)\n", err)
    assert m and m.group(2) == str(run / "model.npz"), err
    assert "Traceback" not in err and "npmlp: error" not in err, err
    _, _, meta, _ = load_checkpoint(run / "model.npz")
    assert meta["step"] == int(m.group(1).replace(",", "")) and not meta["complete"]


def test_lr_find_stopped_by_sigterm_leaves_no_folder(tmp_path, names):
    """SIGTERM ends lr-find as Ctrl-C does: the folders made for it, still empty, are removed."""
    out = tmp_path / "sweeps" / "one"
    code, err = interrupt(["lr-find", "--data", names, "--steps", 20_000, *TINY_RUN[:-1], "--out", out],
                          signal.SIGTERM, 0)
    assert code == 128 + signal.SIGTERM, err
    assert err.replace("\r", "\n").splitlines()[-1] == "npmlp: interrupted", err
    assert not (tmp_path / "sweeps").exists(), "an empty folder was left behind"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="/dev/full (a disk that is always full) is Linux's")
@pytest.mark.parametrize("stderr", ["2>&-", "2>/dev/full"], ids=["closed", "full"])
def test_a_stderr_that_cannot_be_written_is_dropped(tmp_path, names, stderr):
    """The progress bar and the notes go to stderr: closed (`2>&-`) or full (`2>/dev/full`), they
    are dropped and the run does its work (the bar raised inside tqdm and the run was lost)."""
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "npmlp", "train", "--data", str(names), "--steps", "2000", "--n-embd", "2",
            "--n-hidden", "8", "--no-plots", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "NPMLP_DATA"}
    r = subprocess.run(["sh", "-c", f"exec {shlex.join(argv)} {stderr}"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.splitlines()[-2:] == [f"  {out / 'metrics.json'}",
                                                                 f"  {out / 'model.npz'}"], r.stdout
    model, _, meta, _ = load_checkpoint(out / "model.npz")
    assert meta["complete"] and np.isfinite(model.params["C"]).all()
