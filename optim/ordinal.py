"""Ordinal schedule: anneal and restart driven by the training loss, with a well-founded rank.

The schedule's position is the ordinal ρ = ω²·A + ω·B + C (A restarts left, B anneal levels
left, C patience left), compared lexicographically. Each step an EMA of the training loss (the
`value` extra argument of `update`) is compared with the best EMA of the current level: an
improvement keeps ρ; stagnation spends one unit of patience (C − 1). At a limit (C reaches 0):
if B > 0, anneal: B − 1, the learning rate is multiplied by γ and C refilled to
P(B) = patience·growth^(B₀ − B); else if A > 0, restart: A − 1, B ← B₀, C ← P(B₀), the learning
rate returns to its peak and the optimizer's state (moments, step counts) is re-initialised.
Every limit strictly lowers ρ and nothing raises it, so after finitely many stagnating steps ρ
reaches 0 and the schedule stays there. It wraps the optimizer (it must scale the learning rate
and reset the moments), keeping all of its state in the optax state. Math and tests:
markdown_documentation/schedules.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from core.errors import MgrError
from optim.registry import register_schedule
from optim.schedules import build_constant


@dataclass(frozen=True, kw_only=True)
class OrdinalConfig:
    restarts: int = 1  # A₀: restarts allowed
    anneal_levels: int = 3  # B₀: anneals per restart
    patience: int = 20  # non-improving steps allowed at the top level
    patience_growth: float = 2.0  # P(B) = patience * patience_growth**(B₀ - B)
    gamma: float = 0.5  # learning-rate factor at each anneal
    ema_decay: float = 0.9  # EMA of the training loss
    min_rel_improvement: float = 1e-3  # EMA must beat the best by this fraction to count

    def __post_init__(self):
        if self.restarts < 0 or self.anneal_levels < 0:
            raise MgrError("ordinal: restarts and anneal_levels must be >= 0")
        if self.patience < 1 or self.patience_growth < 1:
            raise MgrError("ordinal: patience must be >= 1 and patience_growth >= 1")
        if not 0 < self.gamma < 1:
            raise MgrError(f"ordinal: gamma must lie in (0, 1), got {self.gamma}")
        if not 0 <= self.ema_decay < 1:
            raise MgrError(f"ordinal: ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.min_rel_improvement < 0:
            raise MgrError("ordinal: min_rel_improvement must be >= 0")

    def patience_at(self, levels):
        """P(B) for B anneal levels left (works on arrays)."""
        p = self.patience * self.patience_growth ** (self.anneal_levels - levels)
        return jnp.maximum(jnp.round(p), 1).astype(jnp.int32)


class OrdinalState(NamedTuple):
    count: jax.Array  # int32 steps taken (drives the warmup of the base schedule)
    ema: jax.Array  # float32 EMA of the training loss
    best: jax.Array  # float32 best EMA of the current level (inf after a limit)
    restarts: jax.Array  # int32 A
    levels: jax.Array  # int32 B
    patience: jax.Array  # int32 C
    lr_scale: jax.Array  # float32 product of the anneal factors since the last restart
    learning_rate: jax.Array  # float32 learning rate used by the last update (for logs)
    inner: Any  # the wrapped optimizer's state


def rank(state: OrdinalState) -> tuple[int, int, int]:
    """(A, B, C): the ordinal ω²A + ωB + C as a tuple, ordered lexicographically."""
    return int(state.restarts), int(state.levels), int(state.patience)


def find_state(opt_state) -> OrdinalState | None:
    """The OrdinalState inside a (chained) optax state, or None."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, OrdinalState))
             if isinstance(s, OrdinalState)]
    return found[0] if found else None


def _reset(fresh, current, restart):
    # Raw PRNG keys (uint32) keep advancing so HOSS noise does not repeat after a restart.
    return jax.tree.map(lambda f, c: c if c.dtype == jnp.uint32 else jnp.where(restart, f, c),
                        fresh, current)


def wrap_ordinal(cfg: OrdinalConfig, make_optimizer, base_schedule
                 ) -> optax.GradientTransformationExtraArgs:
    """The optimizer driven by the ordinal schedule (see `ScheduleEntry.wrap`)."""

    def inner_at(lr):
        return optax.with_extra_args_support(make_optimizer(lr))

    def init(params):
        return OrdinalState(
            count=jnp.zeros([], jnp.int32), ema=jnp.zeros([], jnp.float32),
            best=jnp.full([], jnp.inf, jnp.float32),
            restarts=jnp.asarray(cfg.restarts, jnp.int32),
            levels=jnp.asarray(cfg.anneal_levels, jnp.int32),
            patience=cfg.patience_at(jnp.asarray(cfg.anneal_levels)),
            lr_scale=jnp.ones([], jnp.float32), learning_rate=jnp.zeros([], jnp.float32),
            inner=inner_at(jnp.ones([], jnp.float32)).init(params))

    def update(updates, state, params=None, *, value=None, **extra_args):
        if value is None:
            raise MgrError("the ordinal schedule needs the loss: tx.update(..., value=loss)")
        loss = jnp.asarray(value, jnp.float32)
        ema = jnp.where(state.count == 0, loss, cfg.ema_decay * state.ema
                        + (1 - cfg.ema_decay) * loss)
        a, b, c = state.restarts, state.levels, state.patience
        final = (a == 0) & (b == 0) & (c == 0)
        threshold = state.best - cfg.min_rel_improvement * jnp.abs(state.best)
        improved = jnp.isinf(state.best) | (ema < threshold)
        best = jnp.where(improved, ema, state.best)
        c = jnp.where(improved | final, c, c - 1)
        limit = (c == 0) & ~final
        anneal = limit & (b > 0)
        restart = limit & (b == 0) & (a > 0)
        a = jnp.where(restart, a - 1, a)
        b = jnp.where(anneal, b - 1, jnp.where(restart, cfg.anneal_levels, b))
        c = jnp.where(anneal | restart, cfg.patience_at(b), c)
        scale = jnp.where(anneal, state.lr_scale * cfg.gamma,
                          jnp.where(restart, 1.0, state.lr_scale))
        best = jnp.where(anneal | restart, jnp.inf, best)
        lr = jnp.asarray(base_schedule(state.count), jnp.float32) * scale
        inner_tx = inner_at(lr)
        fresh = inner_tx.init(params if params is not None else updates)
        inner = _reset(fresh, state.inner, restart)
        new_updates, inner = inner_tx.update(updates, inner, params, value=value, **extra_args)
        return new_updates, OrdinalState(
            count=optax.safe_increment(state.count), ema=ema, best=best, restarts=a, levels=b,
            patience=c, lr_scale=scale, learning_rate=lr, inner=inner)

    return optax.GradientTransformationExtraArgs(init, update)


@register_schedule("ordinal", config_cls=OrdinalConfig, wrap=wrap_ordinal,
                   description="loss-driven: linear warmup, then anneal (lr x gamma) or restart "
                               "(reset moments and lr) when the loss EMA stagnates; rank "
                               "w^2*A + w*B + C only decreases (restarts, anneal_levels, "
                               "patience, patience_growth, gamma, ema_decay, "
                               "min_rel_improvement)")
def build_ordinal(cfg: OrdinalConfig, peak_lr: float, warmup_steps: int, total_steps: int):
    """The base learning rate before anneal factors: linear warmup, then the peak."""
    return build_constant(None, peak_lr, warmup_steps, total_steps)
