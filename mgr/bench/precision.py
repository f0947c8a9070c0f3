"""bfloat16 against float32 compute on the same budget: step time, tokens/s and validation CE.

The same configuration (model, data, optimizer, schedule, steps, seeds) is trained once per
compute dtype through `mgr.train.train`, so the two rows differ only in the dtype of the
activations and matmul inputs (`ModelConfig.compute_dtype`; master weights, optimizer state,
normalisation, softmax and the loss stay float32). Steps are the same for both dtypes, so the
XLA-counted FLOPs budget is the same too. The default shape is the "bigger shape" of the speed
work (4 layers, width 256, sequence 256, batch 8).

    uv run python -m mgr.bench.precision                     # 200 steps, seeds 0 and 1
    uv run python -m mgr.bench.precision --steps 50 --seeds 0

Writes artifacts/bench/precision/<run_id>/{summary.json, run.md} and prints the table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from mgr.config import COMPUTE_DTYPES, DataConfig, ModelConfig, TrainConfig
from mgr.runtime import artifacts, enable_compilation_cache, runs

SCHEMA = "mgr.bench.precision.v1"


def measure(layers: int, width: int, heads: int, seq_len: int, batch: int, vocab: int, steps: int,
            seeds: list[int], lr: float) -> list[dict]:
    from mgr.data import build_data
    from mgr.train import train

    data_cfg = DataConfig(vocab_size=vocab, seq_len=seq_len, batch_size=batch)
    data = build_data(data_cfg)
    rows = []
    for dtype in COMPUTE_DTYPES:
        model = ModelConfig(vocab_size=vocab, d_model=width, n_layers=layers, n_heads=heads, n_kv_heads=heads,
                            max_seq_len=seq_len, compute_dtype=dtype)
        for seed in seeds:
            cfg = TrainConfig(steps=steps, seed=seed, learning_rate=lr, eval_every=steps, checkpoints=False)
            with tempfile.TemporaryDirectory() as tmp:
                s = train(model, data_cfg, cfg, run_dir=Path(tmp) / "run", artifacts_root=Path(tmp), data=data)
            r = s["results"]
            rows.append({"dtype": dtype, "seed": seed, "status": s["status"], "steps": steps,
                         "flops_per_step": s["budget"]["flops_per_step_xla"],
                         "tokens_per_second": r.get("tokens_per_second"),
                         "val_ce": r.get("val_ce_final"), "train_ce": r.get("train_ce_final")})
    return rows


def render(summary: dict) -> str:
    c = summary["config"]
    lines = [f"L={c['layers']} d={c['width']} H={c['heads']} T={c['seq_len']} B={c['batch']} "
             f"V={c['vocab']}, {c['steps']} steps, lr {c['lr']:g}, seeds {c['seeds']}", "",
             "| dtype | tokens/s (median) | vs float32 | val CE (mean) | val CE per seed | GFLOP/step |",
             "|---|---|---|---|---|---|"]
    by = {}
    for r in summary["rows"]:
        by.setdefault(r["dtype"], []).append(r)
    base = None
    for dtype, rs in by.items():
        tps = statistics.median(r["tokens_per_second"] for r in rs)
        base = base or tps
        ces = [r["val_ce"] for r in rs]
        lines.append(f"| {dtype} | {tps:,.0f} | {tps / base:.2f}x | {statistics.mean(ces):.4f} "
                     f"| {' / '.join(f'{x:.4f}' for x in ces)} | {rs[0]['flops_per_step'] / 1e9:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--artifacts-dir", type=Path, default=Path("artifacts"))
    a = ap.parse_args(argv)
    enable_compilation_cache()
    seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
    config = {"layers": a.layers, "width": a.width, "heads": a.heads, "seq_len": a.seq_len, "batch": a.batch,
              "vocab": a.vocab, "steps": a.steps, "seeds": seeds, "lr": a.lr}
    rows = measure(a.layers, a.width, a.heads, a.seq_len, a.batch, a.vocab, a.steps, seeds, a.lr)
    out = runs.run_dir(a.artifacts_dir, "bench", "precision", run_id=None)
    summary = {"schema_version": SCHEMA, "meta": artifacts.provenance(out.name), "config": config, "rows": rows}
    table = render(summary)
    artifacts.write_json(out / "summary.json", summary)
    artifacts.atomic_write(out / "run.md", f"# Compute dtype `{out.name}`\n\n{table}\n")
    print(table)
    print(f"record: {out}/summary.json")


if __name__ == "__main__":
    from mgr.runtime import allocator

    allocator.preload()  # measure on the allocator `mgr` runs on
    main()
