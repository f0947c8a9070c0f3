"""Suites in experiment trackers: one experiment per suite, one tracker run per configuration.

Only the suite's parent process writes to a tracker, each configuration once its record is
final (its summary.json, and for the fixed-FLOPs suite its metrics.jsonl): probe suites train
in worker processes, and several processes writing one MLflow file store (or one TensorBoard
folder) is how stores get corrupted. A ledger, `SUITE/tracker.json`, maps each configuration to
its tracker runs, so a resumed suite (which reports its finished records again) logs only
what is new. When the suite ends, every run gets its arm's row of the suite table as tags, and
the experiment gets the suite's run.md and conclusions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from mgr.train import trackers as tr


def experiment_name(kind: str, suite_dir: Path) -> str:
    """`fixed_flops/<suite id>` or `probe/<suite id>`: a probe and a bench suite may share an id."""
    return f"{kind}/{Path(suite_dir).name}"


def _path_tags(rel: str, names: tuple[str, ...]) -> dict[str, str]:
    parts = Path(rel).parts
    return {f"mgr.{n}": (p.split("_", 1)[1] if "_" in p and n in ("budget", "lr", "seed") else p)
            for n, p in zip(names, parts)}


def fixed_flops_run(suite_dir: Path, rel: str, record: dict) -> tuple[dict, dict, list[dict]]:
    """(params, tags, metrics rows) of one fixed-FLOPs configuration: the trainer's own record."""
    from mgr.train.resume import read_jsonl

    tags = {**tr.run_tags(record), **_path_tags(rel, ("arm", "budget", "lr", "seed"))}
    return tr.run_params(record), tags, read_jsonl(Path(suite_dir) / rel / "metrics.jsonl")


def probe_run(suite_dir: Path, rel: str, record: dict) -> tuple[dict, dict, list[dict]]:
    """(params, tags, metrics rows) of one probe run: its loss curve and per-phase accuracies."""
    res = record.get("results") or {}
    rows = [{"kind": "train", "step": step, "loss": loss} for step, loss in res.get("loss_curve") or []]
    for phase in res.get("phases") or []:
        rows.append({"kind": "tune", "step": phase["step"], "accuracy": phase["tune"]})
        rows.append({"kind": "test", "step": phase["step"], **phase["test"]})
    params = tr.run_params(record, ("model", "train", "task", "task_options", "batch_size", "variant"))
    tags = {**tr.run_tags(record), **_path_tags(rel, ("arm", "task", "budget", "lr", "seed"))}
    return params, tags, rows


class SuiteTracking:
    """Logs a suite's configurations as they finish (`wrap(on_result)`) and its table at the end."""

    def __init__(self, trackers: list, suite_dir: Path, content: Callable[[Path, str, dict], tuple]):
        self.suite_dir, self.content = Path(suite_dir), content
        self.tracking = tr.Tracking(trackers)
        self.ledger = tr.read_ledger(self.suite_dir)

    def wrap(self, on_result: Callable[[str, dict], None] | None) -> Callable[[str, dict], None]:
        def both(rel: str, record: dict) -> None:
            self.log(rel, record)
            if on_result:
                on_result(rel, record)

        return both

    def log(self, rel: str, record: dict) -> None:
        """One finished configuration as one run in every tracker that has not logged it yet."""
        todo = [k for k in self.tracking.trackers if rel not in self.ledger.get(k, {})]
        if not todo:
            return
        params, tags, rows = self.content(self.suite_dir, rel, record)
        self.tracking.start(rel, params, tags, only=set(todo))
        for row in rows:
            self.tracking.log_row(row)
        refs = self.tracking.refs()
        step = int((record.get("budget") or {}).get("steps_done") or
                   (record.get("results") or {}).get("steps_completed") or 0)
        self.tracking.finish(tr.final_results(record), str(record.get("status")), tr.end_tags(record),
                             step=step, record=record)
        for kind, ref in refs.items():
            if kind in self.tracking.trackers:
                self.ledger.setdefault(kind, {})[rel] = ref
        tr.write_ledger(self.suite_dir, self.ledger)

    def finish(self, rows: dict[str, dict[str, str]], conclusions: list[str]) -> str | None:
        """Tag every logged run with the table row of its group (`rows`: path prefix -> tags),
        and describe the experiment with the suite's run.md; returns the tracker error, if any."""
        text = "\n".join(f"- {c}" for c in conclusions)
        for kind, runs in self.ledger.items():
            for rel, ref in runs.items():
                tags = next((t for prefix, t in rows.items() if rel.startswith(prefix)), None)
                if tags is not None:
                    self.tracking.annotate({kind: ref}, tags, text)
        md_path = self.suite_dir / "run.md"
        markdown = md_path.read_text() if md_path.exists() else text
        self.tracking.describe(markdown, {"mgr.suite": self.suite_dir.name})
        return self.tracking.error


