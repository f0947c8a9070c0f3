"""AdamW with decoupled weight decay on matrices only (the mask comes from optim/partition.py)."""

from __future__ import annotations

from dataclasses import dataclass

import optax

from optim import partition
from optim.registry import register


@dataclass(frozen=True, kw_only=True)
class AdamWConfig:
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1


@register("adamw", config_cls=AdamWConfig, description="Adam with decoupled weight decay on matrices")
def build_adamw(cfg: AdamWConfig, learning_rate) -> optax.GradientTransformation:
    return optax.adamw(learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                       weight_decay=cfg.weight_decay, mask=partition.decay_mask)
