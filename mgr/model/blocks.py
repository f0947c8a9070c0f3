"""The residual blocks of the decoder.

`Block` is the standard pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)). An algebra
that changes the residual structure of one layer may register a `block_factory` with the same
call signature (none of the shipped ones does); one whose structure spans a run of layers
registers a `stack_factory` (reversible). The model asks the registry, never compares names.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

import attention
from core.nn import MLP, rms_normalize
from mgr.config import ModelConfig


class Block(nnx.Module):
    """Pre-norm residual block around any registered attention module."""

    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        name = cfg.layer_attention(layer)
        entry = attention.get(name)
        self.attn = entry.module_cls(cfg.attention_dims(), cfg.algebra_config(name), rngs=rngs)
        # Residual-branch outputs are scaled down with depth (GPT-2 style) so the stream's
        # variance at init does not grow with the number of layers.
        out_std = (cfg.d_model * cfg.mlp_ratio) ** -0.5 / (2 * cfg.n_layers) ** 0.5
        self.mlp = MLP(cfg.d_model, cfg.d_model * cfg.mlp_ratio, rngs=rngs, out_std=out_std)

    def init_cache(self, batch: int, dtype=jnp.float32):
        return self.attn.init_cache(batch, dtype)

    def __call__(self, x_BxTxD, positions_BxT, cache=None):
        a, cache = self.attn(rms_normalize(x_BxTxD), positions_BxT, cache)
        x_BxTxD = x_BxTxD + a
        return x_BxTxD + self.mlp(rms_normalize(x_BxTxD)), cache


def make_block(cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """The block for `layer`: the algebra's own factory if it registered one, else `Block`."""
    entry = attention.get(cfg.layer_attention(layer))
    factory = entry.block_factory or Block
    return factory(cfg, layer, rngs=rngs)


def make_stack(cfg: ModelConfig, *, rngs: nnx.Rngs) -> list[nnx.Module]:
    """The decoder's residual modules, in order.

    Each is called as `x, cache = module(x_BxTxD, positions_BxT, cache)`. A run of consecutive
    layers whose algebra registers a `stack_factory` becomes one module covering all of them
    (`stack_factory(cfg, layers, rngs=...)`); every other layer gets its own block.
    """
    modules, layer = [], 0
    while layer < cfg.n_layers:
        entry = attention.get(cfg.layer_attention(layer))
        if entry.stack_factory is None:
            modules.append(make_block(cfg, layer, rngs=rngs))
            layer += 1
            continue
        end = layer
        while end < cfg.n_layers and attention.get(cfg.layer_attention(end)) is entry:
            end += 1
        modules.append(entry.stack_factory(cfg, list(range(layer, end)), rngs=rngs))
        layer = end
    return modules
