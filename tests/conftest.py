"""Test-wide settings: a persistent JAX compilation cache, a repo-local data cache, and XLA's
CPU backend at optimisation level 0 with its legacy (non-MLIR) fusion emitters.

Both caches live under the repo's ignored `.cache/`, so a second run (and CI on the same
machine) skips compilation and corpus/tokenizer builds. Compilation dominates a cold suite and
the tests' programs run for milliseconds, so LLVM's optimisation passes are skipped
(`--xla_backend_optimization_level=0`; measured on three train steps: 16.9 s of compilation at
the default against 12.1 s). The fusion emitters compile tiny programs 3-5x slower than the
legacy ones (`--xla_cpu_use_fusion_emitters=false`; tests/test_model.py + tests/test_flops.py
from a cold cache: 302 s wall / 178 s CPU with them, 188 s / 152 s without). The programs
under test are the same HLO either way; benchmarks and user runs keep the defaults.
Subprocesses the tests start inherit the settings.
"""

import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("MGR_CACHE_DIR", str(ROOT / ".cache" / "mgr"))
# Not on aarch64: the ARM tier compares emulated losses with x86 ones that `mgr.bench.armcheck`
# computes at the default level, so both sides keep it.
if platform.machine() != "aarch64":
    for flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
        if flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()

# Each xdist worker gets its own share of the cores (set before XLA starts, so its CPU client
# sizes its thread pools to that share). Unpinned, every worker's XLA runs one thread per core
# and the workers' threads contend for the same cores: the warm suite on the 2-core machine took
# 325 s wall with 137 s of system time, pinned 286 s with 74 s. Subprocesses inherit the share.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER.startswith("gw") and hasattr(os, "sched_setaffinity"):
    _cpus = sorted(os.sched_getaffinity(0))
    _n, _i = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), int(_WORKER[2:])
    os.sched_setaffinity(0, set(_cpus[_i::_n]) if _n <= len(_cpus) else {_cpus[_i % len(_cpus)]})

from mgr.runtime import enable_compilation_cache  # noqa: E402

enable_compilation_cache(ROOT / ".cache" / "jax-tests")
