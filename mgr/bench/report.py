"""Suite reports: aggregate per-configuration records into the suite's summary, run.md, plot.

Everything here is a function of the per-configuration `summary.json` files (and the suite's
`bench.json` grid), so `mgr report DIR` can regenerate a suite's record at any time.
"""

from __future__ import annotations

import json
from pathlib import Path

from mgr.runtime import artifacts, distributed
from mgr.bench import evidence, stats, variants

SCHEMA = "mgr.bench.fixed_flops.v1"


def _runs(suite_dir: Path) -> list[tuple[str, dict]]:
    out = []
    # `ARM/seed_S` is the layout of suites written before the learning-rate grid and budgets
    # existed; they still re-render (their rate and budget are read from each record).
    paths = sorted(suite_dir.glob("*/b_*/lr_*/seed_*/summary.json")) + sorted(suite_dir.glob("*/seed_*/summary.json"))
    for path in paths:
        try:
            out.append((str(path.relative_to(suite_dir)), json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError):
            continue
    return out


def _run_row(rel: str, s: dict) -> dict:
    res, budget = s.get("results", {}), s.get("budget", {})
    parts = Path(rel).parent.parts
    if len(parts) == 4:
        arm, b, lr, seed = parts
        lr, b = float(lr[3:]), float(b[2:])
    else:  # the legacy layout
        arm, seed = parts
        lr = float(s.get("config", {}).get("train", {}).get("learning_rate") or 0.0)
        b = float(budget.get("target_flops") or 0.0)
    # Records from before the split have no halves: their whole-set CE stands for both.
    tune = res.get("val_ce_tune_final", res.get("val_ce_final"))
    report = res.get("val_ce_report_final", res.get("val_ce_final"))
    return {
        "seed": int(seed[5:]), "lr": lr, "budget": b, "arm": arm,
        "status": s.get("status"), "reason": s.get("reason"),
        "val_ce": res.get("val_ce_final"), "val_ce_tune": tune,
        "val_ce_report": report, "steps": budget.get("steps"),
        "flops_per_step_xla": budget.get("flops_per_step_xla"),
        "flops_per_step_analytic": budget.get("flops_per_step_analytic"),
        "tokens_per_second": res.get("tokens_per_second"),
        "achieved_flops_per_second": res.get("achieved_flops_per_second"),
        "compile_seconds": res.get("compile_seconds"), "peak_memory_bytes": res.get("peak_memory_bytes"),
        "val_curve": res.get("val_curve") or [], "path": rel,
    }


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def read_gates(suite_dir: Path) -> dict:
    """The suite's recorded correctness gates, `gates/<label>.json`, by label (the algebra's
    name, or ALGEBRA@VARIANT for a variant that gives it other options)."""
    out = {}
    for path in sorted((suite_dir / "gates").glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return out


def aggregate(suite_dir: Path, bench: dict) -> dict:
    """The suite summary: the evidence section (every budget, the learning rate chosen on the
    tuning half of the validation tokens, scores on the reported half, Holm-corrected tests),
    and per arm its headline at the largest budget."""
    rows = [_run_row(rel, s) for rel, s in _runs(suite_dir)]
    order = [f"{a}-{o}-{s}" for a in bench["attention"] for o in bench["optimizer"] for s in bench["schedule"]]
    order += sorted({r["arm"] for r in rows} - set(order))
    base_name = bench.get("baseline") or (order[0] if order else None)
    split = {r["arm"]: r["arm"].rsplit("-", 2) for r in rows}
    scores = [{"task": "lm", "arm": r["arm"], "attention": split[r["arm"]][0], "optimizer": split[r["arm"]][1],
               "schedule": split[r["arm"]][2], "budget": r["budget"], "lr": r["lr"], "seed": r["seed"],
               "status": r["status"], "tune": r["val_ce_tune"] if r["status"] == "ok" else None,
               "report": r["val_ce_report"] if r["status"] == "ok" else None, "slices": {},
               "steps": r["steps"], "state_bytes": None, "source": r["path"]} for r in rows]
    gates = read_gates(suite_dir)
    ev = evidence.build(scores, metric="val_ce", higher_is_better=False, baseline=base_name, gates=gates)
    models = {m["arm"]: m for m in variants.arm_models(bench, gates)}
    arms = []
    for name in order:
        mine = [r for r in ev["rows"] if r["arm"] == name]
        head = max(mine, key=lambda r: r["budget"]) if mine else None
        runs = sorted((r for r in rows if r["arm"] == name and head and r["budget"] == head["budget"]
                       and r["lr"] == head["best_lr"]), key=lambda r: r["seed"])
        everything = [r for r in rows if r["arm"] == name]
        v = head and head["vs_baseline"]
        model = models.get(name, {"variant": None, "model_overrides": None, "gated_out_by": []})
        arms.append({
            "arm": name, "variant": model["variant"], "model_overrides": model["model_overrides"],
            "gated_out_by": model["gated_out_by"], "runs": runs,
            "val_ce": head["score"] if head else stats.describe([]),
            "budget": head and head["budget"], "best_lr": head and head["best_lr"],
            "sensitivity": head and head["sensitivity"],
            "statuses": {st: sum(r["status"] == st for r in everything) for st in {r["status"] for r in everything}},
            "failed_runs": [r for r in everything if r["status"] != "ok"],
            "steps": _mean([r["steps"] for r in runs]),
            "flops_per_step_xla": _mean([r["flops_per_step_xla"] for r in runs]),
            "tokens_per_second": _mean([r["tokens_per_second"] for r in runs]),
            "achieved_flops_per_second": _mean([r["achieved_flops_per_second"] for r in runs]),
            "compile_seconds": _mean([r["compile_seconds"] for r in runs]),
            "peak_memory_bytes": _mean([r["peak_memory_bytes"] for r in runs]),
            "delta_vs_baseline": v and {"diff": v["diff"], "welch": {"p_value": v["p"]}, "p_holm": v["p_holm"],
                                        "effect_size": v["effect_size"], "significant": v["significant"]},
        })
    return {"schema_version": SCHEMA, "kind": "fixed_flops", "meta": artifacts.provenance(suite_dir.name),
            "bench": bench, "baseline": base_name, "arms": arms, "evidence": ev,
            "conclusions": _conclusions(arms, ev, base_name)}


def _conclusions(arms: list[dict], ev: dict, base_name: str | None) -> dict:
    scored = [a for a in arms if a["val_ce"]["mean"] is not None]
    if not scored:
        return {"best_arm": None, "significant": [], "text": ["no configuration finished with status ok"]
                + ev["conclusions"]}
    best = min(scored, key=lambda a: a["val_ce"]["mean"])
    text = [f"best arm by mean validation CE (reported half, at its best learning rate): {best['arm']} "
            f"({best['val_ce']['mean']:.4f})"] + ev["conclusions"]
    failed = [a["arm"] for a in arms if a["failed_runs"]]
    if failed:
        text.append("arms with failed runs: " + ", ".join(failed))
    sig = [a["arm"] for a in arms if a["delta_vs_baseline"] and a["delta_vs_baseline"]["significant"]]
    return {"best_arm": best["arm"], "significant": sig, "text": text}


def _f(x, fmt):
    return "–" if x is None else format(x, fmt)


def render_suite_md(summary: dict) -> str:
    """`run.md` of a suite, from its summary alone."""
    b, meta = summary["bench"], summary["meta"]
    lines = [f"# Fixed-FLOPs benchmark `{meta['run_id']}`", "",
             f"- budgets: {', '.join(f'{x:.3g}' for x in (b.get('budgets') or [b['target_flops']]))} XLA-counted "
             f"FLOPs per configuration; seeds {b['seeds']}; learning rates "
             f"{b.get('lr_grid') or [b.get('train', {}).get('learning_rate')]} (chosen per arm on the tuning "
             "half of the validation tokens, reported on the other half)",
             f"- baseline arm: {summary['baseline']}; commit `{meta['git']['commit'][:12]}`"
             + (" (dirty)" if meta["git"].get("dirty") else ""),
             f"- device: {meta['device']['platform']} x{meta['device']['count']} ({meta['device'].get('cpu_arch')})",
             "", "| arm | val CE mean ± std | 95% CI | Δ vs baseline | p (Welch) | Holm p | g | best lr "
             "| steps | tokens/s | GFLOP/s | compile s | peak MB | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in summary["arms"]:
        v, d = a["val_ce"], a["delta_vs_baseline"]
        p = d["welch"]["p_value"] if d and d["welch"] else None
        status = ", ".join(f"{k} {n}" for k, n in sorted(a["statuses"].items()))
        status += "gated out" if a.get("gated_out_by") and not a["statuses"] else ""
        lines.append(
            f"| {a['arm']} | {_f(v['mean'], '.4f')} ± {_f(v['std'], '.4f')} | {_f(v['ci95'], '.4f')} "
            f"| {_f(d and d['diff'], '+.4f')}{' *' if d and d['significant'] else ''} | {_f(p, '.3g')} "
            f"| {_f(d and d['p_holm'], '.3g')} | {_f(d and d['effect_size'], '.2f')} | {_f(a['best_lr'], 'g')} "
            f"| {_f(a['steps'], '.0f')} "
            f"| {_f(a['tokens_per_second'], ',.0f')} | {_f(a['achieved_flops_per_second'] and a['achieved_flops_per_second'] / 1e9, '.1f')} "
            f"| {_f(a['compile_seconds'], '.2f')} | {_f(a['peak_memory_bytes'] and a['peak_memory_bytes'] / 2**20, '.1f')} "
            f"| {status} |")
    lines += ["", "`*`: significant after Holm correction over every comparison in the suite (p < 0.05)."]
    lines += variants.md_lines(b)
    lines += ["", "## Conclusions", ""] + [f"- {t}" for t in summary["conclusions"]["text"]]
    failures = [r for a in summary["arms"] for r in a["failed_runs"]]
    if failures:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {r['path']}: {r['status']} ({r['reason']})" for r in failures]
    session = summary.get("session")
    if session and session.get("train_share") is not None:
        lines += ["", f"Last session: {session['runs_trained']} runs trained; {session['train_seconds']:.1f} s in "
                      f"train steps, {session['train_share']:.0%} of the {session['wall_seconds']:.1f} s of the "
                      "runs' loop (setup, compiles, evaluation, records)"
                  + (f" and {session['process_train_share']:.0%} of the process's {session['process_seconds']:.1f} s "
                     "from its start (imports, gates, preflight, figure too)."
                     if session.get("process_train_share") is not None else ".")]
    lines += ["", "![validation CE against FLOPs](curves.png)", ""]
    return "\n".join(lines)


def session_record(wall: float, trained: float, runs_trained: int) -> dict:
    """The last session's share of wall time in train steps, over the suite's loop (`wall`:
    every configuration's setup, compile, evaluation and records) and over the whole process
    from its start (imports, correctness gates, the budget preflight and the figure too)."""
    process = process_seconds()
    return {"wall_seconds": round(wall, 3), "train_seconds": round(trained, 3),
            "train_share": round(trained / wall, 4) if wall > 0 else None, "runs_trained": runs_trained,
            "process_seconds": process and round(process, 3),
            "process_train_share": round(trained / process, 4) if process else None}


def process_seconds() -> float | None:
    """Seconds since this process started (Linux: /proc), or None where that is unknown."""
    import os

    try:
        with open("/proc/self/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks
        with open("/proc/uptime") as f:
            up = float(f.read().split()[0])
        return up - started / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def plot_curves(summary: dict, path: Path) -> None:
    """Validation CE against FLOPs, one line per arm (mean over its finished seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for a in summary["arms"]:
        curves = [r["val_curve"] for r in a["runs"] if r["status"] == "ok" and r["val_curve"]]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        xs = [curves[0][i][1] for i in range(n)]
        ys = [sum(c[i][2] for c in curves) / len(curves) for i in range(n)]
        ax.plot(xs, ys, marker="o", markersize=2.5, linewidth=1.2, label=a["arm"])
    ax.set_xlabel("training FLOPs (XLA count)")
    ax.set_ylabel("validation cross-entropy")
    ax.set_title(f"fixed-FLOPs benchmark {summary['meta']['run_id']}")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def write_suite(suite_dir: Path, bench: dict | None = None, *, plot: bool = True) -> dict:
    """(Re)write the suite's summary.json, run.md and curves.png from its run records.

    `session.json` (written by the suite runner: the last session's wall and train seconds) is
    copied in as `session` when present. `plot=False` skips the figure: the runner rewrites the
    summary after every configuration, and drawing it each time cost more than a short run.
    """
    suite_dir = Path(suite_dir)
    if bench is None:
        bench = json.loads((suite_dir / "bench.json").read_text())
    summary = aggregate(suite_dir, bench)
    try:
        summary["session"] = json.loads((suite_dir / "session.json").read_text())
    except (OSError, ValueError):
        pass
    summary = artifacts.as_recorded(summary)
    artifacts.write_json(suite_dir / "summary.json", summary)
    artifacts.atomic_write(suite_dir / "run.md", render_suite_md(summary))
    if plot and distributed.is_primary():  # several processes: process 0 writes
        plot_curves(summary, suite_dir / "curves.png")
    return summary
