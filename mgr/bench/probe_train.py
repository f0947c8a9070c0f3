"""One probe run: train a decoder on a task's scored positions to a FLOPs budget, then score it.

The train step is the trainer's own (`mgr.train.make_step`) with a loss over the scored
positions only, so optimizers, schedules, clipping and the FLOPs count are exactly those of
`mgr train`. Steps = budget / XLA's count of that step. Compiled programs are shared by every
run with the same shapes and optimizer settings: seeds differ only in the initial state, which
is an argument of the compiled step, never a constant in it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from core.errors import MgrError
from mgr.bench.probes import IGNORE, ProbeData, ProbeSet
from mgr.config import ModelConfig, TrainConfig

EVAL_CHUNK = 64  # sequences per evaluation call: bounds activation memory on long test slices


def masked_loss(model, batch) -> jax.Array:
    """Mean cross-entropy over the positions whose target is not IGNORE; as `Decoder.loss`, its
    gradient also carries the layers' auxiliary losses (an MoE's balancing terms)."""
    from mgr.model import with_aux_gradient

    h_BxTxD, _, aux = model.hidden_and_aux(batch["tokens"])
    return with_aux_gradient(_masked_ce(model.logits(h_BxTxD), batch["targets"]), aux)


def _masked_ce(logits_BxTxV, targets) -> jax.Array:
    scored = targets != IGNORE
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, jnp.where(scored, targets, 0))
    return jnp.sum(ce * scored) / jnp.maximum(jnp.sum(scored), 1)


def _key(cfg) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True, default=str)


@dataclass
class _Program:
    parts: Any
    step_fn: Any
    compile_seconds: float


_FLOPS: dict[tuple, float] = {}
_PROGRAMS: dict[tuple, _Program] = {}
_EVALS: dict[str, Callable] = {}


def step_flops(model_cfg: ModelConfig, train_cfg: TrainConfig, batch_shape: tuple[int, int]) -> float:
    """XLA's count (loops unrolled) of one probe train step; cached per shape and optimizer."""
    from mgr.train import counted_flops, make_step

    key = (_key(model_cfg), _key(train_cfg.replace(seed=0, learning_rate=1.0)), batch_shape)
    if key not in _FLOPS:
        parts = make_step(model_cfg, train_cfg, 1000, loss_fn=masked_loss)
        batch = {"tokens": jax.ShapeDtypeStruct(batch_shape, jnp.int32),
                 "targets": jax.ShapeDtypeStruct(batch_shape, jnp.int32)}
        _FLOPS[key] = counted_flops(parts.step, jax.eval_shape(parts.init), batch)
    return _FLOPS[key]


def _program(model_cfg: ModelConfig, train_cfg: TrainConfig, steps: int, batch_shape) -> _Program:
    from mgr.train import make_step

    # The learning rate and the horizon are state, not program (see mgr.train.make_step): one
    # compiled step per model, optimizer and shape serves every rate, budget and seed.
    key = (_key(model_cfg), _key(train_cfg.replace(seed=0, learning_rate=1.0)), batch_shape)
    if key not in _PROGRAMS:
        parts = make_step(model_cfg, train_cfg.replace(seed=0), steps, loss_fn=masked_loss)
        batch = {"tokens": jax.ShapeDtypeStruct(batch_shape, jnp.int32),
                 "targets": jax.ShapeDtypeStruct(batch_shape, jnp.int32)}
        t0 = time.perf_counter()
        step_fn = jax.jit(parts.step, donate_argnums=0).lower(jax.eval_shape(parts.init), batch).compile()
        _PROGRAMS[key] = _Program(parts, step_fn, time.perf_counter() - t0)
    return _PROGRAMS[key]


def _init_state(model_cfg: ModelConfig, train_cfg: TrainConfig, steps: int) -> dict:
    from mgr.train import make_step

    # The seed is an argument of the init program (as in build_program), so seeds share it too.
    init = make_step(model_cfg, train_cfg, steps, loss_fn=masked_loss).init
    return jax.jit(init)(jnp.asarray(train_cfg.seed, jnp.int32))


def _accuracy_fn(graphdef) -> Callable:
    from flax import nnx

    def chunk(params, tokens_CxT, targets_CxT):
        pred = jnp.argmax(nnx.merge(graphdef, params)(tokens_CxT), axis=-1)
        scored = targets_CxT != IGNORE
        return jnp.sum((pred == targets_CxT) & scored), jnp.sum(scored)

    @jax.jit
    def acc(params, tokens_NxCxT, targets_NxCxT):
        right, total = jax.lax.map(lambda xs: chunk(params, *xs), (tokens_NxCxT, targets_NxCxT))
        return jnp.sum(right), jnp.sum(total)

    return acc


def accuracy(graphdef, params, data: ProbeSet, model_key: str) -> float:
    """Accuracy over every scored position of `data` (padded to whole chunks, pads unscored)."""
    fn = _EVALS.setdefault(model_key, _accuracy_fn(graphdef))
    n = data.n
    pad = (-n) % EVAL_CHUNK
    tokens = np.concatenate([data.tokens, np.zeros((pad, data.seq_len), np.int32)])
    targets = np.concatenate([data.targets, np.full((pad, data.seq_len), IGNORE, np.int32)])
    shape = (-1, EVAL_CHUNK, data.seq_len)
    right, total = fn(params, jnp.asarray(tokens.reshape(shape)), jnp.asarray(targets.reshape(shape)))
    return float(right) / max(float(total), 1.0)


