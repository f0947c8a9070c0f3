"""Surreal (transseries) attention: scores are Hahn series in a learned infinite scale ω.

Math: each head dim is split into n orders; order k has its own QK-normed slice and score
s^(k)_ij = q^(k)_i·k^(k)_j / √(K/n). The score is the finite transseries
s_ij = Σ_k ω^k s^(k)_ij, with log ω learned. Surreal numbers (and Hahn series) compare
lexicographically by their leading monomial, and so does s as ω → ∞: if key j's tuple
(s^(n−1), …, s^(1)) is lexicographically above key j''s, j outweighs j' once
ω > 1 + 2M/δ (M bounds |s^(k)|, δ is the first gap), and softmax(s) tends to a softmax of the
"real part" s^(0) over the keys whose infinite part is lexicographically maximal. With n = 1 it
is exactly standard attention. Claimed benefit: a priority structure: high orders make hard,
ordered decisions (which keys are eligible), low orders a soft mixture among them, at the cost
and cache of standard attention. See markdown_documentation/surreal.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import (AlgebraConfig, AttentionDims, ProjectedAttention, apply_rope, pairwise_flops,
                            require, rms_normalize, update_kv_cache)
from attention.registry import register
from attention.standard import grouped_softmax_attention

# float32 has a 24-bit mantissa: a sum whose leading term is ω^{n-1}·|s| resolves the order-0 term
# only to ~6e-8·ω^{n-1}·|s|. Capping ω^{n-1} at e^9.3 ≈ 1e4 keeps order 0 resolved to ~1e-3 for
# QK-normed scores, and keeps scores far from overflow.
MAX_LEADING_LOG = 9.3


@dataclass(frozen=True, kw_only=True)
class SurrealConfig(AlgebraConfig):
    """n_orders: monomials ω^0..ω^{n-1} (each a head-dim slice). log_omega_init: starting log ω.
    log_omega_max: log ω is kept in (0, log_omega_max) by a sigmoid, a smooth clamp.
    rope: rotary positions inside each order's slice."""

    n_orders: int = 2
    log_omega_init: float = 1.0
    log_omega_max: float = 4.6
    rope: bool = True

    def validate(self, dims: AttentionDims) -> None:
        n, k = self.n_orders, dims.head_dim
        require(n >= 1, f"surreal n_orders must be >= 1, got {n}")
        require(k % n == 0, f"surreal head_dim {k} must be divisible by n_orders {n}")
        require(not self.rope or (k // n) % 2 == 0,
                f"surreal per-order slice {k // n} must be even for RoPE (head_dim {k}, n_orders {n})")
        require(0.0 < self.log_omega_init < self.log_omega_max,
                f"surreal needs 0 < log_omega_init < log_omega_max, got {self.log_omega_init}, "
                f"{self.log_omega_max}")
        require((n - 1) * self.log_omega_max <= MAX_LEADING_LOG,
                f"surreal (n_orders-1)*log_omega_max must be <= {MAX_LEADING_LOG} for float32, got "
                f"{(n - 1) * self.log_omega_max:.2f}")


def log_omega_of(theta, log_omega_max: float):
    """log ω = log_omega_max·sigmoid(θ) ∈ (0, log_omega_max): ω > 1 always (orders stay ordered)
    and bounded (float32-safe), with a gradient everywhere, unlike a hard clip."""
    return log_omega_max * jax.nn.sigmoid(theta)


def order_scales(log_omega, n: int):
    """[ω^0, ω^1, …, ω^{n-1}] as exp(k·log ω); ω^0 is exactly 1."""
    return jnp.exp(jnp.arange(n, dtype=jnp.float32) * log_omega)


def combine_orders(s_orders_xN, log_omega):
    """The transseries value Σ_k ω^k s^(k) of per-order scores stacked on the last axis."""
    n = s_orders_xN.shape[-1]
    return jnp.sum(s_orders_xN * order_scales(log_omega, n), axis=-1)


def split_orders(x_BxTxHxK, n: int, positions_BxT, rope: bool, rope_base: float):
    """`[B, T, H, n, K/n]` float32: each order's slice RMS-normalised (so |s^(k)| <= √(K/n)),
    then rotated. With n = 1 this is exactly QKVProjection's QK-norm + RoPE."""
    b, t, h, k = x_BxTxHxK.shape
    x = rms_normalize(x_BxTxHxK.reshape(b, t, h * n, k // n))
    if rope:
        x = apply_rope(x, positions_BxT, rope_base)
    return x.astype(jnp.float32).reshape(b, t, h, n, k // n)


def _features(module: "SurrealAttention", x_BxTxD, positions_BxT):
    cfg, dm = module.cfg, module.dims
    q, k, v = module.qkv(x_BxTxD, positions_BxT, rope=False, qk_norm=False)
    q_orders = split_orders(q, cfg.n_orders, positions_BxT, cfg.rope, dm.rope_base)
    k_orders = split_orders(k, cfg.n_orders, positions_BxT, cfg.rope, dm.rope_base)
    return q_orders, k_orders, v, log_omega_of(module.theta[...], cfg.log_omega_max)


def _reference(module: "SurrealAttention", x_BxTxD, positions_BxT):
    """Obviously correct: per query, each order's score separately, then Σ_k ω^k s^(k)."""
    q, k, v, log_omega = _features(module, x_BxTxD, positions_BxT)
    b, t, h, n, dk = q.shape
    rep = h // k.shape[2]
    k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
    outs = []
    for i in range(t):
        s_BxHxSxN = jnp.einsum("bhnc,bshnc->bhsn", q[:, i], k, precision="highest") / math.sqrt(dk)
        s_BxHxS = combine_orders(s_BxHxSxN, log_omega)
        ok_BxS = positions_BxT <= positions_BxT[:, i:i + 1]
        s_BxHxS = jnp.where(ok_BxS[:, None, :], s_BxHxS, -1e30)
        outs.append(jnp.einsum("bhs,bshk->bhk", jax.nn.softmax(s_BxHxS, axis=-1), v.astype(jnp.float32)))
    y = jnp.stack(outs, axis=1).astype(x_BxTxD.dtype)
    return module.wo(y.reshape(b, t, -1))


def _flops(dims: AttentionDims, cfg: SurrealConfig, seq_len: int) -> float:
    # The orders fold into one q·k (ω^k scales q's slices), so this is standard attention's cost.
    return pairwise_flops(dims, seq_len) + 4.0 * dims.n_heads * dims.head_dim * seq_len


@register("surreal", config_cls=SurrealConfig, flops_per_token=_flops, reference=_reference,
          description="transseries scores Σ_k ω^k s^(k) with a learned scale ω: lexicographic priority of orders",
          relative_positions=True)
class SurrealAttention(ProjectedAttention):
    def __init__(self, dims: AttentionDims, cfg: SurrealConfig, *, rngs: nnx.Rngs):
        super().__init__(dims, cfg, rngs=rngs)
        frac = cfg.log_omega_init / cfg.log_omega_max
        self.theta = nnx.Param(jnp.asarray(math.log(frac) - math.log1p(-frac), jnp.float32))

    def __call__(self, x_BxTxD, positions_BxT, cache=None):
        b, t, _ = x_BxTxD.shape
        q, k, v, log_omega = _features(self, x_BxTxD, positions_BxT)
        self.sow(nnx.Intermediate, "log_omega", log_omega)
        n, dk = self.cfg.n_orders, q.shape[-1]
        # Σ_k ω^k q^(k)·k^(k)/√(K/n) as one dot product: scale q's slices by ω^k·√n (the kernel
        # divides by √K). In float32: ω^k spans orders of magnitude that bf16 would blur.
        q = (q * (order_scales(log_omega, n) * math.sqrt(n))[:, None]).reshape(b, t, -1, n * dk)
        k = k.reshape(b, t, -1, n * dk)
        k_pos = positions_BxT
        if cache is not None:
            cache = update_kv_cache(cache, positions_BxT, k, v)
            k, v, k_pos = cache["s0"], cache["s1"], cache["pos"]
        # Full float32 products even where the backend defaults to TF32 (GPU) or bf16 passes
        # (TPU): those would round ω^{n-1}-sized terms to ~3 digits and erase the low orders.
        with jax.default_matmul_precision("highest"):
            y_BxTxHxK = grouped_softmax_attention(q, k.astype(jnp.float32), v, positions_BxT, k_pos)
        return self.wo(y_BxTxHxK.astype(x_BxTxD.dtype).reshape(b, t, -1)), cache
