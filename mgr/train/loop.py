"""The training loop proper: dispatch, lagged metrics, validation, checkpoints, resume.

The host fetches and places step t+1's batch while step t runs, then reads step t's metrics and
only then dispatches step t+1, so one step's temporary buffers exist at a time. (Dispatching
t+1 before t had finished let XLA allocate t+1's buffers while t's were live: at the C1 shape
the warm median peak RSS of `mgr.bench.process` was 619-643 MiB that way and 598-618 this way,
train tokens/s the same within noise.) Validation and checkpoints synchronise, and their time
is excluded from throughput.

Step t's metrics become readable a moment before XLA frees step t's temporaries (apparently it
marks the outputs ready first), so a dispatch right after the read sometimes allocates t+1's
temporaries while t's still exist. On tcmalloc, C1's peak RSS in `mgr.bench.process` was then
568 or 661 MiB from run to run (661 = 568 + the step's 93 MiB of temporaries); with a 0.1 ms
pause before each dispatch, 568 in 5 runs of 5, and again with the 0.2 ms used here. The pause
is taken only when a step's temporaries are large (`_SETTLE_BYTES`), where a step takes
milliseconds.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax

from mgr.runtime import distributed
from mgr.train.resume import last_train_loss, results_from_meta, truncate_metrics

_SETTLE_BYTES = 16 << 20
_SETTLE_S = 2e-4


def _progress(enabled: bool, total: int, start: int):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.description}"), TimeRemainingColumn(), transient=False)
    bar.start()
    bar.add_task("", total=total, completed=start)
    return bar


def _validate(prog, params, val) -> tuple[float, float, float]:
    """Validation CE on the whole fixed set, and on its two halves: the first half is the
    tuning slice (learning rates are chosen on it), the second the reported slice, so a
    benchmark never reports a number on the tokens it tuned on. With a single validation batch
    the halves cannot be disjoint and both equal the whole. One call of the evaluation program
    gives both halves (one dispatch, one synchronisation)."""
    n = int(val.shape[0])
    tune, report = (float(x) for x in jax.device_get(prog.eval_fn(params, val)))
    if n < 2:
        return tune, tune, report
    h = n // 2
    return (h * tune + (n - h) * report) / n, tune, report


def run_loop(prog, data, train_cfg, steps, run_dir: Path, ckpt, best, *, restored,
             progress: bool, stop_after: int | None, on_row=None) -> dict:
    """Train from step 0, or from `restored` (a `mgr.train.resume.Restored`) when resuming.

    `on_row(row)` (an experiment tracker) gets every row written to metrics.jsonl as it is
    written; validation rows also carry this session's `tokens_per_second` (measured at that
    synchronisation point, so not part of the deterministic log)."""
    state = prog.state
    # Each process reads only its own rows; the Program assembles the global batch.
    it = data.train_iterator(train_cfg.seed, rows=prog.local_rows)
    val = prog.put_val(data.val_batches(rows=prog.local_rows))
    primary = distributed.is_primary()  # the one process that writes metrics.jsonl
    tokens_per_step = int(val.shape[1] * (val.shape[2] - 1))  # B * T: inputs exclude the last column
    metrics_path = run_dir / "metrics.jsonl"
    start, val_curve, best_val, train_seconds = 0, [], math.inf, 0.0
    last = {"loss": None}
    if restored is not None:
        state = restored.state
        it.set_state(restored.data_state)
        start, val_curve = restored.step, restored.meta["val_curve"]
        best_val, train_seconds = float(restored.meta["best_val"]), float(restored.meta["train_seconds"])
        # A session that trains no further steps (killed after the final checkpoint) still
        # reports the last loss the run measured.
        last["loss"] = last_train_loss(restored.meta, metrics_path)
        if primary:
            truncate_metrics(metrics_path, start)
    elif primary and metrics_path.exists():
        metrics_path.unlink()

    log = metrics_path.open("a") if primary else None
    bar = _progress(progress, steps, start)
    outcome = {"status": "ok", "reason": None}

    def meta():
        return {"step": step_done, "val_curve": val_curve, "best_val": best_val,
                "train_seconds": train_seconds, "train_loss": last["loss"],
                "tokens_per_step": tokens_per_step, "val_tokens": int(val.shape[0] * tokens_per_step),
                "layout": train_cfg.layout}  # the mesh it was saved under (resume may use another)

    def emit(row: dict, **live) -> None:
        if log is None:
            return
        log.write(json.dumps(row) + "\n")
        log.flush()
        if on_row is not None:
            on_row({**row, **live})

    def consume(step: int, m) -> bool:
        """Record step `step`'s metrics; False if the loss is not finite."""
        if step == last.get("step"):  # recorded already: a Ctrl-C fell before `pending` was cleared
            return math.isfinite(last["loss"])
        loss = float(m["loss"])
        last["loss"], last["step"] = loss, step
        if not math.isfinite(loss):
            return False
        if step % train_cfg.log_every == 0 or step == steps:
            emit({"kind": "train", "step": step, "loss": loss, "grad_norm": float(m["grad_norm"]),
                  "flops": step * prog.flops_per_step})
        if bar is not None:
            tps = tokens_per_step * (step - start) / max(train_seconds - t_resumed, 1e-9)
            bar.update(0, completed=step, description=f"loss {loss:.3f}  {tps:,.0f} tok/s")
        return True

    step_done, pending = start, None
    settle = prog.memory.get("temp_memory_bytes", 0) >= _SETTLE_BYTES
    t_resumed = train_seconds
    tick = time.perf_counter()
    resume_point = None  # the iterator's state after `step_done` batches, once it has run ahead
    try:
        for step in range(start + 1, steps + 1):
            resume_point = it.get_state()
            batch = prog.put_batch(next(it))
            if pending is not None and not consume(*pending):
                outcome = {"status": "diverged", "reason": f"non-finite loss at step {pending[0]}"}
                break
            if settle and step > start + 1:
                time.sleep(_SETTLE_S)  # let XLA free the last step's temporaries first
            state, m = prog.step_fn(state, batch)
            pending, step_done, resume_point = (step, m), step, None
            due_eval = step % train_cfg.eval_every == 0 or step == steps
            due_ckpt = step % train_cfg.checkpoint_every == 0 or step == steps
            stop = stop_after is not None and step >= stop_after
            if due_eval or due_ckpt or stop:
                if not consume(*pending):
                    outcome = {"status": "diverged", "reason": f"non-finite loss at step {step}"}
                    pending = None
                    break
                pending = None
                train_seconds += time.perf_counter() - tick
                if due_eval:
                    ce, ce_tune, ce_report = _validate(prog, state["params"], val)
                    val_curve.append([step, step * prog.flops_per_step, ce, ce_tune, ce_report])
                    tps = tokens_per_step * (step - start) / max(train_seconds - t_resumed, 1e-9)
                    emit({"kind": "val", "step": step, "val_ce": ce, "val_ce_tune": ce_tune,
                          "val_ce_report": ce_report, "flops": step * prog.flops_per_step},
                         tokens_per_second=tps)
                    if ce < best_val:
                        best_val = ce
                        best.save(step, state, it.get_state(), meta())
                if due_ckpt or stop:
                    ckpt.save(step, state, it.get_state(), meta())
                tick = time.perf_counter()
            if stop and step < steps:
                outcome = {"status": "interrupted", "reason": f"stopped after step {step}"}
                break
            over = train_cfg.time_limit_s and train_seconds + time.perf_counter() - tick > train_cfg.time_limit_s
            if train_cfg.time_limit_s and distributed.process_count() > 1:
                # Clocks differ between processes; one stopping alone would leave the others
                # waiting in the next step's collectives. Process 0's clock decides (a tiny
                # broadcast per step, paid only with a time limit).
                over = distributed.agree(bool(over))
            if over and step < steps:  # the last step finishes the run, however long it took
                if not due_ckpt:  # saved just above otherwise
                    ckpt.save(step, state, it.get_state(), meta())
                outcome = {"status": "timeout", "reason": f"time limit {train_cfg.time_limit_s}s at step {step}"}
                break
        if pending is not None and not consume(*pending):
            outcome = {"status": "diverged", "reason": f"non-finite loss at step {pending[0]}"}
    except KeyboardInterrupt:
        if distributed.process_count() > 1:
            # Each process is interrupted at its own step: they cannot save one checkpoint together.
            outcome = {"status": "interrupted",
                       "reason": f"interrupted near step {step_done}; --resume continues from the last checkpoint"}
        else:
            jax.block_until_ready(state)
            if pending is not None and not consume(*pending):  # its row belongs in metrics.jsonl
                outcome = {"status": "diverged", "reason": f"non-finite loss at step {pending[0]}"}
            else:
                # Interrupted between fetching a batch and dispatching its step: that batch is unused.
                data_state = it.get_state() if resume_point is None else resume_point
                ckpt.save(step_done, state, data_state, meta())
                outcome = {"status": "interrupted",
                           "reason": f"interrupted after step {step_done}; --resume continues"}
    finally:
        if log is not None:
            log.close()
        if bar is not None:
            bar.stop()
    outcome["results"] = results_from_meta(meta(), prog.flops_per_step)
    return outcome
