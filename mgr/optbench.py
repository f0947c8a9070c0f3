"""What each optimizer costs per train step: XLA's FLOP count and measured step time.

`measure_optimizers()` compiles the trainer's step (loss, gradients, `tx.update` with the
`value`/`value_fn` extra arguments, apply) for every registered optimizer on one decoder and
batch, and reports XLA's own FLOPs of the compiled step and the median wall time of a step,
both also relative to a baseline optimizer (AdamW). HOSS's Hessian-vector products are inside
the step, so XLA charges them to it; that is the number the fixed-FLOPs budget divides by.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import optim
from mgr.config import ModelConfig, TrainConfig
from mgr.model import Decoder


def xla_flops(compiled) -> float:
    """FLOPs of a compiled computation from `cost_analysis()` (a dict, or a list of them)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def _peak_bytes(compiled) -> int | None:
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                   - m.alias_size_in_bytes)
    except Exception:  # not every backend reports it
        return None


def measure_optimizers(model_cfg: ModelConfig | None = None, *, batch_size: int = 8,
                       optimizers: list[str] | None = None, schedule: str = "constant",
                       learning_rate: float = 3e-3, options: dict[str, dict] | None = None,
                       steps: int = 10, warmup_steps: int = 2, seed: int = 0,
                       baseline: str = "adamw") -> list[dict[str, Any]]:
    """One row per optimizer: FLOPs/step (XLA), median step ms, compile s, ratios to `baseline`.

    The default model is the `mgr train` preset (L=2, d=128, H=4, T=128, vocab 4096), batch 8.
    `options` maps an optimizer name to its `optimizer_options`. Steps run on one fixed batch
    of random tokens with donated state; each step is waited for, so times are per step.
    """
    model_cfg = model_cfg or ModelConfig()
    names = optimizers or optim.names()
    if baseline not in names:
        names = [baseline, *names]
    model = Decoder(model_cfg, rngs=nnx.Rngs(seed))
    graphdef, params0 = nnx.split(model, nnx.Param)
    batch = jax.random.randint(jax.random.key(seed + 1), (batch_size, model_cfg.max_seq_len + 1),
                               0, model_cfg.vocab_size, dtype=jnp.int32)

    def loss_of_params(p, b):
        return nnx.merge(graphdef, p).loss(b)

    rows = []
    for name in names:
        cfg = TrainConfig(optimizer=name, schedule=schedule, learning_rate=learning_rate,
                          warmup_steps=0, steps=steps + warmup_steps,
                          optimizer_options=(options or {}).get(name, {}))
        tx = optim.build_transform(cfg, steps + warmup_steps)

        def step(params, opt_state, b, tx=tx):
            loss, grads = jax.value_and_grad(loss_of_params)(params, b)
            updates, opt_state = tx.update(grads, opt_state, params, value=loss,
                                           value_fn=lambda p: loss_of_params(p, b))
            return optax.apply_updates(params, updates), opt_state, loss

        params = jax.tree.map(jnp.copy, params0)
        params, opt_state = jax.device_put((params, tx.init(params)), jax.devices()[0])
        t0 = time.perf_counter()
        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, batch).compile()
        compile_s = time.perf_counter() - t0
        times, losses = [], []
        for i in range(warmup_steps + steps):
            t = time.perf_counter()
            params, opt_state, loss = compiled(params, opt_state, batch)
            loss = float(loss)  # waits for the step
            if i >= warmup_steps:
                times.append(time.perf_counter() - t)
            losses.append(loss)
        rows.append({"optimizer": name, "flops_per_step": xla_flops(compiled),
                     "step_ms": 1e3 * statistics.median(times), "compile_s": compile_s,
                     "peak_bytes": _peak_bytes(compiled), "first_loss": losses[0],
                     "last_loss": losses[-1]})
    base = next(r for r in rows if r["optimizer"] == baseline)
    for r in rows:
        r["flops_vs_" + baseline] = r["flops_per_step"] / base["flops_per_step"]
        r["time_vs_" + baseline] = r["step_ms"] / base["step_ms"]
    return rows


def format_table(rows: list[dict[str, Any]], baseline: str = "adamw") -> str:
    """A markdown table of `measure_optimizers` rows."""
    head = (f"| optimizer | GFLOP/step (XLA) | x {baseline} | step ms | x {baseline} | compile s |\n"
            "|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['optimizer']} | {r['flops_per_step'] / 1e9:.3f} | "
                     f"{r['flops_vs_' + baseline]:.2f} | {r['step_ms']:.1f} | "
                     f"{r['time_vs_' + baseline]:.2f} | {r['compile_s']:.1f} |")
    return "\n".join(lines)
