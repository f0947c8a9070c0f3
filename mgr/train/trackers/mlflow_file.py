"""MLflow: a local file store at ROOT/mlruns (`mlflow ui --backend-store-uri ROOT/mlruns`).

Only `MlflowClient` is used, never the fluent `mlflow.start_run` API: the fluent API keeps one
global active run per process, which a suite of many runs (and a trainer that is a library
call) must not share; the client addresses every run by id, which is also how a resumed run
continues the same MLflow run.

MLflow 3 refuses the file store unless `MLFLOW_ALLOW_FILE_STORE=true` (it wants a database
backend). The store here is a folder beside the run records that needs no server, so the
variable is set, only if unset, just before the client is made, and only when this tracker is
asked for.

Resuming: the killed session may have logged steps after the checkpoint. MLflow cannot delete
metric points, so a resumed run skips each metric's steps up to the last one already logged;
the run is deterministic (`mgr.train.resume`), so those points hold the values the new session
recomputes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from core.errors import MgrError
from mgr.train.trackers.base import need, register

# MLflow's limits (mlflow.utils.validation): values beyond them are refused, not truncated.
_PARAM_CHARS, _TAG_CHARS, _NOTE_CHARS, _BATCH = 6000, 8000, 20000, 100
# How a record's status ends an MLflow run; anything else (diverged, error) is FAILED.
_END = {"ok": "FINISHED", "interrupted": "KILLED", "timeout": "KILLED"}


def _text(v: Any, limit: int) -> str:
    s = "" if v is None else str(v)
    return s if len(s) <= limit else s[: limit - 1] + "…"


class _Run:
    def __init__(self, tracker: "MLflow", run_id: str, logged: dict[str, int]):
        self._t, self._id, self._logged = tracker, run_id, logged
        self.ref = {"run_id": run_id}

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        fresh = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                 if step > self._logged.get(k, -1)]
        if fresh:
            self._t.client.log_batch(self._id, metrics=fresh)

    def finish(self, results: dict[str, float], status: str, tags: dict[str, str], *, step: int,
               record: dict | None = None) -> None:
        self.log(step, {f"final/{k}": v for k, v in results.items()})
        self._t.set_tags(self._id, tags)
        if record is not None:
            self._t.client.log_dict(self._id, record, "summary.json")
        self._t.client.set_terminated(self._id, _END.get(status, "FAILED"))


@register("mlflow")
class MLflow:
    """One experiment of the file store ROOT/mlruns."""

    def __init__(self, root: Path, experiment: str):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        need("mlflow", "mlflow-skinny", "mlflow")
        from mlflow.tracking import MlflowClient

        self.store = (Path(root) / "mlruns").resolve()
        if "artifacts" in self.store.parts:  # mlflow's FileStore then reports every run as missing
            raise MgrError(f"--tracker mlflow: the store {self.store} has a directory named 'artifacts' "
                           "in its path, which MLflow's file store refuses; pass --tracker-dir elsewhere")
        self.client = MlflowClient(tracking_uri=self.store.as_uri())
        self.experiment = experiment
        self._experiment_id: str | None = None

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                try:
                    self._experiment_id = self.client.create_experiment(self.experiment)
                except Exception:  # another process created it first
                    found = self.client.get_experiment_by_name(self.experiment)
                    if found is None:
                        raise
            if found is not None:
                self._experiment_id = found.experiment_id
        return self._experiment_id

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, _text(v, _TAG_CHARS)) for k, v in tags.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, tags=items[i:i + _BATCH])

    def start_run(self, name: str, params: dict[str, Any], tags: dict[str, str], *,
                  previous: dict | None = None, resume_step: int | None = None) -> _Run:
        from mlflow.entities import Param

        if previous is not None:
            run_id = previous["run_id"]
            self.client.update_run(run_id, status="RUNNING")
            keys = self.client.get_run(run_id).data.metrics
            logged = {k: max(m.step for m in self.client.get_metric_history(run_id, k)) for k in keys}
            return _Run(self, run_id, logged)
        run = self.client.create_run(self.experiment_id(), run_name=name)
        self.set_tags(run.info.run_id, tags)
        items = [Param(k, _text(v, _PARAM_CHARS)) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run.info.run_id, params=items[i:i + _BATCH])
        return _Run(self, run.info.run_id, {})

    def annotate(self, ref: dict, tags: dict[str, str], text: str | None = None) -> None:
        self.set_tags(ref["run_id"], {**tags, **({"mlflow.note.content": text} if text else {})})

    def describe(self, markdown: str, tags: dict[str, str]) -> None:
        """The experiment's description (MLflow shows `mlflow.note.content` as its note)."""
        exp = self.experiment_id()
        self.client.set_experiment_tag(exp, "mlflow.note.content", _text(markdown, _NOTE_CHARS))
        for k, v in tags.items():
            self.client.set_experiment_tag(exp, k, _text(v, _TAG_CHARS))
