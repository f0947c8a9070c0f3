"""The trainer: one jitted, donated step; validation on fixed tokens; checkpoints; a run record.

`train(...)` is the library entry point behind `mgr train` (and, later, each configuration of
the fixed-FLOPs benchmark). It never raises for a run that merely fails: divergence, errors and
timeouts end with an explicit status in `summary.json`. Bad *input* raises `MgrError`.
"""

from __future__ import annotations

import math
from pathlib import Path

import optim
from mgr.runtime import allocator, artifacts, distributed, runs
from mgr.runtime.paths import atomic_write_bytes
from mgr.train import flops, sharding
from mgr.train.program import (Program, StepParts, build_program, counted_flops,  # noqa: F401
                               make_step, step_flops, with_horizon)
from mgr.train.checkpoint import Checkpointer, NoCheckpoints
from mgr.train.resume import complete_from_final_checkpoint, finished_run, read_jsonl, restore_newest
from mgr.config import DataConfig, ModelConfig, TrainConfig
from core.errors import MgrError


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
          stop_after: int | None = None, trackers: list | None = None, sole_run: bool = False) -> dict:
    """Train one configuration and write its run record; returns the summary.

    The run directory is locked for the whole call: a second process on the same run is refused.
    Resuming a finished run returns its record untouched; one killed after its final checkpoint
    has its record completed from that checkpoint. `stop_after` ends the loop early as
    if interrupted (tests use it to check exact resume). `trackers` (`mgr.train.trackers`)
    mirror the run live; one that fails is recorded as `results.tracker_error`, never fatal.
    `sole_run`: the process trains nothing else (`mgr train`), so JAX's trace and lowering caches
    are dropped once the program is built; a sweep keeps them for its next seeds and rates.
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
                             progress=progress, data=data, stop_after=stop_after, trackers=trackers,
                             sole_run=sole_run)


def _train_locked(model_cfg, data_cfg, train_cfg, run_dir: Path, artifacts_root: Path, *, resume: bool,
                  progress: bool, data, stop_after: int | None, trackers=None, sole_run: bool = False) -> dict:
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
    if sole_run:
        # The traced init and step and their MLIR modules stay cached for later traces that a
        # single run never makes (the compiled step and init are held by `prog`): at C1 dropping
        # them took the peak from 516 to 489 MiB.
        import gc

        import jax

        jax.clear_caches()
        gc.collect()
    allocator.release_free_memory()  # what the lowering, compile and init freed: not under the steps' peak
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
