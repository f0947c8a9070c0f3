"""The `mgr` command line. Each command parses, builds configs and calls one library function.

Bad input (unknown names, impossible shapes, missing data, unreadable checkpoints) is printed as
one line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from mgr.errors import MgrError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="mgr: pluggable attention algebras, optimizers and fixed-FLOPs benchmarks in JAX.")


def user_errors(fn):
    """Turn MgrError into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MgrError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _knobs(config_cls) -> str:
    import dataclasses

    fields = dataclasses.fields(config_cls)
    return ", ".join(f"{f.name}={f.default!r}" for f in fields) or "–"


@app.command("list")
@user_errors
def list_cmd():
    """List the registered attention algebras, optimizers and schedules with their knobs."""
    from rich.console import Console
    from rich.table import Table

    import attention
    import optim

    console = Console()
    for title, rows in (
        ("attention algebras", [(n, attention.get(n).description, _knobs(attention.get(n).config_cls))
                                for n in attention.names()]),
        ("optimizers", [(n, optim.get(n).description, _knobs(optim.get(n).config_cls)) for n in optim.names()]),
        ("schedules", [(n, optim.get_schedule(n).description, _knobs(optim.get_schedule(n).config_cls))
                       for n in optim.schedule_names()]),
    ):
        table = Table(title=title, title_justify="left")
        for col in ("name", "what it is", "knobs (defaults)"):
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        console.print(table)


