"""The demo registry and runner behind `mgr run NAME` and `mgr run-all`.

A demo is a function `(seed, steps) -> DemoResult` registered with `@demo(name, summary)`. It
computes certificates live with the project's own registered implementations (never a toy
copy): each certificate states a claim, the measured value and whether the claim held. A demo
passes only if every certificate does; the runner prints them, writes
`artifacts/demos/<name>/<run_id>/{summary.json, run.md}`, and the CLI exits non-zero otherwise.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from mgr.runtime import artifacts
from core.errors import MgrError

SCHEMA = "mgr.demo.v1"


@dataclass(frozen=True)
class Certificate:
    """One checked claim: `value` measured live, `passed` whether the claim held."""

    name: str
    claim: str
    value: Any
    passed: bool


@dataclass
class DemoResult:
    certificates: list[Certificate]
    tables: dict[str, list[dict]] = field(default_factory=dict)  # extra evidence, rendered as tables
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.certificates) and all(c.passed for c in self.certificates)


@dataclass(frozen=True)
class DemoEntry:
    name: str
    summary: str
    fn: Callable[[int, int], DemoResult]
    default_steps: int


_DEMOS: dict[str, DemoEntry] = {}


def demo(name: str, summary: str, *, default_steps: int = 100):
    def wrap(fn):
        if name in _DEMOS:
            raise RuntimeError(f"demo '{name}' registered twice")
        _DEMOS[name] = DemoEntry(name, summary, fn, default_steps)
        return fn

    return wrap


def names() -> list[str]:
    return list(_DEMOS)


def get(name: str) -> DemoEntry:
    if name not in _DEMOS:
        raise MgrError(f"unknown demo '{name}'; valid: {', '.join(names())}")
    return _DEMOS[name]


def check(name: str, claim: str, value: Any, passed: bool) -> Certificate:
    """Shorthand that also turns numpy scalars into plain JSON numbers."""
    if hasattr(value, "item"):
        value = value.item()
    return Certificate(name, claim, value, bool(passed))


def run_demo(name: str, *, seed: int, steps: int | None, run_dir: Path) -> dict:
    """Run one demo and write its record; an exception becomes a failed demo, not a crash."""
    entry = get(name)
    steps = entry.default_steps if steps is None else steps
    if steps < 1:
        raise MgrError(f"--steps must be at least 1, got {steps}")
    t0 = time.perf_counter()
    try:
        result = entry.fn(seed, steps)
        status, reason = ("ok" if result.passed else "failed"), None
    except Exception as e:  # noqa: BLE001 - a crashing demo is reported as failed, with its reason
        result = DemoResult(certificates=[])
        status, reason = "error", f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
    summary = {
        "schema_version": SCHEMA, "meta": artifacts.provenance(run_dir.name),
        "demo": name, "summary": entry.summary, "seed": seed, "steps": steps,
        "seconds": round(time.perf_counter() - t0, 3), "status": status, "reason": reason,
        "passed": status == "ok",
        "certificates": [asdict(c) for c in result.certificates],
        "tables": result.tables, "notes": result.notes,
    }
    summary = artifacts.as_recorded(summary)
    artifacts.write_json(run_dir / "summary.json", summary)
    artifacts.atomic_write(run_dir / "run.md", render_md(summary))
    return summary


def _cell(v: Any) -> str:
    # A bare '|' (as in "max |diff|") would split a markdown table cell.
    text = f"{v:.4g}" if isinstance(v, float) else str(v)
    return text.replace("|", "\\|")


def render_md(summary: dict) -> str:
    """`run.md` of a demo from its summary alone."""
    lines = [f"# Demo `{summary['demo']}` ({summary['meta']['run_id']})", "", summary["summary"], "",
             f"- status: **{summary['status']}**" + (f" ({summary['reason']})" if summary["reason"] else ""),
             f"- seed {summary['seed']}, steps {summary['steps']}, {summary['seconds']:.1f} s;"
             f" command `{summary['meta']['command']}`", "",
             "| certificate | claim | value | passed |", "|---|---|---|---|"]
    lines += [f"| {_cell(c['name'])} | {_cell(c['claim'])} | {_cell(c['value'])} | {'yes' if c['passed'] else '**no**'} |"
              for c in summary["certificates"]]
    for title, rows in summary["tables"].items():
        if not rows:
            continue
        cols = list(rows[0])
        lines += ["", f"## {title}", "", "| " + " | ".join(_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    if summary["notes"]:
        lines += [""] + [f"- {n}" for n in summary["notes"]]
    return "\n".join(lines) + "\n"
