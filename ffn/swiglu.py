"""SwiGLU: y = W_down · (silu(W_gate · x) ⊙ (W_up · x)), no biases (Shazeer 2020).

A gated linear unit with the SiLU (swish) gate, the feed-forward of LLaMA-style models (and of
the seeds' edge models). It has three matrices instead of two, so its width defaults to 2/3 of
the block's hidden width: the same parameters and FLOPs per token as `relu2` at the same
`mlp_ratio`, which keeps a fixed-FLOPs comparison between the two about the gate alone.
Page: markdown_documentation/ffn.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
from flax import nnx

from core.nn import Dense
from ffn.base import FeedForward, FFNConfig, no_aux, require
from ffn.registry import register


@dataclass(frozen=True, kw_only=True)
class SwiGLUConfig(FFNConfig):
    width_scale: float = 2.0 / 3.0  # gated width = round(width_scale * hidden)

    def validate(self) -> None:
        require(isinstance(self.width_scale, (int, float)) and self.width_scale > 0,
                f"swiglu: width_scale must be positive, got {self.width_scale!r}")


def gated_width(hidden: int, cfg: SwiGLUConfig) -> int:
    return max(1, round(hidden * cfg.width_scale))


def _flops(d_model: int, hidden: int, cfg: SwiGLUConfig, seq_len: int) -> float:
    del seq_len
    return 3 * 2.0 * d_model * gated_width(hidden, cfg)


@register("swiglu", config_cls=SwiGLUConfig, flops_per_token=_flops,
          description="gated feed-forward W_down (silu(W_gate x) * W_up x), width "
                      "width_scale x hidden (2/3: relu2's parameters and FLOPs)")
class SwiGLU(FeedForward):
    def __init__(self, d_model: int, hidden: int, cfg: SwiGLUConfig, *, rngs: nnx.Rngs,
                 out_std: float | None = None):
        f = gated_width(hidden, cfg)
        self.gate = Dense(d_model, f, rngs=rngs)
        self.up = Dense(d_model, f, rngs=rngs)
        self.down = Dense(f, d_model, rngs=rngs, std=out_std)

    def with_aux(self, x):
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x)), no_aux()
