"""ReLU²: y = W_down · relu(W_up · x)², no biases (the decoder's feed-forward since the start).

The squared ReLU (So et al. 2021, "Primer") is as cheap as a ReLU and trained better than GELU
in their search; two matrices, D x F and F x D. The module *is* `core.nn.MLP` (same parameters,
same names `up`/`down`, same initialisation order), so a `relu2` decoder is bit-for-bit the
decoder from before the feed-forward registry, and reversible's stack keeps using `MLP` itself.
Page: markdown_documentation/ffn.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from flax import nnx

from core.nn import MLP
from ffn.base import FeedForward, FFNConfig, no_aux
from ffn.registry import register


@dataclass(frozen=True, kw_only=True)
class ReLU2Config(FFNConfig):
    """No knobs: the width comes from the model's `mlp_ratio`."""


def _flops(d_model: int, hidden: int, cfg: ReLU2Config, seq_len: int) -> float:
    del cfg, seq_len
    return 2.0 * 2.0 * d_model * hidden


@register("relu2", config_cls=ReLU2Config, flops_per_token=_flops,
          description="squared-ReLU feed-forward W_down relu(W_up x)^2, width d_model x mlp_ratio")
class ReLU2(MLP, FeedForward):
    """`MLP` under the feed-forward contract: `y, 0 = ffn.with_aux(x)`; `ffn(x)` is `MLP`'s."""

    def __init__(self, d_model: int, hidden: int, cfg: ReLU2Config | None = None, *, rngs: nnx.Rngs,
                 out_std: float | None = None):
        del cfg
        super().__init__(d_model, hidden, rngs=rngs, out_std=out_std)

    def with_aux(self, x):
        return MLP.__call__(self, x), no_aux()
