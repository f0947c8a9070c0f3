"""`mgr bench-fixed-flops`, `report`, `compare` and `bench-throughput`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mgr.cli.app import COVERAGE_HELP, DTYPE_HELP, USER_SYMBOLS_HELP, app, parse_options, symbols, user_errors
from mgr.cli.train import MESH_HELP, TRACKER_DIR_HELP, TRACKER_HELP, layout_flags
from core.errors import MgrError
@app.command("bench-throughput")
@user_errors
def bench_throughput(
    attention: list[str] = typer.Option(["standard"], "--attention", "-a",
                                        help="algebras to time (repeatable)"),
    optimizer: list[str] = typer.Option(["adamw"], "--optimizer", "-o", help="optimizers (repeatable)"),
    shape: list[str] = typer.Option(["2,128,4,128,8", "4,256,4,256,8"], "--shape",
                                    help="L,d,H,T,B (repeatable)"),
    vocab_size: int = typer.Option(4096),
    steps: int = typer.Option(15, help="timed steps per configuration"),
    dtype: list[str] = typer.Option(["float32"], "--dtype", help=DTYPE_HELP + " (repeatable)"),
    run_id: Optional[str] = typer.Option(None),
    artifacts_dir: Path = typer.Option(Path("artifacts")),
):
    """Time train steps against the machine's f32 matmul peak; writes artifacts/bench/throughput/<run_id>/."""
    from mgr.runtime import enable_compilation_cache, runs
    from mgr.bench.throughput import run_throughput

    out = runs.run_dir(artifacts_dir, "bench", "throughput", run_id=run_id)
    enable_compilation_cache()
    shapes = []
    for s in shape:
        try:
            L, d, h, t, b = (int(x) for x in s.split(","))
        except ValueError:
            raise MgrError(f"--shape must be L,d,H,T,B integers, got '{s}'") from None
        shapes.append((L, d, h, t, b))
    table = run_throughput(attention, optimizer, shapes, vocab_size, steps, out, dtypes=dtype)
    typer.echo(table)
    typer.echo(f"record: {out}/summary.json")


def _csv(values: Optional[list[str]], cast=str) -> Optional[tuple]:
    """Repeatable options that also accept comma-separated lists: -a standard,tropical -a gauge."""
    if not values:
        return None
    out = []
    for v in values:
        for part in v.split(","):
            if part.strip():
                try:
                    out.append(cast(part.strip()))
                except ValueError:
                    raise MgrError(f"cannot read '{part}' as {cast.__name__}") from None
    return tuple(out)


def ffn_pattern(text: Optional[str]) -> str | tuple[str, ...] | None:
    """`--ffn relu2,moe` as a ModelConfig `ffn` value (None: not given)."""
    if text is None:
        return None
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    if not kinds:
        raise MgrError("--ffn must name at least one feed-forward kind")
    return kinds[0] if len(kinds) == 1 else kinds


def _layout(mesh: Optional[str], devices: Optional[int]) -> dict:
    """The layout flags as train-section overrides (None: the sweep's or the default)."""
    return {"devices": devices} if mesh is None else layout_flags(mesh, devices)


