"""Gauge attention: keys, queries and values are compared after parallel transport along the sequence.

Math: each token i emits a generator A_i ∈ so(4)^{K/4} (block-diagonal skew, one so(4) block per 4
channels, per kv head) and the link U_i = exp(A_i) ∈ SO(4)^{K/4}. The transport to the base frame
is the ordered product T_i = U_i·U_{i-1}⋯U_0, so T_i·T_jᵀ = U_i⋯U_{j+1} carries a vector from j to
i along the sequence. Attention compares and moves vectors in the base frame, where RoPE (the
rotation R_i of position i) encodes positions: s_ij = ⟨R_i T_iᵀ q_i, R_j T_jᵀ k_j⟩/√K and
y_i = T_i Σ_{j<=i} softmax_j(s_ij) T_jᵀ v_j. Scores are invariant and outputs covariant
(y_i → g_i y_i) under local gauge changes q_i → g_i q_i, k_i → g_i k_i, v_i → g_i v_i,
U_i → g_i U_i g_{i-1}⁻¹ (base frame fixed, g_{-1} = I); and since R_iᵀR_j = R_{j-i}, shifting all
positions leaves the output unchanged. Learned, data-dependent non-commuting links give a
content-dependent connection whose curvature (holonomy around a two-link loop) is sown as a
diagnostic. Cost: O(T²K) like standard plus O(T·K) for the transports (prefix products by
associative scan). See markdown_documentation/gauge.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import (AlgebraConfig, AttentionDims, Dense, QKVProjection, apply_rope, init_kv_cache,
                            pairwise_flops, require, update_kv_cache)
from attention.lie import (pair_apply, pair_apply_inverse, pair_compose, pair_normalize, prefix_transports,
                           qconj, qexp, so4_hat)
from attention.registry import register
from attention.standard import grouped_softmax_attention

_QMUL_FLOPS = 28.0  # 16 multiplies + 12 adds per Hamilton product
# Generator coordinates are _GEN_SCALE times the stored parameters (which start 1/_GEN_SCALE
# larger, so the angles at init are unchanged). Adam and Muon move a parameter by about the
# learning rate per step whatever its gradient, and every link enters all the transports after
# it, so at the shared rate the connection churned faster than q and k could learn to match: a
# one-layer decoder stayed at chance on associative recall (400 Adam steps, lr 1e-2; 0.13, and
# 1.0 with the links frozen). A tenth of the step for the angles learns it (0.98).
_GEN_SCALE = 0.1


@dataclass(frozen=True, kw_only=True)
class GaugeConfig(AlgebraConfig):
    """generator_init: std of each so(4) generator coordinate at init (unit-RMS input), i.e. the
    typical per-token rotation angle. rope: rotary positions on the pulled-back q, k (in the base
    frame, so positions stay relative and the fields stay gauge covariant). abelian:
    restrict generators to one commuting direction per factor (a learned, data-dependent RoPE; the
    ablation without curvature). renormalize: project the prefix transports back onto unit
    quaternions (f32 products drift). holonomy: sow the two-link loop holonomy per token."""

    generator_init: float = 0.1
    rope: bool = True
    abelian: bool = False
    renormalize: bool = True
    holonomy: bool = True

    def validate(self, dims: AttentionDims) -> None:
        require(dims.head_dim % 4 == 0, f"gauge needs head_dim % 4 == 0 (so(4) blocks), got {dims.head_dim}")
        require(self.generator_init >= 0, f"gauge generator_init must be >= 0, got {self.generator_init}")


def loop_holonomy(pair_prev, pair_next):
    """‖U_i U_{i-1} U_i⁻¹ U_{i-1}⁻¹ − I‖_F in closed form. For the loop x ↦ α·x·β the matrix is
    orthogonal with trace 4·α_w·β_w, so the squared distance to I is 8·(1 − α_w·β_w). Near a flat
    loop 1 − α_w·β_w cancels catastrophically; it is rebuilt from the vector parts instead
    (1 − |a_w| = |a_v|²/(1 + |a_w|)), so commuting links read ~1e-7, not ~1e-3."""
    inv_next, inv_prev = (qconj(pair_next[0]), qconj(pair_next[1])), (qconj(pair_prev[0]), qconj(pair_prev[1]))
    al, be = pair_compose(pair_next, pair_compose(pair_prev, pair_compose(inv_next, inv_prev)))
    aw, bw = jnp.abs(al[..., 0]), jnp.abs(be[..., 0])
    av2, bv2 = jnp.sum(al[..., 1:] ** 2, axis=-1), jnp.sum(be[..., 1:] ** 2, axis=-1)
    same_sign = al[..., 0] * be[..., 0] >= 0
    gap = jnp.where(same_sign, av2 / (1 + aw) + aw * bv2 / (1 + bw), 1 + aw * bw)
    return 2.0 * jnp.sqrt(2.0 * gap)


def transports(links, prev=None, renormalize: bool = True):
    """T_i = U_i ∘ … ∘ U_first ∘ prev for links `[B, T, G, N, 4]` pairs (prev: `[B, G, N, 4]` pairs)."""
    t_pair = prefix_transports(links, axis=1)
    if prev is not None:
        t_pair = pair_compose(t_pair, (prev[0][:, None], prev[1][:, None]))
    return pair_normalize(t_pair) if renormalize else t_pair


def _rotate(apply, t_pair, x_BxTxGxK):
    """Apply per-(token, kv head, block) rotations to `[B, T, G, (R,) K]`, broadcasting over any
    head axes after G (the R query heads that share a kv head's transport)."""
    extra = x_BxTxGxK.ndim - 4
    t_b = tuple(u.reshape(*u.shape[:3], *(1,) * extra, *u.shape[3:]) for u in t_pair)
    x_blocks = x_BxTxGxK.reshape(*x_BxTxGxK.shape[:-1], t_pair[0].shape[-2], 4)
    return apply(t_b, x_blocks).reshape(x_BxTxGxK.shape)


def pull_back(t_pair, x_BxTxGxK):
    """T_iᵀ x_i: from token i's frame to the base frame (transports `[B, T, G, N, 4]` pairs)."""
    return _rotate(pair_apply_inverse, t_pair, x_BxTxGxK)


def push_forward(t_pair, x_BxTxGxK):
    """T_i x_i: from the base frame to token i's frame, the inverse of `pull_back`."""
    return _rotate(pair_apply, t_pair, x_BxTxGxK)


def _block_diag(m_xNx4x4):
    """`[..., N, 4, 4]` -> the block-diagonal `[..., 4N, 4N]` (reference only: loops over N)."""
    n = m_xNx4x4.shape[-3]
    out = jnp.zeros((*m_xNx4x4.shape[:-3], 4 * n, 4 * n), m_xNx4x4.dtype)
    for i in range(n):
        out = out.at[..., 4 * i:4 * i + 4, 4 * i:4 * i + 4].set(m_xNx4x4[..., i, :, :])
    return out


def _reference(module: "GaugeAttention", x_BxTxD, positions_BxT):
    """Obviously correct: explicit K x K rotations from jax.scipy.linalg.expm of the block-diagonal
    skew generators, transports as a sequential matrix product, q and k pulled back by T_iᵀ and
    RoPE-rotated in the base frame, values moved by T_i T_jᵀ per pair."""
    b, t, _ = x_BxTxD.shape
    q, k, v = module.project(x_BxTxD, positions_BxT)
    p, r = module.generators(x_BxTxD)
    u_BxTxGxKxK = jax.scipy.linalg.expm(_block_diag(so4_hat(p, r)))
    ts, prev = [], None
    for i in range(t):
        prev = u_BxTxGxKxK[:, i] if prev is None else u_BxTxGxKxK[:, i] @ prev
        ts.append(prev)
    t_BxTxGxKxK = jnp.stack(ts, axis=1)
    rep = q.shape[2] // k.shape[2]
    t_h = jnp.repeat(t_BxTxGxKxK, rep, axis=2)
    k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
    q0, k0 = (jnp.einsum("bthlk,bthl->bthk", t_h, x) for x in (q, k))  # T_iᵀ x_i
    if module.cfg.rope:
        q0, k0 = (apply_rope(x, positions_BxT, module.dims.rope_base) for x in (q0, k0))
    outs = []
    for i in range(t):
        s_BxHxS = jnp.einsum("bhk,bshk->bhs", q0[:, i], k0) / jnp.sqrt(q.shape[-1])
        ok_BxS = positions_BxT <= positions_BxT[:, i:i + 1]
        pr = jax.nn.softmax(jnp.where(ok_BxS[:, None, :], s_BxHxS, -1e30), axis=-1)
        move_BxSxHxKxK = jnp.einsum("bhkl,bshml->bshkm", t_h[:, i], t_h)  # T_i T_jᵀ: from j to i
        outs.append(jnp.einsum("bhs,bshkm,bshm->bhk", pr, move_BxSxHxKxK, v))
    y = jnp.stack(outs, axis=1).astype(x_BxTxD.dtype)
    return module.wo(y.reshape(b, t, -1))


def _flops(dims: AttentionDims, cfg: GaugeConfig, seq_len: int) -> float:
    # Projections + generator projection (D -> 6 per so(4) block per kv head); per block: two
    # quaternion exponentials (~20 ops each), the associative scan (~2 compositions of 2 Hamilton
    # products per element), renormalisation (~20), the two Hamilton products that pull back each
    # q, k, v block and push forward each output block, and the holonomy loop (6 compositions);
    # plus standard attention's q·k and p·v over the full row.
    h, g, kd = dims.n_heads, dims.n_kv_heads, dims.head_dim
    n = kd // 4
    per_block = 40.0 + 4 * _QMUL_FLOPS + 20.0 + (12 * _QMUL_FLOPS if cfg.holonomy else 0.0)
    move = (2 * h + 2 * g) * n * 2 * _QMUL_FLOPS
    return (pairwise_flops(dims, seq_len) + 2.0 * dims.d_model * g * n * 6 + g * n * per_block + move
            + 4.0 * h * kd * seq_len)


@register("gauge", config_cls=GaugeConfig, flops_per_token=_flops, reference=_reference,
          description="softmax attention on parallel-transported q/k/v with learned non-abelian SO(4) links",
          relative_positions=True)
class GaugeAttention(nnx.Module):
    def __init__(self, dims: AttentionDims, cfg: GaugeConfig, *, rngs: nnx.Rngs):
        cfg.validate(dims)
        self.dims, self.cfg = dims, cfg
        self.n_blocks = dims.head_dim // 4
        self.qkv = QKVProjection(dims, rngs=rngs)
        n_gen = dims.n_kv_heads * self.n_blocks * 6
        self.gen = Dense(dims.d_model, n_gen, rngs=rngs,
                         std=cfg.generator_init / _GEN_SCALE * dims.d_model ** -0.5)
        self.gen_bias = nnx.Param(jnp.zeros((n_gen,), jnp.float32))
        self.wo = Dense(dims.n_heads * dims.head_dim, dims.d_model, rngs=rngs)

    def init_cache(self, batch: int, dtype=jnp.float32) -> dict:
        """Pulled-back keys (RoPE-rotated) and values, in the base frame, at their absolute slots,
        plus the running transport T_{t-1} as a float32 quaternion pair `[B, G, N, 4]` (identity
        before the first token)."""
        cache = init_kv_cache(batch, self.dims, dtype)
        ident = jnp.zeros((batch, self.dims.n_kv_heads, self.n_blocks, 4), jnp.float32).at[..., 0].set(1.0)
        cache["ta"], cache["tb"] = ident, ident
        return cache

    def project(self, x_BxTxD, positions_BxT):
        """q `[B, T, H, K]`, k, v `[B, T, G, K]` in each token's own frame: QK-normed, float32,
        without RoPE (`attend` rotates them in the base frame). `positions_BxT` is unused here."""
        q, k, v = self.qkv(x_BxTxD, positions_BxT, rope=False)
        return q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32)

    def generators(self, x_BxTxD):
        """The pure quaternions (p, r) `[B, T, G, N, 3]` of A = L(p) + R(r) ∈ so(4), float32."""
        b, t, _ = x_BxTxD.shape
        raw = _GEN_SCALE * (self.gen(x_BxTxD).astype(jnp.float32) + self.gen_bias[...])
        raw = raw.reshape(b, t, self.dims.n_kv_heads, self.n_blocks, 6)
        p, r = raw[..., :3], raw[..., 3:]
        if self.cfg.abelian:  # one axis per factor: all links commute, the holonomy is zero
            keep = jnp.asarray([1.0, 0.0, 0.0], jnp.float32)
            p, r = p * keep, r * keep
        return p, r

    def links(self, x_BxTxD):
        """U_i = exp(L(p) + R(r)) = L(e^p) R(e^r) (exact) as the unit-quaternion pair (e^p, e^r)."""
        p, r = self.generators(x_BxTxD)
        return qexp(p), qexp(r)

    def transports(self, links, prev=None):
        """T_i = U_i ⋯ U_first ∘ prev as quaternion pairs `[B, T, G, N, 4]` (what `attend` uses)."""
        return transports(links, prev, self.cfg.renormalize)

    def attend(self, q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, links, positions_BxT, cache=None):
        """The transported attention on the fields `project` and `links` give, before the output
        projection: y_i = T_i Σ_j softmax_j(⟨R_i T_iᵀ q_i, R_j T_jᵀ k_j⟩/√K) T_jᵀ v_j, `[B, T, H, K]`
        in each query's own frame. A local gauge change of its inputs rotates y_i by g_i."""
        b, t, h, _ = q_BxTxHxK.shape
        dm, cfg = self.dims, self.cfg
        g, r = dm.n_kv_heads, h // dm.n_kv_heads
        prev = None if cache is None else (cache["ta"], cache["tb"])
        t_pair = self.transports(links, prev)  # `[B, T, G, N, 4]` each
        if cfg.holonomy:
            flat = jax.lax.stop_gradient(links)  # a diagnostic: no gradient (sqrt is singular at 0)
            ident = jnp.zeros_like(flat[0][:, :1]).at[..., 0].set(1.0)
            before = tuple(jnp.concatenate([ident, u[:, :-1]], axis=1) for u in flat)
            hol_BxTxG = jnp.mean(loop_holonomy(before, flat), axis=-1)
            self.sow(nnx.Intermediate, "holonomy", hol_BxTxG,
                     reduce_fn=lambda _, new: new, init_fn=lambda: None)
        q_frame0 = pull_back(t_pair, q_BxTxHxK.reshape(b, t, g, r, -1)).reshape(q_BxTxHxK.shape)
        k_frame0, v_frame0 = pull_back(t_pair, k_BxTxGxK), pull_back(t_pair, v_BxTxGxK)
        if cfg.rope:  # in the base frame: ⟨R_i a, R_j b⟩ = ⟨a, R_{j-i} b⟩, and no g_i reaches it
            q_frame0 = apply_rope(q_frame0, positions_BxT, dm.rope_base)
            k_frame0 = apply_rope(k_frame0, positions_BxT, dm.rope_base)
        k_pos = positions_BxT
        if cache is not None:
            cache = update_kv_cache(cache, positions_BxT, k_frame0, v_frame0)
            cache["ta"], cache["tb"] = t_pair[0][:, -1], t_pair[1][:, -1]
            k_frame0, v_frame0 = cache["s0"].astype(jnp.float32), cache["s1"].astype(jnp.float32)
            k_pos = cache["pos"]
        y0_BxTxHxK = grouped_softmax_attention(q_frame0, k_frame0, v_frame0, positions_BxT, k_pos)
        y = push_forward(t_pair, y0_BxTxHxK.reshape(b, t, g, r, -1))  # back to each query's own frame
        return y.reshape(q_BxTxHxK.shape), cache

    def __call__(self, x_BxTxD, positions_BxT, cache=None):
        b, t, _ = x_BxTxD.shape
        q, k, v = self.project(x_BxTxD, positions_BxT)
        y_BxTxHxK, cache = self.attend(q, k, v, self.links(x_BxTxD), positions_BxT, cache)
        return self.wo(y_BxTxHxK.reshape(b, t, -1).astype(x_BxTxD.dtype)), cache
