"""`mgr report`: re-render suites from their records and write the research report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mgr.cli.app import app, user_errors
from core.errors import MgrError


def _kind(suite_dir: Path) -> str:
    if (suite_dir / "bench.json").is_file():
        return "fixed_flops"
    if (suite_dir / "probe.json").is_file():
        return "probe"
    raise MgrError(f"{suite_dir} is not a benchmark or probe suite (no bench.json or probe.json)")


@app.command()
@user_errors
def report(
    suite_dirs: list[Path] = typer.Argument(..., metavar="DIR...", help="fixed-FLOPs or probe suite directories"),
    out: Optional[Path] = typer.Option(None, "--out", help="where report.md/.html/.json go (default: the first DIR)"),
):
    """Re-render each suite's record from its run records, then write the research report over all of them."""
    from mgr.bench.research import write_report

    kinds = [_kind(d) for d in suite_dirs]  # every directory is checked before anything is written
    for suite_dir, kind in zip(suite_dirs, kinds):
        if kind == "fixed_flops":
            from mgr.bench.report import write_suite

            summary = write_suite(suite_dir)
            for line in summary["conclusions"]["text"]:
                typer.echo(line)
            typer.echo(f"wrote {suite_dir}/summary.json, run.md, curves.png")
        else:
            from mgr.bench.probe_suite import write_probe_suite

            write_probe_suite(suite_dir)
            typer.echo(f"wrote {suite_dir}/summary.json, run.md")
    out_dir = out if out is not None else suite_dirs[0]
    result = write_report(suite_dirs, out_dir)
    typer.echo("research report conclusions:")
    for line in result["conclusions"]:
        typer.echo(f"- {line}")
    drawn = [p["file"] for p in result["plots"] if p["skipped"] is None]
    typer.echo(f"wrote {out_dir}/report.md, report.html, report.json" + "".join(f", {f}" for f in drawn))
