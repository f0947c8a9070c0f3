"""`mgr probe`: probe tasks x algebras x optimizers x seeds at equal FLOPs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mgr.cli.app import app, parse_options, user_errors
from mgr.cli.bench import _csv, ffn_pattern
from mgr.cli.train import TRACKER_DIR_HELP, TRACKER_HELP


@app.command()
@user_errors
def probe(
    task: Optional[list[str]] = typer.Option(None, "--task", "-t", help="repeatable or comma-separated; "
                                             "default mqar (see `mgr list`)"),
    attention: Optional[list[str]] = typer.Option(None, "--attention", "-a",
                                                  help="repeatable; default: every registered algebra"),
    optimizer: Optional[list[str]] = typer.Option(None, "--optimizer", "-o", help="repeatable; default adamw"),
    schedule: Optional[list[str]] = typer.Option(None, "--schedule", help="repeatable; default cosine"),
    seeds: Optional[str] = typer.Option(None, help="comma-separated seeds (default 0,1,2)"),
    lr_grid: Optional[str] = typer.Option(None, "--lr-grid", help="comma-separated learning rates; the best "
                                          "is chosen per arm on the tuning slice (default 2e-3,4e-3)"),
    search_seeds: Optional[int] = typer.Option(None, help="run only the first N seeds at every rate, the "
                                               "rest at the chosen one (default 1; 0: every seed at every rate)"),
    budgets: Optional[str] = typer.Option(None, help="comma-separated XLA-counted FLOPs per run (default 6e11)"),
    task_options: Optional[str] = typer.Option(None, help='JSON, e.g. {"mqar": {"settings": [[64, 8]]}}'),
    attention_options: Optional[str] = typer.Option(None, help='JSON, e.g. {"tropical": {"beta": 8}}'),
    ffn: Optional[str] = typer.Option(None, "--ffn", help="feed-forward kinds tiled over layers, "
                                      "comma-separated (default relu2; every arm shares them)"),
    ffn_options: Optional[str] = typer.Option(None, help='JSON, e.g. {"moe": {"n_experts": 8}}'),
    n_layer: Optional[int] = typer.Option(None), n_head: Optional[int] = typer.Option(None),
    n_kv_head: Optional[int] = typer.Option(None), n_embd: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    workers: Optional[int] = typer.Option(None, help="worker processes (default 2; results do not depend on it)"),
    warmup: Optional[int] = typer.Option(None),
    baseline: Optional[str] = typer.Option(None, help="baseline arm, e.g. standard-adamw-cosine"),
    timeout_s: Optional[float] = typer.Option(None, help="training time limit per run"),
    sweep: Optional[Path] = typer.Option(None, help="TOML probe grid with named model variants (see "
                                         "experiments/peers_probe.toml); flags override it"),
    gate: bool = typer.Option(True, help="check each algebra's causality and reference before it runs"),
    report: bool = typer.Option(True, help="write report.md and report.html into the suite directory"),
    run_id: Optional[str] = typer.Option(None, help="suite id; an existing one is resumed"),
    artifacts_dir: Path = typer.Option(Path("artifacts")),
    tracker: Optional[str] = typer.Option(None, "--tracker", help=TRACKER_HELP),
    tracker_dir: Optional[Path] = typer.Option(None, help=TRACKER_DIR_HELP),
):
    """Train every (task, algebra, optimizer, learning rate, seed) to equal FLOPs; accuracy on answers."""
    from mgr.bench.probe_runner import run_from_cli
    from mgr.bench.tracking import experiment_name
    from mgr.runtime import runs
    from mgr.train.trackers import from_flags

    suite = runs.run_dir(artifacts_dir, "probe", run_id=run_id)
    trackers = from_flags(tracker, tracker_dir, artifacts_dir, experiment_name("probe", suite))
    model = {"n_layers": n_layer, "n_heads": n_head, "n_kv_heads": n_kv_head, "d_model": n_embd}
    if attention_options is not None:
        model["attention_options"] = parse_options(attention_options, "--attention-options")
    if ffn is not None:
        model["ffn"] = ffn_pattern(ffn)
    if ffn_options is not None:
        model["ffn_options"] = parse_options(ffn_options, "--ffn-options")
    flags = {
        "tasks": _csv(task), "attention": _csv(attention), "optimizer": _csv(optimizer),
        "schedule": _csv(schedule), "seeds": _csv(None if seeds is None else [seeds], int),
        "lr_grid": _csv(None if lr_grid is None else [lr_grid], float),
        "budgets": _csv(None if budgets is None else [budgets], float),
        "task_options": None if task_options is None else parse_options(task_options, "--task-options"),
        "batch_size": batch_size, "workers": workers,
        "search_seeds": search_seeds, "baseline": baseline, "timeout_s": timeout_s, "gate": gate,
        "model": model, "train": {"warmup_steps": warmup},
    }
    summary = run_from_cli(flags, suite, sweep, trackers=trackers)
    typer.echo(f"record: {suite}/summary.json")
    if report:
        from mgr.bench.research import write_report

        write_report([suite], suite)
        typer.echo(f"report: {suite}/report.md, {suite}/report.html")
    if summary["failures"]:
        raise typer.Exit(1)
