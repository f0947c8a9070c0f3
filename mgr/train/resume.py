"""Resuming a run: is it already finished, which checkpoint to continue from, what it measured.

A finished run's record is final: resuming it returns the record untouched (a second session
that trains no steps would otherwise overwrite its train CE and throughput with nothing). A run
killed after its last checkpoint but before its final record is completed from that
checkpoint's meta (train loss, validation curve, training seconds) without training again. When
the newest checkpoint is unreadable the newest readable one is used, and the record says so;
the run is deterministic, so the losses from there on equal the uninterrupted run's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import MgrError
from mgr.runtime import artifacts
from mgr.runtime.paths import atomic_write_bytes
from mgr.train.checkpoint import Checkpointer


@dataclass
class Restored:
    """The state a resumed loop starts from."""

    state: Any
    data_state: dict
    meta: dict  # step, val_curve, best_val, train_seconds; newer checkpoints add train_loss,
    # tokens_per_step and val_tokens (what completing a record needs)
    note: str | None  # set when an unreadable newer checkpoint was skipped

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def finished_run(run_dir: Path) -> dict | None:
    """The record of a run that completed every planned step with status ok, else None."""
    try:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
        done = summary["results"].get("steps_completed")
        planned = summary["budget"]["steps"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None
    return summary if summary.get("status") == "ok" and done is not None and done == planned else None


def complete_from_final_checkpoint(run_dir: Path) -> dict | None:
    """Finish the record of a run killed after its final checkpoint but before its final record.

    The final checkpoint's meta holds everything the record reports (train loss, validation
    curve, training seconds), so nothing is compiled or trained again. Returns None (resume
    normally) when there is no such checkpoint or its meta predates these fields.
    """
    try:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
        planned, flops_per_step = int(summary["budget"]["steps"]), float(summary["budget"]["flops_per_step_xla"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    if not (Path(run_dir) / "checkpoints").is_dir():  # a run that kept none (the manager would create it)
        return None
    ckpt = Checkpointer(Path(run_dir) / "checkpoints")
    try:
        if planned not in ckpt.all_steps():
            return None
        meta = ckpt.read_meta(planned)
    except MgrError:
        return None
    finally:
        ckpt.close()
    if not _RESULT_KEYS <= set(meta) or int(meta["step"]) != planned or meta["train_loss"] is None:
        return None
    summary["results"].update(results_from_meta(meta, flops_per_step))
    summary["status"], summary["reason"] = "ok", None
    artifacts.write_run(Path(run_dir), summary)
    return summary


_RESULT_KEYS = frozenset({"step", "val_curve", "best_val", "train_seconds", "train_loss", "tokens_per_step",
                          "val_tokens"})


def results_from_meta(meta: dict, flops_per_step: float) -> dict:
    """The record's results from the loop's counters (as saved in every checkpoint's meta)."""
    step, seconds, best_val = int(meta["step"]), float(meta["train_seconds"]), float(meta["best_val"])
    curve, tokens_per_step = meta["val_curve"], int(meta["tokens_per_step"])
    # Throughput over every session of the run (train_seconds accumulates across resumes), so a
    # session that only completes the record still reports what the run measured.
    tps = tokens_per_step * step / seconds if seconds > 0 and step > 0 else None
    scored = [row for row in curve if isinstance(row[2], float) and math.isfinite(row[2])]
    best_row = min(scored, key=lambda row: row[2]) if scored else None  # the first of equal minima
    return {
        "steps_completed": step,
        "train_ce_final": meta["train_loss"],
        "val_ce_final": curve[-1][2] if curve else None,
        # The tuning and reported halves of the validation set (`mgr.train.loop._validate`).
        "val_ce_tune_final": curve[-1][3] if curve and len(curve[-1]) > 4 else None,
        "val_ce_report_final": curve[-1][4] if curve and len(curve[-1]) > 4 else None,
        "val_ce_best": best_val if math.isfinite(best_val) else None,
        "val_ce_best_step": best_row[0] if best_row else None,
        "val_curve": curve,
        "val_tokens": int(meta["val_tokens"]),
        "train_seconds": round(seconds, 3),
        "tokens_per_second": tps,
        "achieved_flops_per_second": flops_per_step * tps / tokens_per_step if tps else None,
    }


def restore_newest(run_name: str, template_state: Any, ckpt, best=None) -> Restored:
    """Restore the newest readable checkpoint among the periodic ones and the best one.

    Raises one-line MgrError naming the run and the steps tried when none can be read.
    """
    sources = [(step, 0, "", ckpt) for step in ckpt.all_steps()]
    if best is not None:
        sources += [(step, 1, " (best)", best) for step in best.all_steps()]
    sources.sort(key=lambda s: (-s[0], s[1]))  # newest first; the periodic one before the best
    if not sources:
        raise MgrError(f"cannot resume run '{run_name}': it has no checkpoints")
    unreadable = []
    for step, _, label, source in sources:
        try:
            state, data_state, meta = source.restore(template_state, step)
        except MgrError:
            unreadable.append(f"{step}{label}")
            continue
        note = f"{_steps(unreadable)} unreadable; resumed from step {step}{label}" if unreadable else None
        return Restored(state, data_state, meta, note)
    raise MgrError(f"cannot resume run '{run_name}': no readable checkpoint (tried step {', '.join(unreadable)})")


def _steps(labels: list[str]) -> str:
    return ("checkpoint at step " if len(labels) == 1 else "checkpoints at steps ") + ", ".join(labels)


def last_train_loss(meta: dict, metrics_path: Path) -> float | None:
    """The train loss at the checkpoint's step: from its meta, or (checkpoints written before
    the meta held it) from the metrics log, which always records the last planned step."""
    if meta.get("train_loss") is not None:
        return float(meta["train_loss"])
    step = int(meta["step"])
    for record in reversed(read_jsonl(metrics_path)):
        if record.get("kind") == "train" and record.get("step") == step:
            return float(record["loss"])
    return None


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records past the checkpoint so the log equals an uninterrupted run's.

    Rewritten atomically: a kill during the rewrite leaves the old log, never half of it.
    """
    if not path.exists():
        return
    keep = [r for r in read_jsonl(path) if r["step"] <= last_step]
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in keep).encode())


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill mid-write
            continue
    return out
