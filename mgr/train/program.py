"""The compiled pieces of a run: the pure step, its per-process cache, the Program a run trains.

The cache (`_COMPILED`, one entry per program key) is why a sweep pays each arm's lowering,
FLOPs count and compile once: the preflight's FLOPs count lowers the step, the arm's first run
compiles that lowering, and every later seed, rate and horizon reuses the compiled step, the
jitted init and the evaluation program.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import optim
from mgr.train import flops, sharding
from mgr.config import ModelConfig, TrainConfig
from mgr.model import Decoder

@dataclass
class Program:
    """The compiled pieces of a run, built once and shared by the loop."""

    graphdef: Any
    state: dict
    step_fn: Any  # compiled train step: (state, batch) -> (state, metrics)
    eval_fn: Callable  # (params, val [N, B, T+1]) -> [CE of the tuning half, CE of the reported half]
    flops_per_step: float
    memory: dict
    compile_seconds: float
    total_steps: int
    put_batch: Callable  # this process's rows of a batch -> the global device batch
    put_val: Callable  # the same for validation batches [N, B, T+1] (rows along axis 1)
    local_rows: slice  # the rows of every batch this process feeds (all of them in one process)


@dataclass
class StepParts:
    """The pure pieces of a run, before anything is compiled."""

    graphdef: Any
    init: Callable  # () -> state (params, optimizer state, step)
    step: Callable  # (state, batch) -> (state, metrics)
    loss_of_params: Callable  # (params, batch) -> mean cross-entropy


def make_step(model_cfg: ModelConfig, train_cfg: TrainConfig, total_steps: int,
              loss_fn: Callable[[Decoder, Any], jax.Array] | None = None) -> StepParts:
    """The model's loss, the optimizer and one train step as pure functions of arrays.

    `loss_fn(model, batch)` defaults to the next-token loss of a packed `[B, T+1]` batch; probe
    tasks pass a loss over their scored positions (the batch may be any pytree of arrays).
    """
    loss_fn = loss_fn or (lambda model, batch: model.loss(batch))

    def transform(hyper):
        # Built per trace from the state's hyperparameters: the learning rate and the horizon
        # are arguments of the compiled step, not constants in it, so every rate, budget and
        # seed of a sweep runs one program (one compile, one FLOPs count).
        return optim.build_transform(train_cfg, hyper["total_steps"], peak_lr=hyper["peak_lr"])

    def init(seed=None, peak_lr=None, horizon=None):
        # Each may be a traced scalar: build_program passes them as arguments, so every seed,
        # rate and horizon of an arm initialises through one compiled program (the same values
        # as the constants: tests/test_program_reuse.py).
        key = jax.random.key(train_cfg.seed if seed is None else seed)  # what nnx.Rngs(int) makes
        _, params = nnx.split(Decoder(model_cfg, rngs=nnx.Rngs(key)), nnx.Param)
        hyper = {"peak_lr": jnp.asarray(train_cfg.learning_rate if peak_lr is None else peak_lr, jnp.float32),
                 "total_steps": jnp.asarray(total_steps if horizon is None else horizon, jnp.int32)}
        return {"params": params, "opt": transform(hyper).init(params), "step": jnp.zeros((), jnp.int32),
                "hyper": hyper}

    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Decoder(model_cfg, rngs=nnx.Rngs(train_cfg.seed))),
                            nnx.Param)

    def loss_of_params(p, batch):
        return loss_fn(nnx.merge(graphdef, p), batch)

    def step(state, batch):
        loss, grads = jax.value_and_grad(loss_of_params)(state["params"], batch)
        updates, opt = transform(state["hyper"]).update(grads, state["opt"], state["params"], value=loss,
                                                         value_fn=lambda p: loss_of_params(p, batch))
        new = {"params": optax.apply_updates(state["params"], updates), "opt": opt,
               "step": state["step"] + 1, "hyper": state["hyper"]}
        return new, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    return StepParts(graphdef, init, step, loss_of_params)


def step_flops(model_cfg: ModelConfig, train_cfg: TrainConfig, batch_shape: tuple[int, int]) -> float:
    """XLA's count of one train step's FLOPs without initialising or compiling anything (the
    lowering is kept: the run that trains this program compiles it without lowering again)."""
    return _arm(model_cfg, train_cfg, batch_shape).flops


# What the runs of one program share in this process. The step's program depends on the model,
# the optimizer and schedule kinds and knobs, the shape and the device count, never on the seed,
# the peak learning rate or the horizon (those are arguments of the init and state of the step),
# so a sweep's runs share one entry per arm: one lowering, one FLOPs count, one compile, one
# jitted init and one evaluation program.
_NOT_IN_PROGRAM = ("seed", "learning_rate", "steps", "target_flops", "min_steps", "eval_every",
                   "checkpoint_every", "checkpoints", "time_limit_s")


@dataclass
class _Arm:
    parts: StepParts
    place: sharding.Placement
    init: Callable  # jitted (seed, peak_lr, horizon) -> the placed state
    lowered: Any  # the step lowered for the placement; None once compiled
    flops: float
    lower_seconds: float  # tracing and lowering (not the FLOPs count): charged to the run that compiles
    compiled: Any = None
    memory: dict | None = None
    eval_fn: Callable | None = None


_COMPILED: dict[str, _Arm] = {}


def _program_key(model_cfg: ModelConfig, train_cfg: TrainConfig, batch_shape) -> str:
    train = {k: v for k, v in train_cfg.to_dict().items() if k not in _NOT_IN_PROGRAM}
    return json.dumps([model_cfg.to_dict(), train, list(batch_shape)], sort_keys=True, default=str)


def _init_args(seed, peak_lr, horizon) -> tuple:
    return jnp.asarray(seed, jnp.int32), jnp.asarray(peak_lr, jnp.float32), jnp.asarray(horizon, jnp.int32)


def _arm(model_cfg: ModelConfig, train_cfg: TrainConfig, batch_shape) -> _Arm:
    key = _program_key(model_cfg, train_cfg, batch_shape)
    if key not in _COMPILED:
        t0 = time.perf_counter()
        parts = make_step(model_cfg, train_cfg, total_steps=1000)
        init, place, batch, abstract = sharding.placed_init(parts.init, batch_shape, train_cfg.layout,
                                                            _init_args(0, 1.0, 1000))
        lowered = sharding.lower_step(parts.step, place, abstract, batch)
        lower_s = time.perf_counter() - t0
        count = counted_flops(parts.step, abstract, batch, lowered=lowered)
        _COMPILED[key] = _Arm(parts, place, init, lowered, count, lower_s)
    return _COMPILED[key]


def _eval_program(loss_of_params: Callable) -> Callable:
    @jax.jit
    def eval_fn(params, val_NxBxT):
        """[CE of the tuning half, CE of the reported half] in one call (both the whole set's
        CE when it has a single batch)."""
        per_batch = jax.lax.map(lambda b: loss_of_params(params, b), val_NxBxT)
        n = val_NxBxT.shape[0]
        if n < 2:
            return jnp.stack([jnp.mean(per_batch)] * 2)
        return jnp.stack([jnp.mean(per_batch[:n // 2]), jnp.mean(per_batch[n // 2:])])

    return eval_fn


def build_program(model_cfg: ModelConfig, train_cfg: TrainConfig, batch_shape: tuple[int, int],
                  total_steps: int) -> Program:
    """Initialise the model and optimizer, compile the train step AOT, read its FLOPs."""
    arm = _arm(model_cfg, train_cfg, batch_shape)
    compile_s = 0.0  # what this run spent lowering and compiling: nothing when an earlier run's step serves
    if arm.compiled is None:
        t0 = time.perf_counter()
        arm.compiled = arm.lowered.compile()
        compile_s = arm.lower_seconds + time.perf_counter() - t0
        arm.lowered, arm.memory = None, flops.xla_memory(arm.compiled)
        arm.eval_fn = _eval_program(arm.parts.loss_of_params)
    state = arm.init(*_init_args(train_cfg.seed, train_cfg.learning_rate, total_steps))
    place = arm.place
    return Program(arm.parts.graphdef, state, arm.compiled, arm.eval_fn, arm.flops, arm.memory, compile_s,
                   total_steps, place.put_batch, place.put_val, place.local_rows)


def with_horizon(prog: Program, steps: int) -> Program:
    """`prog` with the schedule's horizon set to `steps` (placed as the old value was)."""
    old = prog.state["hyper"]["total_steps"]
    hyper = {**prog.state["hyper"], "total_steps": jax.device_put(jnp.asarray(steps, jnp.int32), old.sharding)}
    return dataclasses.replace(prog, state={**prog.state, "hyper": hyper}, total_steps=steps)


def counted_flops(step: Callable, *args, lowered=None) -> float:
    """XLA's FLOPs of `step`, counted on its lowered HLO with every sequential loop unrolled.

    Compiled and lowered counts agree to 0.2% for loop-free programs, but both count a
    while-loop body once; lowering under `unrolled_loops()` (never compiled, never run) charges
    every iteration: a scan over layers, key blocks, head chunks, or HOSS's Lanczos steps.

    The unrolled lowering costs as much as tracing the step again, so the count is cached on
    disk (`flops.cached_count`), keyed by the ordinary lowering of the same program: pass
    `lowered` when the caller has one (build_program lowers the step to compile it anyway).
    """
    from attention.base import unrolled_loops

    def count() -> float:
        with unrolled_loops():
            # a fresh wrapper, so no trace cached outside the context is reused
            unrolled = jax.jit(lambda *a: step(*a)).lower(*args)
        return flops.xla_flops(unrolled)

    program = lowered if lowered is not None else jax.jit(step).lower(*args)
    return flops.cached_count(program.as_text(), count)
