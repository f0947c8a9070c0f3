"""Optimizers and schedules. Importing this package registers every one of them.

`build_transform(train_cfg, total_steps)` is the single place the trainer gets its optax
transformation from: gradient clipping, then the registered optimizer driven by the
registered schedule, wrapped so that extra arguments can always be passed to `update`:

    updates, opt_state = tx.update(grads, opt_state, params, value=loss,
                                   value_fn=lambda p: loss_of_params(p, batch))

`value` (the current loss) drives loss-driven schedules (ordinal); `value_fn` lets HOSS take
Hessian-vector products. Transforms that need neither ignore them.
"""

from __future__ import annotations

import optax

from optim.registry import (get, get_schedule, make_config, names, register,  # noqa: F401
                            register_schedule, schedule_names)

from optim import adamw, muon, hoss, schedules, ordinal  # noqa: F401,E402


def build_transform(train_cfg, total_steps, *, stacked: bool = False, peak_lr=None
                    ) -> optax.GradientTransformationExtraArgs:
    """Clip -> optimizer at the schedule's learning rate (or wrapped by a loss-driven schedule).

    `stacked=True` when the model's block parameters carry a leading layer axis (`nnx.scan`).
    `total_steps` and `peak_lr` (default `train_cfg.learning_rate`) may be traced scalars: the
    trainer passes them from the train state so one compiled step serves every learning rate
    and budget. The optimizer state's structure never depends on their values.
    """
    opt = get(train_cfg.optimizer)
    sched = get_schedule(train_cfg.schedule)
    opt_cfg = make_config(opt.config_cls, train_cfg.optimizer_options, f"optimizer '{opt.name}'")
    sched_cfg = make_config(sched.config_cls, train_cfg.schedule_options, f"schedule '{sched.name}'")
    peak = train_cfg.learning_rate if peak_lr is None else peak_lr
    lr = sched.build(sched_cfg, peak, train_cfg.warmup_steps, total_steps)

    def make_optimizer(learning_rate):
        return opt.build(opt_cfg, learning_rate, stacked=stacked)

    tx = sched.wrap(sched_cfg, make_optimizer, lr) if sched.wrap else make_optimizer(lr)
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
