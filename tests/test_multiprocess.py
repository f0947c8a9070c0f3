"""Several processes of one JAX job over loopback (`mgr launch`, `mgr.runtime.distributed`).

The training runs happen in subprocesses (`tests/multiprocess_checks.py`): a job of two
processes x one device, and one process with two simulated devices (which also trains on one
device), sharing the suite's compilation cache. Every subprocess has a timeout.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mgr.runtime import allocator

from helpers import TINY_DATA, assert_user_error

ROOT = Path(__file__).resolve().parent.parent
CHECKS = [sys.executable, "tests/multiprocess_checks.py"]
MGR = str(Path(sys.executable).parent / "mgr")
TOL = 1e-6


def _run_launcher(cmd, timeout):
    """`subprocess.run` for a launcher: on a timeout it gets SIGTERM, which it passes on to its
    processes (SIGKILL would leave them running in their own sessions)."""
    job = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        job.terminate()
        job.communicate(timeout=30)
        raise
    return subprocess.CompletedProcess(cmd, job.returncode, out, err)


def _launch(*args, processes=2, timeout=300):
    proc = _run_launcher([MGR, "launch", "--processes", str(processes), "--", *args], timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """losses.json of the 2-process job and of the one process with 2 devices, plus the rows each
    process of the job read."""
    two, one = tmp_path_factory.mktemp("two_processes"), tmp_path_factory.mktemp("one_process")
    _launch(*CHECKS, "losses", str(two))
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    proc = subprocess.run([*CHECKS, "losses", str(one)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    read = lambda d: json.loads((d / "losses.json").read_text())  # noqa: E731
    return {"two": read(two), "one": read(one), "two_dir": two,
            "asked": [json.loads((two / f"rows.{p}.json").read_text()) for p in (0, 1)]}


def _values(rows):
    return [(r["kind"], r["step"], r["loss"] if r["kind"] == "train" else r["val_ce"]) for r in rows]


def _assert_same(a, b):
    assert [x[:2] for x in a] == [x[:2] for x in b]
    worst = max(abs(x[2] - y[2]) for x, y in zip(a, b))
    assert worst <= TOL, worst


@pytest.mark.parametrize("algebra", ["standard", "tropical"])
def test_two_processes_match_two_devices_and_one_device(runs, algebra):
    two, one = runs["two"], runs["one"]
    assert (two["process_count"], two["device_count"]) == (2, 2)
    assert (one["process_count"], one["device_count"]) == (1, 2)
    job, simulated, single = (two["runs"][f"{algebra}/2x1"], one["runs"][f"{algebra}/1x2"],
                              one["runs"][f"{algebra}/1x1"])
    assert job["status"] == simulated["status"] == single["status"] == "ok"
    steps = [r["step"] for r in job["rows"] if r["kind"] == "train"]
    # Every step once: process 0 alone writes metrics.jsonl (two writers would repeat each row).
    assert steps == list(range(1, 13))
    _assert_same(_values(job["rows"]), _values(simulated["rows"]))
    _assert_same(_values(job["rows"]), _values(single["rows"]))
    _assert_same(_values(simulated["rows"]), _values(single["rows"]))  # --devices 2 == 1 device


def test_each_process_reads_only_its_rows(runs):
    half = TINY_DATA.batch_size // 2
    assert runs["asked"][0] == [[0, half]] * 2  # one run per algebra
    assert runs["asked"][1] == [[half, TINY_DATA.batch_size]] * 2


def test_only_process_zero_writes_the_record(runs):
    run = runs["two_dir"] / "standard" / "2x1"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["meta"]["device"]["process_count"] == 2 and summary["status"] == "ok"
    if os.environ.get(allocator.ENV, "auto") == "auto":  # `mgr launch` preloaded tcmalloc (mgr.cli.main)
        assert summary["meta"]["device"]["allocator"] == ("system" if allocator.find() is None else "tcmalloc")
    assert not list(run.glob(".*.tmp"))  # no write left half-done by a second writer


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(c) for c in text.split()]


def _process_id(pid: int) -> int:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(e for e in env if e.startswith(b"JAX_PROCESS_ID=")).split(b"=", 1)[1])


def _committed(ckpt: Path, step: int) -> bool:
    return (ckpt / str(step) / "commit_success.txt").exists() or (ckpt / str(step) / "state").is_dir()


def test_a_killed_process_fails_the_job_and_resume_continues(runs, tmp_path):
    run = tmp_path / "killed"
    log = (tmp_path / "launch.log").open("w")
    job = subprocess.Popen([MGR, "launch", "--processes", "2", "--grace-s", "30", "--", *CHECKS, "train", str(run),
                            "--slow"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not ((run / "metrics.jsonl").exists() and _committed(run / "checkpoints", 4)
                   and any(json.loads(x)["step"] >= 5 for x in (run / "metrics.jsonl").read_text().split("\n") if x)):
            assert job.poll() is None and time.monotonic() < deadline, (tmp_path / "launch.log").read_text()[-3000:]
            time.sleep(0.1)
        victim = next(c for c in _children(job.pid) if _process_id(c) == 1)
        sibling = next(c for c in _children(job.pid) if c != victim)
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        code = job.wait(timeout=60)
        took = time.monotonic() - t0
    finally:
        if job.poll() is None:
            job.terminate()  # the launcher stops its processes
            job.wait(timeout=30)
        log.close()
    out = (tmp_path / "launch.log").read_text()
    assert code == 128 + signal.SIGKILL, out[-3000:]
    # SIGTERM (or the sibling's own failure) ended the sibling, not SIGKILL after the 30 s grace
    # period, nor the runtime's 100 s heartbeat.
    assert took < 15, took
    assert "a process failed" in out
    assert not Path(f"/proc/{sibling}").exists()  # the sibling was stopped, and reaped
    summary = json.loads((run / "summary.json").read_text())
    # Killed before its record was final; or process 0 saw its peer vanish inside a collective
    # before the launcher stopped it, and recorded the error.
    assert summary["status"] in ("running", "error"), summary["status"]
    _launch(*CHECKS, "train", str(run), "--resume")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["results"]["steps_completed"] == 12
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().split("\n") if x]
    _assert_same(_values(rows), _values(runs["two"]["runs"]["standard/2x1"]["rows"]))


def test_launcher_forwards_prefixed_lines_and_fails_as_a_whole(capfd):
    from mgr.runtime.launcher import launch

    code = "import os,sys,time; i=int(os.environ['JAX_PROCESS_ID']); print('hello', i, os.environ['JAX_NUM_PROCESSES'], " \
           "os.environ['XLA_FLAGS'].split()[-1], 'pid', os.getpid(), flush=True); time.sleep(60 if i else 0.5); " \
           "sys.exit(0 if i else 3)"
    t0 = time.monotonic()
    got = launch([sys.executable, "-c", code], 2, 3, grace_s=1.0)
    took = time.monotonic() - t0
    out, err = capfd.readouterr()
    assert got == 3 and took < 10, (got, took)
    assert "[p0] hello 0 2 --xla_force_host_platform_device_count=3 pid" in out
    line = next(x for x in out.splitlines() if x.startswith("[p1] hello 1 2 --xla_force_host_platform_device_count=3"))
    assert not Path(f"/proc/{line.split()[-1]}").exists()  # the sleeping sibling was stopped and reaped
    assert "a process failed (exit 3)" in err
    assert launch([sys.executable, "-c", "print('ok')"], 2) == 0


def test_every_process_of_a_job_gets_the_same_default_run_id(capfd):
    """Without --run-id each run is named by a UTC time stamp; processes of one job that stamp
    it a second apart must still name one run (process 1 waits 1.1 s before asking)."""
    from mgr.runtime.launcher import launch

    code = ("import os, time; time.sleep(1.1 * int(os.environ['JAX_PROCESS_ID'])); "
            "from mgr.runtime import runs; print('id', runs.resolve_run_id(None), flush=True)")
    assert launch([sys.executable, "-c", code], 2) == 0
    ids = {line.split()[0]: line.split()[-1] for line in capfd.readouterr()[0].splitlines() if " id " in line}
    assert set(ids) == {"[p0]", "[p1]"} and len(set(ids.values())) == 1, ids


def test_a_second_job_on_a_locked_run_is_refused_in_one_line_by_every_process(tmp_path):
    from mgr.runtime import runs

    run = tmp_path / "artifacts" / "train" / "busy"
    with runs.locked(run):
        proc = _run_launcher([MGR, "launch", "--processes", "2", "--", "mgr", "train", "--devices", "2", "--steps", "2",
                              "--run-id", "busy", "--artifacts-dir", str(tmp_path / "artifacts"), "--no-progress"], 120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = {line[:5]: line[5:] for line in proc.stderr.splitlines() if " error: " in line}
    assert set(errors) == {"[p0] ", "[p1] "}, proc.stderr[-3000:]
    assert errors["[p0] "] == errors["[p1] "] and "'busy' is in use by another process" in errors["[p0] "]


def test_ctrl_c_stops_every_process(tmp_path):
    code = "import os, time; print('up', os.getpid(), flush=True); time.sleep(120)"
    job = subprocess.Popen([MGR, "launch", "--processes", "2", "--", sys.executable, "-c", code], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pids = [int(job.stdout.readline().split()[-1]) for _ in range(2)]
        job.send_signal(signal.SIGINT)
        assert job.wait(timeout=30) == 128 + signal.SIGINT
    finally:
        if job.poll() is None:
            job.terminate()
            job.wait(timeout=30)
    assert not any(Path(f"/proc/{p}").exists() for p in pids)


def test_an_uncaught_error_in_one_process_ends_the_job_at_once(tmp_path):
    """Without the exit hook the failing process waits at JAX's shutdown barrier for a sibling
    that waits for it (5 minutes), and the launcher has nothing to react to."""
    code = ("import time, jax\nfrom mgr.runtime import distributed\ndistributed.initialize()\n"
            "if jax.process_index() == 1:\n    raise RuntimeError('only process 1 fails')\ntime.sleep(120)\n")
    t0 = time.monotonic()
    proc = _run_launcher([MGR, "launch", "--processes", "2", "--grace-s", "1", "--", sys.executable, "-c", code], 90)
    assert proc.returncode == 1 and time.monotonic() - t0 < 60, (proc.returncode, proc.stderr[-2000:])
    assert "[p1] RuntimeError: only process 1 fails" in proc.stderr


@pytest.mark.parametrize("args, words", [
    (["--processes", "0", "--", "mgr", "train"], ["--processes must be at least 1"]),
    (["--processes", "2"], ["needs a command"]),
    (["--processes", "2", "--devices-per-process", "0", "--", "mgr", "train"], ["--devices-per-process"]),
    (["--processes", "2", "--", "no-such-command-xyz"], ["command not found", "no-such-command-xyz"]),
])
def test_launcher_bad_input_is_one_line(args, words):
    from typer.testing import CliRunner

    from mgr.cli import app

    assert_user_error(CliRunner().invoke(app, ["launch", *args]), *words)


def test_environment_errors_are_one_line(monkeypatch):
    from core.errors import MgrError
    from mgr.runtime import distributed

    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(MgrError, match="JAX_NUM_PROCESSES must be an integer"):
        distributed.initialize()
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "2")
    with pytest.raises(MgrError, match=r"JAX_PROCESS_ID 2 must lie in \[0, JAX_NUM_PROCESSES=2\)"):
        distributed.initialize()
    monkeypatch.setenv("MGR_DISTRIBUTED", "0")
    assert distributed.initialize() is False  # off, whatever the environment says


def test_pipeline_rows_are_slices_of_the_one_process_batches():
    import numpy as np

    from core.errors import MgrError
    from mgr.data import build_data

    data = build_data(TINY_DATA)
    b = TINY_DATA.batch_size
    full, first, second = (data.train_iterator(7, rows=r) for r in (None, slice(0, b // 2), slice(b // 2, b)))
    for _ in range(5):
        np.testing.assert_array_equal(np.concatenate([next(first), next(second)]), next(full))
    resumed = data.train_iterator(7)  # a run saved under two processes resumes in one
    resumed.set_state(second.get_state())
    np.testing.assert_array_equal(next(resumed), data.batch_at(7, 5))
    quarter = data.train_iterator(7, rows=slice(b // 4, b // 2))
    np.testing.assert_array_equal(next(quarter), data.batch_at(7, 0)[b // 4:b // 2])
    np.testing.assert_array_equal(data.val_batches(rows=slice(b // 2, b)), data.val_batches()[:, b // 2:])
    with pytest.raises(MgrError, match="equal parts"):
        data.train_iterator(7, rows=slice(1, 3))