def _parse_options(text: Optional[str], what: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise MgrError(f"{what} must be a JSON object: {e.msg}") from None
    if not isinstance(value, dict):
        raise MgrError(f"{what} must be a JSON object")
    return value


@app.command()
@user_errors
def train(
    attention: str = typer.Option("standard", "--attention", "-a",
                                  help="algebra name, or comma-separated names tiled over layers"),
    optimizer: str = typer.Option("adamw", "--optimizer", "-o"),
    schedule: str = typer.Option("cosine", "--schedule"),
    steps: Optional[int] = typer.Option(None, help="training steps (default 200 unless --target-flops)"),
    target_flops: Optional[float] = typer.Option(None, help="budget in XLA-counted FLOPs; sets the steps"),
    seed: int = typer.Option(0),
    n_layer: int = typer.Option(2),
    n_head: int = typer.Option(4),
    n_kv_head: Optional[int] = typer.Option(None, help="kv heads (default: n_head)"),
    n_embd: int = typer.Option(128),
    seq_len: int = typer.Option(128),
    batch_size: int = typer.Option(8),
    vocab_size: int = typer.Option(4096),
    tokenizer: str = typer.Option("bpe", help="bpe or unigram"),
    lr: float = typer.Option(3e-3, "--lr", help="peak learning rate"),
    warmup: int = typer.Option(20, help="warmup steps"),
    eval_every: int = typer.Option(50),
    checkpoint_every: int = typer.Option(100),
    attention_options: Optional[str] = typer.Option(None, help='JSON, e.g. {"tropical": {"beta": 8}}'),
    optimizer_options: Optional[str] = typer.Option(None, help="JSON of the optimizer's knobs"),
    schedule_options: Optional[str] = typer.Option(None, help="JSON of the schedule's knobs"),
    data: Optional[str] = typer.Option(None, help="directory of parquet shards with a 'text' column"),
    run_id: Optional[str] = typer.Option(None),
    artifacts_dir: Path = typer.Option(Path("artifacts")),
    resume: bool = typer.Option(False, help="continue the run --run-id from its latest checkpoint"),
    progress: bool = typer.Option(True, help="show a progress bar"),
):
    """Train one configuration; writes artifacts/train/<run_id>/{summary.json, run.md, metrics.jsonl, checkpoints/}."""
    from mgr.artifacts import new_run_id
    from mgr.config import DataConfig, ModelConfig, TrainConfig
    from mgr.runtime import enable_compilation_cache
    from mgr.train import train as train_run

    enable_compilation_cache()
    root = artifacts_dir
    if resume:
        if not run_id:
            raise MgrError("--resume needs --run-id of the run to continue")
        run_dir = root / "train" / run_id
        model_cfg, data_cfg, train_cfg = _configs_from_summary(run_dir)
    else:
        names = tuple(a.strip() for a in attention.split(",") if a.strip())
        model_cfg = ModelConfig(
            vocab_size=vocab_size, d_model=n_embd, n_layers=n_layer, n_heads=n_head,
            n_kv_heads=n_kv_head or n_head, max_seq_len=seq_len,
            attention=names[0] if len(names) == 1 else names,
            attention_options=_parse_options(attention_options, "--attention-options"))
        data_cfg = DataConfig(data_dir=data, vocab_size=vocab_size, tokenizer_type=tokenizer,
                              seq_len=seq_len, batch_size=batch_size)
        train_cfg = TrainConfig(
            optimizer=optimizer, schedule=schedule, learning_rate=lr, warmup_steps=warmup,
            steps=None if target_flops is not None and steps is None else (steps or 200),
            target_flops=target_flops, seed=seed, eval_every=eval_every, checkpoint_every=checkpoint_every,
            optimizer_options=_parse_options(optimizer_options, "--optimizer-options"),
            schedule_options=_parse_options(schedule_options, "--schedule-options"))
        run_dir = root / "train" / (run_id or new_run_id())
    summary = train_run(model_cfg, data_cfg, train_cfg, run_dir=run_dir, artifacts_root=root,
                        resume=resume, progress=progress and sys.stderr.isatty())
    _print_result(summary, run_dir)
    if summary["status"] == "interrupted":
        raise typer.Exit(130)
    if summary["status"] != "ok":
        raise typer.Exit(1)


def _configs_from_summary(run_dir: Path):
    from mgr.config import DataConfig, ModelConfig, TrainConfig

    path = run_dir / "summary.json"
    try:
        cfg = json.loads(path.read_text())["config"]
        return (ModelConfig.from_dict(cfg["model"]), DataConfig.from_dict(cfg["data"]),
                TrainConfig.from_dict(cfg["train"]))
    except FileNotFoundError:
        raise MgrError(f"--resume: no run record at {run_dir}/summary.json") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise MgrError(f"--resume: unreadable {run_dir.name}/summary.json ({type(e).__name__})") from None


def _print_result(summary: dict, run_dir: Path) -> None:
    res = summary["results"]
    val = res.get("val_ce_final")
    tps = res.get("tokens_per_second")
    typer.echo(
        f"{summary['status']}: {res.get('steps_completed', 0)}/{summary['budget']['steps']} steps, "
        f"train CE {res.get('train_ce_final') or float('nan'):.4f}, "
        f"val CE {val if val is not None else float('nan'):.4f}, "
        f"{(tps or 0):,.0f} tok/s, {summary['budget']['flops_per_step_xla']:.3g} XLA FLOPs/step"
        + (f" ({summary['reason']})" if summary.get("reason") else ""))
    typer.echo(f"record: {run_dir}/summary.json")


def main():  # pragma: no cover - console entry
    app()


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
    run_id: Optional[str] = typer.Option(None),
    artifacts_dir: Path = typer.Option(Path("artifacts")),
):
    """Time train steps against the machine's f32 matmul peak; writes artifacts/bench/throughput/<run_id>/."""
    from mgr.artifacts import new_run_id
    from mgr.runtime import enable_compilation_cache
    from mgr.throughput import run_throughput

    enable_compilation_cache()
    shapes = []
    for s in shape:
        try:
            L, d, h, t, b = (int(x) for x in s.split(","))
        except ValueError:
            raise MgrError(f"--shape must be L,d,H,T,B integers, got '{s}'") from None
        shapes.append((L, d, h, t, b))
    out = artifacts_dir / "bench" / "throughput" / (run_id or new_run_id())
    table = run_throughput(attention, optimizer, shapes, vocab_size, steps, out)
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


