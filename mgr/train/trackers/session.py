"""A configuration's runs in every chosen tracker, guarded, and the ledger that continues them.

The JSON record is the source of truth; a tracker only mirrors it. So a tracker that raises is
warned about once on stderr, dropped for the rest of the process, and named in `error` (the
trainer records it as `results.tracker_error`); the training run goes on untouched.

The ledger `tracker.json` in a run (or suite) directory maps each tracker kind to its run's
`ref` (an MLflow run id, a TensorBoard folder relative to the tracker root), so a later process
continues the same tracker run rather than starting a second one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

from mgr.train.trackers.base import Tracker, flatten, scalars

LEDGER = "tracker.json"

# metrics.jsonl fields as tracker metric names; a field not listed shows up as KIND/FIELD.
# `flops` is one metric whichever row carries it (logged once per step).
_NAMES = {("train", "loss"): "train/loss", ("train", "grad_norm"): "train/grad_norm",
          ("val", "val_ce"): "val/ce", ("val", "val_ce_tune"): "val/ce_tune",
          ("val", "val_ce_report"): "val/ce_report", ("val", "tokens_per_second"): "train/tokens_per_second",
          ("train", "flops"): "flops", ("val", "flops"): "flops"}


def row_metrics(row: dict) -> dict[str, float]:
    """One metrics.jsonl row (plus any live fields) as {metric name: value}."""
    kind = row.get("kind", "row")
    return {_NAMES.get((kind, k), f"{kind}/{k}"): float(v) for k, v in row.items()
            if k not in ("kind", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracking:
    """The runs of every chosen tracker, each call guarded (see the module docstring)."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = {t.name: t for t in trackers}
        self.runs: dict[str, Any] = {}
        self.error: str | None = None
        self._flops_step: int | None = None

    def _guard(self, kind: str, fn: Callable, *args, **kw):
        if kind not in self.trackers:
            return None
        try:
            return fn(*args, **kw)
        except Exception as e:  # noqa: BLE001 - a tracker never fails the run it mirrors
            first = (str(e).strip().splitlines() or [""])[0][:200]
            msg = f"{kind}: {type(e).__name__}: {first}"
            if self.error is None:
                print(f"warning: tracker {msg}; it is off for the rest of this run, whose JSON record "
                      "is complete", file=sys.stderr)
            self.error = msg if self.error is None else f"{self.error}; {msg}"
            self.trackers.pop(kind, None)
            self.runs.pop(kind, None)
            return None

    def start(self, name: str, params: dict, tags: dict[str, str], *, previous: dict | None = None,
              resume_step: int | None = None, only: set[str] | None = None) -> "Tracking":
        """Open (or, with `previous[kind]` refs, continue) a run in every tracker (or those in `only`)."""
        previous = previous or {}
        self.runs = {}
        self._flops_step = None
        for kind, tracker in list(self.trackers.items()):
            if only is not None and kind not in only:
                continue
            run = self._guard(kind, tracker.start_run, name, params, tags,
                              previous=previous.get(kind), resume_step=resume_step)
            if run is not None:
                self.runs[kind] = run
        return self

    def refs(self) -> dict[str, dict]:
        return {kind: run.ref for kind, run in self.runs.items()}

    def log(self, step: int, metrics: dict[str, float], only: set[str] | None = None) -> None:
        for kind, run in list(self.runs.items()):
            if only is None or kind in only:
                self._guard(kind, run.log, step, metrics)

    def log_row(self, row: dict, only: set[str] | None = None) -> None:
        """The loop's per-row hook: one metrics.jsonl row to every run."""
        metrics = row_metrics(row)
        if "flops" in metrics:
            if self._flops_step == row["step"]:
                del metrics["flops"]
            self._flops_step = row["step"]
        self.log(int(row["step"]), metrics, only)

    def finish(self, results: dict[str, float], status: str, tags: dict[str, str], *, step: int,
               record: dict | None = None) -> None:
        for kind, run in list(self.runs.items()):
            self._guard(kind, run.finish, results, status, tags, step=step, record=record)
        self.runs = {}

    def annotate(self, refs: dict[str, dict], tags: dict[str, str], text: str | None = None) -> None:
        for kind, ref in refs.items():
            tracker = self.trackers.get(kind)
            if tracker is not None:
                self._guard(kind, tracker.annotate, ref, tags, text)

    def describe(self, markdown: str, tags: dict[str, str]) -> None:
        for kind, tracker in list(self.trackers.items()):
            self._guard(kind, tracker.describe, markdown, tags)


def read_ledger(directory: Path) -> dict:
    try:
        data = json.loads((Path(directory) / LEDGER).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_ledger(directory: Path, data: dict) -> None:
    from mgr.runtime.artifacts import write_json

    write_json(Path(directory) / LEDGER, data)


def run_params(summary: dict, sections: tuple[str, ...] = ("model", "data", "train", "optim")) -> dict:
    """A record's configuration and budget as flat hyperparameters."""
    config = summary.get("config") or {}
    tree = {k: config[k] for k in sections if k in config}
    tree["budget"] = summary.get("budget") or {}
    return flatten(tree)


def run_tags(summary: dict) -> dict[str, str]:
    meta = summary.get("meta") or {}
    git = meta.get("git") or {}
    tags = {"mgr.run_id": meta.get("run_id"), "mgr.schema": summary.get("schema_version"),
            "mgr.git_commit": git.get("commit"), "mgr.git_dirty": git.get("dirty"),
            "mgr.device": (meta.get("device") or {}).get("platform")}
    return {k: str(v) for k, v in tags.items() if v is not None}


def final_results(summary: dict) -> dict[str, float]:
    return scalars(summary.get("results") or {})


def end_tags(summary: dict) -> dict[str, str]:
    return {"mgr.status": str(summary.get("status")), "mgr.reason": str(summary.get("reason") or "")}
