"""`mgr launch`: N local processes of one JAX job on this machine, failing as a whole.

Each child gets the environment `mgr.runtime.distributed.initialize` reads (a free loopback
coordinator port, the process count, its id) and `K` CPU devices of its own through
`--xla_force_host_platform_device_count` (which also makes `--devices` on the command line a
count over the whole job, not per process). Children run in their own process groups, so a
terminal's Ctrl-C reaches the launcher only and the launcher stops them all.

A job of several processes is one computation: if one process ends with a failure (a non-zero
code or a signal), its siblings would wait for it inside a collective until the runtime's
heartbeat gives up (minutes). The launcher terminates them at once (SIGTERM, then SIGKILL after a
grace period) and exits with the failing process's code (128 + signal for a killed one). SIGTERM
skips the trainer's save-on-interrupt: processes interrupted at different steps could not save
one checkpoint together, so `--resume` continues from the last periodic checkpoint.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Sequence

from core.errors import MgrError
from mgr.runtime import runs

POLL_S = 0.05
DEVICE_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
    """A loopback TCP port nobody listens on now (the coordinator binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _xla_flags(existing: str, devices: int) -> str:
    kept = [f for f in existing.split() if not f.startswith(DEVICE_FLAG)]
    return " ".join([*kept, f"{DEVICE_FLAG}={devices}"])


def child_env(base: dict, process_id: int, processes: int, port: int, devices: int, run_id: str) -> dict:
    env = dict(base)
    env.update({"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(processes),
                runs.JOB_RUN_ID: run_id,  # one default --run-id for the whole job
                "JAX_PROCESS_ID": str(process_id), "PYTHONUNBUFFERED": "1",
                "XLA_FLAGS": _xla_flags(base.get("XLA_FLAGS", ""), devices)})
    env.pop("MGR_DISTRIBUTED", None)  # an `=0` from the caller's shell would split the job
    return env


def resolve(command: Sequence[str]) -> list[str]:
    """The argv to start: `mgr ...` runs the mgr script beside this interpreter (a virtual
    environment's mgr need not be on PATH); anything else must be an executable."""
    if not command:
        raise MgrError("mgr launch needs a command after '--', e.g. mgr launch --processes 2 -- mgr train")
    first = command[0]
    if first == "mgr" and (Path(sys.executable).parent / "mgr").is_file():
        first = str(Path(sys.executable).parent / "mgr")
    if shutil.which(first) is None:
        raise MgrError(f"mgr launch: command not found: {shlex.quote(command[0])}")
    return [first, *command[1:]]


def _forward(stream: IO[bytes], prefix: str, out: IO[str], lock: threading.Lock) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\n")
        with lock:
            out.write(f"{prefix}{line}\n")
            out.flush()
    stream.close()


def _stop(procs: list[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM every live child's group, then SIGKILL what is left after `grace_s`."""
    for p in procs:
        if p.poll() is None:
            _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(POLL_S)
    for p in procs:
        if p.poll() is None:
            _signal_group(p, signal.SIGKILL)
    for p in procs:
        p.wait()


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass


def _code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def launch(command: Sequence[str], processes: int, devices_per_process: int = 1, *,
           grace_s: float = 5.0, port: int | None = None) -> int:
    """Run `command` as `processes` processes of one job; returns the exit code for the shell.

    0 when every process ends with 0; else the first failure's code (128 + N for signal N), after
    the others were stopped. Output lines are forwarded as they come, prefixed `[pI] `.
    """
    if processes < 1:
        raise MgrError(f"--processes must be at least 1, got {processes}")
    if devices_per_process < 1:
        raise MgrError(f"--devices-per-process must be at least 1, got {devices_per_process}")
    if grace_s < 0:
        raise MgrError(f"--grace-s must not be negative, got {grace_s}")
    argv = resolve(command)
    port = free_port() if port is None else port
    job_id = runs.new_run_id()  # an outer job's id is kept (a launcher under a launcher)
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    readers: list[threading.Thread] = []
    stopping: list[int] = []

    def on_signal(signum, _frame):
        stopping.append(128 + signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i in range(processes):
            env = child_env(os.environ, i, processes, port, devices_per_process, job_id)
            p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
            procs.append(p)
            for stream, out in ((p.stdout, sys.stdout), (p.stderr, sys.stderr)):
                t = threading.Thread(target=_forward, args=(stream, f"[p{i}] ", out, lock), daemon=True)
                t.start()
                readers.append(t)
        code = _supervise(procs, stopping)
        if code != 0:
            _stop(procs, grace_s)
    except BaseException:
        _stop(procs, grace_s)
        raise
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for t in readers:
            t.join(timeout=2.0)
    if code != 0 and not stopping:
        with lock:
            sys.stderr.write(f"mgr launch: a process failed (exit {code}); stopped the others\n")
    return code


def _supervise(procs: list[subprocess.Popen], stopping: list[int]) -> int:
    """Wait until every child has ended with 0 (returns 0), one has failed, or the launcher was
    signalled (returns that code)."""
    while True:
        if stopping:
            return stopping[0]
        codes = [p.poll() for p in procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            return _code(failed[0])
        if all(c == 0 for c in codes):
            return 0
        time.sleep(POLL_S)
