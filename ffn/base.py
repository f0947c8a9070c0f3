"""Shared pieces of every feed-forward kind: the config base, the entry, the module base.

Shape legend as in `attention/base.py` (B batch, T length, D model width, N = B*T tokens), plus
F hidden width, E experts, K experts chosen per token (top-k), G tokens per routing group and
C capacity slots per expert and group.

The contract: a kind's module is built as `module_cls(d_model, hidden, cfg, *, rngs, out_std)`
and called as `y, aux = ffn.with_aux(x)` on `x_BxTxD` or a 2-D `x_NxD`: the same shape and
dtype out, and `aux` a float32 scalar that the decoder adds to the training objective (0 for a
kind without an auxiliary loss; already weighted by the kind's own knobs). `ffn(x)` is `y`
alone, for callers that treat the feed-forward as a plain layer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from core.errors import MgrError


def require(cond: bool, msg: str) -> None:
    """Config validation helper: one-line MgrError when `cond` is false."""
    if not cond:
        raise MgrError(msg)


def is_int(x: Any) -> bool:
    # JSON options arrive as Python values: True is an int to isinstance, and 2.0 is not a count.
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True, kw_only=True)
class FFNConfig:
    """Base for each kind's knobs (frozen kw_only subclasses); validated at construction."""

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise MgrError (one line) if these knobs cannot work. Default: nothing to check."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FFNEntry:
    """What the registry knows about one feed-forward kind.

    `flops_per_token(d_model, hidden, cfg, seq_len)` is the forward FLOPs per token of one layer's
    feed-forward (2 per multiply-add, matmuls only), counting what the compiled program runs:
    for an MoE every capacity slot, filled or not. `has_aux` says the module returns a non-zero
    auxiliary loss.
    """

    name: str
    config_cls: type
    module_cls: type
    flops_per_token: Callable[[int, int, Any, int], float]
    description: str
    has_aux: bool = False


def no_aux() -> jax.Array:
    return jnp.zeros((), jnp.float32)


class FeedForward(nnx.Module):
    """Base of the feed-forward modules: subclasses implement `with_aux`."""

    def with_aux(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        raise NotImplementedError

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.with_aux(x)[0]
