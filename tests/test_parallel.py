"""Helper processes sharing a large batch's chunks (npmlp/parallel.py): the same bits as one
process for any number of processes, helpers that really run and really exit, and a helper's
failure reported as one clear error instead of a hang.

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
from threadpoolctl import threadpool_info, threadpool_limits
from conftest import REPO, run_cli, small_dataset

from npmlp import parallel
from npmlp.errors import NpmlpError
from npmlp.model import MLP
from npmlp.parallel import ChunkPool, Receiver, cpu_quota, default_processes, usable_cores
from npmlp.train import TrainConfig, batch_chunks, make_pool, sgd

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="helpers fork: Linux only")


@pytest.fixture(scope="module")
def data():
    return small_dataset(600, seed=8)


def train_run(data, B, dtype, processes, steps=25, H=24):
    vocab, X, Y = data
    cfg = TrainConfig(steps=steps, batch_size=B, lr=0.2, lr_decayed=0.05, seed=21)
    model = MLP.init(vocab.size, 3, 10, H, seed=cfg.seed, dtype=dtype, scheme="kaiming")
    lossi, _ = sgd(model, X, Y, cfg, processes=processes)
    return model.flat, lossi


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,processes", [(600, 2), (600, 3), (1100, 2), (1100, 5), (257, 2)])
def test_any_number_of_processes_gives_the_same_bits(data, dtype, B, processes):
    """600 rows: 3 chunks of 200; 1100: 5 chunks of 220; 257: 2 chunks of 128/129. Split between
    2..5 processes, the params and every loss equal the one-process run's exactly."""
    flat1, lossi1 = train_run(data, B, dtype, processes=1)
    flatn, lossin = train_run(data, B, dtype, processes=processes)
    assert np.array_equal(lossin, lossi1)
    assert np.array_equal(flatn, flat1)
    assert np.isfinite(lossi1).all() and lossi1[-1] < lossi1[0]


def test_resume_with_another_number_of_processes_is_bit_identical(data):
    """Interrupted with 2 processes, resumed with 1 (another machine): the uninterrupted 3-process
    run's params and losses, bit for bit."""
    vocab, X, Y = data
    cfg = TrainConfig(steps=20, batch_size=700, lr=0.2, seed=4)
    ref = MLP.init(vocab.size, 3, 10, 20, seed=4)
    lossi_ref, _ = sgd(ref, X, Y, cfg, processes=3)
    model = MLP.init(vocab.size, 3, 10, 20, seed=4)
    lossi, nxt = sgd(model, X, Y, cfg, processes=2, on_step=lambda step, loss: step == 8)
    assert nxt == 9
    sgd(model, X, Y, cfg, lossi=lossi, start=nxt, processes=1)
    assert np.array_equal(model.flat, ref.flat) and np.array_equal(lossi, lossi_ref)


