"""The inference benchmark's budgets and its markdown table (pure functions of the record)."""

from __future__ import annotations

from typing import Any

# The edge budgets of the issue: a device with ~0.5 GB for the whole process, interactive use.
BUDGETS = {"peak_rss_mb": 400.0, "request_p95_ms": 250.0}
MB = 2 ** 20


def within_budget(row: dict[str, Any]) -> bool:
    """Both budgets met: peak RSS and the 95th percentile of whole-request latency."""
    return (row["peak_rss_bytes"] / MB <= BUDGETS["peak_rss_mb"]
            and row["request_latency_ms"]["p95"] <= BUDGETS["request_p95_ms"])


def _f(x: Any, digits: int = 1) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def table(summary: dict[str, Any]) -> str:
    """One row per configuration; a failed one shows its status and reason."""
    cfg, b = summary["config"], summary["budgets"]
    lines = [
        f"prompt {cfg['prompt_tokens']} tokens, {cfg['new_tokens']} new tokens, greedy; {cfg['requests']} "
        f"requests at batch 1, {cfg['batch_rounds']} calls at batch {cfg['batch']}. Budgets: peak RSS <= "
        f"{b['peak_rss_mb']:.0f} MB, request p95 <= {b['request_p95_ms']:.0f} ms.",
        "",
        "| algebra | weights | params | compile s | TTFT p50 ms | token p50 / p95 / p99 ms "
        "| request p95 ms | tok/s b1 | tok/s b" + str(cfg["batch"]) + " | peak RSS MB | budgets |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['algebra']} | {r['weights']} | {r['status']}: {r.get('reason', '')} "
                         "| | | | | | | | |")
            continue
        tl = r["token_latency_ms"]
        compile_s = sum(r["compile_seconds"].values())
        lines.append(
            f"| {r['algebra']} | {r['weights']} | {r['params'] / 1e6:.2f}M | {_f(compile_s)} "
            f"| {_f(r['ttft_ms']['p50'], 2)} | {_f(tl['p50'], 2)} / {_f(tl['p95'], 2)} / {_f(tl['p99'], 2)} "
            f"| {_f(r['request_latency_ms']['p95'])} | {_f(r['tokens_per_second_batch_1'], 0)} "
            f"| {_f(r['tokens_per_second_batch_n'], 0)} | {_f(r['peak_rss_bytes'] / MB)} "
            f"| {'ok' if r['within_budget'] else 'OVER'} |")
    return "\n".join(lines)


def render(summary: dict[str, Any]) -> str:
    """`run.md` of an inference benchmark, from its summary alone."""
    meta, tok, cfg = summary["meta"], summary["tokenizer"], summary["config"]
    git = meta["git"]
    return "\n".join([
        f"# Inference benchmark `{meta['run_id']}`",
        "",
        f"- generated: {meta['generated_at']}; commit `{git['commit'][:12]}`" + (" (dirty)" if git.get("dirty") else ""),
        f"- device: {meta['device']['platform']} ({meta['device']['kind']}) x{meta['device']['count']}, "
        f"{meta['device'].get('cpu_arch', '?')}; jax {meta['versions']['jax']}",
        f"- command: `{meta['command']}`",
        f"- model: random weights, d={cfg['d_model']} L={cfg['n_layers']} H={cfg['n_heads']} "
        f"V={cfg['vocab_size']} T={cfg['max_seq_len']}; tokenizer {tok['type']} with {tok['vocab_size']} pieces "
        f"({tok['digest']})",
        "- each configuration measured in a fresh process (its own peak RSS); compile excluded from latency",
        f"- wall time {summary['wall_seconds']:.0f} s; every configuration within both budgets: "
        f"**{'yes' if summary['all_within_budget'] else 'no'}**",
        "",
        table(summary),
        "",
    ])