@app.command("bench-fixed-flops")
@user_errors
def bench_fixed_flops(
    attention: Optional[list[str]] = typer.Option(None, "--attention", "-a",
                                                  help="repeatable; default: every registered algebra"),
    optimizer: Optional[list[str]] = typer.Option(None, "--optimizer", "-o", help="repeatable; default adamw"),
    schedule: Optional[list[str]] = typer.Option(None, "--schedule", help="repeatable; default cosine"),
    seeds: Optional[str] = typer.Option(None, help="comma-separated seeds (default 0,1)"),
    target_flops: Optional[float] = typer.Option(None, help="XLA-counted FLOPs per configuration"),
    n_layer: Optional[int] = typer.Option(None), n_head: Optional[int] = typer.Option(None),
    n_kv_head: Optional[int] = typer.Option(None), n_embd: Optional[int] = typer.Option(None),
    seq_len: Optional[int] = typer.Option(None), batch_size: Optional[int] = typer.Option(None),
    vocab_size: Optional[int] = typer.Option(None), lr: Optional[float] = typer.Option(None, "--lr"),
    warmup: Optional[int] = typer.Option(None), eval_every: Optional[int] = typer.Option(None),
    data: Optional[str] = typer.Option(None, help="directory of parquet shards with a 'text' column"),
    sweep: Optional[Path] = typer.Option(None, help="TOML grid (see experiments/)"),
    baseline: Optional[str] = typer.Option(None, help="baseline arm, e.g. standard-adamw-cosine"),
    timeout_s: Optional[float] = typer.Option(None, help="training time limit per configuration"),
    devices: Optional[int] = typer.Option(None, help="shard each batch over N devices"),
    run_id: Optional[str] = typer.Option(None, help="suite id; an existing one is resumed"),
    artifacts_dir: Path = typer.Option(Path("artifacts")),
):
    """Train every configuration to the same FLOPs budget and compare validation CE across seeds."""
    from mgr.artifacts import new_run_id
    from mgr.benchcli import run_from_cli

    if devices and devices > 1 and "jax" not in sys.modules:
        import os  # simulated CPU devices must be requested before JAX starts

        os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={devices}")
    flags = {
        "attention": _csv(attention), "optimizer": _csv(optimizer), "schedule": _csv(schedule),
        "seeds": _csv([seeds] if seeds else None, int), "target_flops": target_flops,
        "baseline": baseline, "timeout_s": timeout_s,
        "model": {"n_layers": n_layer, "n_heads": n_head, "n_kv_heads": n_kv_head, "d_model": n_embd},
        "data": {"seq_len": seq_len, "batch_size": batch_size, "vocab_size": vocab_size, "data_dir": data},
        "train": {"learning_rate": lr, "warmup_steps": warmup, "eval_every": eval_every, "devices": devices},
    }
    suite = artifacts_dir / "bench" / "fixed_flops" / (run_id or new_run_id())
    summary = run_from_cli(flags, sweep, suite, artifacts_dir)
    bad = [a["arm"] for a in summary["arms"] if any(s != "ok" for s in a["statuses"])]
    typer.echo(f"record: {suite}/summary.json")
    if bad:
        raise typer.Exit(1)


@app.command()
@user_errors
def report(suite_dir: Path = typer.Argument(..., help="a fixed-FLOPs suite directory")):
    """Re-render a suite's summary.json, run.md and curves.png from its run records."""
    from mgr.report import write_suite

    if not (suite_dir / "bench.json").is_file():
        raise MgrError(f"{suite_dir} is not a benchmark suite (no bench.json)")
    summary = write_suite(suite_dir)
    for line in summary["conclusions"]["text"]:
        typer.echo(line)
    typer.echo(f"wrote {suite_dir}/summary.json, run.md, curves.png")


@app.command()
@user_errors
def compare(
    baseline: Path = typer.Argument(..., help="run or suite directory (or its summary.json)"),
    candidate: Path = typer.Argument(...),
    loss_abs: float = typer.Option(0.01), loss_rel: float = typer.Option(0.01),
    throughput_rel: float = typer.Option(0.10), memory_rel: float = typer.Option(0.05),
):
    """Compare two runs or suites metric by metric; exit 1 on a regression beyond the thresholds."""
    from mgr import compare as cmp

    rows = cmp.compare(cmp.load(baseline), cmp.load(candidate),
                       cmp.Thresholds(loss_abs, loss_rel, throughput_rel, memory_rel))
    typer.echo(cmp.render(rows))
    regressions = [r for r in rows if r["status"] == "regression"]
    typer.echo(f"{len(regressions)} regression(s)")
    if regressions:
        raise typer.Exit(1)
