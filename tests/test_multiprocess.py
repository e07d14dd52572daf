"""Multi-process training through ``diffalign launch`` and runs that survive SIGKILL (slow tier).

Each test starts real processes running ``tests/train_target.py``; JAX's CPU collectives
(gloo) connect them over 127.0.0.1.
"""

import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(ROOT, "tests", "train_target.py")


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env.pop("XLA_FLAGS", None)
    return env


def _run(cmd, timeout=300, **kw):
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout, **kw)


def _launch(n, out, *extra, local_devices=1):
    return [sys.executable, "-m", "diffalign.cli", "launch", "--processes", str(n), "--local-devices", str(local_devices),
            "--log-dir", os.path.join(out, "logs"), "--", sys.executable, TARGET, "--out", out, *extra]


def _params(out):
    with np.load(os.path.join(out, "params.npz")) as f:
        return {k: f[k] for k in f}


def _max_rel_diff(a, b):
    """max over leaves of max|a - b| / max|b|."""
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k])) / np.max(np.abs(b[k]))) for k in a)


@pytest.mark.parametrize("host_batches", [False, True], ids=["device-batches", "host-batches"])
def test_two_and_four_processes_match_one(tmp_path, host_batches):
    extra = ["--host-batches"] if host_batches else []
    single = str(tmp_path / "single")
    os.makedirs(single)
    r = _run([sys.executable, TARGET, "--out", single, *extra])
    assert r.returncode == 0, r.stderr[-3000:]
    for n, local in ((2, 1), (4, 1), (2, 2)):
        out = str(tmp_path / f"p{n}x{local}")
        os.makedirs(out)
        r = _run(_launch(n, out, *extra, local_devices=local))
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"processes={n} devices={n * local}" in r.stdout
        diff = _max_rel_diff(_params(out), _params(single))
        print(f"{n} processes x {local} devices ({'host' if host_batches else 'device'} batches): "
              f"max relative difference {diff:.2e}")
        assert diff <= 1e-6


def _wait_until_training(out, procs, rows=2):
    """Until both processes wrote their pid and process 0 logged ``rows`` rows."""
    deadline = time.monotonic() + 120
    while _log_rows(out) < rows or not all(os.path.exists(os.path.join(out, f"pid-{i}")) for i in range(2)):
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)


def _launch_training(out):
    """Two launched processes on a long run, returned once both are training."""
    proc = subprocess.Popen(_launch(2, out, "--steps", "100000", "--sleep", "0.01"), cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until_training(out, [proc])
    except BaseException:
        proc.kill()
        raise
    return proc


def test_a_killed_process_stops_the_others(tmp_path):
    out = str(tmp_path)
    proc = _launch_training(out)
    try:
        victim = int(open(os.path.join(out, "pid-1")).read())
        survivor = int(open(os.path.join(out, "pid-0")).read())
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"the launcher and the surviving process exited {took:.1f} s after the kill")
    assert proc.returncode != 0
    assert "process 1 of 2 was killed by signal SIGKILL; stopping the others" in err
    with pytest.raises(ProcessLookupError):
        os.kill(survivor, 0)