@app.command("bench-fixed-flops")
@user_errors
def bench_fixed_flops(
    attention: Optional[list[str]] = typer.Option(None, "--attention", "-a",
                                                  help="repeatable; default: every registered algebra"),
    optimizer: Optional[list[str]] = typer.Option(None, "--optimizer", "-o", help="repeatable; default adamw"),
    schedule: Optional[list[str]] = typer.Option(None, "--schedule", help="repeatable; default cosine"),
    seeds: Optional[str] = typer.Option(None, help="comma-separated seeds (default 0,1)"),
    target_flops: Optional[float] = typer.Option(None, help="XLA-counted FLOPs per configuration"),
    budgets: Optional[str] = typer.Option(None, help="comma-separated FLOPs budgets, e.g. 3e10,1e11,3e11: "
                                          "a curve per arm with a fitted power law (overrides --target-flops)"),
    lr_grid: Optional[str] = typer.Option(None, "--lr-grid", help="comma-separated learning rates; each arm's "
                                          "best is chosen on the tuning half of the validation tokens"),
    gate: bool = typer.Option(True, help="check each algebra's causality and reference before it trains"),
    n_layer: Optional[int] = typer.Option(None), n_head: Optional[int] = typer.Option(None),
    n_kv_head: Optional[int] = typer.Option(None), n_embd: Optional[int] = typer.Option(None),
    ffn: Optional[str] = typer.Option(None, "--ffn", help="feed-forward kinds tiled over layers, "
                                      "comma-separated (default relu2; every arm shares them)"),
    ffn_options: Optional[str] = typer.Option(None, help='JSON, e.g. {"moe": {"n_experts": 8}}'),
    seq_len: Optional[int] = typer.Option(None), batch_size: Optional[int] = typer.Option(None),
    vocab_size: Optional[int] = typer.Option(None), lr: Optional[float] = typer.Option(None, "--lr"),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="bpe or unigram"),
    user_symbols: Optional[str] = typer.Option(None, help=USER_SYMBOLS_HELP),
    character_coverage: Optional[float] = typer.Option(None, help=COVERAGE_HELP),
    warmup: Optional[int] = typer.Option(None), eval_every: Optional[int] = typer.Option(None),
    data: Optional[str] = typer.Option(None, help="directory of parquet shards with a 'text' column"),
    sweep: Optional[Path] = typer.Option(None, help="TOML grid (see experiments/)"),
    baseline: Optional[str] = typer.Option(None, help="baseline arm, e.g. standard-adamw-cosine"),
    timeout_s: Optional[float] = typer.Option(None, help="training time limit per configuration"),
    devices: Optional[int] = typer.Option(None, help="shard each batch over N devices (--mesh data=N)"),
    mesh: Optional[str] = typer.Option(None, "--mesh", help=MESH_HELP),
    run_id: Optional[str] = typer.Option(None, help="suite id; an existing one is resumed"),
    artifacts_dir: Path = typer.Option(Path("artifacts")),
    tracker: Optional[str] = typer.Option(None, "--tracker", help=TRACKER_HELP),
    tracker_dir: Optional[Path] = typer.Option(None, help=TRACKER_DIR_HELP),
    dtype: Optional[str] = typer.Option(None, "--dtype", help=DTYPE_HELP + " (every arm)"),
):
    """Train every configuration to the same FLOPs budget and compare validation CE across seeds."""
    from mgr.runtime import runs
    from mgr.bench.runner import run_from_cli
    from mgr.bench.tracking import experiment_name
    from mgr.train.trackers import from_flags

    suite = runs.run_dir(artifacts_dir, "bench", "fixed_flops", run_id=run_id)
    trackers = from_flags(tracker, tracker_dir, artifacts_dir, experiment_name("fixed_flops", suite))
    flags = {
        "attention": _csv(attention), "optimizer": _csv(optimizer), "schedule": _csv(schedule),
        "seeds": _csv(None if seeds is None else [seeds], int), "target_flops": target_flops,
        "baseline": baseline, "timeout_s": timeout_s, "gate": None if gate else False,
        "lr_grid": _csv(None if lr_grid is None else [lr_grid], float),
        "budgets": _csv(None if budgets is None else [budgets], float),
        "model": {"n_layers": n_layer, "n_heads": n_head, "n_kv_heads": n_kv_head, "d_model": n_embd,
                  "ffn": ffn_pattern(ffn), "compute_dtype": dtype,
                  "ffn_options": None if ffn_options is None else parse_options(ffn_options, "--ffn-options")},
        "data": {"seq_len": seq_len, "batch_size": batch_size, "vocab_size": vocab_size, "data_dir": data,
                 "tokenizer_type": tokenizer, "character_coverage": character_coverage,
                 "user_symbols": None if user_symbols is None else list(symbols(user_symbols))},
        "train": {"learning_rate": lr, "warmup_steps": warmup, "eval_every": eval_every, **_layout(mesh, devices)},
    }
    summary = run_from_cli(flags, sweep, suite, artifacts_dir, trackers=trackers)
    bad = [a["arm"] for a in summary["arms"] if a["failed_runs"] or not a["runs"]]
    typer.echo(f"record: {suite}/summary.json")
    if bad:
        raise typer.Exit(1)


@app.command()
@user_errors
def compare(
    baseline: Path = typer.Argument(..., help="run or suite directory (or its summary.json)"),
    candidate: Path = typer.Argument(...),
    loss_abs: float = typer.Option(0.01), loss_rel: float = typer.Option(0.01),
    throughput_rel: float = typer.Option(0.10), memory_rel: float = typer.Option(0.05),
):
    """Compare two runs or suites metric by metric; exit 1 on a regression beyond the thresholds."""
    from mgr.bench import compare as cmp

    rows = cmp.compare(cmp.load(baseline), cmp.load(candidate),
                       cmp.Thresholds(loss_abs, loss_rel, throughput_rel, memory_rel))
    typer.echo(cmp.render(rows))
    regressions = [r for r in rows if r["status"] == "regression"]
    typer.echo(f"{len(regressions)} regression(s)")
    if regressions:
        raise typer.Exit(1)

