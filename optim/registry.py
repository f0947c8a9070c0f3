"""Registries of optimizers and learning-rate schedules, each with a listing error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from core.errors import MgrError


@dataclass(frozen=True)
class OptimizerEntry:
    """`build(cfg, learning_rate, *, stacked=False) -> optax.GradientTransformation[ExtraArgs]`.

    `learning_rate` is either an optax schedule (step -> value, warmup and decay included) or a
    scalar (a traced array when a wrapping schedule such as `ordinal` sets it every step); a
    builder must accept both and give the same state structure for either scalar value.
    `stacked` says the block parameters carry a leading layer axis (`nnx.scan`), for
    `optim.partition`.
    """

    name: str
    config_cls: type
    build: Callable[[Any, Any], Any]
    description: str


@dataclass(frozen=True)
class ScheduleEntry:
    """`build(cfg, peak_lr, warmup_steps, total_steps) -> optax.Schedule`, and optionally `wrap`.

    A plain schedule is a function of the step. A schedule that must see the loss or touch the
    optimizer's state (ordinal: anneal and restart) also provides
    `wrap(cfg, make_optimizer, base_schedule) -> optax.GradientTransformationExtraArgs`, where
    `make_optimizer(learning_rate)` builds the registered optimizer at a scalar learning rate
    and `base_schedule` is what `build` returned. The wrapper owns the optimizer's state.
    """

    name: str
    config_cls: type
    build: Callable[..., Any]
    description: str
    wrap: Callable[..., Any] | None = None


_OPTIMIZERS: dict[str, OptimizerEntry] = {}
_SCHEDULES: dict[str, ScheduleEntry] = {}


class UnknownName(MgrError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def register(name: str, *, config_cls: type, description: str):
    """Decorator on an optimizer's build function."""

    def wrap(build):
        if name in _OPTIMIZERS:
            raise RuntimeError(f"optimizer '{name}' registered twice")
        _OPTIMIZERS[name] = OptimizerEntry(name, config_cls, build, description)
        return build

    return wrap


def register_schedule(name: str, *, config_cls: type, description: str,
                      wrap: Callable[..., Any] | None = None):
    """Decorator on a schedule's build function (`wrap`: see `ScheduleEntry`)."""

    def decorate(build):
        if name in _SCHEDULES:
            raise RuntimeError(f"schedule '{name}' registered twice")
        _SCHEDULES[name] = ScheduleEntry(name, config_cls, build, description, wrap)
        return build

    return decorate


def names() -> list[str]:
    return list(_OPTIMIZERS)


def get(name: str) -> OptimizerEntry:
    if name not in _OPTIMIZERS:
        raise UnknownName(f"unknown optimizer '{name}'; valid: {', '.join(names())}")
    return _OPTIMIZERS[name]


def schedule_names() -> list[str]:
    return list(_SCHEDULES)


def get_schedule(name: str) -> ScheduleEntry:
    if name not in _SCHEDULES:
        raise UnknownName(f"unknown schedule '{name}'; valid: {', '.join(schedule_names())}")
    return _SCHEDULES[name]


def make_config(config_cls: type, options: dict, what: str):
    try:
        return config_cls(**options)
    except TypeError as e:
        raise MgrError(f"bad options for {what}: {e}") from None
