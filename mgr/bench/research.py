"""The research report: one report.md, a self-contained report.html and report.json over one or
more suites (probe or fixed-FLOPs), built from each suite's `summary.json` evidence section alone.

Nothing here computes a statistic: means, intervals, Holm-corrected p values, effect sizes, fits
and crossings all come from `mgr.bench.evidence` as recorded. This module only gathers them,
states them as sentences and links every table row to the run records behind it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections import defaultdict
from pathlib import Path

from core.errors import MgrError
from mgr.bench import evidence
from mgr.runtime import artifacts, env
from mgr.runtime.paths import atomic_write_bytes

SCHEMA = "mgr.report.v1"
ALPHA = 0.05  # the level evidence.py marks `significant` at; only quoted in the text here


def write_report(suite_dirs: list[Path], out_dir: Path) -> dict:
    """Write `out_dir/report.md`, `report.html`, `report.json` and the plot PNGs for the suites.

    Each file is written atomically (temp file, then rename), plots first and the three reports
    last, so an interrupted call leaves either the previous report or the complete new one of
    each file. Returns the report.json content.
    """
    # Imported here: research_html uses this module's table helpers, so a top-level import
    # would be circular.
    from mgr.bench import research_html, research_plots

    out_dir = Path(out_dir)
    if not suite_dirs:
        raise MgrError("mgr report needs at least one suite directory")
    suites = [load_suite(Path(d), out_dir) for d in suite_dirs]
    report = combine(suites)
    plots = research_plots.render(report)
    report["plots"] = [{k: p[k] for k in ("name", "file", "title", "skipped")} for p in plots]
    for p in plots:
        if p["png"] is not None:
            atomic_write_bytes(out_dir / p["file"], p["png"])
    report = artifacts.as_recorded(report)
    artifacts.write_json(out_dir / "report.json", report)
    artifacts.atomic_write(out_dir / "report.md", render_md(report))
    artifacts.atomic_write(out_dir / "report.html", research_html.render(report, plots))
    return report


def load_suite(suite_dir: Path, out_dir: Path) -> dict:
    """One suite's summary, with its evidence (from `evidence`, or adapted from `arms`)."""
    path = suite_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise MgrError(f"{suite_dir} has no readable summary.json ({e.__class__.__name__})") from None
    kind = summary.get("kind") or ("fixed_flops" if "arms" in summary else None)
    if kind not in ("probe", "fixed_flops"):
        raise MgrError(f"{path}: unknown suite kind {kind!r} (expected probe or fixed_flops)")
    meta = summary.get("meta") or {}
    source = "evidence"
    ev = summary.get("evidence")
    if ev is None and kind == "fixed_flops":
        ev, source = evidence_from_arms(summary), "arms (the summary has no evidence section)"
    if ev is None:
        raise MgrError(f"{path} has no evidence section")
    return {"dir": _rel(suite_dir, out_dir), "abs": suite_dir.resolve(), "run_id": meta.get("run_id", suite_dir.name),
            "kind": kind, "baseline": summary.get("baseline"), "meta": meta, "evidence_from": source,
            "evidence": ev}


def evidence_from_arms(summary: dict) -> dict:
    """Adapter for a fixed-FLOPs summary written before it carried `evidence`: one row per arm
    from `arms` (val_ce describe, delta_vs_baseline). Delete once every summary has evidence."""
    bench, base = summary.get("bench") or {}, summary.get("baseline")
    rows = []
    for a in summary.get("arms", []):
        d = a.get("delta_vs_baseline")
        vs = None
        if d:
            sig = bool(d.get("significant"))
            vs = {"baseline": base, "diff": d.get("diff"), "p": (d.get("welch") or {}).get("p_value"),
                  "p_holm": d.get("p_holm"), "significant": sig, "effect_size": d.get("effect_size"),
                  "better": (d["diff"] < 0) if sig and d.get("diff") is not None else None}
        rows.append({"task": "lm", "metric": "val_ce", "higher_is_better": False, "arm": a["arm"],
                     "budget": a.get("budget") or bench.get("target_flops"),
                     "best_lr": a.get("best_lr") or (bench.get("train") or {}).get("learning_rate"),
                     "lr_grid": [], "sensitivity": a.get("sensitivity"), "score": a["val_ce"],
                     "values": [], "slices": {}, "vs_baseline": vs, "state_bytes": None,
                     "steps": a.get("steps"), "seeds": [r.get("seed") for r in a.get("runs", [])],
                     "sources": [r["path"] for r in a.get("runs", []) if r.get("status") == "ok" and r.get("path")]})
    return {"rows": rows, "fits": [], "crossings": [], "gates": {}, "conclusions": []}


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(os.path.abspath(path), os.path.abspath(start))


