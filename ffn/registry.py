"""The feed-forward registry: one decorator per kind's file, one error that lists every name."""

from __future__ import annotations

from typing import Callable

from core.errors import MgrError
from ffn.base import FFNEntry

_REGISTRY: dict[str, FFNEntry] = {}

# The kind every layer gets unless its configuration says otherwise, and the only one inside
# residual modules that an attention algebra builds itself (reversible's stack).
DEFAULT = "relu2"


def register(name: str, *, config_cls: type, flops_per_token: Callable, description: str,
             has_aux: bool = False) -> Callable[[type], type]:
    """Class decorator: `@register("swiglu", config_cls=..., ...)` on the NNX module."""

    def wrap(module_cls: type) -> type:
        if name in _REGISTRY:
            raise RuntimeError(f"ffn '{name}' registered twice")
        _REGISTRY[name] = FFNEntry(name=name, config_cls=config_cls, module_cls=module_cls,
                                   flops_per_token=flops_per_token, description=description,
                                   has_aux=has_aux)
        return module_cls

    return wrap


def names() -> list[str]:
    """Registered feed-forward kinds, in registration order."""
    return list(_REGISTRY)


def get(name: str) -> FFNEntry:
    """The entry for `name`; an unknown name raises an error listing the valid ones (both a
    `KeyError` and an `MgrError`, so the CLI reports it as one line with exit code 2)."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownFFN(f"unknown ffn '{name}'; valid: {', '.join(names())}") from None


class UnknownFFN(MgrError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])
