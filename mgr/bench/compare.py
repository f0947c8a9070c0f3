"""`mgr compare A B`: metric-by-metric comparison of two runs or two suites, with thresholds.

A is the baseline, B the candidate. A regression is a change for the worse beyond both the
absolute and the relative threshold of that metric. The exit code (1 on a regression) makes it
usable as a CI guard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.errors import MgrError

# metric -> (lower is better?, key of the threshold)
TRAIN_METRICS = {
    "val_ce_final": (True, "loss"),
    "tokens_per_second": (False, "throughput"),
    "peak_memory_bytes": (True, "memory"),
}


@dataclass(frozen=True)
class Thresholds:
    loss_abs: float = 0.01
    loss_rel: float = 0.01
    throughput_rel: float = 0.10
    memory_rel: float = 0.05

    def exceeded(self, kind: str, base: float, cand: float, lower_better: bool) -> bool:
        worse = (cand - base) if lower_better else (base - cand)
        if worse <= 0:
            return False
        rel = worse / abs(base) if base else float("inf")
        if kind == "loss":
            return worse > self.loss_abs and rel > self.loss_rel
        return rel > (self.throughput_rel if kind == "throughput" else self.memory_rel)


def load(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "summary.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MgrError(f"no summary at {path}") from None
    except json.JSONDecodeError:
        raise MgrError(f"{path} is not valid JSON") from None


def _metrics(summary: dict) -> dict[str, dict[str, float | None]]:
    """{row label: {metric: value}} for a train run (one row) or a suite (one row per arm)."""
    if "arms" in summary:
        return {a["arm"]: {"val_ce_final": a["val_ce"]["mean"], "tokens_per_second": a["tokens_per_second"],
                           "peak_memory_bytes": a["peak_memory_bytes"]} for a in summary["arms"]}
    if "results" in summary:
        res = summary["results"]
        return {"run": {m: res.get(m) for m in TRAIN_METRICS}}
    raise MgrError("not a train run or suite summary (no 'results' or 'arms')")


def compare(a: dict, b: dict, th: Thresholds) -> list[dict]:
    rows = []
    ma, mb = _metrics(a), _metrics(b)
    if ("arms" in a) != ("arms" in b):
        raise MgrError("cannot compare a train run with a suite")
    for label in list(ma) + [x for x in mb if x not in ma]:
        for metric, (lower, kind) in TRAIN_METRICS.items():
            va, vb = ma.get(label, {}).get(metric), mb.get(label, {}).get(metric)
            if va is None or vb is None:
                status = "missing"
            else:
                status = "regression" if th.exceeded(kind, va, vb, lower) else "ok"
            rows.append({"row": label, "metric": metric, "baseline": va, "candidate": vb,
                         "delta": None if va is None or vb is None else vb - va, "status": status})
    return rows


def render(rows: list[dict]) -> str:
    def f(x):
        return "–" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))

    lines = ["| row | metric | baseline | candidate | Δ | status |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['row']} | {r['metric']} | {f(r['baseline'])} | {f(r['candidate'])} | {f(r['delta'])} "
              f"| {r['status']} |" for r in rows]
    return "\n".join(lines)