def combine(suites: list[dict]) -> dict:
    """The report.json content: every suite's provenance and evidence, and flat row, fit,
    crossing and gate lists tagged with their suite (row sources made relative to out_dir)."""
    many = len(suites) > 1
    rows, fits, crossings, gates, text = [], [], [], [], []
    for i, s in enumerate(suites):
        ev, tag = s["evidence"], (lambda arm, s=s: f"{s['run_id']}:{arm}" if many else arm)
        for r in ev.get("rows", []):
            srcs = [os.path.normpath(os.path.join(s["dir"], p)) for p in r.get("sources", [])]
            rows.append({**r, "suite": i, "label": tag(r["arm"]), "sources": srcs,
                         "sources_in_suite": r.get("sources", []),
                         "is_baseline": r["arm"] == _baseline(s, r)})
        fits += [{**f, "suite": i, "label": tag(f["arm"])} for f in ev.get("fits", [])]
        crossings += [{**c, "suite": i} for c in ev.get("crossings", [])]
        gates += [{"suite": i, "attention": name, "passed": bool(g.get("passed")), "reason": g.get("reason")}
                  for name, g in sorted((ev.get("gates") or {}).items())]
        prefix = f"[{s['run_id']}] " if many else ""
        text += [prefix + line for line in conclusions(s)]
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return {"schema_version": SCHEMA, "generated_at": now, "git": env.git_info(), "command": env.command_line(),
            "suites": [{k: v for k, v in s.items() if k != "abs"} for s in suites],
            "rows": rows, "fits": fits, "crossings": crossings, "gates": gates, "conclusions": text}


def _baseline(suite: dict, row: dict) -> str | None:
    if row.get("vs_baseline"):
        return row["vs_baseline"].get("baseline")
    return suite["baseline"]


def num(x, fmt: str = ".3g") -> str:
    """A number for the text and tables; '–' for a missing one."""
    return "–" if x is None else format(x, fmt)


def conclusions(suite: dict) -> list[str]:
    """Plain sentences from one suite's evidence: gated-out algebras with their reason; per
    (task, budget) each significant difference with both scores ± 95% CI, Δ, Hedges g and Holm
    p, or 'no difference found at this budget'; then the power-law crossings."""
    ev, out = suite["evidence"], []
    for name, g in sorted((ev.get("gates") or {}).items()):
        if not g.get("passed"):
            out.append(f"{name} was gated out and not scored: {g.get('reason') or 'no reason recorded'}"
                       + evidence.not_run(name, g))
    by: dict[tuple, list[dict]] = defaultdict(list)
    for r in ev.get("rows", []):
        by[(r["task"], r["budget"] or 0.0)].append(r)
    for (task, budget), rs in sorted(by.items()):
        where = f"{task} at {budget:.3g} FLOPs"
        vs = [r for r in rs if r.get("vs_baseline")]
        sig = [r for r in vs if r["vs_baseline"].get("significant")]
        name = (vs[0]["vs_baseline"]["baseline"] if vs else None) or suite["baseline"]
        base = next((r for r in rs if r["arm"] == name), None)
        for r in sorted(sig, key=lambda r: -abs(r["vs_baseline"]["diff"] or 0)):
            v, s = r["vs_baseline"], r["score"]
            word = "beats" if v.get("better") else "is worse than"
            bs = f" vs {num(base['score']['mean'])} ± {num(base['score']['ci95'])}" if base else ""
            out.append(f"{r['arm']} {word} {v['baseline']} on {where}: {r['metric']} {num(s['mean'])} ± "
                       f"{num(s['ci95'])}{bs}, Δ {num(v['diff'], '+.3g')}, g = {num(v.get('effect_size'))}, "
                       f"Holm p = {num(v.get('p_holm'), '.2g')}")
        tested = [r for r in vs if r["vs_baseline"].get("p_holm") is not None]
        if tested and not sig:
            gs = [abs(g) for r in tested if (g := r["vs_baseline"].get("effect_size")) is not None]
            out.append(f"{where}: no difference found at this budget ({len(tested)} arm(s) against {name}; "
                       f"smallest Holm p = {num(min(r['vs_baseline']['p_holm'] for r in tested), '.2g')} "
                       f">= {ALPHA}, largest |g| = {num(max(gs) if gs else None)})")
        elif not tested:
            out.append(f"{where}: nothing was tested (a test needs 2 finished seeds in an arm and the baseline)")
    for c in ev.get("crossings", []):
        out.append(f"the fitted power laws of {c['arm']} and {c['other']} cross on {c['task']} "
                   f"at about {c['budget']:.3g} FLOPs")
    return out


COLUMNS = ["budget", "arm", "score ± 95% CI", "Δ vs baseline", "Holm p", "g", "best lr", "LR sensitivity",
           "state bytes", "significant", "runs"]


