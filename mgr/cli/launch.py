"""`mgr launch`: several local processes of one JAX job (see `mgr.runtime.launcher`)."""

from __future__ import annotations

from typing import Optional

import typer

from mgr.cli.app import app, user_errors


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def launch(
    command: Optional[list[str]] = typer.Argument(None, help="the command after '--', e.g. mgr train --devices 2"),
    processes: int = typer.Option(..., "--processes", "-n", help="processes to start on this machine"),
    devices_per_process: int = typer.Option(1, help="CPU devices each process simulates"),
    grace_s: float = typer.Option(5.0, help="seconds between SIGTERM and SIGKILL when stopping the job"),
):
    """Run a command as N processes of one JAX job over loopback: `mgr launch --processes 2 -- mgr train
    --devices 2`. Each output line comes prefixed with its process (p0, p1, ...); one failing process
    stops them all."""
    from mgr.runtime.launcher import launch as run

    code = run(command or [], processes, devices_per_process, grace_s=grace_s)
    if code:
        raise typer.Exit(code)
