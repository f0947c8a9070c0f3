"""Mixture of experts: top-k routing over E ReLU² experts, with capacity and balancing losses.

Router logits z = x W_r (float32, D x E), p = softmax(z). Each token picks its top-k experts; its
gate for a chosen expert is p_e when k = 1 (Switch: the gate still carries the task's gradient
into the router) and p_e renormalised over the k chosen when k > 1 (which equals the softmax of
the k chosen logits). Tokens are routed in groups: each batch row (G = T tokens), or the whole of
a 2-D input. Per group every expert has C = min(G, ceil(capacity_factor * k * G / E)) slots,
filled in position order; a (token, expert) pair that finds the expert full is dropped (that
expert contributes 0; the residual stream carries the token on). capacity_factor 0 or None is
dropless (C = G, which always suffices: a token takes an expert at most once). Position order
makes the drops causal and each row's routing independent of the other rows.

Dispatch and combine are one-hot `[B, G, E, C]` tensors contracted with einsums: static shapes
and no gather, so XLA's cost analysis counts all E·C slots of every group, filled or not, which
is what the program runs. The objective gains aux = aux_weight · E Σ_e f_e p̄_e (Switch load
balancing: f_e the fraction of token choices routed to e, p̄_e the mean router probability; 1
when uniform, E when every token goes to one expert with certainty) + z_weight · mean(logsumexp(z)²)
(ST-MoE's router z-loss, keeping logits small). Claim: more parameters per FLOP than a dense
feed-forward of the same active width. Page: markdown_documentation/ffn.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from core.nn import Dense
from ffn.base import FeedForward, FFNConfig, is_int, require
from ffn.registry import register


@dataclass(frozen=True, kw_only=True)
class MoEConfig(FFNConfig):
    n_experts: int = 4  # E experts, each a ReLU² feed-forward of the block's hidden width
    top_k: int = 1  # experts per token
    # Slots per expert = capacity_factor * k * G / E; 0 or None: dropless (C = G). Dropless is
    # the default because cached decoding equals the full forward only without drops.
    capacity_factor: float | None = 0.0
    aux_weight: float = 0.01  # weight of the Switch load-balancing loss
    z_weight: float = 1e-3  # weight of the router z-loss

    def validate(self) -> None:
        require(is_int(self.n_experts) and self.n_experts >= 1,
                f"moe: n_experts must be an integer >= 1, got {self.n_experts!r}")
        require(is_int(self.top_k) and self.top_k >= 1,
                f"moe: top_k must be an integer >= 1, got {self.top_k!r}")
        require(self.top_k <= self.n_experts,
                f"moe: top_k ({self.top_k}) cannot exceed n_experts ({self.n_experts})")
        cf = self.capacity_factor
        require(cf is None or (isinstance(cf, (int, float)) and not isinstance(cf, bool) and cf >= 0),
                f"moe: capacity_factor must be >= 0 (0 or null: dropless), got {cf!r}")
        for name in ("aux_weight", "z_weight"):
            w = getattr(self, name)
            require(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0,
                    f"moe: {name} must be >= 0, got {w!r}")


def capacity(cfg: MoEConfig, group_tokens: int) -> int:
    """C, the slots per expert for a group of `group_tokens` tokens."""
    if not cfg.capacity_factor:
        return group_tokens
    # The small slack keeps an exact product (1.0 * 2 * 8 / 4) from rounding up on float noise.
    want = math.ceil(cfg.capacity_factor * cfg.top_k * group_tokens / cfg.n_experts - 1e-9)
    return max(1, min(group_tokens, want))


class Routing(NamedTuple):
    dispatch_BxGxExC: jax.Array  # 1 where token g fills slot c of expert e
    combine_BxGxExC: jax.Array  # the token's gate at that slot (0 where dropped)
    probs_BxGxE: jax.Array  # router softmax
    chosen_BxGxE: jax.Array  # 1 where e is among the token's top-k, capacity aside


def route(logits_BxGxE: jax.Array, top_k: int, capacity: int) -> Routing:
    """Top-k choice, gates and capacity slots for every group (all float32)."""
    b, g, n_exp = logits_BxGxE.shape
    probs = jax.nn.softmax(logits_BxGxE.astype(jnp.float32), axis=-1)
    top_p_BxGxK, top_i_BxGxK = jax.lax.top_k(probs, top_k)
    gates_BxGxK = top_p_BxGxK if top_k == 1 else top_p_BxGxK / jnp.sum(top_p_BxGxK, -1, keepdims=True)
    choice_BxGxKxE = jax.nn.one_hot(top_i_BxGxK, n_exp, dtype=jnp.int32)
    # Queue position of each (token, choice) at its expert: a running count over the group in
    # position order (a token's choices are distinct experts, so their order is immaterial).
    queue = jnp.cumsum(choice_BxGxKxE.reshape(b, g * top_k, n_exp), axis=1) - 1
    slot_BxGxK = jnp.sum(queue.reshape(b, g, top_k, n_exp) * choice_BxGxKxE, axis=-1)
    # A slot index of `capacity` one-hots to all zeros: the pair is dropped.
    slot_BxGxKxC = jax.nn.one_hot(jnp.where(slot_BxGxK < capacity, slot_BxGxK, capacity), capacity,
                                  dtype=jnp.float32)
    choice = choice_BxGxKxE.astype(jnp.float32)
    dispatch = jnp.einsum("bgke,bgkc->bgec", choice, slot_BxGxKxC)
    combine = jnp.einsum("bgke,bgkc->bgec", choice * gates_BxGxK[..., None], slot_BxGxKxC)
    return Routing(dispatch, combine, probs, jnp.sum(choice, axis=2))


def load_balance_loss(probs_NxE: jax.Array, chosen_NxE: jax.Array, top_k: int) -> jax.Array:
    """Switch's E Σ_e f_e p̄_e: 1 for uniform routing, E for certain routing to one expert."""
    n_exp = probs_NxE.shape[-1]
    f_E = jnp.mean(chosen_NxE, axis=0) / top_k  # fractions of the N·k choices; no gradient
    return n_exp * jnp.sum(jax.lax.stop_gradient(f_E) * jnp.mean(probs_NxE, axis=0))


