"""Run records: `summary.json` is the record, `run.md` a rendering of it.

Writes are atomic (temp file + rename) so a run killed at any moment leaves either the old or
the new file, never half of one. Paths inside summaries are relative to the artifacts root.

In a job of several processes only process 0 writes records: the others compute the same
record and drop it here, so no caller needs to know how many processes there are.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

from mgr.runtime import distributed, env, runs
from mgr.runtime.paths import atomic_write_bytes

SCHEMA_VERSION = "mgr.train.v1"
STATUSES = ("ok", "diverged", "error", "timeout", "interrupted", "running")


def atomic_write(path: Path, text: str) -> None:
    if distributed.is_primary():
        atomic_write_bytes(path, text.encode())


def _finite(obj: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them (Python's 'NaN' is not JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def as_recorded(obj: Any) -> Any:
    """`obj` exactly as it reads back from its JSON record (tuples as lists, NaN as null), so
    that markdown rendered now equals markdown rendered later from the file."""
    return json.loads(json.dumps(_finite(obj), allow_nan=False))


def write_json(path: Path, obj: Any) -> None:
    # Insertion order is kept (no sort_keys): tables rendered from a record keep their column order.
    atomic_write(path, json.dumps(_finite(obj), indent=2, allow_nan=False) + "\n")


def write_bench(root: Path, name: str, summary: dict[str, Any], title: str, text: str) -> Path:
    """A benchmark script's record, `root/bench/<name>/<run_id>/{summary.json, run.md}` (`meta`
    first, then `summary`; run.md is `title` over the rendered `text`); prints `text` and where
    the record is. Returns the record's directory."""
    out = runs.run_dir(Path(root), "bench", name, run_id=None)
    write_json(out / "summary.json", {"meta": provenance(out.name), **summary})
    atomic_write(out / "run.md", f"# {title}\n\n{text}\n")
    print(text)
    print(f"record: {out}/summary.json")
    return out


def provenance(run_id: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git": env.git_info(),
        "versions": env.versions(),
        "device": env.device_info(),
        "command": env.command_line(),
    }


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if abs(x) >= 1e5 or (x != 0 and abs(x) < 1e-3):
            return f"{x:.3e}"
        return f"{x:.{digits}f}"
    return str(x)


def _named(d: dict[str, Any]) -> str:
    knobs = ", ".join(f"{k}={v}" for k, v in d.items() if k != "name")
    return f"{d['name']} ({knobs})" if knobs else d["name"]


def render_run_md(summary: dict[str, Any]) -> str:
    """`run.md` of a train run, from its summary alone (pure function)."""
    meta, cfg, budget, res = summary["meta"], summary["config"], summary["budget"], summary["results"]
    model, train = cfg["model"], cfg["train"]
    git = meta["git"]
    lines = [
        f"# Train run `{meta['run_id']}`",
        "",
        f"- status: **{summary['status']}**" + (f" ({summary['reason']})" if summary.get("reason") else ""),
        f"- generated: {meta['generated_at']}; commit `{git['commit'][:12]}`"
        + (" (dirty)" if git.get("dirty") else ""),
        f"- device: {meta['device']['platform']} ({meta['device']['kind']}) x{meta['device']['count']},"
        f" {meta['device'].get('cpu_arch', '?')}; jax {meta['versions']['jax']},"
        f" flax {meta['versions']['flax']}, optax {meta['versions']['optax']}",
        f"- command: `{meta['command']}`",
        "",
        "## Configuration",
        "",
        f"- attention: {model['attention']}; L={model['n_layers']} d={model['d_model']}"
        f" H={model['n_heads']} kv={model['n_kv_heads']} V={model['vocab_size']}",
        f"- optimizer: {_named(cfg['optim']['optimizer'])}; schedule: {_named(cfg['optim']['schedule'])};"
        f" lr {train['learning_rate']}, warmup {train['warmup_steps']}, seed {train['seed']}",
        f"- data: {cfg['dataset']['corpus']}; seq {cfg['data']['seq_len']}, batch {cfg['data']['batch_size']}",
        "",
        "## Budget",
        "",
        "| target FLOPs | XLA FLOPs/step | analytic FLOPs/step | steps | tokens |",
        "|---|---|---|---|---|",
        f"| {_fmt(budget.get('target_flops'))} | {_fmt(budget['flops_per_step_xla'])} |"
        f" {_fmt(budget['flops_per_step_analytic'])} | {budget['steps']} | {budget['tokens']} |",
        "",
        "## Results",
        "",
        "| train CE | val CE | tokens/s | GFLOP/s | compile s | peak memory MB |",
        "|---|---|---|---|---|---|",
        f"| {_fmt(res.get('train_ce_final'))} | {_fmt(res.get('val_ce_final'))} |"
        f" {_fmt(res.get('tokens_per_second'), 0)} |"
        f" {_fmt((res.get('achieved_flops_per_second') or 0) / 1e9, 1)} |"
        f" {_fmt(res.get('compile_seconds'), 2)} | {_fmt((res.get('peak_memory_bytes') or 0) / 2**20, 1)} |",
        "",
    ]
    curve = res.get("val_curve") or []
    if curve:
        lines += ["## Validation curve", "", "| step | FLOPs | val CE | tuning half | reported half |",
                  "|---|---|---|---|---|"]
        # Rows are [step, flops, ce] or, with the tuning/reported split, [..., ce_tune, ce_report].
        lines += [f"| {r[0]} | {_fmt(float(r[1]))} | {_fmt(float(r[2]))} | "
                  + " | ".join(_fmt(float(x)) if x is not None else "–" for x in (list(r[3:5]) + [None, None])[:2])
                  + " |" for r in curve]
        lines.append("")
    return "\n".join(lines)


def write_run(run_dir: Path, summary: dict[str, Any]) -> None:
    """Write `summary.json` then `run.md` (the latter regenerable from the former)."""
    write_json(run_dir / "summary.json", summary)
    atomic_write(run_dir / "run.md", render_run_md(as_recorded(summary)))
