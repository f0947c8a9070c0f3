"""TensorBoard: event files under ROOT/tensorboard/<experiment>/<run>/ (tensorboardX writes them).

`tensorboard --logdir ROOT/tensorboard` shows every experiment; one suite is one folder, one
configuration one run in it. Scalars are float32 in the event format (TensorBoard's own
precision); the JSON record keeps the float64 values.

Resuming reopens the same folder with `purge_step` = the first step the new session trains:
the writer starts with a SessionLog.START at that step, and TensorBoard drops every earlier
event at a step >= it, so the steps trained after the checkpoint by the killed session are not
shown twice. The HParams summaries (experiment, session start with the hyperparameters,
session end with the status) are written once, when the run ends with a final status, so the
HParams tab compares finished runs on their final results.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from mgr.train.trackers.base import need, register

_FLUSH_SECONDS = 10  # live enough to watch a run; events still queued when killed are lost (JSON keeps them)


def _table(tags: dict[str, str]) -> str:
    return "\n".join(["| tag | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in tags.items()])


class _Run:
    def __init__(self, tracker: "TensorBoard", writer, logdir: Path, params: dict[str, Any]):
        self._tracker, self._writer, self._params = tracker, writer, params
        self.ref = {"logdir": logdir.relative_to(tracker.root).as_posix()}

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self._writer.add_scalar(k, v, step)

    def finish(self, results: dict[str, float], status: str, tags: dict[str, str], *, step: int,
               record: dict | None = None) -> None:
        for k, v in results.items():
            self._writer.add_scalar(f"final/{k}", v, step)
        self._writer.add_text("status", f"{status}: {tags.get('mgr.reason') or ''}".strip(), step)
        if status != "interrupted":  # a resumed session finishes the run later
            for summary in self._tracker.hparams(self._params, [f"final/{k}" for k in results], status):
                self._writer.file_writer.add_summary(summary, step)
        self._writer.close()


@register("tensorboard")
class TensorBoard:
    """One experiment: the folder ROOT/tensorboard/<experiment>."""

    def __init__(self, root: Path, experiment: str):
        self._tbx = need("tensorboardX", "tensorboardX", "tensorboard")
        self.root = Path(root) / "tensorboard"
        self.dir = self.root / experiment

    def _writer(self, logdir: Path, purge_step: int | None = None):
        logdir.mkdir(parents=True, exist_ok=True)
        # tensorboardX names event files by the second and the host only: a second writer in
        # the same folder within a second (a suite's annotation, a quick resume) would
        # truncate the first one's file. A unique suffix keeps every file.
        suffix = f".{os.getpid()}.{uuid.uuid4().hex[:8]}"
        return self._tbx.SummaryWriter(str(logdir), purge_step=purge_step, flush_secs=_FLUSH_SECONDS,
                                       filename_suffix=suffix)

    def start_run(self, name: str, params: dict[str, Any], tags: dict[str, str], *,
                  previous: dict | None = None, resume_step: int | None = None) -> _Run:
        if previous is not None:
            logdir = self.root / previous["logdir"]
            purge = None if resume_step is None else resume_step + 1
            return _Run(self, self._writer(logdir, purge), logdir, params)
        logdir = self.dir / name
        run = _Run(self, self._writer(logdir), logdir, params)
        run._writer.add_text("tags", _table(tags), 0)
        return run

    def annotate(self, ref: dict, tags: dict[str, str], text: str | None = None) -> None:
        """A suite's row for a finished run, as text (a new event file in the run's folder)."""
        with self._writer(self.root / ref["logdir"]) as w:
            w.add_text("suite", _table(tags) + (f"\n\n{text}" if text else ""), 0)

    def describe(self, markdown: str, tags: dict[str, str]) -> None:
        """The suite's summary as text in the experiment's `_suite` run."""
        with self._writer(self.dir / "_suite") as w:
            w.add_text("summary", markdown, 0)
            if tags:
                w.add_text("tags", _table(tags), 0)

    def hparams(self, params: dict[str, Any], metric_tags: list[str], status: str) -> list:
        """Experiment, session start and session end summaries of the HParams plugin."""
        from tensorboardX.proto.api_pb2 import Status
        from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData, SessionEndInfo
        from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata

        exp, ssi, _ = self._tbx.summary.hparams({k: v for k, v in params.items() if v is not None},
                                                {k: 0.0 for k in metric_tags})
        # tensorboardX's own session end always says success; a failed run should not.
        end = SessionEndInfo(status=Status.Value("STATUS_SUCCESS" if status == "ok" else "STATUS_FAILURE"))
        data = HParamsPluginData(session_end_info=end, version=0).SerializeToString()
        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="hparams", content=data))
        sei = Summary(value=[Summary.Value(tag="_hparams_/session_end_info", metadata=meta)])
        return [exp, ssi, sei]
