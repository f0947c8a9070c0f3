"""Run directories: run ids are one safe path component, and one process at a time holds a run
(or suite) directory through a lock the kernel drops when its holder dies."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.errors import MgrError
from mgr.bench import BenchConfig, run_bench
from mgr.runtime import request_devices, runs
from mgr.train import train

from helpers import TINY_DATA, tiny_model, tiny_train

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("run_id", ["r1", "my-run_2.b", "20240101-120000", "A" * runs.MAX_RUN_ID, "_x"])
def test_safe_run_ids_are_accepted(run_id, tmp_path):
    assert runs.check_run_id(run_id) == run_id
    assert runs.run_dir(tmp_path, "train", run_id=run_id) == tmp_path / "train" / run_id


@pytest.mark.parametrize("run_id", ["../../x", "a/b", "..", ".", ".hidden", "", "a b", "x\n", "a\\b",
                                    "ü", "/abs", "-x", "A" * (runs.MAX_RUN_ID + 1)])
def test_unsafe_run_ids_are_refused_in_one_line(run_id, tmp_path):
    with pytest.raises(MgrError, match="not a valid run id") as e:
        runs.run_dir(tmp_path, "train", run_id=run_id)
    assert "\n" not in str(e.value)


def test_a_fresh_run_id_is_safe(tmp_path):
    path = runs.run_dir(tmp_path, "bench", "fixed_flops", run_id=None)
    assert path.parent == tmp_path / "bench" / "fixed_flops" and runs.check_run_id(path.name)


def test_a_second_open_of_the_lock_conflicts_and_release_leaves_no_trace(tmp_path):
    d = tmp_path / "run"
    with runs.locked(d):
        assert (d / runs.LOCK_NAME).exists()
        with pytest.raises(MgrError, match=f"run 'run' is in use by another process \\(pid {os.getpid()}\\)"):
            with runs.locked(d):
                pass
    assert not d.exists()  # created for nothing, so removed
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "summary.json").write_text("{}")
    with runs.locked(tmp_path / "kept"):
        pass
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["summary.json"]


HOLDER = textwrap.dedent("""
    import sys, time
    from mgr.runtime import runs
    with runs.locked(sys.argv[1]):
        print("held", flush=True)
        time.sleep(600)
""")


def test_a_lock_held_by_another_process_refuses_train_and_bench_until_it_is_killed(tmp_path):
    run_dir, suite = tmp_path / "train" / "r", tmp_path / "bench" / "s"
    holders = [subprocess.Popen([sys.executable, "-c", HOLDER, str(d)], cwd=ROOT, stdout=subprocess.PIPE,
                                text=True) for d in (run_dir, suite)]
    try:
        for h in holders:
            assert h.stdout.readline().strip() == "held"
        with pytest.raises(MgrError, match="run 'r' is in use by another process"):
            train(tiny_model(), TINY_DATA, tiny_train(), run_dir=run_dir, artifacts_root=tmp_path, data=None)
        cfg = BenchConfig(attention=("standard",), seeds=(0,), data=TINY_DATA.to_dict())
        with pytest.raises(MgrError, match="suite 's' is in use by another process"):
            run_bench(cfg, suite, tmp_path)
    finally:
        for h in holders:
            h.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel alone drops the lock
            h.wait(timeout=30)
    assert (run_dir / runs.LOCK_NAME).exists()  # the dead holder's file is still there ...
    with runs.locked(run_dir):  # ... but its lock is not
        pass


def test_request_devices_gives_simulated_cpu_devices_before_jax_starts():
    code = ("from mgr.runtime import request_devices; request_devices(2); import jax; "
            "print(jax.device_count())")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "2"
    import jax

    have = jax.device_count()  # starts the backend in this process
    request_devices(have + 2)  # too late now: a no-op, never an exception
    assert jax.device_count() == have


def test_a_bench_record_puts_meta_first_and_renders_its_table(tmp_path, capsys):
    import json

    from mgr.runtime.artifacts import write_bench

    out = write_bench(tmp_path, "demo", {"rows": [1, 2], "ratio": float("nan")}, "A title", "| a |\n|---|")
    assert out.parent == tmp_path / "bench" / "demo"
    record = json.loads((out / "summary.json").read_text())
    assert list(record) == ["meta", "rows", "ratio"] and record["meta"]["run_id"] == out.name
    assert record["rows"] == [1, 2] and record["ratio"] is None  # NaN is not JSON
    assert (out / "run.md").read_text() == "# A title\n\n| a |\n|---|\n"
    assert capsys.readouterr().out == f"| a |\n|---|\nrecord: {out}/summary.json\n"
