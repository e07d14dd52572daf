"""Multi-process runs through JAX's own multi-controller runtime (``jax.distributed``).

Every process runs the same program; each owns its local devices, feeds its part of each
batch, and joins collectives (gradient all-reduce, collective checkpoint writes). Logging,
progress bars and result files come from process 0 only.

On a cluster, start one process per host (or per accelerator) with the environment
``DIFFALIGN_COORDINATOR=host:port``, ``DIFFALIGN_NUM_PROCESSES=N``, ``DIFFALIGN_PROCESS_ID=i``
(or let ``jax.distributed.initialize()`` detect SLURM / Open MPI / TPU pods). ``launch``
starts N local processes on 127.0.0.1 for testing and small machines; when one process dies
it stops the others and says which one failed, instead of leaving them blocked in a
collective.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

ENV_COORDINATOR = "DIFFALIGN_COORDINATOR"
ENV_NUM_PROCESSES = "DIFFALIGN_NUM_PROCESSES"
ENV_PROCESS_ID = "DIFFALIGN_PROCESS_ID"
ENV_LOCAL_DEVICES = "DIFFALIGN_LOCAL_DEVICES"

_initialized = False


def initialize_from_env(heartbeat_timeout_s: int = 30, initialization_timeout_s: int = 120) -> bool:
    """Join a multi-process run described by the DIFFALIGN_* environment; returns whether it
    did. Must run before any other JAX call. A process that loses its peers for
    ``heartbeat_timeout_s`` is stopped by JAX's coordination service instead of hanging."""
    global _initialized
    address = os.environ.get(ENV_COORDINATOR)
    if not address or _initialized:
        return _initialized
    try:
        n = int(os.environ[ENV_NUM_PROCESSES])
        pid = int(os.environ[ENV_PROCESS_ID])
    except (KeyError, ValueError) as e:
        raise RuntimeError(
            f"{ENV_COORDINATOR} is set, so {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} must be integers: {e}"
        ) from None
    if not 0 <= pid < n:
        raise RuntimeError(f"{ENV_PROCESS_ID}={pid} is outside 0..{n - 1}")
    import jax

    local = os.environ.get(ENV_LOCAL_DEVICES)
    if local:
        jax.config.update("jax_num_cpu_devices", int(local))
    jax.distributed.initialize(
        coordinator_address=address, num_processes=n, process_id=pid,
        heartbeat_timeout_seconds=heartbeat_timeout_s, initialization_timeout=initialization_timeout_s,
    )
    _initialized = True
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    command: list[str],
    processes: int,
    *,
    port: int | None = None,
    local_devices: int | None = None,
    gpus_per_process: int | None = None,
    grace_s: float = 10.0,
    log_dir: str | None = None,
) -> int:
    """Run ``command`` as ``processes`` cooperating local processes; returns the exit code.

    Process i gets DIFFALIGN_PROCESS_ID=i (and the coordinator 127.0.0.1:``port``);
    ``local_devices`` simulated CPU devices each, or with ``gpus_per_process`` the i-th block of
    GPUs (CUDA_VISIBLE_DEVICES). Process 0's output goes to this terminal, the others' to
    ``log_dir/process-i.log`` (a temporary directory by default). If a process exits with an
    error or is killed, the rest get SIGTERM, then SIGKILL after ``grace_s``, and the first
    failure is reported with the end of its log. Ctrl-C (or SIGTERM) stops them the same way;
    a second one kills at once.
    """
    import tempfile

    if not isinstance(processes, int) or processes < 1:
        raise ValueError(f"--processes must be a positive integer, got {processes!r}")
    if not command:
        raise ValueError("launch needs a command after '--', e.g. diffalign launch --processes 2 -- diffalign toy2d --out runs/x")
    if command[0] == "diffalign":
        command = [sys.executable, "-m", "diffalign.cli", *command[1:]]
    port = port or free_port()
    log_dir = log_dir or tempfile.mkdtemp(prefix="diffalign-launch-")
    os.makedirs(log_dir, exist_ok=True)
    children: list[subprocess.Popen] = []
    logs = []
    interrupted: list[int] = []

    def stop_all(sig):
        for c in children:
            if c.poll() is None:
                c.send_signal(sig)

    def on_signal(signum, frame):
        interrupted.append(signum)
        stop_all(signal.SIGTERM if len(interrupted) == 1 else signal.SIGKILL)

    def wait_or_kill():
        deadline = time.monotonic() + grace_s
        while any(c.poll() is None for c in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        stop_all(signal.SIGKILL)
        for c in children:
            c.wait()

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, on_signal)
    try:
        for i in range(processes):
            env = dict(os.environ)
            env.update({ENV_COORDINATOR: f"127.0.0.1:{port}", ENV_NUM_PROCESSES: str(processes), ENV_PROCESS_ID: str(i)})
            if local_devices:
                env[ENV_LOCAL_DEVICES] = str(local_devices)
            if gpus_per_process:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i * gpus_per_process + g) for g in range(gpus_per_process))
            out = None
            if i > 0:
                out = open(os.path.join(log_dir, f"process-{i}.log"), "w")
                logs.append(out)
            children.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT if out else None))
        failed = None
        while failed is None:
            if interrupted:
                wait_or_kill()
                print(f"diffalign launch: interrupted ({signal.Signals(interrupted[0]).name}); stopped all processes",
                      file=sys.stderr)
                return 128 + interrupted[0]
            codes = [c.poll() for c in children]
            if all(c == 0 for c in codes):
                return 0
            bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if bad:  # of failures seen together, a killed process is the likelier first cause
                failed = min(bad, key=lambda ic: (ic[1] >= 0, ic[0]))
            else:
                time.sleep(0.1)
        i, code = failed
        how = f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        print(f"diffalign launch: process {i} of {processes} {how}; stopping the others", file=sys.stderr)
        stop_all(signal.SIGTERM)
        wait_or_kill()
        if i > 0:
            path = os.path.join(log_dir, f"process-{i}.log")
            with open(path, errors="replace") as f:
                tail = f.read()[-2000:]
            print(f"diffalign launch: the end of {path}:\n{tail}", file=sys.stderr)
        return code if code > 0 else 128 - code
    finally:
        stop_all(signal.SIGKILL)
        for s, h in previous.items():
            signal.signal(s, h)
        for f in logs:
            f.close()
