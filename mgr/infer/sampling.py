"""Next-token sampling on the device: temperature, top-k and top-p (nucleus) from one sort.

Every knob is a traced array, so one compiled decode step serves any temperature, top-k, top-p
and seed; changing them never recompiles. Temperature 0 is greedy (argmax), top-k <= 0 and
top-p >= 1 switch those filters off. Top-p applies to the distribution left after top-k (the
order most libraries use), and always keeps the most likely token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from core.errors import MgrError

if TYPE_CHECKING:  # only for the annotation of `validate`
    from mgr.infer.engine import Engine


@dataclass(frozen=True)
class SamplingParams:
    """How new tokens are chosen, and how many.

    `temperature` 0 means greedy; `top_k` None or 0 and `top_p` None or 1.0 mean off. `seed`
    fixes the draws: the key of decoding position p is `fold_in(key(seed), p)`, so the same
    seed and prompt give the same tokens. `stop_at_eos` ends a row at the tokenizer's EOS id
    (which is not returned); benchmarks that need a fixed token count turn it off.
    """

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    stop_at_eos: bool = True

    def validate(self, engine: "Engine | None" = None) -> None:
        """Raise a one-line MgrError for knobs no sampler can honour."""
        if not isinstance(self.max_new_tokens, (int, np.integer)) or self.max_new_tokens < 1:
            raise MgrError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if engine is not None and self.max_new_tokens >= engine.max_seq_len:
            raise MgrError(f"max_new_tokens {self.max_new_tokens} leaves no room for a prompt in the "
                           f"context of {engine.max_seq_len} tokens (the model's max_seq_len)")
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise MgrError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise MgrError(f"top_k must be >= 0 (0 is off), got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise MgrError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= int(self.seed) < 2**32:
            raise MgrError(f"seed must be in [0, 2**32), got {self.seed}")

    def arrays(self) -> tuple[np.ndarray, ...]:
        """(temperature, top_k, top_p, seed) as the scalar arrays the decode step traces."""
        return (np.float32(self.temperature), np.int32(min(self.top_k or 0, 2**31 - 1)),
                np.float32(1.0 if self.top_p is None else self.top_p), np.uint32(self.seed))


def filtered_logits(logits_BxV: jax.Array, temperature, top_k, top_p) -> jax.Array:
    """Tempered logits with every token outside top-k / top-p set to a large finite negative."""
    z_BxV = logits_BxV.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
    v = z_BxV.shape[-1]
    # Finite, as the attention masks: -inf would make a fully masked softmax NaN.
    far = jnp.finfo(jnp.float32).min / 2
    sorted_BxV = -jnp.sort(-z_BxV, axis=-1)  # descending
    rank_V = jnp.arange(v)
    k = jnp.where((top_k <= 0) | (top_k > v), v, top_k)
    keep_BxV = rank_V[None, :] < k
    probs_BxV = jax.nn.softmax(jnp.where(keep_BxV, sorted_BxV, far), axis=-1)
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    # Rank 0 has zero mass before it, so the most likely token always survives (top_p > 0).
    keep_BxV &= (mass_before_BxV < top_p) | (top_p >= 1.0)
    cutoff_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(z_BxV >= cutoff_Bx1, z_BxV, far)


def sample(logits_BxV: jax.Array, key: jax.Array, temperature, top_k, top_p) -> jax.Array:
    """One token id per row (int32): argmax at temperature 0, else a draw from the filtered logits.

    The branch is a `lax.cond` on the (traced, scalar) temperature, so greedy decoding runs only
    the argmax: a `where` over both would sort the whole vocabulary on every greedy step too.
    """
    def drawn():
        z_BxV = filtered_logits(logits_BxV, temperature, top_k, top_p)
        return jax.random.categorical(key, z_BxV, axis=-1).astype(jnp.int32)

    return jax.lax.cond(temperature > 0, drawn, lambda: jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32))


def step_key(seed, position) -> jax.Array:
    """The PRNG key of one decoding position: split off the seed's key by position."""
    return jax.random.fold_in(jax.random.key(seed), position)
