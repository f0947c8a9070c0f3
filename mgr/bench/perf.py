"""Throughput measurements: JAX's f32 matmul peak and train-step speed of decoder configurations.

Used by `mgr bench-throughput`; the README's tables come from its output. Timings are medians
of steps after warm-up, each step synchronised, on synthetic tokens (speed does not depend on
the data).
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mgr.config import ModelConfig, TrainConfig
from mgr.train import build_program


def matmul_peak(sizes=(512, 1024, 2048), repeats: int = 10) -> list[dict]:
    """f32 GFLOP/s of square matmuls through jax.numpy, median over `repeats`."""
    rows = []
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        f = jax.jit(lambda x, y: x @ y)
        f(a, b).block_until_ready()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            f(a, b).block_until_ready()
            times.append(time.perf_counter() - t0)
        rows.append({"n": n, "gflops": 2 * n ** 3 / statistics.median(times) / 1e9})
    return rows


def time_train_step(model_cfg: ModelConfig, train_cfg: TrainConfig, batch_size: int, seq_len: int,
                    steps: int = 15, warmup: int = 3) -> dict:
    """Median step time, tokens/s and achieved GFLOP/s (XLA-counted FLOPs) of one configuration."""
    prog = build_program(model_cfg, train_cfg, (batch_size, seq_len + 1), total_steps=1000)
    rng = np.random.default_rng(0)
    batches = [jnp.asarray(rng.integers(0, model_cfg.vocab_size, (batch_size, seq_len + 1), np.int32))
               for _ in range(4)]
    state = prog.state
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        state, m = prog.step_fn(state, batches[i % len(batches)])
        jax.block_until_ready(m["loss"])
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    return {
        "step_ms": step_s * 1e3,
        "tokens_per_second": batch_size * seq_len / step_s,
        "xla_flops_per_step": prog.flops_per_step,
        "gflops": prog.flops_per_step / step_s / 1e9,
        "compile_seconds": prog.compile_seconds,
        "temp_memory_bytes": prog.memory["temp_memory_bytes"],
    }
