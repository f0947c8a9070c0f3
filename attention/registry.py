"""The attention registry: one decorator per algebra file, one error that lists every name."""

from __future__ import annotations

from typing import Callable

from attention.base import AttentionEntry
from core.errors import MgrError

_REGISTRY: dict[str, AttentionEntry] = {}


def register(name: str, *, config_cls: type, flops_per_token: Callable, reference: Callable,
             description: str, supports_cache: bool = True,
             relative_positions: bool = False, invertible: bool = False,
             block_factory: Callable | None = None,
             stack_factory: Callable | None = None,
             layer_flops: Callable | None = None) -> Callable[[type], type]:
    """Class decorator: `@register("standard", config_cls=..., ...)` on the NNX module."""

    def wrap(module_cls: type) -> type:
        if name in _REGISTRY:
            raise RuntimeError(f"attention '{name}' registered twice")
        _REGISTRY[name] = AttentionEntry(
            name=name, config_cls=config_cls, module_cls=module_cls, flops_per_token=flops_per_token,
            reference=reference, description=description, supports_cache=supports_cache,
            relative_positions=relative_positions, invertible=invertible,
            block_factory=block_factory, stack_factory=stack_factory, layer_flops=layer_flops)
        return module_cls

    return wrap


def names() -> list[str]:
    """Registered algebra names, in registration order."""
    return list(_REGISTRY)


def get(name: str) -> AttentionEntry:
    """The entry for `name`; an unknown name raises an error listing the valid ones.

    The error is both a `KeyError` (the contract) and an `MgrError` (so the CLI reports it as
    one line with exit code 2).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownAttention(f"unknown attention '{name}'; valid: {', '.join(names())}") from None


class UnknownAttention(MgrError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])
