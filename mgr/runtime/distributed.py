"""Several processes on JAX's distributed runtime: joining the job, who writes, agreeing.

A job is joined from the launcher's environment before any computation:

- `JAX_COORDINATOR_ADDRESS` (host:port of process 0), `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`, as
  `mgr launch` sets them. JAX itself reads only the address from the environment, so the count
  and the id are passed here.
- SLURM under `srun` (more than one task): JAX's own SLURM detection picks address, count and id.
- `MGR_DISTRIBUTED=auto`: JAX's detection of any cluster it knows (TPU pod slices, Open MPI, k8s).
- `MGR_DISTRIBUTED=0` never joins, whatever the environment says.

On CPU the cross-process collectives are gloo's (`jax_cpu_collectives_implementation`); without
it XLA's CPU backend has no collectives between processes and a sharded step fails.

Everything a job decides must be decided the same way in every process, or the processes wait
on each other forever inside a collective. `barrier` orders reads before writes on the shared
run directory; `agree` makes process 0's decision (a time limit that expired on its clock) the
job's; `primary_outcome` runs something on process 0 alone (the run lock) and gives its error,
word for word, to every process.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from core.errors import MgrError

BARRIER_TIMEOUT_MS = 30 * 60 * 1000  # siblings may still be building data or compiling
_barriers = [0]  # the n-th barrier of this process; every process calls them in the same order


def _jax():
    # Imported lazily: `mgr.runtime.runs` asks `process_count()` and must stay free of JAX for
    # commands that never touch a device.
    import jax

    return jax


def _env_int(name: str) -> int:
    text = os.environ.get(name)
    try:
        return int(text)
    except (TypeError, ValueError):
        raise MgrError(f"JAX_COORDINATOR_ADDRESS is set, so {name} must be an integer, got {text!r}") from None


def _slurm_job() -> bool:
    try:
        return "SLURM_STEP_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1
    except ValueError:
        return False


def described() -> bool:
    """Whether the environment describes a job of several processes (see the module docstring)."""
    mode = os.environ.get("MGR_DISTRIBUTED", "").strip().lower()
    if mode in ("0", "off", "false", "no"):
        return False
    return bool(os.environ.get("JAX_COORDINATOR_ADDRESS")) or mode == "auto" or _slurm_job()


def initialize() -> bool:
    """Join the job the environment describes (see the module docstring); False when there is
    none. Must run before JAX starts its backends; a second call does nothing."""
    if not described():
        return False
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    jax = _jax()
    from jax._src import distributed as jax_distributed

    if jax_distributed.global_state.client is not None:
        return True
    if address:
        n, pid = _env_int("JAX_NUM_PROCESSES"), _env_int("JAX_PROCESS_ID")
        if n < 1 or not 0 <= pid < n:
            raise MgrError(f"JAX_PROCESS_ID {pid} must lie in [0, JAX_NUM_PROCESSES={n})")
        kwargs = {"coordinator_address": address, "num_processes": n, "process_id": pid}
    else:
        kwargs = {}
    # Only the CPU backend reads this; GPUs and TPUs keep their own collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # JAX's preemption service catches SIGTERM (to reach a sync point mgr never asks for), so a
    # process told to stop by its launcher or by SLURM would live on until SIGKILL. Without it
    # SIGTERM ends the process; `--resume` continues from the last checkpoint.
    jax.config.update("jax_enable_preemption_service", False)
    jax.distributed.initialize(**kwargs)
    sys.excepthook = _exit_at_once(sys.excepthook)
    sys.exit = _fail_at_once(sys.exit)
    return True


# A process of a job that fails must end now. Its orderly exit waits at a barrier for every
# sibling (up to JAX's 5-minute shutdown timeout) while a sibling that did not fail waits for it
# inside a collective or a barrier: the job would hang instead of failing, and `mgr launch`
# stops the siblings only once a process has exited. So an uncaught exception, and a non-zero
# `sys.exit` (how the CLI ends with a one-line error or a failed run), skip that barrier; the
# job's coordinator going away then ends the siblings too. A zero exit stays orderly.

def _flush() -> None:
    sys.stdout.flush()
    sys.stderr.flush()


def _exit_at_once(hook):
    def excepthook(kind, value, tb):
        hook(kind, value, tb)
        _flush()
        os._exit(1)

    return excepthook


def _fail_at_once(exit_):
    def exit(code=0):
        if code is None or code == 0:
            exit_(code)
        if not isinstance(code, int):  # sys.exit("message") prints it and exits 1
            print(code, file=sys.stderr)
            code = 1
        _flush()
        os._exit(code)

    return exit


def _state():
    if "jax" not in sys.modules:
        return None
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state


def process_count() -> int:
    state = _state()
    return 1 if state is None or state.client is None else int(state.num_processes)


def process_index() -> int:
    state = _state()
    return 0 if state is None or state.client is None else int(state.process_id)


def is_primary() -> bool:
    """True in process 0 (and in a job of one process): the one that writes records."""
    return process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process of the job gets here (nothing in one process). Host-side only:
    it never waits on a device."""
    state = _state()
    if state is None or state.client is None:
        return
    _barriers[0] += 1
    state.client.wait_at_barrier(f"mgr/{name}/{_barriers[0]}", BARRIER_TIMEOUT_MS)


def agree(flag: bool) -> bool:
    """Process 0's `flag`, in every process (`flag` itself in one process)."""
    if process_count() == 1:
        return bool(flag)
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(flag))))


def primary_outcome(name: str, fn: Callable[[], None]) -> None:
    """Run `fn` in process 0 only; if it raises MgrError, every process raises it (the same
    message), else every process goes on. In one process: `fn()`."""
    state = _state()
    if state is None or state.client is None:
        fn()
        return
    _barriers[0] += 1
    key = f"mgr/outcome/{name}/{_barriers[0]}"
    # On an error every process meets at `read` before raising: process 0 hosts the job's
    # coordinator and ends at once when it raises, and a sibling still waiting for the key
    # would get a lost-connection traceback instead of the one-line error.
    if state.process_id == 0:
        try:
            fn()
        except MgrError as e:
            state.client.key_value_set(key, "error:" + str(e))
            state.client.wait_at_barrier(key + "/read", BARRIER_TIMEOUT_MS)
            raise
        state.client.key_value_set(key, "ok")
        return
    got = state.client.blocking_key_value_get(key, BARRIER_TIMEOUT_MS)
    if got.startswith("error:"):
        state.client.wait_at_barrier(key + "/read", BARRIER_TIMEOUT_MS)
        raise MgrError(got[len("error:"):])
