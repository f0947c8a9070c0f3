"""Training: the AOT-compiled step, init and evaluation programs, built once per arm in a process
(`program`), the run (`trainer`), the host loop (`loop`), orbax
checkpoints (`checkpoint`), resuming (`resume`), where arrays live on a device mesh
(`sharding`: `--devices N` is the layout data=N) and FLOP/memory counting of compiled programs
(`flops`)."""

from mgr.train.sharding import check_layout  # noqa: F401
from mgr.train.resume import finished_run  # noqa: F401
from mgr.train.trainer import (Program, StepParts, build_program, counted_flops, make_step,  # noqa: F401
                               plan_steps, read_metrics, step_flops, train)
