"""Experiment trackers beside the JSON record: `--tracker tensorboard,mlflow`.

Kinds register in their own files (`tensorboard.py`, `mlflow_file.py`; imported here, which
imports neither optional package). `mgr train` mirrors every metrics.jsonl row live through
`Tracking.log_row`; the suites log each configuration from its finished record
(`mgr.bench.tracking`). See markdown_documentation/trackers.md.
"""

from __future__ import annotations

from pathlib import Path

from mgr.train.trackers import mlflow_file, tensorboard  # noqa: F401  (registers the kinds)
from mgr.train.trackers.base import Tracker, build, flatten, names, parse, register, scalars  # noqa: F401
from mgr.train.trackers.session import (LEDGER, Tracking, end_tags, final_results, read_ledger,  # noqa: F401
                                        row_metrics, run_params, run_tags, write_ledger)

TRAIN_EXPERIMENT = "train"  # every `mgr train` run is one run of this experiment


def from_flags(spec: str | None, tracker_dir: Path | None, artifacts_dir: Path,
               experiment: str = TRAIN_EXPERIMENT) -> list[Tracker]:
    """The trackers `--tracker`/`--tracker-dir` ask for ([] when none); one-line errors.

    The default directory is `tracking/` beside the artifacts directory, not inside it: MLflow's
    file store refuses every run whose path has a directory named `artifacts` (its guard
    against runs hidden in artifact folders), which the default `artifacts/` would be.
    """
    return build(parse(spec), tracker_dir or Path(artifacts_dir).parent / "tracking", experiment)


def open_train_run(trackers: list[Tracker], run_dir: Path, summary: dict, *,
                   resume_step: int | None) -> Tracking | None:
    """Start (or, resuming, continue) the tracker runs of one training run.

    A tracker that had no run in the earlier session gets the rows the log already holds up to
    `resume_step`, so its run still starts at step 1.
    """
    if not trackers:
        return None
    from mgr.train.resume import read_jsonl

    run_dir = Path(run_dir)
    ledger = read_ledger(run_dir) if resume_step is not None else {}
    previous = {k: v["ref"] for k, v in ledger.items() if isinstance(v, dict) and "ref" in v}
    tracking = Tracking(trackers).start(run_dir.name, run_params(summary), run_tags(summary),
                                        previous=previous, resume_step=resume_step)
    fresh = {k for k in tracking.runs if k not in previous}
    if resume_step is not None and fresh:
        for row in read_jsonl(run_dir / "metrics.jsonl"):
            if row.get("step", 0) <= resume_step:
                tracking.log_row(row, only=fresh)
    write_ledger(run_dir, {**ledger, **{k: {"ref": ref, "finished": False} for k, ref in tracking.refs().items()}})
    return tracking


def finish_train_run(tracking: Tracking, run_dir: Path, summary: dict) -> str | None:
    """Log the final results and status; returns the tracker error of the whole run, if any."""
    refs = tracking.refs()
    step = int((summary.get("results") or {}).get("steps_completed") or 0)
    done = summary.get("status") != "interrupted"
    # An interrupted session's numbers are not final: `--resume` logs the run's finals once.
    tracking.finish(final_results(summary) if done else {}, str(summary.get("status")), end_tags(summary),
                    step=step, record=summary)
    ledger = read_ledger(run_dir)
    for kind in refs:
        if kind in tracking.trackers:  # finished without error
            ledger[kind] = {"ref": refs[kind], "finished": done}
    write_ledger(run_dir, ledger)
    return tracking.error
