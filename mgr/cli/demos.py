"""`mgr run NAME` and `mgr run-all`: the demos."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mgr.cli.app import app, user_errors
def _print_demo(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['demo']}: {summary['summary']}", title_justify="left")
    for col in ("certificate", "claim", "value", "passed"):
        table.add_column(col)
    for c in summary["certificates"]:
        v = c["value"]
        table.add_row(c["name"], c["claim"], f"{v:.4g}" if isinstance(v, float) else str(v),
                      "[green]yes" if c["passed"] else "[red]NO")
    console = Console()
    console.print(table)
    for title, rows in summary["tables"].items():
        if rows:
            t = Table(title=title, title_justify="left")
            cols = list(rows[0])
            for col in cols:
                t.add_column(str(col))
            for r in rows:  # by column name: rows may list their keys in another order
                t.add_row(*(f"{x:.4g}" if isinstance(x, float) else str(x) for x in (r.get(c) for c in cols)))
            console.print(t)
    for n in summary["notes"]:
        console.print(f"- {n}")
    if summary["reason"]:
        console.print(f"[red]{summary['status']}: {summary['reason']}")


@app.command("run")
@user_errors
def run_cmd(
    name: str = typer.Argument(..., help="demo name (see `mgr list`)"),
    seed: int = typer.Option(0),
    steps: Optional[int] = typer.Option(None, help="training/iteration steps (default: the demo's own)"),
    run_id: Optional[str] = typer.Option(None),
    artifacts_dir: Path = typer.Option(Path("artifacts")),
):
    """Run one demo: live certificates of its mathematics; exits 1 if any fails."""
    from mgr import demos
    from mgr.runtime import enable_compilation_cache, runs

    run_id = runs.resolve_run_id(run_id)
    demos.get(name)  # an unknown name is refused here, so it never becomes a path
    run_dir = artifacts_dir / "demos" / name / run_id
    enable_compilation_cache()
    summary = demos.run_demo(name, seed=seed, steps=steps, run_dir=run_dir)
    _print_demo(summary)
    typer.echo(f"{summary['status']} in {summary['seconds']:.1f} s; record: {run_dir}/summary.json")
    if not summary["passed"]:
        raise typer.Exit(1)


@app.command("run-all")
@user_errors
def run_all(
    seed: int = typer.Option(0),
    steps: Optional[int] = typer.Option(None, help="steps for every demo (default: each demo's own)"),
    run_id: Optional[str] = typer.Option(None),
    artifacts_dir: Path = typer.Option(Path("artifacts")),
):
    """Run every demo and print a pass/fail table; exits 1 if any demo fails."""
    from rich.console import Console
    from rich.table import Table

    from mgr import demos
    from mgr.runtime import enable_compilation_cache, runs

    run_id = runs.resolve_run_id(run_id)  # one id for every demo
    enable_compilation_cache()
    table = Table(title="demos", title_justify="left")
    for col in ("demo", "status", "certificates passed", "seconds"):
        table.add_column(col)
    failed = []
    for name in demos.names():
        s = demos.run_demo(name, seed=seed, steps=steps, run_dir=artifacts_dir / "demos" / name / run_id)
        ok = sum(c["passed"] for c in s["certificates"])
        table.add_row(name, "[green]ok" if s["passed"] else f"[red]{s['status']}",
                      f"{ok}/{len(s['certificates'])}", f"{s['seconds']:.1f}")
        if not s["passed"]:
            failed.append(name)
    Console().print(table)
    typer.echo(f"{len(demos.names()) - len(failed)} passed, {len(failed)} failed"
               + (f": {', '.join(failed)}" if failed else ""))
    if failed:
        raise typer.Exit(1)
