"""Learning-rate schedules that are functions of the step: constant and cosine (both after a
linear warmup). The loss-driven ordinal schedule lives in optim/ordinal.py. Math and tests:
markdown_documentation/schedules.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import optax

from optim.registry import register_schedule


@dataclass(frozen=True, kw_only=True)
class ConstantConfig:
    pass


@dataclass(frozen=True, kw_only=True)
class CosineConfig:
    final_fraction: float = 0.1  # the decayed learning rate as a fraction of the peak


def _warmup(peak_lr: float, warmup_steps: int):
    return optax.linear_schedule(0.0 if warmup_steps else peak_lr, peak_lr, max(warmup_steps, 1))


@register_schedule("constant", config_cls=ConstantConfig,
                   description="linear warmup, then the peak learning rate throughout")
def build_constant(cfg: ConstantConfig, peak_lr: float, warmup_steps: int, total_steps: int):
    if warmup_steps == 0:
        return optax.constant_schedule(peak_lr)
    return optax.join_schedules([_warmup(peak_lr, warmup_steps), optax.constant_schedule(peak_lr)],
                                [warmup_steps])


@register_schedule("cosine", config_cls=CosineConfig,
                   description="linear warmup, then cosine decay to final_fraction of the peak")
def build_cosine(cfg: CosineConfig, peak_lr: float, warmup_steps: int, total_steps: int):
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup_steps else peak_lr, peak_value=peak_lr,
        warmup_steps=warmup_steps, decay_steps=max(total_steps, warmup_steps + 1),
        end_value=peak_lr * cfg.final_fraction)
