"""Where the resident memory of the whole C1 process goes, phase by phase.

    uv run python -m mgr.bench.process_memory

Fresh child processes, after a warm-up C1 run that fills the caches (as in
`mgr.bench.process`'s warm repetitions):

1. imports: VmRSS after the interpreter starts, then after numpy, JAX, JAX's CPU client and its
   first op, flax + optax, orbax, grain and mgr's own modules (each line is the increment).
2. the run: the C1 `mgr train` of `mgr.bench.process`, in a child that wraps the trainer's own
   functions (here, not in the trainer) to read VmRSS and VmHWM at each phase: before the
   program is built, after the step is lowered (and its FLOPs counted), after it is compiled,
   after the init program has run, after each of the first three steps (synchronised), before
   and after the final validation, and at exit. XLA's memory analysis of the step (its
   temporaries, and with its donated arguments, the training state) comes from the run's record.

Writes artifacts/bench/process_memory/<run_id>/{summary.json, run.md} and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mgr.bench.inference import proc_status_bytes
from mgr.bench.process import C1
from mgr.runtime import artifacts

_IMPORTS = """
import json
from mgr.runtime import allocator
allocator.preload()  # measured on the allocator a run uses
def rss():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS:"))
out = [["interpreter", rss()]]
import numpy; out.append(["numpy", rss()])
import jax; out.append(["jax", rss()])
import jax.numpy as jnp; jnp.zeros(3).block_until_ready(); out.append(["JAX CPU client + first op", rss()])
import flax.nnx, optax; out.append(["flax + optax", rss()])
import orbax.checkpoint; out.append(["orbax", rss()])
import grain; out.append(["grain", rss()])
import mgr.cli, mgr.train, mgr.data.pipeline; out.append(["mgr", rss()])
print(json.dumps(out))
"""
_MARKER = "MGR_PHASES "


def install_phase_marks() -> None:
    """Wrap the trainer's functions to mark each phase; print the marks on stderr at exit."""
    import atexit

    import jax

    from mgr.train import loop, program, trainer

    t0, marks = time.perf_counter(), []  # t_s counts from here: the trainer's modules are imported

    def mark(phase: str) -> None:
        marks.append({"phase": phase, "t_s": round(time.perf_counter() - t0, 2),
                      **proc_status_bytes("VmRSS", "VmHWM")})

    arm_of, build_of, validate_of = program._arm, trainer.build_program, loop._validate

    def arm(*a):
        r = arm_of(*a)
        mark("step lowered, FLOPs counted")
        if not getattr(r, "_marked", False):
            init_of, r._marked = r.init, True

            def init(*x):  # build_program calls it right after compiling the step
                mark("step compiled")
                out = jax.block_until_ready(init_of(*x))
                mark("init program run")
                return out
            r.init = init
        return r

    def build(*a, **k):
        mark("before the program is built")
        prog = build_of(*a, **k)
        step_of, n = prog.step_fn, [0]

        def step(state, batch):
            out = step_of(state, batch)
            n[0] += 1
            if n[0] <= 3:
                jax.block_until_ready(out)
                mark(f"after step {n[0]}")
            return out
        prog.step_fn = step
        return prog

    def validate(*a):
        mark("before validation")
        out = validate_of(*a)
        mark("after validation")
        return out

    program._arm, trainer.build_program, loop._validate = arm, build, validate
    atexit.register(lambda: (mark("exit"), sys.stderr.write(_MARKER + json.dumps(marks) + "\n")))


# The child runs what the `mgr` script runs, as `mgr.bench.process` does (the allocator's re-exec
# runs this again from the top, so the marks are installed in the process that trains).
_CHILD = """
import sys
from mgr.bench.process_memory import install_phase_marks
install_phase_marks()
from mgr.cli import main
sys.argv = ["mgr", "train"] + sys.argv[1:]
main()
"""


def run_child(root: Path, run_id: str, config: list[str] = C1) -> tuple[list[dict], dict]:
    """The phase marks and the record of one `mgr train <config>` in a fresh process."""
    cmd = [sys.executable, "-c", _CHILD, *config,
           "--artifacts-dir", str(root), "--run-id", run_id]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"error: the run failed (exit {proc.returncode}): "
                         f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    lines = [line for line in proc.stderr.splitlines() if line.startswith(_MARKER)]
    if not lines:
        raise SystemExit("error: the run ended without reporting its phases")
    return json.loads(lines[-1][len(_MARKER):]), json.loads((root / "train" / run_id / "summary.json").read_text())


def _mib(b: float) -> str:
    return f"{b / 2**20:,.0f}"


def render(imports: list, marks: list[dict], record: dict) -> str:
    lines = ["| import stage | RSS MiB | + MiB |", "|---|---|---|"]
    prev = 0
    for name, rss in imports:
        lines.append(f"| {name} | {_mib(rss)} | {_mib(rss - prev)} |")
        prev = rss
    lines += ["", "| phase of the C1 run | t s | RSS MiB | + MiB | peak (VmHWM) MiB |", "|---|---|---|---|---|"]
    prev = 0
    for m in marks:
        lines.append(f"| {m['phase']} | {m['t_s']:.2f} | {_mib(m['VmRSS'])} | {_mib(m['VmRSS'] - prev)} | "
                     f"{_mib(m['VmHWM'])} |")
        prev = m["VmRSS"]
    res = record["results"]
    lines += ["", f"XLA's memory analysis of the compiled step: {_mib(res['temp_memory_bytes'])} MiB of "
              f"temporaries, {_mib(res['peak_memory_bytes'])} MiB with its arguments and outputs "
              "(the training state, donated)."]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts-dir", default="artifacts")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run_child(Path(tmp), "warm-up")  # fills the tokenizer, corpus, FLOPs and compilation caches
        marks, record = run_child(Path(tmp), "c1")
    out = subprocess.run([sys.executable, "-c", _IMPORTS], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"error: the import probe failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    imports = json.loads(out.stdout.strip().splitlines()[-1])
    text = render(imports, marks, record)
    step_memory = {k: v for k, v in record["results"].items() if k.endswith("_memory_bytes")}
    artifacts.write_bench(Path(args.artifacts_dir), "process_memory",
                          {"config": C1, "imports": imports, "phases": marks, "step_memory": step_memory},
                          "C1 whole process: memory by phase", text)


if __name__ == "__main__":
    main()
