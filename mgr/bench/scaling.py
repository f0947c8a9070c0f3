"""Timing of attention algebras: forward scaling in T and decoder train steps.

Both functions pin what they compare (dims, batch, seed, a warm-up call, the number of
repeats, the clock) and return plain numbers or rows, so a CLI command or a report can call
them and render the result. On a shared CPU prefer clock="cpu" for ratios; wall time is the
default because it is what a user waits for.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import attention
from attention.base import AttentionDims


def _times(fn, *args, repeats: int, clock: str = "wall") -> list[float]:
    """Seconds per call after compiling and warming up. clock="cpu" counts process CPU time
    (all threads), which a busy shared machine inflates far less than wall time."""
    now = {"wall": time.perf_counter, "cpu": time.process_time}[clock]
    # Two warm-up calls: a module that sows diagnostics gains a variable on its first call,
    # which changes its graph and retraces the second.
    for _ in range(2):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = now()
        jax.block_until_ready(fn(*args))
        times.append(now() - t0)
    return times


def forward_scaling(names: list[str], seq_lens: list[int], *, batch: int = 1, d_model: int = 128,
                    n_heads: int = 4, n_kv_heads: int = 4, repeats: int = 3, seed: int = 0,
                    clock: str = "wall") -> list[tuple[str, int, float]]:
    """Fastest of `repeats` jitted forward calls of one attention module per (algebra, T):
    rows (name, T, seconds). The minimum is the least disturbed by other load on the machine.

    Each algebra runs with its default config at `max_seq_len = max(seq_lens)`.
    """
    dims = AttentionDims(d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads,
                         head_dim=d_model // n_heads, max_seq_len=max(seq_lens))
    rows = []
    for name in names:
        entry = attention.get(name)
        graphdef, params = nnx.split(entry.module_cls(dims, entry.config_cls(), rngs=nnx.Rngs(seed)))
        # The forward the decoder's train and inference programs run: diagnostics a module sows
        # (tropical's route margins) are dropped with the merged module, so XLA removes them.
        # Through nnx.jit they would be returned as state and computed (tropical at T = 512:
        # 42 ms with its margins, 3 ms without).
        fwd = jax.jit(lambda st, x, p, g=graphdef: nnx.merge(g, st)(x, p)[0])
        for t in seq_lens:
            x = jax.random.normal(jax.random.key(seed + 1), (batch, t, d_model), jnp.float32)
            pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (batch, t))
            rows.append((name, t, min(_times(fwd, params, x, pos, repeats=repeats, clock=clock))))
    return rows


def scaling_exponents(rows: list[tuple[str, int, float]]) -> dict[str, float]:
    """Least-squares slope of log(seconds) against log(T), per algebra."""
    out = {}
    for name in dict.fromkeys(r[0] for r in rows):
        ts = np.array([math.log(r[1]) for r in rows if r[0] == name])
        ss = np.array([math.log(r[2]) for r in rows if r[0] == name])
        out[name] = float(np.polyfit(ts, ss, 1)[0]) if len(ts) > 1 else float("nan")
    return out
