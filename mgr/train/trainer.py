"""The trainer: one jitted, donated step; validation on fixed tokens; checkpoints; a run record.

`train(...)` is the library entry point behind `mgr train` (and, later, each configuration of
the fixed-FLOPs benchmark). It never raises for a run that merely fails: divergence, errors and
timeouts end with an explicit status in `summary.json`. Bad *input* raises `MgrError`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import optim
from mgr.runtime import artifacts, distributed, runs
from mgr.runtime.paths import atomic_write_bytes
from mgr.train import flops, sharding
from mgr.train.checkpoint import Checkpointer, NoCheckpoints
from mgr.train.resume import complete_from_final_checkpoint, finished_run, read_jsonl, restore_newest
from mgr.config import DataConfig, ModelConfig, TrainConfig
from core.errors import MgrError
from mgr.model import Decoder


@dataclass
class Program:
    """The compiled pieces of a run, built once and shared by the loop."""

    graphdef: Any
    state: dict
    step_fn: Any  # compiled train step: (state, batch) -> (state, metrics)
    eval_fn: Callable
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

    def init(seed=None):
        # `seed` may be a traced scalar: build_program passes it as an argument, so every seed
        # of an arm initialises through one compiled program (same values as the constant).
        key = jax.random.key(train_cfg.seed if seed is None else seed)  # what nnx.Rngs(int) makes
        _, params = nnx.split(Decoder(model_cfg, rngs=nnx.Rngs(key)), nnx.Param)
        hyper = {"peak_lr": jnp.asarray(train_cfg.learning_rate, jnp.float32),
                 "total_steps": jnp.asarray(total_steps, jnp.int32)}
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
    """XLA's count of one train step's FLOPs without initialising or compiling anything."""
    parts = make_step(model_cfg, train_cfg, total_steps=1000)
    return counted_flops(parts.step, jax.eval_shape(parts.init), jax.ShapeDtypeStruct(batch_shape, jnp.int32))


# Compiled train steps of this process. The step's program depends on the model, the optimizer
# and schedule kinds and knobs, the shape and the device count, never on the seed, the peak
# learning rate or the horizon (those are state), so a sweep's runs share one entry per arm.
_COMPILED: dict[str, tuple[Any, float, Callable]] = {}
_NOT_IN_PROGRAM = ("seed", "learning_rate", "steps", "target_flops", "min_steps", "eval_every",
                   "checkpoint_every", "checkpoints", "time_limit_s")


def _program_key(model_cfg: ModelConfig, train_cfg: TrainConfig, batch_shape) -> str:
    train = {k: v for k, v in train_cfg.to_dict().items() if k not in _NOT_IN_PROGRAM}
    return json.dumps([model_cfg.to_dict(), train, list(batch_shape)], sort_keys=True, default=str)


def build_program(model_cfg: ModelConfig, train_cfg: TrainConfig, batch_shape: tuple[int, int],
                  total_steps: int) -> Program:
    """Initialise the model and optimizer, compile the train step AOT, read its FLOPs."""
    parts = make_step(model_cfg, train_cfg, total_steps)
    graphdef, step, loss_of_params = parts.graphdef, parts.step, parts.loss_of_params
    state, place, batch = sharding.init_placed(parts.init, train_cfg.seed, batch_shape, train_cfg.layout)
    key = _program_key(model_cfg, train_cfg, batch_shape)
    compile_s = 0.0  # what this run spent compiling: nothing when an earlier run's step serves
    if key not in _COMPILED:
        t0 = time.perf_counter()
        lowered = sharding.lower_step(step, place, state, batch)
        compiled = lowered.compile()
        compile_s = time.perf_counter() - t0

        @jax.jit
        def eval_fn(params, val_NxBxT):
            return jnp.mean(jax.lax.map(lambda b: loss_of_params(params, b), val_NxBxT))

        _COMPILED[key] = (compiled, counted_flops(step, state, batch, lowered=lowered), eval_fn)
    compiled, step_flops, eval_fn = _COMPILED[key]

    return Program(graphdef, state, compiled, eval_fn, step_flops,
                   flops.xla_memory(compiled), compile_s, total_steps, place.put_batch, place.put_val,
                   place.local_rows)


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


def plan_steps(train_cfg: TrainConfig, flops_per_step: float) -> int:
    """Steps from `--steps`, or from the FLOPs budget divided by the compiled step's FLOPs."""
    if train_cfg.target_flops is None:
        return int(train_cfg.steps)
    if flops_per_step <= 0:
        raise MgrError("XLA reported no FLOPs for the train step; use --steps instead of --target-flops")
    steps = int(train_cfg.target_flops // flops_per_step)
    if steps < train_cfg.min_steps:
        need = train_cfg.min_steps * flops_per_step
        raise MgrError(f"--target-flops {train_cfg.target_flops:.3g} gives {steps} steps, fewer than the "
                       f"minimum {train_cfg.min_steps}; the smallest budget that works is {need:.3g}")
    return steps


def train(model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: TrainConfig, *, run_dir: Path,
          artifacts_root: Path, resume: bool = False, progress: bool = False, data=None,
          stop_after: int | None = None, trackers: list | None = None) -> dict:
    """Train one configuration and write its run record; returns the summary.

    The run directory is locked for the whole call: a second process on the same run is refused.
    Resuming a finished run returns its record untouched; one killed after its final checkpoint
    has its record completed from that checkpoint. `stop_after` ends the loop early as
    if interrupted (tests use it to check exact resume). `trackers` (`mgr.train.trackers`)
    mirror the run live; one that fails is recorded as `results.tracker_error`, never fatal.
    """
    if model_cfg.max_seq_len < data_cfg.seq_len:
        raise MgrError(f"seq_len {data_cfg.seq_len} exceeds the model's max_seq_len {model_cfg.max_seq_len}")
    sharding.check_layout(train_cfg.layout, data_cfg.batch_size)
    run_dir = Path(run_dir)
    with runs.locked(run_dir):
        if resume:
            done = finished_run(run_dir)
            distributed.barrier("finished")  # several processes: all read the record before it changes
            if done is None:
                done = complete_from_final_checkpoint(run_dir)
            if done is not None:
                return done
        return _train_locked(model_cfg, data_cfg, train_cfg, run_dir, artifacts_root, resume=resume,
                             progress=progress, data=data, stop_after=stop_after, trackers=trackers)


def _train_locked(model_cfg, data_cfg, train_cfg, run_dir: Path, artifacts_root: Path, *, resume: bool,
                  progress: bool, data, stop_after: int | None, trackers=None) -> dict:
    from mgr.data import build_data
    from mgr.train.loop import run_loop

    ckpt_dir = run_dir / "checkpoints"
    if resume and not (ckpt_dir.is_dir() and any(ckpt_dir.iterdir())):
        raise MgrError(f"--resume: no checkpoints in {run_dir.name}/checkpoints")
    if not resume and (run_dir / "summary.json").exists():
        raise MgrError(f"run '{run_dir.name}' already exists; pass --resume or choose another --run-id")
    distributed.barrier("checked")  # several processes: nobody writes the run before all have checked it
    data = build_data(data_cfg) if data is None else data
    if data.tokenizer.vocab_size != model_cfg.vocab_size:
        raise MgrError(f"model vocab_size {model_cfg.vocab_size} != tokenizer's {data.tokenizer.vocab_size}")

    batch_shape = (data_cfg.batch_size, data_cfg.seq_len + 1)
    provisional = 1000 if train_cfg.steps is None else train_cfg.steps
    prog = build_program(model_cfg, train_cfg, batch_shape, provisional)
    steps = plan_steps(train_cfg, prog.flops_per_step)
    if steps != provisional:  # the horizon is an argument of the compiled step: no rebuild
        prog = with_horizon(prog, steps)

    ckpt = Checkpointer(ckpt_dir) if train_cfg.checkpoints else NoCheckpoints()
    best = Checkpointer(ckpt_dir / "best", max_to_keep=1) if train_cfg.checkpoints else NoCheckpoints()
    try:
        # Restore before the record is rewritten: an unreadable run keeps its old record.
        restored = restore_newest(run_dir.name, prog.state, ckpt, best) if resume else None
        summary = _record(model_cfg, data_cfg, train_cfg, data, prog, steps, run_dir, artifacts_root)
        # `mgr generate` / `mgr export` read the tokenizer from the run (process 0 writes records)
        if train_cfg.checkpoints and distributed.is_primary():
            atomic_write_bytes(run_dir / "tokenizer.model", data.tokenizer.model_proto)
        artifacts.write_run(run_dir, summary)
        tracking = None
        if trackers and distributed.is_primary():
            from mgr.train.trackers import open_train_run

            tracking = open_train_run(trackers, run_dir, summary,
                                      resume_step=restored.step if restored is not None else None)
        try:
            outcome = run_loop(prog, data, train_cfg, steps, run_dir, ckpt, best, restored=restored,
                               progress=progress, stop_after=stop_after,
                               on_row=tracking.log_row if tracking is not None else None)
        except MgrError:
            raise
        except Exception as e:  # a failing run is recorded, not lost
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            outcome = {"status": "error", "reason": f"{type(e).__name__}: {msg[:300]}", "results": {}}
    finally:
        ckpt.close()
        best.close()
    if restored is not None:  # the layout is the one asked for now; the checkpoint's may differ
        summary["results"]["resumed_from"] = {"step": restored.step, "layout": restored.meta.get("layout")}
    if restored is not None and restored.note:
        outcome["reason"] = "; ".join(r for r in (outcome["reason"], restored.note) if r)
    summary["results"].update(outcome["results"])
    summary["status"], summary["reason"] = outcome["status"], outcome["reason"]
    if tracking is not None:
        from mgr.train.trackers import finish_train_run

        error = finish_train_run(tracking, run_dir, summary)
        if error:
            summary["results"]["tracker_error"] = error
    artifacts.write_run(run_dir, summary)
    return summary


def _record(model_cfg, data_cfg, train_cfg, data, prog, steps: int, run_dir: Path, artifacts_root: Path) -> dict:
    """The run record as written before the first step (status `running`)."""
    return {
        "schema_version": artifacts.SCHEMA_VERSION,
        "meta": artifacts.provenance(run_dir.name),
        "config": {"model": model_cfg.to_dict(), "data": data_cfg.to_dict(), "dataset": data.describe(),
                   "train": train_cfg.to_dict(), "optim": optim.describe(train_cfg)},
        "budget": {"target_flops": train_cfg.target_flops, "flops_per_step_xla": prog.flops_per_step,
                   "flops_per_step_analytic": flops.analytic_train_flops_per_step(
                       model_cfg, data_cfg.batch_size, data_cfg.seq_len),
                   "steps": steps, "tokens": steps * data_cfg.batch_size * data_cfg.seq_len,
                   "flops_source": "xla_cost_analysis_unrolled_hlo"},
        "results": {"compile_seconds": round(prog.compile_seconds, 3), **prog.memory},
        "status": "running", "reason": None,
        "paths": {"run": str(run_dir.relative_to(artifacts_root)) if run_dir.is_relative_to(artifacts_root)
                  else run_dir.name, "metrics": "metrics.jsonl", "checkpoints": "checkpoints"},
    }


def read_metrics(run_dir: Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


def finite(x: float) -> bool:
    return x is not None and math.isfinite(x)
