"""Standard attention: softmax(q·k / sqrt(K)) v over earlier positions.

Math: y_i = sum_{j<=i} softmax_j(q_i·k_j / sqrt(K)) v_j, with RoPE on absolute positions,
parameter-free QK-norm and grouped-query heads. It is the baseline every other algebra is
compared against. See markdown_documentation/standard.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from attention.base import (ProjectedAttention, AlgebraConfig, AttentionDims, causal_mask,
                            mask_value, pairwise_flops, update_kv_cache)
from attention.registry import register


@dataclass(frozen=True, kw_only=True)
class StandardConfig(AlgebraConfig):
    """Standard attention has no knobs of its own beyond the model dims."""


def grouped_softmax_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, q_pos_BxT, k_pos_BxS):
    """Causal softmax attention with G kv heads shared by R = H/G query heads each.

    Scores are `[B, G, R, T, S]`, never `[..., K]`-sized; softmax runs in float32.
    """
    b, t, h, k = q_BxTxHxK.shape
    g = k_BxSxGxK.shape[2]
    q_BxTxGxRxK = q_BxTxHxK.reshape(b, t, g, h // g, k)
    s_BxGxRxTxS = jnp.einsum("btgrk,bsgk->bgrts", q_BxTxGxRxK, k_BxSxGxK,
                             preferred_element_type=jnp.float32) * (k ** -0.5)
    allowed_BxTxS = causal_mask(q_pos_BxT, k_pos_BxS)
    s_BxGxRxTxS = jnp.where(allowed_BxTxS[:, None, None], s_BxGxRxTxS, mask_value(jnp.float32))
    p = jax.nn.softmax(s_BxGxRxTxS, axis=-1).astype(v_BxSxGxK.dtype)
    y_BxTxGxRxK = jnp.einsum("bgrts,bsgk->btgrk", p, v_BxSxGxK)
    return y_BxTxGxRxK.reshape(b, t, h, k)


def _reference(module: "StandardAttention", x_BxTxD, positions_BxT):
    """Obviously correct: one query position at a time, explicit kv-head repetition."""
    q, k, v = module.qkv(x_BxTxD, positions_BxT)
    rep = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
    outs = []
    for i in range(x_BxTxD.shape[1]):
        s_BxHxS = jnp.einsum("bhk,bshk->bhs", q[:, i], k) / jnp.sqrt(q.shape[-1])
        ok_BxS = positions_BxT <= positions_BxT[:, i:i + 1]
        s_BxHxS = jnp.where(ok_BxS[:, None, :], s_BxHxS, -1e30)
        outs.append(jnp.einsum("bhs,bshk->bhk", jax.nn.softmax(s_BxHxS, axis=-1), v))
    y = jnp.stack(outs, axis=1)
    return module.wo(y.reshape(*y.shape[:2], -1))


def _flops(dims: AttentionDims, cfg: StandardConfig, seq_len: int) -> float:
    # Forward FLOPs per token: projections plus q·k and p·v over the full (non-causal) row.
    return pairwise_flops(dims, seq_len) + 4.0 * dims.n_heads * dims.head_dim * seq_len


@register("standard", config_cls=StandardConfig, flops_per_token=_flops, reference=_reference,
          description="softmax attention with RoPE, QK-norm and grouped-query heads",
          relative_positions=True)
class StandardAttention(ProjectedAttention):
    def __call__(self, x_BxTxD, positions_BxT, cache=None):
        b, t, _ = x_BxTxD.shape
        q, k, v = self.qkv(x_BxTxD, positions_BxT)
        k_pos = positions_BxT
        if cache is not None:
            cache = update_kv_cache(cache, positions_BxT, k, v)
            k, v, k_pos = cache["s0"], cache["s1"], cache["pos"]
        y_BxTxHxK = grouped_softmax_attention(q, k, v, positions_BxT, k_pos)
        return self.wo(y_BxTxHxK.reshape(b, t, -1)), cache
