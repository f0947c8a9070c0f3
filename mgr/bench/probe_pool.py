"""Probe jobs in worker processes: each a fresh interpreter with single-threaded XLA CPU.

Workers are spawned (never forked: a forked JAX runtime is not safe) and initialised before
they import JAX, so the thread flags take effect. Every worker writes its own run records
atomically; the parent only collects them and rewrites the suite record. A killed suite leaves
finished records whole and re-runs the rest on resume.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator

# One core per worker: XLA's Eigen thread pool would otherwise make two workers contend.
_WORKER_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false"


def _init_worker(cache_env: dict) -> None:
    os.environ.update(cache_env)
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_WORKER_XLA_FLAGS}".strip()
    from mgr.runtime import enable_compilation_cache

    enable_compilation_cache(os.environ.get("MGR_JAX_CACHE_DIR") or None)


def _work(cfg_dict: dict, job: tuple, suite_dir: str) -> list:
    from mgr.bench.probe_jobs import run_job
    from mgr.bench.probe_suite import ProbeConfig

    return run_job(ProbeConfig.from_dict(cfg_dict), job, Path(suite_dir), regate=True)


def _gate(name: str, options: dict | None) -> dict:
    from mgr.bench.gate import check_algebra

    return check_algebra(name, options)


class Workers:
    """One pool of `n` spawned workers for a whole suite (their compiled programs, FLOPs counts
    and gate results stay cached between the suite's stages). `with Workers(cfg, n) as w:`."""

    def __init__(self, cfg, n: int):
        import jax

        env = {k: v for k, v in os.environ.items() if k.startswith("MGR_")}
        env["MGR_JAX_CACHE_DIR"] = jax.config.jax_compilation_cache_dir or ""
        self.cfg = cfg
        self.pool = ProcessPoolExecutor(max_workers=n, mp_context=get_context("spawn"),
                                        initializer=_init_worker, initargs=(env,))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        # On an interrupt or an error nothing more starts; running jobs end with the workers.
        self.pool.shutdown(wait=True, cancel_futures=True)

    def gates(self, names: list[str], options: dict) -> dict[str, dict]:
        """Every algebra's gate, checked in parallel (it is also checked again, from a warm
        cache, in whichever worker trains it)."""
        futs = {n: self.pool.submit(_gate, n, options.get(n)) for n in names}
        return {n: f.result() for n, f in futs.items()}

    def run(self, suite_dir: Path, jobs: list[tuple]) -> Iterator[list]:
        """Yield each job's (relative path, record) list as it finishes."""
        pending = {self.pool.submit(_work, self.cfg.to_dict(), job, str(suite_dir)) for job in jobs}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield fut.result()
