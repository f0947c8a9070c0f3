"""The evidence section shared by every suite summary (probe and fixed-FLOPs), and its builder.

Both `artifacts/probe/<id>/summary.json` and `artifacts/bench/fixed_flops/<id>/summary.json`
carry `"kind"` ("probe" or "fixed_flops"), `"meta"` (provenance) and `"evidence"`:

    "evidence": {
      "rows": [ {                          # one per (task, arm, budget) that has a score
        "task": "mqar" | "lm",             # "lm": the language-model benchmark
        "metric": "accuracy" | "val_ce", "higher_is_better": bool,
        "arm": "standard-adamw-cosine", "attention": str, "optimizer": str, "schedule": str,
        "budget": float,                   # XLA-counted FLOPs per run
        "best_lr": float,                  # chosen on the tuning slice only
        "lr_grid": [{"lr": float, "tune": DESC, "report": DESC}],
        "sensitivity": float | None,       # max - min of the tuning-slice mean over the grid
        "score": DESC,                     # the reported slice, at best_lr, over seeds
        "values": [float],                 # the per-seed values behind `score`, by seed
        "slices": {name: DESC},            # probe test slices at best_lr ({} for lm)
        "vs_baseline": None | {"baseline": arm, "diff": float, "p": float | None,
                               "p_holm": float | None, "significant": bool,
                               "effect_size": float | None, "better": bool | None},
        "state_bytes": int | None,         # decoding state of one sequence at the task's length
        "steps": float | None, "seeds": [int],
        "sources": [str],                  # run records behind the score, relative to the suite
      } ],
      "fits": [ {"task", "arm", "metric", "quantity": "val_ce" | "error = 1 - accuracy",
                 "a", "b", "b_ci95", "r2", "points": [[budget, mean], ...]} ],   # quantity = a * C^b
      "crossings": [ {"task", "arm", "other", "budget"} ],
      "gates": {label: {"passed": bool, "reason": str | None, "checks": {...},   # label: the algebra,
                        "used_by": [entry]}},     # or ALGEBRA@VARIANT; used_by: the grid entries needing it
      "conclusions": [str],
    }

DESC is `mgr.bench.stats.describe`'s dict: {"n", "mean", "std", "ci95"}.
"""

from __future__ import annotations

from collections import defaultdict

from mgr.bench import stats

ALPHA = 0.05


