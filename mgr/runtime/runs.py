"""Run directories: safe run ids and the lock that keeps one job per run (or suite) directory.

A run id names one directory under the artifacts root, so it must be a single path component:
`--run-id ../../x` or `a/b` would write outside `artifacts/<kind>/`. Every command that takes
`--run-id` goes through `run_dir`, so the rule lives here once.

The lock is `fcntl.flock` on `<dir>/.lock`, held for the life of the work. The kernel drops a
flock when its process dies (even by SIGKILL), so a crashed run never leaves a stuck lock the way
a PID file would. flock locks belong to an open file description: a second `open()` of the same
file conflicts even inside one process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path
from typing import Iterator

from core.errors import MgrError

MAX_RUN_ID = 100
# Not starting with '.' (hidden, or '..') nor '-' (read as an option by shell tools).
_RUN_ID = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9._-]{{0,{MAX_RUN_ID - 1}}}")
LOCK_NAME = ".lock"


def check_run_id(run_id: str) -> str:
    """Return `run_id` if it is one safe path component, else raise MgrError."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        shown = repr(run_id) if len(str(run_id)) <= 40 else repr(str(run_id)[:40] + "...")
        raise MgrError(f"--run-id {shown} is not a valid run id: use 1-{MAX_RUN_ID} of the characters "
                       "A-Z a-z 0-9 . _ -, starting with a letter, digit or '_'")
    return run_id


# Set by `mgr launch` for its children: the processes of one job start at slightly different
# times, and ids stamped by each process's own clock could straddle a second and name two runs.
JOB_RUN_ID = "MGR_JOB_RUN_ID"


def new_run_id() -> str:
    """A fresh time-stamped run id (UTC), or the one `mgr launch` gave the whole job."""
    import datetime as dt

    return os.environ.get(JOB_RUN_ID) or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


def resolve_run_id(run_id: str | None) -> str:
    """A checked `run_id`, or a fresh time-stamped one when none was given."""
    return new_run_id() if run_id is None else check_run_id(run_id)


def run_dir(root: Path, *parts: str, run_id: str | None) -> Path:
    """`root/parts.../run_id` for a checked (or fresh) run id."""
    return Path(root).joinpath(*parts, resolve_run_id(run_id))


@contextlib.contextmanager
def locked(directory: Path, what: str = "run") -> Iterator[Path]:
    """Hold the lock of `directory` (created if needed) or raise MgrError if another process has it.

    On release the lock file is removed, and so is the directory if this call created it and
    nothing else was written there (a run refused by a later check leaves no trace).

    The processes of one multi-process job are one run: process 0 alone takes the lock and every
    process gets its outcome (a refusal is the same one line in each).
    """
    from mgr.runtime import distributed

    if distributed.process_count() == 1:
        with _flocked(directory, what) as held:
            yield held
        return
    with contextlib.ExitStack() as stack:
        distributed.primary_outcome("lock", lambda: stack.enter_context(_flocked(directory, what)))
        yield Path(directory)


@contextlib.contextmanager
def _flocked(directory: Path, what: str) -> Iterator[Path]:
    directory = Path(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # a releasing holder removed the directory it had created
            directory.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise MgrError(f"{what} '{directory.name}' is in use by another process"
                           + (f" (pid {holder})" if holder else "") + "; wait for it or use another --run-id") from None
        # A releasing holder unlinks the file after we opened it: our lock is then on an orphan
        # inode, so open the path afresh.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # for the refusal message only, never trusted
        yield directory
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only succeeds when empty
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None
