"""Test-only stand-ins for attention, never registered: what a trained decoder does without
content-based mixing.

`UniformCausalAverage` is attention whose scores are all equal: each position receives the
plain mean of the values at positions <= t. It keeps standard attention's value and output
projections (grouped-query value width, `n_kv_heads * head_dim`), so it has the same mixing
channel and differs only in not choosing what to read. `with_uniform_attention` swaps it into
every block of a `Decoder` built from plain pre-norm blocks.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from attention.base import AttentionDims
from core.nn import Dense
from mgr.model.blocks import Block


class UniformCausalAverage(nnx.Module):
    """`y, cache = attn(x_BxTxD, positions_BxT, cache=None)` with y_t = W_o mean_{s<=t} W_v x_s."""

    def __init__(self, dims: AttentionDims, *, rngs: nnx.Rngs):
        self.dims = dims
        self.wv = Dense(dims.d_model, dims.n_kv_heads * dims.head_dim, rngs=rngs)
        self.wo = Dense(dims.n_heads * dims.head_dim, dims.d_model, rngs=rngs)

    def __call__(self, x_BxTxD, positions_BxT, cache=None):
        if cache is not None:
            raise NotImplementedError("the uniform baseline is for training tests only")
        dm = self.dims
        b, t, _ = x_BxTxD.shape
        v_BxTxGxK = self.wv(x_BxTxD).reshape(b, t, dm.n_kv_heads, dm.head_dim)
        # Without a cache positions ascend along T, so the causal mean is a running mean.
        count_T = jnp.arange(1, t + 1, dtype=x_BxTxD.dtype)[None, :, None, None]
        mean_BxTxGxK = jnp.cumsum(v_BxTxGxK, axis=1) / count_T
        y_BxTxHxK = jnp.repeat(mean_BxTxGxK, dm.n_heads // dm.n_kv_heads, axis=2)
        return self.wo(y_BxTxHxK.reshape(b, t, -1)), cache


def with_uniform_attention(model: nnx.Module, *, seed: int = 1) -> nnx.Module:
    """`model` (a Decoder of plain blocks) with every block's `attn` replaced, in place."""
    rngs = nnx.Rngs(seed)
    for block in model.blocks:
        if not isinstance(block, Block):
            raise TypeError(f"with_uniform_attention needs plain pre-norm blocks, got {block}")
        block.attn = UniformCausalAverage(block.attn.dims, rngs=rngs)
    return model
