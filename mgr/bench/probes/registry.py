"""The registry of probe tasks: `@register` in each task's own file, `names()` and `get()`."""

from __future__ import annotations

from mgr.bench.probes.base import TaskEntry
from core.errors import MgrError

_TASKS: dict[str, TaskEntry] = {}


class UnknownTask(MgrError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def register(name: str, *, config_cls: type, claim: str, description: str):
    """Decorator on a task's `build(cfg, seed) -> ProbeData`."""

    def wrap(build):
        if name in _TASKS:
            raise RuntimeError(f"probe task '{name}' registered twice")
        _TASKS[name] = TaskEntry(name, config_cls, build, claim, description)
        return build

    return wrap


def names() -> list[str]:
    return list(_TASKS)


def get(name: str) -> TaskEntry:
    if name not in _TASKS:
        raise UnknownTask(f"unknown probe task '{name}'; valid: {', '.join(names())}")
    return _TASKS[name]
