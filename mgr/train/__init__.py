"""Training: the AOT-compiled step and the run (`trainer`), the host loop (`loop`), orbax
checkpoints (`checkpoint`) and FLOP/memory counting of compiled programs (`flops`)."""

from mgr.train.trainer import (Program, StepParts, build_program, counted_flops, make_step,  # noqa: F401
                               plan_steps, read_metrics, step_flops, train)
