"""Every speed and memory table in the README, measured on this machine.

    uv run python -m mgr.bench.speed_report [--quick]

Prints markdown and writes it to artifacts/bench/speed/<run_id>/report.md with the raw numbers
in summary.json. Sections: train throughput against the f32 matmul peak (the foundation
shapes), each algebra's train step at (L=2, d=128, H=4, T=256, B=8), each optimizer's at
(L=2, d=128, H=4, T=128, B=8), activation memory against depth (reversible vs standard), and
forward time against sequence length (ultrametric, tropical, standard).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import attention
import optim
from mgr.runtime import artifacts, runs
from mgr.config import ModelConfig, TrainConfig
from mgr.bench.perf import matmul_peak, time_train_step


def _model(name: str, L: int, d: int, h: int, t: int, vocab: int = 4096) -> ModelConfig:
    return ModelConfig(vocab_size=vocab, d_model=d, n_layers=L, n_heads=h, n_kv_heads=h, max_seq_len=t,
                       attention=name)


def foundation(peak: float, steps: int) -> tuple[str, list]:
    rows = []
    for L, d, h, t, b in ((2, 128, 4, 128, 8), (4, 256, 4, 256, 8)):
        r = time_train_step(_model("standard", L, d, h, t), TrainConfig(), b, t, steps=steps)
        rows.append({"shape": f"L={L} d={d} H={h} T={t} B={b}", **r})
    lines = ["| shape (standard, AdamW, V=4096) | step ms | tokens/s | XLA GFLOP/step | GFLOP/s | % of matmul peak |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['shape']} | {r['step_ms']:.0f} | {r['tokens_per_second']:,.0f} | "
              f"{r['xla_flops_per_step'] / 1e9:.2f} | {r['gflops']:.1f} | {100 * r['gflops'] / peak:.0f}% |"
              for r in rows]
    return "\n".join(lines), rows


def algebras(steps: int) -> tuple[str, list]:
    rows = [{"attention": n, **time_train_step(_model(n, 2, 128, 4, 256), TrainConfig(), 8, 256, steps=steps)}
            for n in attention.names()]
    base = rows[0]["step_ms"]
    lines = ["| algebra | step ms | × standard | XLA GFLOP/step | compile s |", "|---|---|---|---|---|"]
    lines += [f"| {r['attention']} | {r['step_ms']:.0f} | {r['step_ms'] / base:.2f} | "
              f"{r['xla_flops_per_step'] / 1e9:.2f} | {r['compile_seconds']:.1f} |" for r in rows]
    return "\n".join(lines), rows


def optimizers(steps: int) -> tuple[str, list]:
    rows = [{"optimizer": o, **time_train_step(_model("standard", 2, 128, 4, 128), TrainConfig(optimizer=o),
                                               8, 128, steps=steps)} for o in optim.names()]
    base = next(r for r in rows if r["optimizer"] == "adamw")
    lines = ["| optimizer | step ms | × AdamW | XLA GFLOP/step | × AdamW |", "|---|---|---|---|---|"]
    lines += [f"| {r['optimizer']} | {r['step_ms']:.0f} | {r['step_ms'] / base['step_ms']:.2f} | "
              f"{r['xla_flops_per_step'] / 1e9:.2f} | {r['xla_flops_per_step'] / base['xla_flops_per_step']:.2f} |"
              for r in rows]
    return "\n".join(lines), rows


def depth_memory() -> tuple[str, dict]:
    from mgr.bench.depth import depth_memory_table, render_depth_table

    table = depth_memory_table((2, 4, 8, 16))
    return render_depth_table(table), table


def scaling(seq_lens) -> tuple[str, list]:
    from mgr.bench.scaling import forward_scaling, scaling_exponents

    names = ["standard", "tropical", "ultrametric"]
    rows = forward_scaling(names, list(seq_lens))
    slopes = scaling_exponents(rows)
    by = {(n, t): s for n, t, s in rows}
    lines = ["| T | " + " | ".join(f"{n} ms" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {t} | " + " | ".join(f"{1e3 * by[(n, t)]:.1f}" for n in names) + " |" for t in seq_lens]
    lines.append("| log-log slope | " + " | ".join(f"{slopes[n]:.2f}" for n in names) + " |")
    return "\n".join(lines), rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer timed steps and shorter sequences")
    ap.add_argument("--artifacts-dir", default="artifacts")
    args = ap.parse_args(argv)
    from mgr.runtime import enable_compilation_cache

    enable_compilation_cache()
    steps = 5 if args.quick else 12
    peak_rows = matmul_peak()
    peak = max(r["gflops"] for r in peak_rows)
    sections, raw = [], {"matmul_peak": peak_rows}
    for title, (md, data) in (
        ("Train throughput against the f32 matmul peak", foundation(peak, steps)),
        ("Each algebra's train step (L=2, d=128, H=4, T=256, B=8, V=4096, AdamW)", algebras(steps)),
        ("Each optimizer's train step (standard, L=2, d=128, H=4, T=128, B=8, V=4096)", optimizers(max(3, steps // 2))),
        ("Train-step activation memory against depth (d=128, H=4, T=256, B=8)", depth_memory()),
        ("Attention forward time against sequence length (B=1, d=128, H=4)",
         scaling((512, 1024, 2048) if args.quick else (512, 1024, 2048, 4096, 8192))),
    ):
        sections.append(f"### {title}\n\n{md}\n")
        raw[title] = data
    peak_line = " / ".join(f"{r['n']}²: {r['gflops']:.0f}" for r in peak_rows)
    text = f"f32 matmul peak through JAX (GFLOP/s): {peak_line}\n\n" + "\n".join(sections)
    out = runs.run_dir(Path(args.artifacts_dir), "bench", "speed", run_id=None)
    artifacts.write_json(out / "summary.json", {"meta": artifacts.provenance(out.name), "tables": raw})
    artifacts.atomic_write(out / "report.md", text)
    print(text)
    print(f"record: {out}/report.md")


if __name__ == "__main__":
    from mgr.runtime import allocator

    allocator.preload()  # measure on the allocator `mgr` runs on
    main()
