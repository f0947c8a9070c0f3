"""Learning-rate schedules that are functions of the step: constant and cosine (both after a
linear warmup). The loss-driven ordinal schedule lives in optim/ordinal.py. Math and tests:
markdown_documentation/schedules.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp

from optim.registry import register_schedule


@dataclass(frozen=True, kw_only=True)
class ConstantConfig:
    pass


@dataclass(frozen=True, kw_only=True)
class CosineConfig:
    final_fraction: float = 0.1  # the decayed learning rate as a fraction of the peak


def _linear_warmup(peak_lr, warmup_steps: int):
    """optax.linear_schedule(0, peak, warmup_steps) (warmup_steps > 0), `peak_lr` maybe traced."""
    def schedule(count):
        count = jnp.clip(count, 0, warmup_steps)
        return (0.0 - peak_lr) * (1 - count / warmup_steps) + peak_lr
    return schedule


def _after_warmup(warmup, rest, warmup_steps: int):
    """optax.join_schedules([warmup, rest], [warmup_steps])."""
    def schedule(count):
        return jnp.where(count < warmup_steps, warmup(count), rest(count - warmup_steps))
    return schedule


# The schedules are written in jnp rather than with optax's builders so that the peak learning
# rate and the horizon may be traced values: the trainer passes them in the train state, and
# one compiled step then serves every learning rate and budget of a sweep (optax's builders
# check their arguments in Python). Values equal optax's warmup/cosine schedules to float32
# rounding (tests/optim/test_schedules_traced.py).
@register_schedule("constant", config_cls=ConstantConfig,
                   description="linear warmup, then the peak learning rate throughout")
def build_constant(cfg: ConstantConfig, peak_lr, warmup_steps: int, total_steps):
    if warmup_steps == 0:
        return lambda count: peak_lr + 0 * jnp.asarray(count, jnp.float32)
    return _after_warmup(_linear_warmup(peak_lr, warmup_steps),
                         lambda count: peak_lr + 0 * jnp.asarray(count, jnp.float32), warmup_steps)


@register_schedule("cosine", config_cls=CosineConfig,
                   description="linear warmup, then cosine decay to final_fraction of the peak")
def build_cosine(cfg: CosineConfig, peak_lr, warmup_steps: int, total_steps):
    # optax.warmup_cosine_decay_schedule(0 or peak, peak, warmup, max(total, warmup + 1),
    # end=peak * final_fraction), term by term.
    decay_steps = jnp.maximum(total_steps, warmup_steps + 1) - warmup_steps
    end = peak_lr * cfg.final_fraction
    alpha = jnp.where(peak_lr == 0, 0.0, end / jnp.where(peak_lr == 0, 1.0, peak_lr))

    def cosine(count):
        count = jnp.minimum(count, decay_steps)
        decayed = (1 - alpha) * (0.5 * (1 + jnp.cos(jnp.pi * count / decay_steps))) + alpha
        return peak_lr * decayed

    return _after_warmup(_linear_warmup(peak_lr, warmup_steps), cosine, warmup_steps)
