"""The C allocator a run uses: tcmalloc when the system has it, glibc's malloc otherwise.

Why it matters on CPU: XLA allocates each execution's temporaries as one buffer (269 MiB for
the L=4 d=256 T=256 B=8 train step, 81 MiB at C1) and frees it when the step ends. glibc serves
a buffer that large with mmap and returns it with munmap, so every step faults all of it in
again from zeroed pages: 68,870 minor faults and 0.11 s of system time per L=4 step, 305 ms a
step. tcmalloc keeps freed spans and hands the same pages to the next step: 235 ms, and C1
trains at 8,754 tokens/s instead of 5,886 (README, "Speed"). glibc cannot be told to do the
same: its mmap threshold stops at 32 MiB, and turning mmap off (one arena, no trimming) removes
the faults but fragments the heap: C1's peak rose from 582 to 642-921 MiB.

A malloc replacement must be loaded before the interpreter starts, so `preload()` re-executes
the process once with LD_PRELOAD set. Children (probe workers, `mgr launch` processes, the
benches' `mgr train` children) inherit it. `MGR_ALLOCATOR=system` keeps glibc's malloc;
`MGR_ALLOCATOR=/path/lib.so` preloads that library instead of searching.

Imports nothing of the project and nothing heavy: it runs before anything else is imported.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

ENV = "MGR_ALLOCATOR"
_EXECUTED = "MGR_ALLOCATOR_EXECUTED"  # set in the re-executed process: never exec twice
_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
# What /proc/self/maps shows for each allocator a process may have loaded.
_KNOWN = {"libtcmalloc": "tcmalloc", "libjemalloc": "jemalloc", "libmimalloc": "mimalloc"}


def _dirs() -> list[Path]:
    arch = platform.machine()
    return [Path(d) for d in (f"/usr/lib/{arch}-linux-gnu", f"/lib/{arch}-linux-gnu", "/usr/lib64",
                              "/usr/lib", "/usr/local/lib")]


def find() -> str | None:
    """The path of the system's tcmalloc (Debian/Ubuntu: libtcmalloc-minimal4), or None."""
    for d in _dirs():
        for name in _NAMES:
            if (d / name).is_file():
                return str(d / name)
    return None


def loaded() -> str:
    """The allocator this process runs on, read from its own memory map: "tcmalloc",
    "jemalloc", "mimalloc", or "system" (the C library's malloc)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return next((kind for lib, kind in _KNOWN.items() if lib in maps), "system")


def choice() -> str | None:
    """The library `preload` would load: None for the system allocator.

    Raises ValueError for an `MGR_ALLOCATOR` path that is not a file.
    """
    want = os.environ.get(ENV, "auto").strip() or "auto"
    if want == "system":
        return None
    if want == "auto":
        return find()
    if not Path(want).is_file():
        raise ValueError(f"{ENV}={want}: no such file (use 'auto', 'system' or the path of a malloc library)")
    return want


def preload() -> None:
    """Re-execute this process with the chosen allocator preloaded, once; a no-op when it is
    already loaded, when there is none, off Linux, or when exec fails (the run then continues
    on the system allocator). Call it first thing in an entry point, never from library code:
    it replaces the running process."""
    if not sys.platform.startswith("linux") or os.environ.get(_EXECUTED) or loaded() != "system":
        return
    try:
        lib = choice()
    except ValueError as e:
        sys.stderr.write(f"error: {e}\n")
        raise SystemExit(2) from None
    if lib is None:
        return
    env = dict(os.environ, **{_EXECUTED: lib, "LD_PRELOAD": " ".join(filter(None, (lib, os.environ.get("LD_PRELOAD"))))})
    # tcmalloc prints a line for every allocation over 1 GiB by default; a big model makes many.
    env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError:
        return


def release_free_memory() -> bool:
    """Hand the allocator's free pages back to the system; whether anything could be asked.

    Called between building a run's program and its first step (`mgr.train.trainer`): the
    lowering, the compile and the init leave tens of MiB freed in pieces that the step's one
    large block of temporaries cannot reuse (C1 after step 1: 513 -> 504 MiB). And before each
    checkpoint (`mgr.train.checkpoint`), so the save's buffers do not stack on the steps' freed
    temporaries (C1's whole-process peak: 522 -> 513 MiB); the step after a save faults its
    block in again once (at C1, 81 MiB). tcmalloc's `MallocExtension_ReleaseFreeMemory`, else
    glibc's `malloc_trim(0)`; neither changes any value.
    """
    import ctypes

    libc = ctypes.CDLL(None)
    for name, args in (("MallocExtension_ReleaseFreeMemory", ()), ("malloc_trim", (0,))):
        fn = getattr(libc, name, None)
        if fn is not None:
            fn(*args)
            return True
    return False
