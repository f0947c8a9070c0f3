"""Optimizers and schedules. Importing this package registers every one of them.

`build_transform(train_cfg, total_steps)` is the single place the trainer gets its optax
transformation from: gradient clipping, then the registered optimizer driven by the
registered schedule, wrapped so that extra arguments (the loss, for loss-driven schedules and
optimizers) can always be passed to `update`.
"""

from __future__ import annotations

import optax

from optim.registry import (get, get_schedule, make_config, names, register,  # noqa: F401
                            register_schedule, schedule_names)

from optim import adamw, schedules  # noqa: F401,E402


def build_transform(train_cfg, total_steps: int) -> optax.GradientTransformationExtraArgs:
    opt = get(train_cfg.optimizer)
    sched = get_schedule(train_cfg.schedule)
    lr = sched.build(make_config(sched.config_cls, train_cfg.schedule_options, f"schedule '{sched.name}'"),
                     train_cfg.learning_rate, train_cfg.warmup_steps, total_steps)
    tx = opt.build(make_config(opt.config_cls, train_cfg.optimizer_options, f"optimizer '{opt.name}'"), lr)
    if train_cfg.grad_clip:
        tx = optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip), tx)
    return optax.with_extra_args_support(tx)


def describe(train_cfg) -> dict:
    """The resolved optimizer and schedule knobs, for summaries."""
    import dataclasses

    opt, sched = get(train_cfg.optimizer), get_schedule(train_cfg.schedule)
    return {
        "optimizer": {"name": opt.name, **dataclasses.asdict(
            make_config(opt.config_cls, train_cfg.optimizer_options, opt.name))},
        "schedule": {"name": sched.name, **dataclasses.asdict(
            make_config(sched.config_cls, train_cfg.schedule_options, sched.name))},
    }
