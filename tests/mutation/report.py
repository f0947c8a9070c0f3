"""The mutation run's record: `summary.json` is the record, `run.md` a pure rendering of it.

Counting: a mutant is *counted* unless it is invalid (its selection fails on clean code),
stale (its `find` no longer applies) or an accepted equivalent (`expect = "survive"` and it
did survive). A timeout counts as caught. score = (caught + timeout) / counted.
"""

from __future__ import annotations

SCHEMA = "mgr.mutation.v1"


def summarise(chosen, results: dict, *, run_id: str, seconds: float, meta: dict) -> dict:
    rows = []
    for m in chosen:
        r = results[m.id]
        status = r["status"]
        accepted = m.expect == "survive" and status == "survived"
        rows.append({"id": m.id, "area": m.area, "file": m.file, "status": status,
                     "expect": m.expect, "accepted": accepted, "seconds": r.get("seconds"),
                     "rc": r.get("rc"), "detail": r.get("detail", ""), "tests": list(m.tests),
                     "why": m.why, "reason": m.reason})
    caught = sum(r["status"] in ("caught", "timeout") for r in rows)
    counted = [r for r in rows if r["status"] not in ("invalid", "stale") and not r["accepted"]]
    unexpected = [r["id"] for r in rows if r["status"] == "survived" and not r["accepted"]]
    counts = {
        "mutants": len(rows), "counted": len(counted), "caught": caught,
        "timeout": sum(r["status"] == "timeout" for r in rows),
        "survived": sum(r["status"] == "survived" for r in rows),
        "accepted_equivalent": sum(r["accepted"] for r in rows),
        "unexpected_survivors": len(unexpected),
        "invalid": sum(r["status"] == "invalid" for r in rows),
        "stale": sum(r["status"] == "stale" for r in rows),
        # an accepted survivor that was caught after all: its reason needs another look
        "expected_survivor_caught": sum(r["expect"] == "survive" and r["status"] in ("caught", "timeout")
                                        for r in rows),
    }
    score = caught / len(counted) if counted else None
    return {"schema": SCHEMA, "run_id": run_id, "seconds": round(seconds, 1), "meta": meta,
            "counts": counts, "score": score, "unexpected_survivors": unexpected, "mutants": rows}


def score_line(summary: dict) -> str:
    c = summary["counts"]
    pct = "n/a" if summary["score"] is None else f"{100 * summary['score']:.1f}%"
    return (f"mutation score: caught/total = {c['caught']}/{c['counted']} = {pct} "
            f"({c['accepted_equivalent']} accepted equivalent, {c['invalid']} invalid, "
            f"{c['stale']} stale, {c['unexpected_survivors']} unexpected survivors)")


def render_md(summary: dict) -> str:
    """run.md from summary.json alone."""
    meta, c = summary["meta"], summary["counts"]
    git = meta.get("git", {})
    lines = [f"# Mutation run {summary['run_id']}", "",
             f"`{meta.get('command', '')}` at commit `{str(git.get('commit', '?'))[:12]}`"
             f"{' (dirty)' if git.get('dirty') else ''}, {meta.get('jobs', 1)} job(s), "
             f"{summary['seconds'] / 60:.1f} min.", "", f"**{score_line(summary)}**", "",
             "| id | status | s | killed by / note |", "|---|---|---:|---|"]
    for r in summary["mutants"]:
        status = r["status"] + (" (accepted)" if r["accepted"] else "")
        note = r["reason"] if r["accepted"] else r["detail"] if r["status"] != "survived" else r["why"]
        secs = "" if r["seconds"] is None else f"{r['seconds']:.0f}"
        lines.append(f"| {r['id']} | {status} | {secs} | {str(note).replace('|', '/')[:160]} |")
    surv = [r for r in summary["mutants"] if r["status"] == "survived"]
    if surv:
        lines += ["", "## Survivors", ""]
        for r in surv:
            tag = "accepted equivalent" if r["accepted"] else "UNEXPECTED"
            lines.append(f"- `{r['id']}` ({tag}, `{r['file']}`): {r['why']}"
                         + (f" Reason: {r['reason']}" if r["reason"] else ""))
    return "\n".join(lines) + "\n"
