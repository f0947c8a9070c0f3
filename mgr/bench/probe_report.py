"""A probe suite's record: summary.json (with the evidence section), run.md and the
accuracy-against-state plot, all functions of the run records (`mgr report DIR` re-renders them).
"""

from __future__ import annotations

import json
from pathlib import Path

from mgr.bench import evidence, variants
from mgr.bench.report import read_gates
from mgr.runtime import artifacts

SCHEMA = "mgr.probe.v1"


def _records(suite_dir: Path) -> list[tuple[str, dict]]:
    out = []
    for path in sorted(suite_dir.glob("*/*/b_*/lr_*/seed_*/summary.json")):
        try:
            out.append((str(path.relative_to(suite_dir)), json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError):
            continue  # a record being written when the suite was killed: that run reruns
    return out


def scores(suite_dir: Path) -> list[dict]:
    """One score per run record, in the form `mgr.bench.evidence.build` takes."""
    out = []
    for source, rec in _records(suite_dir):
        arm, task, b, lr, seed = Path(source).parent.parts
        res, cfg = rec.get("results", {}), rec.get("config", {})
        attention, optimizer, schedule = _split_arm(arm, cfg)
        ok = rec.get("status") == "ok"
        out.append({"task": task, "arm": arm, "attention": attention, "optimizer": optimizer,
                    "schedule": schedule, "budget": float(rec.get("budget", {}).get("target_flops") or b[2:]),
                    "lr": float(lr[3:]), "seed": int(seed[5:]), "status": rec.get("status"),
                    "reason": rec.get("reason"),
                    "tune": res.get("tune_accuracy") if ok else None,
                    "report": res.get("headline_accuracy") if ok else None,
                    "slices": res.get("test_accuracy") or {} if ok else {},
                    "steps": rec.get("budget", {}).get("steps"), "state_bytes": res.get("state_bytes"),
                    "tokens_per_second": res.get("tokens_per_second"), "source": source})
    return out


def _split_arm(arm: str, cfg: dict) -> tuple[str, str, str]:
    train = cfg.get("train", {})
    if cfg.get("variant"):  # a variant's model may run several algebras: the variant names the arm
        return cfg["variant"], train["optimizer"], train["schedule"]
    if "model" in cfg:
        return cfg["model"]["attention"], train["optimizer"], train["schedule"]
    a, o, s = arm.rsplit("-", 2)
    return a, o, s


def write_probe_summary(suite_dir: Path) -> dict:
    suite_dir = Path(suite_dir)
    settings = json.loads((suite_dir / "probe.json").read_text())
    runs = scores(suite_dir)
    arms = [f"{a}-{o}-{s}" for a in settings["attention"] for o in settings["optimizer"]
            for s in settings["schedule"]]
    baseline = settings.get("baseline") or arms[0]
    gates = read_gates(suite_dir)
    k = settings.get("search_seeds")
    ev = evidence.build(runs, metric="accuracy", higher_is_better=True, baseline=baseline, gates=gates,
                        search_seeds=None if not k else set(settings["seeds"][:k]))
    order = {a: i for i, a in enumerate(arms)}
    ev["rows"].sort(key=lambda r: (settings["tasks"].index(r["task"]) if r["task"] in settings["tasks"] else 99,
                                   r["budget"], order.get(r["arm"], 99)))
    summary = artifacts.as_recorded({
        "schema_version": SCHEMA, "kind": "probe", "meta": artifacts.provenance(suite_dir.name),
        "probe": settings, "baseline": baseline, "evidence": ev,
        # not "arms": that key marks a fixed-FLOPs summary (mgr compare, mgr report)
        "arm_models": variants.arm_models(settings, gates),
        "failures": [{k: r[k] for k in ("source", "status", "reason")} for r in runs if r["status"] != "ok"],
        "runs_finished": len(runs)})
    artifacts.write_json(suite_dir / "summary.json", summary)
    artifacts.atomic_write(suite_dir / "run.md", render_md(summary))
    plot_state_accuracy(summary, suite_dir / "state_accuracy.png")
    return summary


def render_run_md(record: dict) -> str:
    """`run.md` of one probe run, from its record alone."""
    c, b, r = record.get("config", {}), record.get("budget", {}), record.get("results", {})
    lines = [f"# Probe run `{record['meta']['run_id']}`", "",
             f"- task: {c.get('task')} {json.dumps(c.get('task_options', {}))}",
             f"- attention: {c.get('model', {}).get('attention')}"
             + (f" (variant {c['variant']})" if c.get("variant") else "") + "; optimizer "
             f"{c.get('train', {}).get('optimizer')} at lr {c.get('train', {}).get('learning_rate')}; "
             f"seed {c.get('train', {}).get('seed')}",
             f"- budget: {b.get('target_flops', 0):.3g} FLOPs = {b.get('steps')} steps of "
             f"{(b.get('flops_per_step_xla') or 0):.3g}",
             f"- status: {record.get('status')}" + (f" ({record['reason']})" if record.get("reason") else "")]
    if r.get("test_accuracy"):
        lines += ["", "| slice | accuracy |", "|---|---|", f"| tune | {r['tune_accuracy']:.4f} |"]
        lines += [f"| {k} | {v:.4f} |" for k, v in r["test_accuracy"].items()]
        lines += ["", f"headline accuracy: {r['headline_accuracy']:.4f}; decoding state "
                      f"{r.get('state_bytes')} bytes"]
    return "\n".join(lines) + "\n"


def _f(x, fmt):
    return "–" if x is None else format(x, fmt)


def table_rows(summary: dict) -> list[list[str]]:
    """Rows of the headline table (shared by run.md and the CLI's printed table)."""
    out = []
    for r in summary["evidence"]["rows"]:
        s, v = r["score"], r["vs_baseline"] or {}
        mark = " *" if v.get("significant") else ""
        out.append([r["task"], f"{r['budget']:.3g}", r["arm"], f"{_f(s['mean'], '.3f')} ± {_f(s['ci95'], '.3f')}",
                    _f(v.get("diff"), "+.3f") + mark, _f(v.get("p_holm"), ".3g"), _f(v.get("effect_size"), ".2f"),
                    _f(r["best_lr"], "g"), _f(r["sensitivity"], ".3f"), _f(r["state_bytes"], ",d"),
                    ", ".join(f"{k} {n}" for k, n in sorted(r["statuses"].items()))])
    return out


HEADER = ["task", "budget", "arm", "accuracy ± 95% CI", "Δ vs base", "Holm p", "g", "best lr",
          "LR spread", "state B", "runs"]


def render_md(summary: dict) -> str:
    p, meta = summary["probe"], summary["meta"]
    lines = [f"# Probe suite `{meta['run_id']}`", "",
             f"- tasks: {', '.join(p['tasks'])}; budgets {', '.join(f'{b:.3g}' for b in p['budgets'])} XLA-counted "
             "FLOPs per run",
             f"- learning-rate grid {', '.join(f'{x:g}' for x in p['lr_grid'])} (best chosen on the tuning slice"
             + (f" of the first {p['search_seeds']} seed(s), the other seeds run at the chosen rate only"
                if p.get("search_seeds") else "") + f"; scores on the test slices); seeds {p['seeds']}; "
             f"batch {p['batch_size']}",
             f"- baseline arm: {summary['baseline']}; commit `{meta['git']['commit'][:12]}`"
             + (" (dirty)" if meta["git"].get("dirty") else ""),
             f"- device: {meta['device']['platform']} x{meta['device']['count']}", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summary)]
    lines += ["", "`*`: significant after Holm correction over every comparison in the suite (p < 0.05)."]
    lines += variants.md_lines(p)
    lines += ["", "## Conclusions", ""] + [f"- {t}" for t in summary["evidence"]["conclusions"]]
    if summary["failures"]:
        lines += ["", "## Failed runs", ""] + [f"- {f['source']}: {f['status']} ({f['reason']})"
                                               for f in summary["failures"]]
    lines += ["", "![accuracy against decoding state](state_accuracy.png)", ""]
    return "\n".join(lines)


def plot_state_accuracy(summary: dict, path: Path) -> None:
    """Zoology's plot: accuracy against decoding-state bytes, one point per arm and task at its
    largest budget (the research report's own plot, drawn for this one suite). Nothing is
    written when no row has a state size and a score."""
    from mgr.bench.research_plots import state_plot
    from mgr.runtime.paths import atomic_write_bytes

    rows = [{**r, "suite": 0, "label": r["attention"]} for r in summary["evidence"]["rows"]]
    png, _ = state_plot({"rows": rows})
    if png is not None:
        atomic_write_bytes(path, png)
