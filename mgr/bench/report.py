"""Suite reports: aggregate per-configuration records into the suite's summary, run.md, plot.

Everything here is a function of the per-configuration `summary.json` files (and the suite's
`bench.json` grid), so `mgr report DIR` can regenerate a suite's record at any time.
"""

from __future__ import annotations

import json
from pathlib import Path

from mgr.runtime import artifacts
from mgr.bench import stats

SCHEMA = "mgr.bench.fixed_flops.v1"
ALPHA = 0.05


def _runs(suite_dir: Path) -> dict[str, list[dict]]:
    arms: dict[str, list[dict]] = {}
    for path in sorted(suite_dir.glob("*/seed_*/summary.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        seed = int(path.parent.name.removeprefix("seed_"))
        arms.setdefault(path.parent.parent.name, []).append({"seed": seed, "summary": summary})
    return arms


def _run_row(seed: int, s: dict, suite_dir: Path, arm: str) -> dict:
    res, budget = s.get("results", {}), s.get("budget", {})
    return {
        "seed": seed, "status": s.get("status"), "reason": s.get("reason"),
        "val_ce": res.get("val_ce_final"), "steps": budget.get("steps"),
        "flops_per_step_xla": budget.get("flops_per_step_xla"),
        "flops_per_step_analytic": budget.get("flops_per_step_analytic"),
        "tokens_per_second": res.get("tokens_per_second"),
        "achieved_flops_per_second": res.get("achieved_flops_per_second"),
        "compile_seconds": res.get("compile_seconds"), "peak_memory_bytes": res.get("peak_memory_bytes"),
        "val_curve": res.get("val_curve") or [], "path": f"{arm}/seed_{seed}/summary.json",
    }


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def aggregate(suite_dir: Path, bench: dict) -> dict:
    """The suite summary: per arm statistics, deltas vs the baseline arm, conclusions."""
    found = _runs(suite_dir)
    order = [f"{a}-{o}-{s}" for a in bench["attention"] for o in bench["optimizer"] for s in bench["schedule"]]
    order += sorted(set(found) - set(order))
    arms = []
    for name in order:
        runs = sorted((_run_row(r["seed"], r["summary"], suite_dir, name) for r in found.get(name, [])),
                      key=lambda r: r["seed"])
        ok = [r["val_ce"] for r in runs if r["status"] == "ok" and r["val_ce"] is not None]
        arms.append({
            "arm": name, "runs": runs, "val_ce": stats.describe(ok),
            "statuses": {st: sum(r["status"] == st for r in runs) for st in {r["status"] for r in runs}},
            "steps": _mean([r["steps"] for r in runs]),
            "flops_per_step_xla": _mean([r["flops_per_step_xla"] for r in runs]),
            "tokens_per_second": _mean([r["tokens_per_second"] for r in runs]),
            "achieved_flops_per_second": _mean([r["achieved_flops_per_second"] for r in runs]),
            "compile_seconds": _mean([r["compile_seconds"] for r in runs]),
            "peak_memory_bytes": _mean([r["peak_memory_bytes"] for r in runs]),
            "_ok": ok,
        })
    base_name = bench.get("baseline") or (order[0] if order else None)
    base = next((a for a in arms if a["arm"] == base_name), None)
    for arm in arms:
        arm["delta_vs_baseline"] = None
        if base is not None and arm is not base and arm["_ok"] and base["_ok"]:
            diff = arm["val_ce"]["mean"] - base["val_ce"]["mean"]
            test = stats.welch(arm["_ok"], base["_ok"])
            arm["delta_vs_baseline"] = {"diff": diff, "welch": test,
                                        "significant": bool(test and test["p_value"] < ALPHA)}
    for arm in arms:
        del arm["_ok"]
    return {"schema_version": SCHEMA, "meta": artifacts.provenance(suite_dir.name), "bench": bench,
            "baseline": base_name, "arms": arms, "conclusions": _conclusions(arms, base_name)}


def _conclusions(arms: list[dict], base_name: str | None) -> dict:
    scored = [a for a in arms if a["val_ce"]["mean"] is not None]
    if not scored:
        return {"best_arm": None, "text": ["no configuration finished with status ok"]}
    best = min(scored, key=lambda a: a["val_ce"]["mean"])
    text = [f"best arm by mean validation CE: {best['arm']} ({best['val_ce']['mean']:.4f})"]
    sig = [a for a in arms if a["delta_vs_baseline"] and a["delta_vs_baseline"]["significant"]]
    for a in sig:
        d = a["delta_vs_baseline"]
        word = "better" if d["diff"] < 0 else "worse"
        text.append(f"{a['arm']} is significantly {word} than {base_name}: Δ {d['diff']:+.4f}, "
                    f"p = {d['welch']['p_value']:.3g} (Welch)")
    if not any(a["delta_vs_baseline"] and a["delta_vs_baseline"]["welch"] for a in arms):
        text.append("no significance tests: they need at least 2 finished seeds per arm")
    elif not sig:
        text.append(f"no arm differs significantly from {base_name} at p < {ALPHA}")
    failed = [a["arm"] for a in arms if any(s != "ok" for s in a["statuses"])]
    if failed:
        text.append("arms with failed runs: " + ", ".join(failed))
    return {"best_arm": best["arm"], "significant": [a["arm"] for a in sig], "text": text}


def _f(x, fmt):
    return "–" if x is None else format(x, fmt)


def render_suite_md(summary: dict) -> str:
    """`run.md` of a suite, from its summary alone."""
    b, meta = summary["bench"], summary["meta"]
    lines = [f"# Fixed-FLOPs benchmark `{meta['run_id']}`", "",
             f"- budget: {b['target_flops']:.3g} XLA-counted FLOPs per configuration; seeds {b['seeds']}",
             f"- baseline arm: {summary['baseline']}; commit `{meta['git']['commit'][:12]}`"
             + (" (dirty)" if meta["git"].get("dirty") else ""),
             f"- device: {meta['device']['platform']} x{meta['device']['count']} ({meta['device'].get('cpu_arch')})",
             "", "| arm | val CE mean ± std | 95% CI | Δ vs baseline | p (Welch) | steps | tokens/s "
             "| GFLOP/s | compile s | peak MB | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in summary["arms"]:
        v, d = a["val_ce"], a["delta_vs_baseline"]
        p = d["welch"]["p_value"] if d and d["welch"] else None
        status = ", ".join(f"{k} {n}" for k, n in sorted(a["statuses"].items()))
        lines.append(
            f"| {a['arm']} | {_f(v['mean'], '.4f')} ± {_f(v['std'], '.4f')} | {_f(v['ci95'], '.4f')} "
            f"| {_f(d and d['diff'], '+.4f')} | {_f(p, '.3g')} | {_f(a['steps'], '.0f')} "
            f"| {_f(a['tokens_per_second'], ',.0f')} | {_f(a['achieved_flops_per_second'] and a['achieved_flops_per_second'] / 1e9, '.1f')} "
            f"| {_f(a['compile_seconds'], '.2f')} | {_f(a['peak_memory_bytes'] and a['peak_memory_bytes'] / 2**20, '.1f')} "
            f"| {status} |")
    lines += ["", "## Conclusions", ""] + [f"- {t}" for t in summary["conclusions"]["text"]]
    failures = [(a["arm"], r) for a in summary["arms"] for r in a["runs"] if r["status"] != "ok"]
    if failures:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {arm} seed {r['seed']}: {r['status']} ({r['reason']})" for arm, r in failures]
    lines += ["", "![validation CE against FLOPs](curves.png)", ""]
    return "\n".join(lines)


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


def write_suite(suite_dir: Path, bench: dict | None = None) -> dict:
    """(Re)write the suite's summary.json, run.md and curves.png from its run records."""
    suite_dir = Path(suite_dir)
    if bench is None:
        bench = json.loads((suite_dir / "bench.json").read_text())
    summary = artifacts.as_recorded(aggregate(suite_dir, bench))
    artifacts.write_json(suite_dir / "summary.json", summary)
    artifacts.atomic_write(suite_dir / "run.md", render_suite_md(summary))
    plot_curves(summary, suite_dir / "curves.png")
    return summary