def test_helpers_run_their_chunks_and_exit(data):
    vocab, X, Y = data
    B = 1024
    model = MLP.init(vocab.size, 3, 10, 16, seed=1)
    with make_pool(model, B, processes=2) as pool:
        assert len(pool.procs) == 1 and pool.procs[0].is_alive()
        n = len(batch_chunks(B))
        assert list(pool.mine) == list(range(n // 2))       # the parent keeps the first half
        pool.grads.fill(np.nan)
        pool.parts.fill(np.nan)
        cfg = TrainConfig(steps=3, batch_size=B, seed=2)
        sgd(model, X, Y, cfg, pool=pool)
        # the helper's chunks were written by the helper: finite, like the parent's
        assert np.isfinite(pool.parts).all() and np.isfinite(pool.grads).all()
        sgd(model, X, Y, cfg, start=1, pool=pool)            # a pool serves several calls
        proc = pool.procs[0]
    assert not proc.is_alive() and proc.exitcode == 0


def test_a_pool_for_another_batch_size_is_refused(data):
    vocab, X, Y = data
    model = MLP.init(vocab.size, 3, 10, 16, seed=1)
    with make_pool(model, 512, processes=1) as pool, pytest.raises(ValueError, match="another batch size"):
        sgd(model, X, Y, TrainConfig(steps=2, batch_size=1024), pool=pool)


def test_helper_failure_is_reported_not_hung(data):
    """A helper that raises (here: an index outside the vocabulary in its rows only) answers with
    the error, and the parent raises one NpmlpError naming it."""
    vocab = data[0]
    B = 600
    model = MLP.init(vocab.size, 3, 10, 16, seed=1)
    chunks = batch_chunks(B)
    with ChunkPool(model, chunks, B, group=1, processes=2) as pool:
        pool.Xg[0] = 1
        pool.Yg[0] = 1
        first_helper_row = chunks[pool.mine.stop][0]
        pool.Xg[0, first_helper_row:] = 10 ** 6                # only the helper's rows are bad
        pool.start(0, 0.1, model.flat)
        with pytest.raises(NpmlpError, match="helper process.*IndexError"):
            pool.wait()


def test_a_step_interrupted_between_go_and_wait_does_not_leak_into_the_next(data):
    """An exception in the parent after the helpers got "go" (Ctrl-C in a notebook) leaves their
    answers unread; the next sgd call on the same pool must not take them for its own."""
    vocab, X, Y = data
    B = 600
    cfg = TrainConfig(steps=6, batch_size=B, lr=0.2, seed=9)
    ref = MLP.init(vocab.size, 3, 10, 16, seed=9)
    sgd(ref, X, Y, cfg, processes=1)
    model = MLP.init(vocab.size, 3, 10, 16, seed=9)
    with make_pool(model, B, processes=2) as pool:
        pool.start(0, 0.5, model.flat)                       # "go", never waited for
        sgd(model, X, Y, cfg, pool=pool)
    assert np.array_equal(model.flat, ref.flat)


def test_a_closed_pool_is_refused(data):
    vocab, X, Y = data
    model = MLP.init(vocab.size, 3, 10, 16, seed=1)
    pool = make_pool(model, 600, processes=2)
    pool.close()
    with pytest.raises(ValueError, match="closed"):
        sgd(model, X, Y, TrainConfig(steps=2, batch_size=600), pool=pool)


def test_two_pools_open_at_once_close_promptly(data):
    """The second pool's helper must not hold the first pool's pipe open (closing would wait 5 s
    and then kill)."""
    vocab = data[0]
    model = MLP.init(vocab.size, 3, 10, 16, seed=1)
    a = make_pool(model, 600, processes=2)
    b = make_pool(model, 600, processes=2)
    t = time.perf_counter()
    a.close()
    assert time.perf_counter() - t < 2 and a.procs == []
    b.close()


def test_helper_killed_is_reported(data):
    vocab = data[0]
    model = MLP.init(vocab.size, 3, 10, 16, seed=1)
    with ChunkPool(model, batch_chunks(600), 600, group=1, processes=2) as pool:
        os.kill(pool.procs[0].pid, signal.SIGKILL)
        pool.procs[0].join()
        with pytest.raises(NpmlpError, match="exited with code -9"):
            pool.start(0, 0.1, model.flat)
            pool.wait()


def test_default_processes_follow_the_usable_cores(monkeypatch):
    cores = usable_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    assert default_processes(1) == 1
    assert default_processes(16) == min(16, cores)
    assert default_processes(2) == min(2, cores)
    monkeypatch.setattr(parallel, "cpu_quota", lambda: 1.5)   # a container allowed 1.5 CPUs
    assert usable_cores() == 1 and default_processes(16) == 1
    monkeypatch.setattr(parallel, "cpu_quota", lambda: 0.2)
    assert usable_cores() == 1


def fake_cgroup(tmp_path, self_cgroup, files):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "self").write_text(self_cgroup)
    return dict(root=str(tmp_path), self_cgroup=str(tmp_path / "self"))


def test_cpu_quota_reads_cgroup_v2_and_v1(tmp_path):
    v2 = fake_cgroup(tmp_path / "v2", "0::/box/job\n", {
        "cpu.max": "max 100000\n", "box/cpu.max": "150000 100000\n", "box/job/cpu.max": "max 100000\n"})
    assert cpu_quota(**v2) == 1.5                  # the parent's limit holds for the child
    v1 = fake_cgroup(tmp_path / "v1", "5:memory:/m\n4:cpu,cpuacct:/docker/abc\n", {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "100000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"})
    assert cpu_quota(**v1) == 1.0
    none = fake_cgroup(tmp_path / "none", "4:cpu,cpuacct:/\n", {
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert cpu_quota(**none) is None
    assert cpu_quota(root=str(tmp_path), self_cgroup=str(tmp_path / "missing")) is None


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
    """Pools closed in any order: BLAS runs one thread while any pool is open, and the threads
    it had before once none is."""
    model = MLP.init(data[0].size, 3, 10, 16, seed=1)
    with threadpool_limits(2, user_api="blas"):
        assert set(blas_threads()) == {2}
        a = make_pool(model, 600, processes=1)
        b = make_pool(model, 600, processes=1)
        assert set(blas_threads()) == {1}
        a.close()
        assert set(blas_threads()) == {1}
        b.close()
        assert set(blas_threads()) == {2}


def test_a_closed_pool_leaves_no_views_of_its_rows_in_the_model(data):
    vocab, X, Y = data
    model = MLP.init(vocab.size, 3, 10, 16, seed=1)
    pool = make_pool(model, 600, processes=1)
    sgd(model, X, Y, TrainConfig(steps=2, batch_size=600), pool=pool)
    rows = [id(r) for r in pool.grad_rows]
    assert any(i in model._views_cache for i in rows)       # training cached them ...
    pool.close()
    assert not any(i in model._views_cache for i in rows)   # ... closing dropped them


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
    was never applied), says so in one line with the resume command, exits 1; resuming works."""
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
    from npmlp.checkpoint import load_checkpoint
    _, _, meta, lossi = load_checkpoint(out / "model.npz")
    assert meta["step"] > 0 and len(lossi) == meta["step"] and np.isfinite(lossi).all()


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []


def test_lr_find_with_helpers(tmp_path, small_names):
    """lr-find runs one sgd step per rate on one pool of helpers for the whole sweep."""
    out = tmp_path / "lrf"
    r = run_cli("lr-find", "--data", small_names, "--steps", 30, "--batch-size", 600, "--n-hidden", 16,
                "--processes", 2, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert (out / "lr_find.png").stat().st_size > 10_000
