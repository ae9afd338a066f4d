"""Helper processes sharing a large batch's chunks (npmlp/fast/parallel.py): the same bits as one
process for any number of processes (and the reference's numbers), helpers that really run and
really exit, a helper's failure reported as one clear error instead of a hang, and the command
line forking its helpers before any thread exists.

Legend: B batch, H n_hidden, P number of parameters.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from helpers import REPO, TINY_RUN, assert_user_error, check, run_cli, small_dataset
from threadpoolctl import threadpool_info, threadpool_limits

from npmlp import train
from npmlp.fast import engine as fast
from npmlp.fast import parallel
from npmlp.fast.engine import batch_chunks
from npmlp.fast.parallel import ChunkPool, HelperFailed, Receiver, make_batches
from npmlp.mlp import MLP, PARAM_NAMES
from npmlp.train import TrainConfig

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="helpers fork: Linux only")


@pytest.fixture(scope="module")
def data():
    return small_dataset(600, seed=8)


def same_params(a, b) -> bool:
    return all(np.array_equal(a.params[k], b.params[k]) for k in PARAM_NAMES)


def init(data, H=16, seed=1, dtype=np.float32, scheme="lecture"):
    return MLP.init(data[0].size, 3, 10, H, seed=seed, dtype=dtype, scheme=scheme)


def train_run(data, B, dtype, processes, steps=25, H=24):
    """fast.sgd with `processes` processes sharing each batch -> (model, lossi)."""
    _, X, Y = data
    cfg = TrainConfig(steps=steps, batch_size=B, lr=0.2, lr_decayed=0.05, seed=21)
    model = init(data, H, seed=cfg.seed, dtype=dtype, scheme="kaiming")
    with make_batches(model, B, processes) as batches:
        assert len(getattr(batches, "procs", [])) == min(processes, len(batch_chunks(B))) - 1
        lossi, _ = fast.sgd(model, X, Y, cfg, batches=batches)
    return model, lossi


@pytest.fixture(scope="module")
def one_process_runs(data):
    """(B, dtype) -> the one-process run and the reference run (train.sgd) of train_run's setup."""
    cache = {}

    def get(B, dtype):
        if (B, dtype) not in cache:
            _, X, Y = data
            ref = init(data, 24, seed=21, dtype=dtype, scheme="kaiming")
            train.sgd(ref, X, Y, TrainConfig(steps=25, batch_size=B, lr=0.2, lr_decayed=0.05, seed=21))
            cache[B, dtype] = train_run(data, B, dtype, processes=1), ref
        return cache[B, dtype]
    return get


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,processes", [(600, 2), (600, 3), (1100, 2), (1100, 5), (257, 2)])
def test_any_number_of_processes_gives_the_same_bits(data, one_process_runs, dtype, B, processes):
    """600 rows: 3 chunks of 200; 1100: 9 chunks of 122-123; 257: 128 + 129. Split between 2..5
    processes, the params and every loss equal the one-process run's exactly, and the reference's
    (train.sgd) to round-off: float64 1e-12, float32 2e-5."""
    (model1, lossi1), ref = one_process_runs(B, dtype)
    model, lossi = train_run(data, B, dtype, processes=processes)
    assert np.array_equal(lossi, lossi1)
    assert same_params(model, model1)
    assert np.isfinite(lossi1).all() and lossi1[-1] < lossi1[0]
    for k in PARAM_NAMES:
        check(k, model.params[k], ref.params[k], 1e-12 if dtype == np.float64 else 2e-5)


