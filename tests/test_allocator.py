"""`mgr.runtime.allocator`: an entry point re-executes itself once onto tcmalloc, keeping its
process id, arguments and exit code; `MGR_ALLOCATOR` opts out or names the library."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mgr.runtime import allocator

ROOT = Path(__file__).resolve().parents[1]
# Prints its pid before and after `preload()`: an exec runs the program again from the top in
# the same process, so the "before" line appears twice with one pid.
PROBE = ("import os, sys\nprint('before', os.getpid(), flush=True)\nfrom mgr.runtime import allocator\n"
         "allocator.preload()\nprint('after', os.getpid(), allocator.loaded(), sys.argv[1:], flush=True)\n"
         "sys.exit(3)\n")
TCMALLOC = allocator.find()
needs_tcmalloc = pytest.mark.skipif(
    TCMALLOC is None and not os.environ.get("MGR_REQUIRE_TCMALLOC"),
    reason="no tcmalloc on this machine (Debian: apt-get install libtcmalloc-minimal4)")


def _clean_env() -> dict:
    """This environment without any allocator choice, as a fresh shell would start a command."""
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ENV, "MGR_ALLOCATOR_EXECUTED")}


def _probe(**env_extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, "--flag", "a b"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**_clean_env(), **env_extra})


def _lines(proc) -> list[list[str]]:
    return [line.split(" ", 3) for line in proc.stdout.splitlines()]


@needs_tcmalloc
def test_preload_reexecutes_once_onto_tcmalloc_in_the_same_process():
    assert TCMALLOC is not None, "MGR_REQUIRE_TCMALLOC is set but no tcmalloc was found"
    proc = _probe()
    assert proc.returncode == 3, proc.stderr[-2000:]
    lines = _lines(proc)
    assert [x[0] for x in lines] == ["before", "before", "after"] and len({x[1] for x in lines}) == 1
    assert lines[-1][2:] == ["tcmalloc", "['--flag', 'a b']"]
    assert proc.stderr == ""  # no "large alloc" lines, no loader warnings


@needs_tcmalloc
def test_an_explicit_library_path_is_preloaded():
    assert TCMALLOC is not None, "MGR_REQUIRE_TCMALLOC is set but no tcmalloc was found"
    proc = _probe(MGR_ALLOCATOR=TCMALLOC)
    assert proc.returncode == 3 and _lines(proc)[-1][2] == "tcmalloc", proc.stderr[-2000:]


def test_system_keeps_the_c_library_malloc_without_reexecuting():
    proc = _probe(MGR_ALLOCATOR="system")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert [x[0] for x in _lines(proc)] == ["before", "after"] and _lines(proc)[-1][2] == "system"


def test_a_missing_library_is_one_line_and_exit_code_2(tmp_path):
    proc = _probe(MGR_ALLOCATOR=str(tmp_path / "libnone.so"))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: MGR_ALLOCATOR={tmp_path / 'libnone.so'}: no such file "
                                        "(use 'auto', 'system' or the path of a malloc library)"]


def test_the_mgr_script_is_the_entry_that_preloads():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "mgr"]
    assert script.value == "mgr.cli:main"


# Frees a touched 96 MiB buffer (tcmalloc keeps its pages), then asks for them to be handed back.
RELEASE = ("import ctypes\nfrom mgr.runtime import allocator\nallocator.preload()\n"
           "def rss():\n    return next(int(l.split()[1]) >> 10 for l in open('/proc/self/status') "
           "if l.startswith('VmRSS:'))\n"
           "libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p\n"
           "p = libc.malloc(96 << 20); ctypes.memset(p, 1, 96 << 20); libc.free(ctypes.c_void_p(p))\n"
           "kept = rss(); ok = allocator.release_free_memory()\n"
           "print(allocator.loaded(), kept, rss(), ok)\n")


@needs_tcmalloc
def test_release_free_memory_hands_freed_pages_back_to_the_system():
    assert TCMALLOC is not None, "MGR_REQUIRE_TCMALLOC is set but no tcmalloc was found"
    proc = subprocess.run([sys.executable, "-c", RELEASE], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=_clean_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    name, kept, after, ok = proc.stdout.split()
    assert name == "tcmalloc" and ok == "True"
    assert int(kept) - int(after) >= 64, (kept, after)  # MiB: most of the freed buffer left
