"""The `mgr` application object, its error handling and `mgr list`.

Bad input (unknown names, impossible shapes, missing data, unreadable checkpoints) is printed as
one line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
from typing import Optional

import typer

from core.errors import MgrError

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
    """List the registered attention algebras, feed-forward kinds, optimizers, schedules, probe tasks and demos with their knobs."""
    from rich.console import Console
    from rich.table import Table

    import attention
    import ffn
    import optim
    from mgr import demos
    from mgr.bench import probes

    console = Console()
    for title, rows in (
        ("demos (mgr run NAME)", [(n, demos.get(n).summary, f"steps={demos.get(n).default_steps}")
                                  for n in demos.names()]),
        ("attention algebras", [(n, attention.get(n).description, _knobs(attention.get(n).config_cls))
                                for n in attention.names()]),
        ("feed-forward kinds (--ffn)", [(n, ffn.get(n).description, _knobs(ffn.get(n).config_cls))
                                        for n in ffn.names()]),
        ("optimizers", [(n, optim.get(n).description, _knobs(optim.get(n).config_cls)) for n in optim.names()]),
        ("schedules", [(n, optim.get_schedule(n).description, _knobs(optim.get_schedule(n).config_cls))
                       for n in optim.schedule_names()]),
        ("probe tasks (mgr probe -t NAME)", [(n, f"{probes.get(n).description} Claim: {probes.get(n).claim}",
                                              _knobs(probes.get(n).config_cls)) for n in probes.names()]),
    ):
        table = Table(title=title, title_justify="left")
        for col in ("name", "what it is", "knobs (defaults)"):
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        console.print(table)


def parse_options(text: Optional[str], what: str) -> dict:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise MgrError(f"{what} must be a JSON object: {e.msg}") from None
    if not isinstance(value, dict):
        raise MgrError(f"{what} must be a JSON object")
    return value


# The tokenizer options shared by `train`, `bench-fixed-flops` and `data prepare`.
USER_SYMBOLS_HELP = "comma-separated pieces the tokenizer keeps whole, one id each (e.g. '<user>,</user>,<code>')"
COVERAGE_HELP = "share of characters the tokenizer's pieces cover (the rest fall back to bytes)"
DTYPE_HELP = ("compute dtype: float32, or bfloat16 (bfloat16 matmuls, float32 master weights, "
              "norms, softmax and loss)")


def symbols(text: Optional[str]) -> tuple[str, ...]:
    return tuple(s for s in (text or "").split(",") if s)
