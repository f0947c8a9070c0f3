"""`mgr.bench.process_memory`: its child really marks every phase of a run, in order."""

from mgr.bench.process_memory import render, run_child

SMALL = ["--n-embd", "32", "--n-layer", "1", "--seq-len", "16", "--batch-size", "2",
         "--vocab-size", "512", "--steps", "5", "--eval-every", "5", "--no-progress"]
PHASES = ["before the program is built", "step lowered, FLOPs counted", "step compiled", "init program run",
          "after step 1", "after step 2", "after step 3", "before validation", "after validation", "exit"]


def test_the_child_marks_every_phase_of_the_run_in_order(tmp_path):
    marks, record = run_child(tmp_path, "mem", SMALL)
    # The marks come from wrapping the trainer's own functions: a renamed or reordered phase
    # drops or moves its mark, so the table could not silently describe another program.
    assert [m["phase"] for m in marks] == PHASES
    assert record["status"] == "ok" and record["results"]["temp_memory_bytes"] > 0
    times = [m["t_s"] for m in marks]
    assert times == sorted(times)
    # The high-water mark never falls, up to a few pages: the kernel keeps RSS counts per thread
    # and folds them in lazily, so after the trainer hands free pages back
    # (`allocator.release_free_memory`) VmHWM once read 4 KiB under the previous mark.
    peaks = [m["VmHWM"] for m in marks]
    assert all(b >= a - 2**20 for a, b in zip(peaks, peaks[1:])), peaks
    assert all(m["VmRSS"] <= m["VmHWM"] for m in marks)
    assert marks[0]["VmRSS"] > 50 * 2**20  # JAX and the trainer are imported before the first mark
    text = render([["interpreter", 10 * 2**20], ["jax", 200 * 2**20]], marks, record)
    assert "| jax | 200 | 190 |" in text and "| step compiled |" in text


def test_proc_status_reads_sizes_of_this_or_another_process_and_nothing_of_a_gone_one():
    import subprocess
    import sys

    from mgr.bench.inference import proc_status_bytes

    mine = proc_status_bytes("VmRSS", "VmHWM")
    assert set(mine) == {"VmRSS", "VmHWM"} and 0 < mine["VmRSS"] <= mine["VmHWM"]
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        theirs = proc_status_bytes("VmRSS", pid=child.pid)
        assert set(theirs) == {"VmRSS"} and 0 < theirs["VmRSS"] < mine["VmRSS"]  # a bare interpreter
    finally:
        child.communicate(b"", timeout=30)
    assert proc_status_bytes("VmRSS", pid=child.pid) == {}  # reaped: its /proc entry is gone