def test_resume_with_another_number_of_processes_is_bit_identical(data):
    """Interrupted with 2 processes, resumed with 1 (another machine): the uninterrupted 3-process
    run's params and losses, bit for bit; and the reference's to round-off."""
    _, X, Y = data
    cfg = TrainConfig(steps=20, batch_size=700, lr=0.2, seed=4)
    whole = init(data, 20, seed=4, dtype=np.float64)
    ref = MLP(whole.params)
    with make_batches(whole, 700, processes=3) as batches:
        lossi_whole, _ = fast.sgd(whole, X, Y, cfg, batches=batches)
    model = init(data, 20, seed=4, dtype=np.float64)
    with make_batches(model, 700, processes=2) as batches:
        lossi, nxt = fast.sgd(model, X, Y, cfg, batches=batches, on_step=lambda step, loss: step == 8)
    assert nxt == 9
    with make_batches(model, 700, processes=1) as batches:
        fast.sgd(model, X, Y, cfg, lossi=lossi, start=nxt, batches=batches)
    assert same_params(model, whole) and np.array_equal(lossi, lossi_whole)
    train.sgd(ref, X, Y, cfg)
    for k in PARAM_NAMES:
        check(k, model.params[k], ref.params[k], 1e-12)


@pytest.mark.parametrize("distinct", [False, True])
def test_helpers_run_their_chunks_and_exit(data, distinct):
    """Both ways of cutting a batch: fixed chunks of rows, or each step's distinct windows."""
    _, X, Y = data
    B = 1024
    model = init(data)
    with make_batches(model, B, processes=2, distinct=distinct) as batches:
        assert isinstance(batches, ChunkPool) and len(batches.procs) == 1 and batches.procs[0].is_alive()
        assert batches.distinct == distinct
        n = len(batch_chunks(B))
        assert list(batches.cut(0)) == list(range(n // 2))       # the parent keeps the first half
        batches.grads.fill(np.nan)
        batches.parts.fill(np.nan)
        cfg = TrainConfig(steps=3, batch_size=B, seed=2)
        fast.sgd(model, X, Y, cfg, batches=batches, stop=1)
        n = batches.nchunk[0]                                    # this step's chunks
        assert 1 < n < len(batch_chunks(B)) if distinct else n == len(batch_chunks(B))
        assert batches.cut(0, 1) == range(n // 2, n)             # the helper's
        # the helper's chunks were written by the helper: finite, like the parent's
        assert np.isfinite(batches.parts[:n]).all() and np.isfinite(batches.grads[:n]).all()
        fast.sgd(model, X, Y, cfg, start=1, batches=batches)     # a batches serves several calls
        proc = batches.procs[0]
    assert not proc.is_alive() and proc.exitcode == 0


def test_make_batches_without_helpers_is_a_plain_chunks(data):
    model = init(data)
    for B, processes in ((1024, 1), (128, 4), (100, None)):   # one process asked for, or one chunk
        with make_batches(model, B, processes) as batches:
            assert type(batches) is fast.Chunks and batches.batch_size == B


def test_a_pool_for_another_batch_size_or_model_is_refused(data):
    _, X, Y = data
    model = init(data)
    with make_batches(model, 512, processes=2) as batches, pytest.raises(ValueError, match="another batch size"):
        fast.sgd(model, X, Y, TrainConfig(steps=2, batch_size=1024), batches=batches)
    with make_batches(init(data, H=17), 512, processes=2) as batches, pytest.raises(ValueError, match="another"):
        fast.sgd(model, X, Y, TrainConfig(steps=2, batch_size=512), batches=batches)


def test_helper_failure_is_reported_not_hung(data):
    """A helper that raises (here: an index outside the vocabulary in its rows only) answers with
    the error, and the parent raises one HelperFailed (an NpmlpError) naming it."""
    B = 600
    model = init(data)
    with ChunkPool(model, B, processes=2, distinct=False) as batches:     # chunks of fixed rows
        batches.Xg[0] = 1
        batches.Yg[0] = 1
        first_helper_row = batches.chunks[batches.cut(0).stop][0]
        batches.Xg[0, first_helper_row:] = 10 ** 6                # only the helper's rows are bad
        batches.start(0, 0.1, batches.engine.flat)
        with pytest.raises(HelperFailed, match="helper process.*IndexError"):
            batches.wait()


def test_a_step_interrupted_between_go_and_wait_does_not_leak_into_the_next(data):
    """An exception in the parent after the helpers got "go" (Ctrl-C in a notebook) leaves their
    answers unread; the next fast.sgd call on the same batches must not take them for its own."""
    _, X, Y = data
    B = 600
    cfg = TrainConfig(steps=6, batch_size=B, lr=0.2, seed=9)
    ref = init(data, seed=9, dtype=np.float64)
    model = MLP(ref.params)
    train.sgd(ref, X, Y, cfg)
    with make_batches(model, B, processes=2) as batches:
        batches.start(0, 0.5, batches.engine.flat)                 # "go", never waited for
        fast.sgd(model, X, Y, cfg, batches=batches)
    for k in PARAM_NAMES:
        check(k, model.params[k], ref.params[k], 1e-12)


def test_a_closed_pool_is_refused(data):
    _, X, Y = data
    model = init(data)
    batches = make_batches(model, 600, processes=2)
    batches.close()
    assert batches.procs == []
    with pytest.raises(ValueError, match="closed"):
        fast.sgd(model, X, Y, TrainConfig(steps=2, batch_size=600), batches=batches)


def test_two_pools_open_at_once_close_cleanly(data):
    """The second batches's helper must not hold the first batches's pipe open: then closing the first
    would wait for its helper in vain and kill it (exit code -9) instead of letting it end (0)."""
    model = init(data)
    a = make_batches(model, 600, processes=2)
    b = make_batches(model, 600, processes=2)
    helpers_a = list(a.procs)
    a.close()
    assert a.procs == [] and [p.exitcode for p in helpers_a] == [0]
    helpers_b = list(b.procs)
    b.close()
    assert [p.exitcode for p in helpers_b] == [0]


def test_helper_killed_is_reported(data):
    model = init(data)
    with ChunkPool(model, 600, processes=2) as batches:
        os.kill(batches.procs[0].pid, signal.SIGKILL)
        batches.procs[0].join()
        with pytest.raises(HelperFailed, match="exited with code -9"):
            batches.start(0, 0.1, batches.engine.flat)
            batches.wait()


def test_default_processes_follow_the_usable_cores(monkeypatch):
    cores = parallel.usable_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    assert parallel.default_processes(1) == 1
    assert parallel.default_processes(16) == min(16, cores)
    assert parallel.default_processes(2) == min(2, cores)
    monkeypatch.setattr(parallel, "cpu_quota", lambda: 1.5)   # a container allowed 1.5 CPUs
    assert parallel.usable_cores() == 1 and parallel.default_processes(16) == 1
    monkeypatch.setattr(parallel, "cpu_quota", lambda: 0.2)
    assert parallel.usable_cores() == 1


def fake_cgroup(tmp_path, self_cgroup, files):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "self").write_text(self_cgroup)
    return {"root": str(tmp_path), "self_cgroup": str(tmp_path / "self")}


def test_cpu_quota_reads_cgroup_v2_and_v1(tmp_path):
    v2 = fake_cgroup(tmp_path / "v2", "0::/box/job\n", {
        "cpu.max": "max 100000\n", "box/cpu.max": "150000 100000\n", "box/job/cpu.max": "max 100000\n"})
    assert parallel.cpu_quota(**v2) == 1.5                  # the parent's limit holds for the child
    v1 = fake_cgroup(tmp_path / "v1", "5:memory:/m\n4:cpu,cpuacct:/docker/abc\n", {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "100000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"})
    assert parallel.cpu_quota(**v1) == 1.0
    none = fake_cgroup(tmp_path / "none", "4:cpu,cpuacct:/\n", {
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert parallel.cpu_quota(**none) is None
    assert parallel.cpu_quota(root=str(tmp_path), self_cgroup=str(tmp_path / "missing")) is None


def test_receiver_polls_then_backs_off_when_polls_run_out(monkeypatch):
    """A poll that runs out makes the next 2**k - 1 waits sleep at once (k polls in a row ran
    out); a poll that catches its message starts over. Every message arrives either way."""
    monkeypatch.setattr(parallel, "SPIN", 0.002)
    recv, (a, b) = Receiver(), multiprocessing.Pipe()

    def late():  # a message 0.2 s from now: long after the poll has run out
        threading.Timer(0.2, b.send_bytes, [b"late"]).start()

    late()
    assert recv(a) == b"late" and (recv.missed, recv.sleep_next) == (1, 1)
    late()
    assert recv(a) == b"late" and (recv.missed, recv.sleep_next) == (1, 0)   # slept at once
    late()
    assert recv(a) == b"late" and (recv.missed, recv.sleep_next) == (2, 3)
    recv.sleep_next = 0
    b.send_bytes(b"now")
    assert recv(a) == b"now" and (recv.missed, recv.sleep_next) == (0, 0)  # caught: polls again
    recv.missed = 10
    late()
    recv(a)
    assert recv.sleep_next == parallel.BACKOFF


def blas_threads():
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_blas_threads_come_back_when_the_last_open_pool_closes(data):
    """Pools closed in any order: BLAS runs one thread while any Chunks is open, and the threads
    it had before once none is."""
    model = init(data)
    with threadpool_limits(2, user_api="blas"):
        assert set(blas_threads()) == {2}
        a = make_batches(model, 600, processes=1)
        b = make_batches(model, 600, processes=1)
        assert set(blas_threads()) == {1}
        a.close()
        assert set(blas_threads()) == {1}
        b.close()
        assert set(blas_threads()) == {2}


def start_training_with_a_helper(out, names):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "npmlp", "train", "--data", str(names), "--out", str(out),
                             "--steps", "100000", "--batch-size", "600", "--n-hidden", "16", "--processes", "2",
                             "--quiet", "--no-plots"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and not children(proc.pid) and proc.poll() is None:
        time.sleep(0.1)
    helpers = children(proc.pid)
    if not helpers:
        proc.kill()
        pytest.fail(f"no helper process started: {proc.communicate()[1]}")
    time.sleep(1.0)                                         # some steps with the helper
    return proc, helpers


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_the_process_group_with_helpers_saves_and_leaves_no_process(tmp_path, small_names, signum):
    """Ctrl-C (SIGINT) or `timeout`/`kill -- -PGID` (SIGTERM) reach the parent and its helper
    while 2 processes share batches of 600: the helper keeps going until the parent has finished
    its step and saved; exit 128+signal with the resume hint, and no helper left running."""
    out = tmp_path / "run-with-helpers"
    proc, helpers = start_training_with_a_helper(out, small_names)
    try:
        os.killpg(proc.pid, signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signum, err
    assert "resume with: npmlp train --resume" in err and "Traceback" not in err
    assert (out / "model.npz").is_file()
    time.sleep(0.5)
    assert not [p for p in helpers if os.path.exists(f"/proc/{p}")], "a helper outlived the run"


def test_a_helper_killed_mid_run_saves_the_finished_steps(tmp_path, small_names):
    """The OOM killer takes a helper: the parent saves the steps finished so far (the broken one
    was never applied) and says so in one line with the resume command; exit 1."""
    out = tmp_path / "run-helper-killed"
    proc, helpers = start_training_with_a_helper(out, small_names)
    try:
        os.kill(helpers[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, err
    line = err.strip().splitlines()[-1]
    assert "helper process" in line and "exited with code -9" in line and "--resume" in line, err
    assert "Traceback" not in err
    from npmlp.app.checkpoint import load_checkpoint
    _, _, meta, lossi = load_checkpoint(out / "model.npz")
    assert meta["step"] > 0 and len(lossi) == meta["step"] and np.isfinite(lossi).all()


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []


def test_lr_find_with_helpers(tmp_path, small_names):
    """lr-find runs one sgd step per rate on one batches of helpers for the whole sweep."""
    out = tmp_path / "lrf"
    r = run_cli("lr-find", "--data", small_names, "--steps", 30, "--batch-size", 600, "--n-hidden", 16,
                "--processes", 2, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert (out / "lr_find.png").stat().st_size > 10_000


# ----------------------------------------------------------------------------- the command line

def test_processes_with_the_reference_engine_is_a_usage_error(tmp_path, small_names):
    """Only the fast engine shares a batch between processes: --processes with --engine reference
    is refused in one line, exit 2, before any training (train writes no run directory)."""
    for cmd in (("train", "--steps", 5, "--no-plots"), ("lr-find", "--steps", 10)):
        out = tmp_path / cmd[0]
        r = run_cli(*cmd, "--data", small_names, "--out", out, "--engine", "reference", "--processes", 2, *TINY_RUN)
        assert_user_error(r, 2, "--processes", "fast engine")
        assert not (out / "model.npz").exists() and not (out / "lr_find.png").exists()
    r = run_cli("train", "--data", small_names, "--out", tmp_path / "ok", "--engine", "reference",
                "--steps", 5, "--no-plots", *TINY_RUN)
    assert r.returncode == 0, r.stderr                          # the same run without --processes


FORK_COMMANDS = [("train", "--steps", 30, "--no-plots"), ("lr-find", "--steps", 20)]


@pytest.mark.parametrize("cmd", FORK_COMMANDS, ids=["train", "lr-find"])
def test_the_cli_forks_its_helpers_with_no_other_thread(tmp_path, small_names, cmd):
    """`python -W error::DeprecationWarning -m npmlp ...` without --quiet (so the tqdm bar is drawn),
    two processes sharing batches of 300: Python 3.12+ warns with a DeprecationWarning (here made
    an error) when fork() runs while another thread is alive. Exit 0 and no such warning. (On
    Python 3.11 there is no warning to catch: the in-process test below observes the order.)"""
    env = {k: v for k, v in os.environ.items() if k != "NPMLP_DATA"}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-m", "npmlp", *map(str, cmd),
                        "--data", str(small_names), "--out", str(tmp_path / "out"), "--batch-size", "300",
                        "--processes", "2", "--n-hidden", "8", "--n-embd", "2"],
                       capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path, check=False)
    assert r.returncode == 0, r.stderr
    assert "multi-threaded" not in r.stderr and "fork()" not in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "Warning" not in r.stderr, r.stderr
    steps = cmd[2]
    assert f"{steps}/{steps}" in r.stderr, f"no progress bar drawn:\n{r.stderr}"


@pytest.mark.parametrize("cmd", FORK_COMMANDS, ids=["train", "lr-find"])
def test_the_cli_opens_the_engine_before_the_progress_bar(tmp_path, small_names, monkeypatch, capsys, cmd):
    """cli.main in this process, watched: every fork of a helper (multiprocessing's Process.start)
    happens before the progress bar is made and before any thread is started, with no thread
    alive but those that were before cli.main (normally none but this one)."""
    from npmlp.app import cli, progress
    for t in threading.enumerate():                           # e.g. the Receiver test's timers
        if t is not threading.current_thread():
            t.join(timeout=2)
    before = threading.active_count()                         # 1 unless another test left a thread
    events = []
    thread_start, process_start = threading.Thread.start, multiprocessing.process.BaseProcess.start
    progress_init = progress.Progress.__init__

    def watch_thread(self, *a, **k):
        events.append(("thread", self.name))
        return thread_start(self, *a, **k)

    def watch_fork(self, *a, **k):
        events.append(("fork", threading.active_count()))
        return process_start(self, *a, **k)

    def watch_progress(self, *a, **k):
        events.append(("progress", None))
        return progress_init(self, *a, **k)

    monkeypatch.setattr(threading.Thread, "start", watch_thread)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", watch_fork)
    monkeypatch.setattr(progress.Progress, "__init__", watch_progress)
    code = cli.main([*cmd, "--data", small_names, "--out", tmp_path / "out", "--batch-size", 300,
                     "--processes", 2, "--n-hidden", 8, "--n-embd", 2])
    assert code == 0, capsys.readouterr().err
    kinds = [kind for kind, _ in events]
    assert "fork" in kinds and "progress" in kinds, events
    assert kinds.index("fork") < kinds.index("progress"), f"the progress bar came before the fork: {events}"
    assert all(n == before for kind, n in events if kind == "fork"), f"a fork beside a thread: {events}"
    assert "thread" not in kinds[:kinds.index("fork")], f"a thread started before the fork: {events}"
