"""`mgr bench-throughput`: a grid of (algebra, optimizer, shape) train-step timings, recorded."""

from __future__ import annotations

import itertools
from pathlib import Path

from core.errors import MgrError
from mgr.runtime import artifacts
from mgr.config import ModelConfig, TrainConfig
from mgr.bench.perf import matmul_peak, time_train_step

SCHEMA = "mgr.bench.throughput.v1"


def run_throughput(algebras, optimizers, shapes, vocab_size: int, steps: int, out: Path,
                   dtypes: tuple[str, ...] = ("float32",)) -> str:
    if steps < 1:
        raise MgrError(f"--steps must be at least 1, got {steps}")
    peak_rows = matmul_peak()
    peak = max(r["gflops"] for r in peak_rows)
    rows = []
    for L, d, h, t, b in shapes:
        for name, opt, dtype in itertools.product(algebras, optimizers, dtypes):
            mcfg = ModelConfig(vocab_size=vocab_size, d_model=d, n_layers=L, n_heads=h, n_kv_heads=h,
                               max_seq_len=t, attention=name, compute_dtype=dtype)
            r = time_train_step(mcfg, TrainConfig(optimizer=opt), b, t, steps=steps)
            # The share is of the float32 peak for every dtype: a bfloat16 row above 100% says
            # by how much the faster arithmetic beats what float32 could ever reach.
            rows.append({"attention": name, "optimizer": opt, "dtype": dtype, "L": L, "d": d, "H": h, "T": t,
                         "B": b, **r, "share_of_peak": r["gflops"] / peak})
    summary = {"schema_version": SCHEMA, "meta": artifacts.provenance(out.name),
               "matmul_peak": peak_rows, "peak_gflops": peak, "vocab_size": vocab_size, "rows": rows}
    table = render(summary)
    artifacts.write_json(out / "summary.json", summary)
    artifacts.atomic_write(out / "run.md", f"# Throughput `{out.name}`\n\n{table}\n")
    return table


def render(summary: dict) -> str:
    """Markdown tables of a throughput summary (pure function of the record)."""
    peak = " / ".join(f"{r['n']}²: {r['gflops']:.0f}" for r in summary["matmul_peak"])
    lines = [f"f32 matmul peak through JAX (GFLOP/s): {peak}", "",
             "| attention | optimizer | dtype | L | d | H | T | B | step ms | tokens/s | XLA GFLOP/step "
             "| GFLOP/s | % of f32 peak | vs first row of shape |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base: dict = {}
    for r in summary["rows"]:
        key = (r["L"], r["d"], r["H"], r["T"], r["B"])
        base.setdefault(key, r["step_ms"])
        lines.append(
            f"| {r['attention']} | {r['optimizer']} | {r.get('dtype', 'float32')} | {r['L']} | {r['d']} | {r['H']} | {r['T']} | {r['B']} "
            f"| {r['step_ms']:.1f} | {r['tokens_per_second']:,.0f} | {r['xla_flops_per_step'] / 1e9:.2f} "
            f"| {r['gflops']:.1f} | {100 * r['share_of_peak']:.0f}% | {r['step_ms'] / base[key]:.2f}x |")
    return "\n".join(lines)