def _batches(train: ProbeSet, steps: int, batch_size: int, seed: int, phase: int):
    """`steps` batches drawn without replacement within an epoch, reshuffled each epoch."""
    rng = np.random.default_rng([seed, phase, 0x9E3779B1])
    order, at = rng.permutation(train.n), 0
    for _ in range(steps):
        if at + batch_size > train.n:
            order, at = rng.permutation(train.n), 0
        idx = order[at:at + batch_size]
        at += batch_size
        yield {"tokens": train.tokens[idx], "targets": train.targets[idx]}


def run_probe(model_cfg: ModelConfig, train_cfg: TrainConfig, data: ProbeData, *, batch_size: int,
              budget: float, on_step: Callable[[int, int], None] | None = None) -> dict:
    """Train to `budget` XLA-counted FLOPs and score; returns {"status", "reason", "budget", "results"}.

    A non-finite loss ends the run as `diverged`; `train_cfg.time_limit_s` as `timeout`. Both
    keep what was measured but have no scores. Too small a budget raises MgrError.
    """
    batch_shape = (batch_size, max(s.seq_len for s in data.train))
    if any(s.n < batch_size for s in data.train):
        raise MgrError(f"batch size {batch_size} exceeds the task's training set")
    flops = step_flops(model_cfg, train_cfg, batch_shape)
    steps = int(budget // flops)
    if steps < train_cfg.min_steps:
        raise MgrError(f"budget {budget:.3g} gives {steps} steps, fewer than the minimum "
                       f"{train_cfg.min_steps}; the smallest budget that works is {train_cfg.min_steps * flops:.3g}")
    prog = _program(model_cfg, train_cfg, steps, batch_shape)
    state = _init_state(model_cfg, train_cfg, steps)
    graphdef = prog.parts.graphdef
    model_key = _key(model_cfg)
    n_phases = len(data.train)
    per_phase = [steps // n_phases + (i < steps % n_phases) for i in range(n_phases)]
    status, reason, done, curve, phases = "ok", None, 0, [], []
    train_seconds, log_every = 0.0, max(1, steps // 20)
    for p, (train_set, n) in enumerate(zip(data.train, per_phase)):
        tick = time.perf_counter()
        for batch in _batches(_padded(train_set, batch_shape[1]), n, batch_size, train_cfg.seed, p):
            state, m = prog.step_fn(state, batch)
            done += 1
            if done % log_every == 0 or done == steps:
                loss = float(m["loss"])  # a sync every 5% of the run, not every step
                curve.append([done, loss])
                if not math.isfinite(loss):
                    status, reason = "diverged", f"non-finite loss at step {done}"
                    break
                if on_step:
                    on_step(done, steps)
            if train_cfg.time_limit_s and train_seconds + time.perf_counter() - tick > train_cfg.time_limit_s:
                status, reason = "timeout", f"time limit {train_cfg.time_limit_s}s at step {done}"
                break
        jax.block_until_ready(state)
        train_seconds += time.perf_counter() - tick
        if status != "ok":
            break
        phases.append({"phase": data.phase_names[p], "step": done,
                       "tune": accuracy(graphdef, state["params"], data.tune, model_key),
                       "test": {k: accuracy(graphdef, state["params"], s, model_key)
                                for k, s in data.test.items()}})
    results = {"loss_curve": curve, "train_seconds": round(train_seconds, 3),
               "compile_seconds": round(prog.compile_seconds, 3),
               "tokens_per_second": done * batch_size * batch_shape[1] / max(train_seconds, 1e-9),
               "final_train_loss": curve[-1][1] if curve else None, "phases": phases}
    if status == "ok":
        final = phases[-1]
        results.update({"tune_accuracy": final["tune"], "test_accuracy": final["test"],
                        "headline_accuracy": float(np.mean([final["test"][k] for k in data.headline]))})
    return {"status": status, "reason": reason, "results": results,
            "budget": {"target_flops": budget, "flops_per_step_xla": flops, "steps": steps,
                       "steps_done": done, "tokens": done * batch_size * batch_shape[1],
                       "flops_source": "xla_cost_analysis_unrolled_hlo"}}


def _padded(s: ProbeSet, seq_len: int) -> ProbeSet:
    """Right-pad a training phase to the program's length (pads are never scored)."""
    if s.seq_len == seq_len:
        return s
    pad = seq_len - s.seq_len
    return ProbeSet(np.pad(s.tokens, ((0, 0), (0, pad))),
                    np.pad(s.targets, ((0, 0), (0, pad)), constant_values=IGNORE))


def state_bytes(model_cfg: ModelConfig) -> int:
    """Bytes of the decoding state one sequence needs at the model's `max_seq_len` (all layers):
    the KV buffer for softmax-like algebras, a constant-size state for recurrent ones."""
    from flax import nnx

    from mgr.model import Decoder

    model = nnx.eval_shape(lambda: Decoder(model_cfg, rngs=nnx.Rngs(0)))
    cache = jax.eval_shape(lambda: model.init_cache(1))
    return int(sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(cache)))
