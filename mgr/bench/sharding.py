"""Parameter and optimizer-state bytes per device, and step time, against the fsdp size.

A model whose matrices dominate (default L=4, d=256, V=8192, T=128, B=8, AdamW) is trained
for a few steps under each `--mesh data=1,fsdp=F` through the trainer's own placement and
compiled step (`mgr.train.sharding`). Per device, two independent counts of what the state
costs: the arrays' shards on the first device (parameters, and parameters + optimizer state),
and the compiled step's memory analysis (its argument bytes less the device's batch rows).
The step time is the median over the timed steps, after one warm-up step. On a CPU-only host
the devices are simulated (the fsdp devices share the host's cores), so the times say what the
collectives cost there, not what a GPU/TPU host would see.

    uv run python -m mgr.bench.sharding                      # fsdp 1, 2, 4
    uv run python -m mgr.bench.sharding --fsdp 1,2,4,8 --steps 10 --optimizer muon

Writes artifacts/bench/sharding/<run_id>/{summary.json, run.md} and prints the table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def measure(model_cfg, train_cfg, batch_shape, fsdp: int, steps: int) -> dict:
    import jax
    import numpy as np

    from mgr.train import make_step, sharding

    parts = make_step(model_cfg, train_cfg, total_steps=1000)
    layout = {"data": 1, "fsdp": fsdp}
    state, where, batch = sharding.init_placed(parts.init, train_cfg.seed, batch_shape, layout)
    t0 = time.perf_counter()
    compiled = sharding.lower_step(parts.step, where, state, batch).compile()
    compile_s = time.perf_counter() - t0
    dev = jax.devices()[0]

    def on_first_device(tree) -> int:
        return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == dev)

    total_params = sum(x.nbytes for x in jax.tree.leaves(state["params"]))
    params, whole = on_first_device(state["params"]), on_first_device(state)
    mem = compiled.memory_analysis()
    batch_rows = batch_shape[0] // fsdp * batch_shape[1] * 4  # int32 tokens on one device
    rng = np.random.default_rng(0)
    times, loss = [], None
    for i in range(steps + 1):
        rows = rng.integers(0, model_cfg.vocab_size, batch_shape, dtype=np.int32)
        t = time.perf_counter()
        state, m = compiled(state, where.put_batch(rows))
        loss = float(m["loss"])  # waits for the step
        if i:  # the first call is a warm-up
            times.append(time.perf_counter() - t)
    return {"fsdp": fsdp, "total_param_bytes": total_params, "param_bytes": params, "state_bytes": whole,
            "xla_argument_bytes": int(mem.argument_size_in_bytes), "xla_state_bytes": int(mem.argument_size_in_bytes) - batch_rows,
            "xla_temp_bytes": int(mem.temp_size_in_bytes), "step_ms": 1e3 * statistics.median(times),
            "compile_s": round(compile_s, 2), "last_loss": loss}


def render(rows: list[dict], label: str) -> str:
    base = rows[0]
    lines = [f"{label}", "",
             "| fsdp | params MiB/device | params + optimizer MiB/device (shards) | ratio | "
             "params + optimizer MiB/device (XLA) | ratio | step ms |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['fsdp']} | {r['param_bytes'] / 2**20:.2f} | {r['state_bytes'] / 2**20:.2f} | "
                     f"{r['state_bytes'] / base['state_bytes']:.3f} | {r['xla_state_bytes'] / 2**20:.2f} | "
                     f"{r['xla_state_bytes'] / base['xla_state_bytes']:.3f} | {r['step_ms']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fsdp", default="1,2,4", help="comma-separated fsdp sizes (the first is the baseline)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per size (after one warm-up)")
    ap.add_argument("--artifacts-dir", default="artifacts")
    args = ap.parse_args(argv)
    try:
        sizes = [int(x) for x in args.fsdp.split(",")]
    except ValueError:
        raise SystemExit(f"error: --fsdp must be comma-separated integers, got '{args.fsdp}'") from None
    if not sizes or min(sizes) < 1 or args.steps < 1:
        raise SystemExit("error: fsdp sizes and --steps must be positive")

    from mgr.runtime import artifacts, request_devices

    request_devices(max(sizes))  # simulated CPU devices, before JAX starts its backends
    from core.errors import MgrError
    from mgr.config import ModelConfig, TrainConfig

    model_cfg = ModelConfig(vocab_size=args.vocab, d_model=args.width, n_layers=args.layers, n_heads=4,
                            n_kv_heads=4, max_seq_len=args.seq_len)
    train_cfg = TrainConfig(optimizer=args.optimizer)
    batch_shape = (args.batch_size, args.seq_len + 1)
    try:
        rows = [measure(model_cfg, train_cfg, batch_shape, f, args.steps) for f in sizes]
    except MgrError as e:
        raise SystemExit(f"error: {e}") from None
    label = (f"L={args.layers}, d={args.width}, V={args.vocab}, T={args.seq_len}, B={args.batch_size}, "
             f"{args.optimizer}; {rows[0]['total_param_bytes'] / 2**20:.2f} MiB of parameters")
    text = render(rows, label)
    artifacts.write_bench(Path(args.artifacts_dir), "sharding", {"config": vars(args), "rows": rows},
                          "Bytes per device against the fsdp size", text)


if __name__ == "__main__":
    from mgr.runtime import allocator

    allocator.preload()  # measure on the allocator `mgr` runs on
    main()