def table_cells(row: dict) -> list[str]:
    """The text cells of one table row (shared by the markdown and the HTML table)."""
    v, s = row.get("vs_baseline") or {}, row["score"]
    mark = ("* better" if v.get("better") else "* worse") if v.get("significant") else ""
    arm = row["label"] + (" (baseline)" if row["is_baseline"] else "")
    state = row.get("state_bytes")
    return [num(row["budget"]), arm, f"{num(s['mean'], '.4g')} ± {num(s['ci95'], '.2g')} (n={s['n']})",
            num(v.get("diff"), "+.3g"), num(v.get("p_holm"), ".2g"), num(v.get("effect_size"), ".3g"),
            num(row.get("best_lr"), "g"), num(row.get("sensitivity"), ".3g"),
            "–" if state is None else f"{state:,}", mark]


def tasks(report: dict) -> dict[str, list[dict]]:
    """Rows per task (first-seen order), each task's rows by budget, suite, then baseline first."""
    by: dict[str, list[dict]] = {}
    for r in report["rows"]:
        by.setdefault(r["task"], []).append(r)
    return {t: sorted(rs, key=lambda r: (r["budget"] or 0.0, r["suite"], not r["is_baseline"]))
            for t, rs in by.items()}


def source_label(path: str, i: int) -> str:
    """`seed_3` for a record under a seed directory, else its index."""
    parent = Path(path).parent.name
    return parent if parent.startswith("seed_") else str(i + 1)


def provenance_lines(s: dict) -> list[str]:
    """One suite's provenance as short 'name: value' lines."""
    m = s["meta"]
    git, dev, ver = m.get("git") or {}, m.get("device") or {}, m.get("versions") or {}
    dirty = {True: " (dirty)", False: " (clean)"}.get(git.get("dirty"), "")
    return [f"run id: {s['run_id']}", f"kind: {s['kind']}", f"directory: {s['dir']}",
            f"evidence from: {s['evidence_from']}", f"baseline arm: {s['baseline']}",
            f"git commit: {git.get('commit', 'unknown')}{dirty}",
            f"device: {dev.get('platform', '?')} ({dev.get('kind', '?')}) x{dev.get('count', '?')}, "
            f"{dev.get('cpu_arch', '?')}",
            "versions: " + (", ".join(f"{k} {v}" for k, v in ver.items()) or "unknown"),
            f"generated (UTC): {m.get('generated_at', 'unknown')}", f"command: {m.get('command', 'unknown')}"]


def _md(text, cell: bool = False) -> str:
    # Record text in markdown: `<x>` would be taken for an HTML tag and vanish, and in a table a
    # pipe would end the cell; a backslash keeps both literal (CommonMark escapes).
    text = str(text).replace("\\", "\\\\").replace("<", "\\<").replace("\n", " ")
    return text.replace("|", "\\|") if cell else text


def render_md(report: dict) -> str:
    """report.md, from the report.json content alone."""
    command = report["command"].replace("`", "'")  # it sits in a code span, where nothing escapes
    lines = ["# Research report", "", f"Generated {report['generated_at']} from "
             f"{len(report['suites'])} suite(s) by `{command}`.", "",
             "Every number below comes from the suites' recorded evidence: scores on the reported slice "
             "at the learning rate chosen on the tuning slice, Welch tests against the suite's baseline, "
             f"Holm-corrected over the whole suite; `*` marks Holm p < {ALPHA}.", "", "## Conclusions", ""]
    lines += [f"- {_md(c)}" for c in report["conclusions"]] or ["- none"]
    for task, rs in tasks(report).items():
        metric = rs[0]["metric"] + (" (higher is better)" if rs[0]["higher_is_better"] else " (lower is better)")
        lines += ["", f"## Task `{task}`: {metric}", "", "| " + " | ".join(COLUMNS) + " |",
                  "|" + "---|" * len(COLUMNS)]
        for r in rs:
            links = " ".join(f"[{source_label(p, i)}](<{p}>)" for i, p in enumerate(r["sources"])) or "–"
            lines.append("| " + " | ".join(_md(c, cell=True) for c in table_cells(r)) + f" | {links} |")
    failed = [g for g in report["gates"] if not g["passed"]]
    lines += ["", "## Correctness gates", ""]
    lines += [_md(f"- {g['attention']} ({report['suites'][g['suite']]['run_id']}): ")
              + ("passed" if g["passed"] else f"**failed**: {_md(g['reason'])}") for g in report["gates"]]
    lines += [] if report["gates"] else ["- none recorded"]
    if failed:
        lines += ["", "Gated-out algebras have no runs and no score."]
    lines += ["", "## Crossings", ""]
    lines += [f"- {c['task']}: {c['arm']} and {c['other']} at about {c['budget']:.3g} FLOPs"
              for c in report["crossings"]] or ["- none found"]
    lines += ["", "## Plots", ""]
    for p in report["plots"]:
        lines.append(f"![{p['title']}]({p['file']})" if p["skipped"] is None
                     else f"- {p['title']}: not drawn ({p['skipped']})")
    lines += ["", "## Provenance", ""]
    for s in report["suites"]:
        lines += [f"### Suite `{s['run_id']}`", ""] + [f"- {_md(x)}" for x in provenance_lines(s)] + [""]
    return "\n".join(lines)
