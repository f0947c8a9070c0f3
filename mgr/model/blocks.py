"""The residual blocks of the decoder.

`Block` is the standard pre-norm block: x + attn(norm(x)), then x + ffn(norm(x)), with the
attention algebra and the feed-forward kind of its layer taken from their registries. An algebra
that changes the residual structure of one layer may register a `block_factory` with the same
call signature (none of the shipped ones does); one whose structure spans a run of layers
registers a `stack_factory` (reversible). The model asks the registries, never compares names.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

import attention
import ffn
from core.nn import rms_normalize
from mgr.config import ModelConfig


class Block(nnx.Module):
    """Pre-norm residual block around any registered attention module and feed-forward kind."""

    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        name = cfg.layer_attention(layer)
        entry = attention.get(name)
        self.attn = entry.module_cls(cfg.attention_dims(), cfg.algebra_config(name), rngs=rngs)
        # Residual-branch outputs are scaled down with depth (GPT-2 style) so the stream's
        # variance at init does not grow with the number of layers.
        out_std = cfg.ffn_hidden ** -0.5 / (2 * cfg.n_layers) ** 0.5
        kind = cfg.layer_ffn(layer)
        # Still called `mlp`: a relu2 layer keeps its parameter paths (checkpoints, partition).
        self.mlp = ffn.get(kind).module_cls(cfg.d_model, cfg.ffn_hidden, cfg.ffn_config(kind),
                                            rngs=rngs, out_std=out_std)

    def init_cache(self, batch: int, dtype=jnp.float32):
        return self.attn.init_cache(batch, dtype)

    def with_aux(self, x_BxTxD, positions_BxT, cache=None):
        """`(x, cache, aux)`: the block's output, cache and its feed-forward's auxiliary loss."""
        a, cache = self.attn(rms_normalize(x_BxTxD), positions_BxT, cache)
        x_BxTxD = x_BxTxD + a
        y, aux = self.mlp.with_aux(rms_normalize(x_BxTxD))
        return x_BxTxD + y, cache, aux

    def __call__(self, x_BxTxD, positions_BxT, cache=None):
        x_BxTxD, cache, _ = self.with_aux(x_BxTxD, positions_BxT, cache)
        return x_BxTxD, cache


def residual_with_aux(module: nnx.Module, x_BxTxD, positions_BxT, cache=None):
    """`(x, cache, aux)` from any residual module of the stack.

    Every residual module is called as `x, cache = module(x, positions, cache)`; one with an
    auxiliary loss also offers `with_aux` (as `Block` does). Modules that an algebra's factory
    builds have none: their feed-forward is relu2, which `ModelConfig` enforces.
    """
    step = getattr(module, "with_aux", None)
    if step is not None:
        return step(x_BxTxD, positions_BxT, cache)
    x_BxTxD, cache = module(x_BxTxD, positions_BxT, cache)
    return x_BxTxD, cache, jnp.zeros((), jnp.float32)


def make_block(cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """The block for `layer`: the algebra's own factory if it registered one, else `Block`."""
    entry = attention.get(cfg.layer_attention(layer))
    factory = entry.block_factory or Block
    return factory(cfg, layer, rngs=rngs)


def make_stack(cfg: ModelConfig, *, rngs: nnx.Rngs) -> list[nnx.Module]:
    """The decoder's residual modules, in order.

    Each is called as `x, cache = module(x_BxTxD, positions_BxT, cache)` (or through
    `residual_with_aux`, which the decoder uses to collect auxiliary losses). A run of consecutive
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
