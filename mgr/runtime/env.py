"""Process-wide runtime settings: the persistent compilation cache, how threefry lowers, and
provenance facts."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import jax

from mgr.runtime import allocator


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> Path:
    """Turn on JAX's persistent compilation cache (also for sub-second compiles).

    Compile time dominates short runs and tests on CPU; a warm cache cut a 2-layer model's first
    step from 2.2 s to 0.7 s on the reference machine.
    """
    if directory is None:
        from mgr.runtime.paths import cache_dir

        directory = cache_dir() / "jax"
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    unroll_threefry()
    return path


def unroll_threefry() -> bool:
    """Lower JAX's threefry hash unrolled on CPU too, as JAX lowers it on every other platform.

    On CPU JAX lowers it as a 5-iteration loop whose carry is the whole array of counters, so
    each random initialiser becomes a while loop that XLA can neither fuse nor free early: the
    C1 init program held 50 MiB of temporaries (four u32 copies of the 50304 x 64 embedding) and
    took 0.95-1.35 s to compile for a benchmark arm. Unrolled, the same hash is one elementwise
    fusion with its consumer: no temporaries, compiles 20-28% shorter. The bits are the same
    (the same integer rounds; `tests/test_threefry_lowering.py` compares both lowerings).
    Called with the compilation cache, so every command, benchmark and test compiles this way.
    Returns whether the rule was installed (False if this JAX has no such rules).
    """
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as tf

        rule, prim = tf._threefry2x32_lowering_rule, tf.threefry2x32_p
    except (ImportError, AttributeError):  # a JAX without these internals: keep its lowering
        return False
    mlir.register_lowering(prim, rule, platform="cpu")
    return True


def maybe_init_distributed() -> bool:
    """Join a multi-process JAX job when the environment describes one (`mgr launch`, SLURM's
    srun, or MGR_DISTRIBUTED=auto; see `mgr.runtime.distributed`). Afterwards `jax.devices()`
    lists every process's devices and the run's mesh spans them. Must run before any computation.
    """
    from mgr.runtime import distributed

    return distributed.initialize()


def request_devices(n: int | None) -> None:
    """Ask for `n` simulated CPU devices when `--devices n` is given on a CPU-only host.

    Must run before JAX starts its backends (the count is fixed then); afterwards, or when the
    user already chose a count with XLA_FLAGS=--xla_force_host_platform_device_count, this does
    nothing and the trainer's own check reports a shortfall. GPU/TPU device lists are unaffected.
    In a job of several processes `n` counts the devices of all of them, so nothing is asked
    here: each process simulates what its launcher gives it (`mgr launch --devices-per-process`).
    """
    from jax._src import xla_bridge

    from mgr.runtime import distributed

    if not n or n <= 1 or xla_bridge.backends_are_initialized() or distributed.described():
        return
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    jax.config.update("jax_num_cpu_devices", int(n))


def git_info(cwd: str | os.PathLike | None = None) -> dict:
    """Commit and dirty flag of the repository holding the code, or 'unknown' outside git."""
    cwd = cwd or Path(__file__).resolve().parents[2]

    def run(*args):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)

    try:
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": "unknown", "dirty": None}
        dirty = run("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def versions() -> dict:
    import flax
    import optax

    return {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jax.lib.__version__
            if hasattr(jax.lib, "__version__") else jax.__version__, "flax": flax.__version__,
            "optax": optax.__version__}


def device_info() -> dict:
    devs = jax.devices()
    return {"platform": devs[0].platform, "kind": devs[0].device_kind, "count": len(devs),
            "process_count": jax.process_count(), "cpu_arch": platform.machine(),
            "allocator": allocator.loaded()}


def command_line() -> str:
    """The command as typed, with the program reduced to its name (no absolute paths)."""
    args = list(sys.argv)
    if args:
        args[0] = Path(args[0]).name
    return " ".join(args)
