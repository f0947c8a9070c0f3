"""Shared pieces of every attention algebra: the shape legend, dims, entries, RoPE, masks.

Shape legend (names carry their shapes, e.g. `q_BxTxHxK`):
  B batch, T query length, S key length (cache or sequence), D model width,
  H query heads, G kv heads (groups), R = H // G query heads per kv head, K head dim,
  N = B*T flattened tokens, V vocabulary.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from core.errors import MgrError
# Re-exported: every algebra builds its projections from these.
from core.nn import Dense, rms_normalize  # noqa: F401


@dataclass(frozen=True, kw_only=True)
class AttentionDims:
    """The model-level shape facts an attention module is built from."""

    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    max_seq_len: int
    rope_base: float = 10000.0


@dataclass(frozen=True, kw_only=True)
class AlgebraConfig:
    """Base for each algebra's own knobs. Subclasses are frozen kw_only dataclasses."""

    def validate(self, dims: AttentionDims) -> None:
        """Raise MgrError if these knobs cannot work with `dims`. Default: nothing to check."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def require(cond: bool, msg: str) -> None:
    """Config validation helper: one-line MgrError when `cond` is false."""
    if not cond:
        raise MgrError(msg)


@dataclass(frozen=True)
class AttentionEntry:
    """What the registry knows about one algebra.

    module_cls(dims, cfg, *, rngs) builds the NNX module, called as
    `y_BxTxD, cache = attn(x_BxTxD, positions_BxT, cache=None)`.
    `reference(module, x_BxTxD, positions_BxT) -> y_BxTxD` is a slow, obviously correct form
    using the module's own parameters. `block_factory`, when set, replaces the standard
    pre-norm residual block (no shipped algebra needs one yet). `stack_factory`, when set, builds one module for
    a run of consecutive layers of this algebra (reversible uses it: its inversion must span
    the whole run for activation memory not to grow with depth); the contract suite then checks
    that stack, since it is what the decoder runs, and `reference` takes the stack.

    Capabilities the contract suite checks on the module: `supports_cache` (prefill + decode ==
    full forward), `relative_positions` (the output is unchanged when every position shifts by
    the same constant, as RoPE on dot products gives, and distances between positions do move
    it; or the module reads no position at all, so that even permuting the positions changes
    nothing) and `invertible` (the module has `inverse(y_BxTxD, positions_BxT) -> x_BxTxD`).
    """

    name: str
    config_cls: type
    module_cls: type
    flops_per_token: Callable[[AttentionDims, Any, int], float]
    reference: Callable[..., jax.Array]
    description: str
    supports_cache: bool = True
    relative_positions: bool = False
    invertible: bool = False
    block_factory: Callable[..., nnx.Module] | None = None
    stack_factory: Callable[..., nnx.Module] | None = None
    # Forward FLOPs per token of one whole layer (attention + MLP) for algebras whose layer is
    # not the standard block; None means attention flops_per_token plus the standard MLP.
    layer_flops: Callable[[Any, int], float] | None = None


def mask_value(dtype) -> jax.Array:
    # A large finite negative: -inf turns fully masked rows (and their gradients) into NaN.
    return jnp.asarray(jnp.finfo(dtype).min / 2, dtype)


def causal_mask(q_pos_BxT: jax.Array, k_pos_BxS: jax.Array) -> jax.Array:
    """[B, T, S] boolean: key position <= query position."""
    return k_pos_BxS[:, None, :] <= q_pos_BxT[:, :, None]


def apply_rope(x_BxTxHxK: jax.Array, positions_BxT: jax.Array, base: float) -> jax.Array:
    """Rotary embedding on absolute positions (half-split layout)."""
    k = x_BxTxHxK.shape[-1]
    half = k // 2
    inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle_BxTxF = positions_BxT.astype(jnp.float32)[..., None] * inv_freq
    cos = jnp.cos(angle_BxTxF)[:, :, None, :]
    sin = jnp.sin(angle_BxTxF)[:, :, None, :]
    x1, x2 = x_BxTxHxK[..., :half].astype(jnp.float32), x_BxTxHxK[..., half:].astype(jnp.float32)
    out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.astype(x_BxTxHxK.dtype)


class QKVProjection(nnx.Module):
    """Query/key/value projections with QK-norm and RoPE, shared by the softmax-like algebras.

    Returns q `[B, T, H, K]` and k, v `[B, T, G, K]` (GQA: G kv heads).
    """

    def __init__(self, dims: AttentionDims, *, rngs: nnx.Rngs):
        self.dims = dims
        h, g, k, d = dims.n_heads, dims.n_kv_heads, dims.head_dim, dims.d_model
        self.wq = Dense(d, h * k, rngs=rngs)
        self.wk = Dense(d, g * k, rngs=rngs)
        self.wv = Dense(d, g * k, rngs=rngs)

    def __call__(self, x_BxTxD, positions_BxT, *, rope: bool = True, qk_norm: bool = True):
        b, t, _ = x_BxTxD.shape
        dm = self.dims
        q = self.wq(x_BxTxD).reshape(b, t, dm.n_heads, dm.head_dim)
        k = self.wk(x_BxTxD).reshape(b, t, dm.n_kv_heads, dm.head_dim)
        v = self.wv(x_BxTxD).reshape(b, t, dm.n_kv_heads, dm.head_dim)
        if qk_norm:
            q, k = rms_normalize(q), rms_normalize(k)
        if rope:
            q = apply_rope(q, positions_BxT, dm.rope_base)
            k = apply_rope(k, positions_BxT, dm.rope_base)
        return q, k, v


class ProjectedAttention(nnx.Module):
    """The scaffold shared by algebras that differ only in how they score and aggregate:
    q/k/v projections (QK-norm, RoPE), an output projection back to D, and the standard
    position-indexed KV cache. Subclasses implement `__call__`.
    """

    def __init__(self, dims: AttentionDims, cfg: AlgebraConfig, *, rngs: nnx.Rngs):
        cfg.validate(dims)
        self.dims, self.cfg = dims, cfg
        self.qkv = QKVProjection(dims, rngs=rngs)
        self.wo = Dense(dims.n_heads * dims.head_dim, dims.d_model, rngs=rngs)

    def init_cache(self, batch: int, dtype=jnp.float32) -> dict:
        return init_kv_cache(batch, self.dims, dtype)


def init_kv_cache(batch: int, dims: AttentionDims, dtype=jnp.float32, n_streams: int = 2) -> dict:
    """A fixed-size functional KV buffer of `max_seq_len` slots plus per-slot positions.

    Slots never written hold position `max_seq_len` (beyond any query), so the causal mask
    hides them without a separate length mask.
    """
    s, g, k = dims.max_seq_len, dims.n_kv_heads, dims.head_dim
    cache = {f"s{i}": jnp.zeros((batch, s, g, k), dtype) for i in range(n_streams)}
    cache["pos"] = jnp.full((batch, s), s, jnp.int32)
    return cache


def update_kv_cache(cache: dict, positions_BxT: jax.Array, *streams_BxTxGxK) -> dict:
    """Write T new entries at their absolute positions (the slot index is the position)."""
    start = positions_BxT[0, 0]
    new = dict(cache)
    for i, s in enumerate(streams_BxTxGxK):
        new[f"s{i}"] = jax.lax.dynamic_update_slice_in_dim(cache[f"s{i}"], s.astype(cache[f"s{i}"].dtype),
                                                          start, axis=1)
    new["pos"] = jax.lax.dynamic_update_slice_in_dim(cache["pos"], positions_BxT.astype(jnp.int32),
                                                     start, axis=1)
    return new


def pairwise_flops(dims: AttentionDims, seq_len: int) -> float:
    """Forward multiply-adds*2 per token of the q/k/v/o projections (shared by many algebras)."""
    d, h, g, k = dims.d_model, dims.n_heads, dims.n_kv_heads, dims.head_dim
    return 2.0 * d * (h * k + 2 * g * k) + 2.0 * h * k * d


# XLA's cost analysis counts a while-loop body once, whatever its trip count (10 matmuls in a
# scan were reported as one). The FLOPs budget therefore lowers the train step a second time
# inside `unrolled_loops()`, and every sequential loop in the project goes through `scan` /
# `loop_map` below so that it unrolls there. The unrolled program is only counted, never run.
_UNROLL = contextvars.ContextVar("mgr_unroll_loops", default=False)


@contextlib.contextmanager
def unrolled_loops():
    """Within this context `scan` and `loop_map` trace fully unrolled (for FLOP counting)."""
    token = _UNROLL.set(True)
    try:
        yield
    finally:
        _UNROLL.reset(token)


def scan(f, init, xs=None, length=None, reverse: bool = False):
    """`jax.lax.scan` that unrolls inside `unrolled_loops()`."""
    return jax.lax.scan(f, init, xs, length=length, reverse=reverse, unroll=True if _UNROLL.get() else 1)


def loop_map(f, xs, batch_size: int | None = None):
    """`jax.lax.map` that unrolls inside `unrolled_loops()` (same FLOPs, one element at a time)."""
    if not _UNROLL.get():
        return jax.lax.map(f, xs, batch_size=batch_size)
    return jax.lax.scan(lambda c, x: (c, f(x)), None, xs, unroll=True)[1]