def _num(x) -> str | None:
    return None if x is None else f"{x:.6g}" if isinstance(x, float) else str(x)


def _given(tags: dict) -> dict[str, str]:
    """Tags without the values a one-seed or baseline row does not have (no empty tags)."""
    return {k: v for k, v in tags.items() if v is not None}


def fixed_flops_rows(summary: dict) -> dict[str, dict[str, str]]:
    """Each arm's row of the suite table, keyed by the path prefix of its runs."""
    best = (summary.get("conclusions") or {}).get("best_arm")
    out = {}
    for a in summary.get("arms", []):
        d = a.get("delta_vs_baseline") or {}
        out[f"{a['arm']}/"] = _given({
            "suite.val_ce_mean": _num(a["val_ce"].get("mean")), "suite.val_ce_ci95": _num(a["val_ce"].get("ci95")),
            "suite.delta_vs_baseline": _num(d.get("diff")), "suite.p_holm": _num(d.get("p_holm")),
            "suite.significant": _num(d.get("significant")), "suite.best_lr": _num(a.get("best_lr")),
            "suite.best_arm": str(a["arm"] == best)})
    return out


def probe_rows(summary: dict) -> dict[str, dict[str, str]]:
    """Each (arm, task, budget) row of the probe table, keyed by the path prefix of its runs."""
    out = {}
    for r in (summary.get("evidence") or {}).get("rows", []):
        v = r.get("vs_baseline") or {}
        out[f"{r['arm']}/{r['task']}/b_{r['budget']:.3g}/"] = _given({
            "suite.accuracy_mean": _num(r["score"].get("mean")), "suite.accuracy_ci95": _num(r["score"].get("ci95")),
            "suite.delta_vs_baseline": _num(v.get("diff")), "suite.p_holm": _num(v.get("p_holm")),
            "suite.significant": _num(v.get("significant")), "suite.best_lr": _num(r.get("best_lr"))})
    return out


# Per suite kind: a configuration's tracker content, the table rows, the conclusions.
SUITES = {
    "fixed_flops": (fixed_flops_run, fixed_flops_rows, lambda s: s["conclusions"]["text"]),
    "probe": (probe_run, probe_rows, lambda s: s["evidence"]["conclusions"]),
}


def for_suite(kind: str, trackers: list | None, suite_dir: Path, on_result):
    """(on_result that also logs each configuration, finish(summary) -> summary that tags the
    runs with the table and describes the experiment); both plain when there are no trackers."""
    if not trackers:
        return on_result, lambda summary: summary
    content, rows, conclusions = SUITES[kind]
    tracking = SuiteTracking(trackers, suite_dir, content)

    def finish(summary: dict) -> dict:
        error = tracking.finish(rows(summary), conclusions(summary))
        if error:  # the suite's record says its trackers are incomplete (until it is re-rendered)
            from mgr.runtime.artifacts import write_json

            summary = {**summary, "tracker_error": error}
            write_json(Path(suite_dir) / "summary.json", summary)
        return summary

    return tracking.wrap(on_result), finish