def test_without_the_launcher_a_survivor_is_stopped_by_the_heartbeat(tmp_path):
    """Processes started as on a cluster (no launcher): killing one stops the other through
    JAX's coordination service (30 s heartbeat) with its message, instead of a hang."""
    out = str(tmp_path)
    port = str(12000 + os.getpid() % 20000)
    procs = []
    for i in range(2):
        env = dict(_env(), DIFFALIGN_COORDINATOR=f"127.0.0.1:{port}", DIFFALIGN_NUM_PROCESSES="2",
                   DIFFALIGN_PROCESS_ID=str(i))
        procs.append(subprocess.Popen([sys.executable, TARGET, "--out", out, "--steps", "100000", "--sleep", "0.01"],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        _wait_until_training(out, procs)
        procs[1].kill()
        t0 = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    print(f"the surviving process exited {took:.1f} s after the kill")
    assert procs[0].returncode != 0
    assert "another task died" in err


def test_sigterm_to_the_launcher_stops_every_process(tmp_path):
    out = str(tmp_path)
    proc = _launch_training(out)
    try:
        pids = [int(open(os.path.join(out, f"pid-{i}")).read()) for i in range(2)]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert "interrupted (SIGTERM); stopped all processes" in err
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_toy2d_through_launch_matches_one_process(tmp_path):
    args = ["toy2d", "--smoke", "--method", "icfm", "--num-samples", "500", "--nll-points", "0"]
    one = str(tmp_path / "one")
    r = _run([sys.executable, "-m", "diffalign.cli", *args, "--out", one])
    assert r.returncode == 0, r.stderr[-3000:]
    two = str(tmp_path / "two")
    r = _run([sys.executable, "-m", "diffalign.cli", "launch", "--processes", "2", "--",
              "diffalign", *args, "--out", two])
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    a, b = (json.load(open(os.path.join(d, "results.json"))) for d in (one, two))
    assert b["versions"]["process_count"] == 2
    assert abs(a["metrics"]["w2"] - b["metrics"]["w2"]) <= 1e-3 * a["metrics"]["w2"]
    r = _run([sys.executable, "-m", "diffalign.cli", "launch", "--processes", "2", "--",
              "diffalign", "digits", "--smoke", "--out", str(tmp_path / "digits")])
    assert r.returncode != 0 and "multi-process runs support: toy2d" in r.stderr


def _complete_steps(ckpt_dir):
    return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit()) if os.path.isdir(ckpt_dir) else []


def _log_rows(out):
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for _ in f)


def _resumed_step(stderr):
    m = re.search(r"resuming from the checkpoint of step (\d+)", stderr)
    return int(m.group(1)) if m else None


def test_sigkill_ten_times_resumes_and_finishes_identically(tmp_path):
    steps = 2000
    reference = str(tmp_path / "reference")
    os.makedirs(reference)
    r = _run([sys.executable, TARGET, "--out", reference, "--steps", str(steps)])
    assert r.returncode == 0, r.stderr[-3000:]

    out = str(tmp_path / "killed")
    os.makedirs(out)
    ckpts = os.path.join(out, "checkpoints")
    cmd = [sys.executable, TARGET, "--out", out, "--steps", str(steps), "--sleep", "0.2"]
    rng = random.Random(0)
    last_complete = None  # the newest complete checkpoint after the previous kill
    checked = 0
    history = []
    for kill in range(10):
        env = _env()
        in_save = kill == 4  # once at a fixed point inside a save: temporary directory written, not committed
        if in_save:
            target_step = (last_complete or 0) + 20
            env["DIFFALIGN_TEST_KILL_IN_SAVE"] = str(target_step)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if in_save:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == -signal.SIGKILL, "the in-save hook did not fire:\n" + err[-2000:]
            assert any(n.startswith(f"{target_step}.") for n in os.listdir(ckpts)), "no interrupted save on disk"
            assert target_step not in _complete_steps(ckpts)
        else:
            # a random moment of training: after this run has logged its first row (start-up
            # time on a loaded machine must not decide whether the run gets that far)
            rows = _log_rows(out)
            deadline = time.monotonic() + 180
            while _log_rows(out) == rows:
                assert proc.poll() is None and time.monotonic() < deadline, "the run did not start training"
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 2.0))
            assert proc.poll() is None, f"the run finished before kill {kill + 1}; make it longer"
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=60)
        resumed = _resumed_step(err)
        if resumed is not None or last_complete is None:
            # it resumed from the newest complete checkpoint the previous kill left (if it got that far)
            assert resumed == last_complete or resumed is None, (resumed, last_complete)
            checked += resumed is not None
        complete = _complete_steps(ckpts)
        last_complete = complete[-1] if complete else None
        history.append((kill + 1, "in save" if in_save else "random", resumed, last_complete))
    r = _run(cmd[:-2])  # the rest without the per-chunk sleep (not part of the run's config)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _resumed_step(r.stderr) == last_complete
    print("kill, where, resumed from, newest complete checkpoint after the kill:", history)
    assert checked >= 8, "too few runs got as far as resuming before their kill"
    a, b = _params(out), _params(reference)
    assert all(np.array_equal(a[k], b[k]) for k in a), "the resumed run differs from the uninterrupted one"
