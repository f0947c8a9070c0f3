"""AdamW with decoupled weight decay on matrices only (the mask comes from optim/partition.py).

Math and tests: markdown_documentation/adamw.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import optax

from core.errors import MgrError
from optim import partition
from optim.registry import register


@dataclass(frozen=True, kw_only=True)
class AdamWConfig:
    b1: float = 0.9  # first-moment decay
    b2: float = 0.95  # second-moment decay
    eps: float = 1e-8  # denominator floor
    weight_decay: float = 0.1  # decoupled, on matrices (hidden, embedding, head) only

    def __post_init__(self):
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise MgrError(f"adamw: b1 and b2 must lie in [0, 1), got {self.b1}, {self.b2}")
        if self.eps <= 0 or self.weight_decay < 0:
            raise MgrError("adamw: eps must be positive and weight_decay non-negative")


@register("adamw", config_cls=AdamWConfig,
          description="Adam with decoupled weight decay on matrices (b1, b2, eps, weight_decay)")
def build_adamw(cfg: AdamWConfig, learning_rate, *, stacked: bool = False
                ) -> optax.GradientTransformation:
    return optax.adamw(learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                       weight_decay=cfg.weight_decay,
                       mask=lambda p: partition.decay_mask(p, stacked=stacked))
