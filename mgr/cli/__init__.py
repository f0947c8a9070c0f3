"""The `mgr` command line: thin entry points. Each command parses its flags, builds configs and
calls one library function; bad input becomes one line on stderr and exit code 2."""

from mgr.cli.app import app  # noqa: F401
# Each command module registers its commands on `app` when imported.
from mgr.cli import train, bench, probe, report, infer, serve, demos, data, launch  # noqa: E402,F401  (this order is `mgr --help`'s)


def main() -> None:
    """The `mgr` script: re-executes once with tcmalloc preloaded when the system has it
    (`mgr.runtime.allocator`: 1.3-1.5x faster train steps on CPU), then runs the app."""
    from mgr.runtime import allocator

    allocator.preload()
    app()