def router_z_loss(logits_NxE: jax.Array) -> jax.Array:
    return jnp.mean(jnp.square(jax.nn.logsumexp(logits_NxE.astype(jnp.float32), axis=-1)))


class ExpertDense(nnx.Module):
    """E bias-free linear maps stored as one `kernel [E, in, out]` (a matrix per expert for
    `optim.partition`: leading axes are batch axes, so Muon orthogonalises each expert's own)."""

    def __init__(self, n_experts: int, d_in: int, d_out: int, *, rngs: nnx.Rngs,
                 std: float | None = None):
        std = d_in ** -0.5 if std is None else std
        init = jax.nn.initializers.normal(std) if std > 0 else jax.nn.initializers.zeros
        self.kernel = nnx.Param(init(rngs.params(), (n_experts, d_in, d_out), jnp.float32))

    def __call__(self, x_ExMxI: jax.Array) -> jax.Array:
        return jnp.einsum("emi,eio->emo", x_ExMxI, self.kernel[...].astype(x_ExMxI.dtype))


def _flops(d_model: int, hidden: int, cfg: MoEConfig, seq_len: int) -> float:
    e, k = cfg.n_experts, cfg.top_k
    c = capacity(cfg, seq_len)
    return (2.0 * d_model * e  # router
            + 2 * 2.0 * k * e * c  # building dispatch and combine (contractions over k)
            + 2 * 2.0 * e * c * d_model  # dispatch and combine (contractions over the group)
            + (e * c / seq_len) * 2 * 2.0 * d_model * hidden)  # the experts, on every slot


@register("moe", config_cls=MoEConfig, flops_per_token=_flops, has_aux=True,
          description="mixture of ReLU² experts: top-k routing with per-row capacity (dropless by "
                      "default), Switch load-balancing and router z-losses")
class MoE(FeedForward):
    def __init__(self, d_model: int, hidden: int, cfg: MoEConfig, *, rngs: nnx.Rngs,
                 out_std: float | None = None):
        self.cfg = cfg
        e = cfg.n_experts
        # The router is named `router`: optim/partition.py gives it the readout role (AdamW).
        self.router = Dense(d_model, e, rngs=rngs)
        self.up = ExpertDense(e, d_model, hidden, rngs=rngs)
        self.down = ExpertDense(e, hidden, d_model, rngs=rngs, std=out_std)

    def with_aux(self, x):
        cfg, d = self.cfg, x.shape[-1]
        x_BxGxD = x.reshape(-1, *x.shape[-2:]) if x.ndim >= 3 else x[None]
        b, g, _ = x_BxGxD.shape
        e, c = cfg.n_experts, capacity(cfg, g)
        logits_BxGxE = self.router(x_BxGxD.astype(jnp.float32))
        r = route(logits_BxGxE, cfg.top_k, c)
        xin_ExBxCxD = jnp.einsum("bgec,bgd->ebcd", r.dispatch_BxGxExC.astype(x.dtype), x_BxGxD)
        h_ExMxF = jnp.square(jax.nn.relu(self.up(xin_ExBxCxD.reshape(e, b * c, d))))
        out_ExBxCxD = self.down(h_ExMxF).reshape(e, b, c, d)
        y_BxGxD = jnp.einsum("bgec,ebcd->bgd", r.combine_BxGxExC.astype(x.dtype), out_ExBxCxD)
        aux = (cfg.aux_weight * load_balance_loss(r.probs_BxGxE.reshape(-1, e),
                                                  r.chosen_BxGxE.reshape(-1, e), cfg.top_k)
               + cfg.z_weight * router_z_loss(logits_BxGxE.reshape(-1, e)))
        return y_BxGxD.reshape(x.shape), aux
