"""Step time of one global batch on 2 processes x 1 device, 1 process x 2 simulated devices, 1 x 1.

Every layout runs the same model, optimizer and global batch (`--shape L,d,H,T,B`) through the
trainer's own compiled step (`mgr.train.build_program`) and placement (`Program.put_batch`, each
process handing over only its rows), in fresh processes: the job under `mgr launch`, the others
alone (two simulated devices through `--xla_force_host_platform_device_count`). Reported per
layout: the median of synchronised steps (dispatch, wait for the loss) and the mean of steps
dispatched back to back as the training loop does (one wait at the end), with tokens/s of the
latter; all after `--warmup` steps. Synthetic tokens: speed does not depend on the data.

    uv run python -m mgr.bench.multiprocess                      # L,d,H,T,B = 2,128,4,128,8
    uv run python -m mgr.bench.multiprocess --shape 2,256,4,256,8 --steps 30

Writes artifacts/bench/multiprocess/<run_id>/{summary.json, run.md} and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mgr.runtime import artifacts

LAYOUTS = (("2 processes x 1 device", 2, 1), ("1 process x 2 devices", 1, 2), ("1 process x 1 device", 1, 1))


def worker(out: Path, shape: tuple[int, ...], steps: int, warmup: int) -> None:
    """One layout's timings, in this process (one process of a job under `mgr launch`)."""
    from mgr.runtime import distributed, enable_compilation_cache

    enable_compilation_cache()
    distributed.initialize()
    import jax
    import numpy as np

    from mgr.config import ModelConfig, TrainConfig
    from mgr.train import build_program

    L, d, h, t, b = shape
    model = ModelConfig(vocab_size=4096, d_model=d, n_layers=L, n_heads=h, n_kv_heads=h, max_seq_len=t)
    prog = build_program(model, TrainConfig(devices=jax.device_count()), (b, t + 1), total_steps=1000)
    rng = np.random.default_rng(0)
    batches = [prog.put_batch(rng.integers(0, 4096, (b, t + 1), np.int32)[prog.local_rows]) for _ in range(4)]
    state = prog.state
    synced = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        state, m = prog.step_fn(state, batches[i % 4])
        jax.block_until_ready(m["loss"])
        if i >= warmup:
            synced.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(steps):
        state, m = prog.step_fn(state, batches[i % 4])
    jax.block_until_ready(m["loss"])
    pipelined = (time.perf_counter() - t0) / steps
    if distributed.is_primary():
        Path(out).write_text(json.dumps({
            "processes": jax.process_count(), "devices": jax.device_count(),
            "synced_step_ms": statistics.median(synced) * 1e3, "pipelined_step_ms": pipelined * 1e3,
            "tokens_per_second": b * t / pipelined, "compile_seconds": prog.compile_seconds}))


def _run_layout(processes: int, devices: int, args: list[str], out: Path, timeout: int) -> dict:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    cmd = [sys.executable, "-m", "mgr.bench.multiprocess", "--worker", str(out), *args]
    if processes > 1:
        cmd = [str(Path(sys.executable).parent / "mgr"), "launch", "--processes", str(processes),
               "--devices-per-process", str(devices), "--", *cmd]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{processes} x {devices} failed:\n{proc.stderr[-2000:]}")
    return json.loads(out.read_text())


def render(summary: dict) -> str:
    L, d, h, t, b = summary["shape"]
    lines = [f"Global batch {b} x {t} tokens, L={L} d={d} H={h}, {summary['steps']} timed steps; "
             f"{summary['meta']['device']['cpu_arch']}, {os.cpu_count()} cores.", "",
             "| layout | step ms (synchronised, median) | step ms (pipelined, mean) | tokens/s | vs 1 x 1 |",
             "|---|---|---|---|---|"]
    base = summary["rows"][-1]["pipelined_step_ms"]
    for r in summary["rows"]:
        lines.append(f"| {r['layout']} | {r['synced_step_ms']:.1f} | {r['pipelined_step_ms']:.1f} |"
                     f" {r['tokens_per_second']:,.0f} | {base / r['pipelined_step_ms']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="2,128,4,128,8", help="L,d,H,T,B (B: the global batch)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--run-id", default=None)
    p.add_argument("--artifacts-dir", type=Path, default=Path("artifacts"))
    p.add_argument("--timeout-s", type=int, default=900)
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    shape = tuple(int(x) for x in a.shape.split(","))
    if a.worker is not None:
        worker(a.worker, shape, a.steps, a.warmup)
        return
    from mgr.runtime import runs

    out = runs.run_dir(a.artifacts_dir, "bench", "multiprocess", run_id=a.run_id)
    passed = ["--shape", a.shape, "--steps", str(a.steps), "--warmup", str(a.warmup)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, processes, devices) in enumerate(LAYOUTS):
            r = _run_layout(processes, devices, passed, Path(tmp) / f"{i}.json", a.timeout_s)
            rows.append({"layout": label, **r})
    summary = {"schema_version": "mgr.bench.multiprocess.v1", "meta": artifacts.provenance(out.name),
               "shape": list(shape), "steps": a.steps, "warmup": a.warmup, "rows": rows}
    table = render(summary)
    artifacts.write_json(out / "summary.json", summary)
    artifacts.atomic_write(out / "run.md", f"# Several processes `{out.name}`\n\n{table}\n")
    print(table)
    print(f"record: {out}/summary.json")


if __name__ == "__main__":
    from mgr.runtime import allocator

    allocator.preload()  # measure on the allocator `mgr` runs on
    main()
