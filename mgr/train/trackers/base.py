"""The tracker contract and its registry.

A tracker kind (`tensorboard`, `mlflow`) is a class registered with `@register(name)`; the
CLI's `--tracker a,b` and everything above look kinds up here, never by comparing names. A
kind's constructor imports its optional package (the `trackers` extra) and raises a one-line
`MgrError` when it is missing, so a run without `--tracker` never imports either package.

Contract (`Tracker`): one instance is one experiment. `start_run(name, params, tags, previous=,
resume_step=)` returns a `TrackerRun` with `log(step, metrics)` and `finish(results, status,
tags, step=, record=)` (the final results at the run's last step; `record` the summary); `run.ref` is a small JSON-able dict that `previous=` takes back to continue the same run
in a later process (`mgr train --resume`). `annotate(ref, tags, text)` adds to a finished run
(a suite's table row), `describe(markdown, tags)` to the experiment (a suite's summary).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

from core.errors import MgrError

_KINDS: dict[str, type] = {}


class TrackerRun(Protocol):
    ref: dict

    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def finish(self, results: dict[str, float], status: str, tags: dict[str, str], *, step: int,
               record: dict | None = None) -> None: ...


class Tracker(Protocol):
    name: str

    def start_run(self, name: str, params: dict[str, Any], tags: dict[str, str], *,
                  previous: dict | None = None, resume_step: int | None = None) -> TrackerRun: ...

    def annotate(self, ref: dict, tags: dict[str, str], text: str | None = None) -> None: ...

    def describe(self, markdown: str, tags: dict[str, str]) -> None: ...


def register(name: str) -> Callable[[type], type]:
    """Class decorator: `cls(root: Path, experiment: str)` becomes the tracker kind `name`."""

    def deco(cls: type) -> type:
        if name in _KINDS:
            raise ValueError(f"tracker '{name}' registered twice")
        cls.name = name
        _KINDS[name] = cls
        return cls

    return deco


def names() -> list[str]:
    return sorted(_KINDS)


def parse(spec: str | None) -> tuple[str, ...]:
    """`--tracker tensorboard,mlflow` as registered kind names (empty: no tracker)."""
    kinds = tuple(dict.fromkeys(k.strip() for k in (spec or "").split(",") if k.strip()))
    unknown = [k for k in kinds if k not in _KINDS]
    if unknown:
        raise MgrError(f"unknown --tracker {', '.join(unknown)}; valid: {', '.join(names())}")
    return kinds


def build(kinds: tuple[str, ...], root: Path, experiment: str) -> list[Tracker]:
    """One tracker per kind, all writing under `root` (each in its own folder)."""
    return [_KINDS[k](Path(root), experiment) for k in kinds]


def need(module: str, dist: str, kind: str):
    """Import an optional package, or refuse in one line naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MgrError(f"--tracker {kind} needs {dist}: uv sync --extra trackers "
                       f"(or pip install 'mgr[trackers]')") from None


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as `a.b.c` keys; lists and other non-scalars as JSON text (hyperparameters
    are scalars in both MLflow and TensorBoard's HParams)."""
    import json

    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    key = prefix[:-1]
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return {key: tree}
    return {key: json.dumps(tree, default=str)}


def scalars(results: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a results dict (nested dicts flattened; curves and text skipped)."""
    import math

    out: dict[str, float] = {}
    for k, v in results.items():
        if isinstance(v, dict):
            out.update(scalars(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[f"{prefix}{k}"] = float(v)
    return out