def build(scores: list[dict], *, metric: str, higher_is_better: bool, baseline: str,
          gates: dict | None = None, alpha: float = ALPHA, search_seeds=None) -> dict:
    """The evidence section from per-run scores.

    Each score: {"task", "arm", "attention", "optimizer", "schedule", "budget", "lr", "seed",
    "status", "tune", "report", "slices", "steps", "state_bytes", "source"}; `tune` and
    `report` are the run's metric on the tuning and the reported slice (None unless `ok`).
    The best learning rate of each (task, arm, budget) is chosen on `tune` alone; its `report`
    values are the row's score. Comparisons with the baseline arm are Welch tests, corrected by
    Holm over every comparison in the suite (every task, budget and arm: one family).
    `search_seeds`: when only these seeds ran at every rate (the others only at the chosen
    one), the rate is chosen on their tuning scores alone, so every rate is judged on the same
    seeds.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for s in scores:
        groups[(s["task"], s["arm"], s["budget"])].append(s)
    rows, samples = [], {}
    for (task, arm, budget), runs in groups.items():
        row, best = _row(task, arm, budget, runs, metric, higher_is_better, search_seeds)
        rows.append(row)
        samples[(task, arm, budget)] = best
    _compare(rows, samples, baseline, higher_is_better, alpha)
    fits, crossings = _fits(rows, metric, higher_is_better, baseline)
    return {"rows": rows, "fits": fits, "crossings": crossings, "gates": gates or {},
            "conclusions": conclusions(rows, crossings, gates or {}, metric)}


def _row(task, arm, budget, runs, metric, higher_is_better, search_seeds) -> tuple[dict, list[float]]:
    by_lr: dict[float, list[dict]] = defaultdict(list)
    for r in runs:
        by_lr[r["lr"]].append(r)
    grid, best_lr, best_key = [], None, None
    for lr in sorted(by_lr):
        ok = [r for r in by_lr[lr] if r["status"] == "ok" and r["tune"] is not None]
        tune = stats.describe([r["tune"] for r in ok if search_seeds is None or r["seed"] in search_seeds])
        grid.append({"lr": lr, "tune": tune, "report": stats.describe([r["report"] for r in ok]),
                     "statuses": _count(r["status"] for r in by_lr[lr])})
        if tune["mean"] is not None:
            key = tune["mean"] if higher_is_better else -tune["mean"]
            if best_key is None or key > best_key:
                best_lr, best_key = lr, key
    chosen = [r for r in by_lr.get(best_lr, []) if r["status"] == "ok" and r["report"] is not None]
    slices = sorted({k for r in chosen for k in (r.get("slices") or {})})
    first = runs[0]
    row = {"task": task, "metric": metric, "higher_is_better": higher_is_better, "arm": arm,
           "attention": first["attention"], "optimizer": first["optimizer"], "schedule": first["schedule"],
           "budget": budget, "best_lr": best_lr, "lr_grid": grid,
           "sensitivity": stats.spread([g["tune"]["mean"] for g in grid if g["tune"]["mean"] is not None]),
           "score": stats.describe([r["report"] for r in chosen]),
           "values": [r["report"] for r in sorted(chosen, key=lambda r: r["seed"])],
           "slices": {k: stats.describe([r["slices"][k] for r in chosen if k in r["slices"]]) for k in slices},
           "vs_baseline": None,
           "state_bytes": next((r["state_bytes"] for r in runs if r.get("state_bytes") is not None), None),
           "steps": _mean([r["steps"] for r in chosen]), "seeds": sorted(r["seed"] for r in chosen),
           "statuses": _count(r["status"] for r in runs), "sources": sorted(r["source"] for r in chosen)}
    return row, [r["report"] for r in chosen]


def _compare(rows, samples, baseline, higher_is_better, alpha) -> None:
    todo = []
    for row in rows:
        base = samples.get((row["task"], baseline, row["budget"]))
        if row["arm"] == baseline or not base or not samples[(row["task"], row["arm"], row["budget"])]:
            continue
        mine = samples[(row["task"], row["arm"], row["budget"])]
        test = stats.welch(mine, base)
        row["vs_baseline"] = {"baseline": baseline, "diff": sum(mine) / len(mine) - sum(base) / len(base),
                              "p": test["p_value"] if test else None, "p_holm": None,
                              "significant": False, "effect_size": stats.hedges_g(mine, base), "better": None}
        todo.append(row)
    for row, p_holm in zip(todo, stats.holm([r["vs_baseline"]["p"] for r in todo])):
        v = row["vs_baseline"]
        v["p_holm"] = p_holm
        v["significant"] = p_holm is not None and p_holm < alpha
        if v["significant"]:
            v["better"] = (v["diff"] > 0) == higher_is_better


def _fits(rows, metric, higher_is_better, baseline) -> tuple[list[dict], list[dict]]:
    """Power laws of the loss (or the error 1 - accuracy) against the budget, per (task, arm)."""
    by: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        by[(row["task"], row["arm"])].append(row)
    fits = {}
    for (task, arm), rs in by.items():
        rs = sorted((r for r in rs if r["score"]["n"]), key=lambda r: r["budget"])
        if len({r["budget"] for r in rs}) < 2:
            continue
        values = [[_quantity(r, v, higher_is_better) for v in r["values"]] for r in rs]
        fit = stats.power_law_fit([r["budget"] for r in rs], values)
        if fit is not None:
            fits[(task, arm)] = {"task": task, "arm": arm, "metric": metric,
                                 "quantity": "error = 1 - accuracy" if higher_is_better else metric, **fit}
    crossings = []
    for (task, arm), fit in fits.items():
        other = fits.get((task, baseline))
        if arm == baseline or other is None:
            continue
        lo = max(min(p[0] for p in fit["points"]), min(p[0] for p in other["points"]))
        hi = min(max(p[0] for p in fit["points"]), max(p[0] for p in other["points"]))
        c = stats.crossing(fit, other, lo, hi)
        if c is not None:
            crossings.append({"task": task, "arm": arm, "other": baseline, "budget": c})
    return list(fits.values()), crossings


def _quantity(row, value, higher_is_better):
    if not higher_is_better:
        return value
    return stats.error_of_accuracy(value, floor=1e-3)


def conclusions(rows, crossings, gates, metric) -> list[str]:
    """Plain sentences: each significant difference with its effect size and uncertainty, and
    'no difference found' for a task and budget where there is none."""
    out = []
    for name, g in sorted(gates.items()):
        if not g.get("passed"):
            out.append(f"{name} failed the correctness gate and was not scored: {g.get('reason')}"
                       + not_run(name, g))
    by: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        by[(r["task"], r["budget"])].append(r)
    for (task, budget), rs in sorted(by.items()):
        sig = [r for r in rs if r["vs_baseline"] and r["vs_baseline"]["significant"]]
        base = next((r for r in rs if r["vs_baseline"] is None and r["score"]["n"]), None)
        for r in sorted(sig, key=lambda r: -abs(r["vs_baseline"]["diff"])):
            v, s = r["vs_baseline"], r["score"]
            word = "beats" if v["better"] else "is worse than"
            bs = f" vs {base['score']['mean']:.4f} ± {_ci(base['score'])}" if base else ""
            g = "" if v["effect_size"] is None else f", g = {v['effect_size']:.2f}"
            out.append(f"{r['arm']} {word} {v['baseline']} on {task} at {budget:.3g} FLOPs: {metric} "
                       f"{s['mean']:.4f} ± {_ci(s)}{bs}, Δ {v['diff']:+.4f}{g}, Holm p = {v['p_holm']:.3g}")
        tested = [r for r in rs if r["vs_baseline"] and r["vs_baseline"]["p"] is not None]
        if tested and not sig:
            out.append(f"{task} at {budget:.3g} FLOPs: no difference from the baseline found at this "
                       f"budget ({len(tested)} arms tested, Holm-corrected p >= {ALPHA})")
        elif not tested:
            out.append(f"{task} at {budget:.3g} FLOPs: no tests (they need 2 finished seeds per arm)")
    for c in crossings:
        out.append(f"{c['arm']} and {c['other']} cross on {c['task']} at about {c['budget']:.3g} FLOPs")
    return out


def not_run(label: str, gate: dict) -> str:
    """The variants a failed gate kept out, named (a plain algebra's entry is the label itself)."""
    others = [e for e in gate.get("used_by") or [] if e != label.split("@")[0]]
    return f"; variants not run because they use it: {', '.join(others)}" if others else ""


def _ci(d) -> str:
    return "–" if d["ci95"] is None else f"{d['ci95']:.4f}"


def _count(statuses) -> dict:
    out: dict[str, int] = {}
    for s in statuses:
        out[s] = out.get(s, 0) + 1
    return out


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None
