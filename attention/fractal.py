"""Fractal attention: the kernel is the probability that a query and a key take the same IFS path.

Math: a router of d levels sends a vector x down an m-ary tree of iterated-function-system
branches: level l picks branch a with probability r_l(x)[a] = softmax(W_l x / τ)[a]. For a query
and a key routed independently, the probability that they follow the same path (address) is
κ(q, k) = Σ_{w ∈ [m]^d} Π_l r_l(q)[w_l]·r_l(k)[w_l] = Π_l ⟨r_l(q), r_l(k)⟩ = ⟨φ(q), φ(k)⟩ with
φ(x) = r_1(x) ⊗ … ⊗ r_d(x) ∈ R^{m^d}, the distribution over the m^d addresses. Attention is
y_i = Σ_{j<=i} κ(q_i, k_j) v_j / (Σ_{j<=i} κ(q_i, k_j) + ε). Since κ is an explicit feature dot
product, causal attention is linear attention: prefix sums of φ(k_j) ⊗ v_j, O(T·m^d·K) time.
Claimed benefit: a positive, normalised, hierarchical (address-based) kernel with linear time in
T and an O(1)-per-token decoding state. See markdown_documentation/fractal.md.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import AlgebraConfig, AttentionDims, Dense, QKVProjection, pairwise_flops, require
from attention.registry import register


@dataclass(frozen=True, kw_only=True)
class FractalConfig(AlgebraConfig):
    """branches m and levels d of the router tree (m^d path features); temperature τ of each
    level's softmax; eps added to the normaliser; rope: rotary positions on q and k before routing
    (off by default: the address should depend on content, causal order already gives position);
    chunk: tokens per block of the chunked prefix sums (a speed knob; the output does not depend on it)."""

    branches: int = 4
    levels: int = 2
    temperature: float = 1.0
    eps: float = 1e-6
    rope: bool = False
    chunk: int = 32

    def validate(self, dims: AttentionDims) -> None:
        require(self.branches >= 2, f"fractal branches must be >= 2, got {self.branches}")
        require(self.levels >= 1, f"fractal levels must be >= 1, got {self.levels}")
        require(self.branches ** self.levels <= 4096,
                f"fractal branches**levels = {self.branches ** self.levels} path features is too many (max 4096)")
        require(self.temperature > 0, f"fractal temperature must be > 0, got {self.temperature}")
        require(self.eps > 0, f"fractal eps must be > 0, got {self.eps}")
        require(self.chunk >= 1, f"fractal chunk must be >= 1 token, got {self.chunk}")

    @property
    def features(self) -> int:
        return self.branches ** self.levels


def route(logits_xLxm, temperature: float):
    """Per-level branch probabilities r_l = softmax(logits_l / τ), in float32."""
    return jax.nn.softmax(logits_xLxm.astype(jnp.float32) / temperature, axis=-1)


def path_features(r_xLxm):
    """φ = r_1 ⊗ … ⊗ r_d flattened to m^d: entry w = w_1·m^(d-1) + … + w_d is P(address w).

    A loop over levels (d is a small static knob), never over positions.
    """
    phi = r_xLxm[..., 0, :]
    for level in range(1, r_xLxm.shape[-2]):
        phi = (phi[..., :, None] * r_xLxm[..., level, None, :]).reshape(*phi.shape[:-1], -1)
    return phi


def path_kernel_enumerated(rq_xLxm, rk_xLxm):
    """κ by brute force: the sum over all m^d addresses of P_q(w)·P_k(w). Slow; for tests/reference."""
    levels, m = rq_xLxm.shape[-2:]
    total = 0.0
    for w in itertools.product(range(m), repeat=levels):
        p = 1.0
        for level, a in enumerate(w):
            p = p * rq_xLxm[..., level, a] * rk_xLxm[..., level, a]
        total = total + p
    return total


def prefix_sum_attention(phi_q_BxTxGxRxF, phi_k_BxTxGxF, v_BxTxGxK, state, eps: float):
    """y_i = φ(q_i)·S_i / (φ(q_i)·z_i + ε) with S_i = S_0 + Σ_{j<=i} φ(k_j) ⊗ v_j, z_i likewise.

    The textbook prefix-sum form: it holds [B, T, G, F, K] float32 sums (T·F·K per kv head, never
    T·T). Kept as the plain statement the chunked fast path is tested against.
    """
    s0_BxGxFxK, z0_BxGxF = state
    kv_BxTxGxFxK = phi_k_BxTxGxF[..., None] * v_BxTxGxK[..., None, :]
    s_BxTxGxFxK = jnp.cumsum(kv_BxTxGxFxK, axis=1) + s0_BxGxFxK[:, None]
    z_BxTxGxF = jnp.cumsum(phi_k_BxTxGxF, axis=1) + z0_BxGxF[:, None]
    num_BxTxGxRxK = jnp.einsum("btgrf,btgfk->btgrk", phi_q_BxTxGxRxF, s_BxTxGxFxK)
    den_BxTxGxR = jnp.einsum("btgrf,btgf->btgr", phi_q_BxTxGxRxF, z_BxTxGxF)
    y = num_BxTxGxRxK / (den_BxTxGxR[..., None] + eps)
    return y, (s_BxTxGxFxK[:, -1], z_BxTxGxF[:, -1])


def chunked_linear_attention(phi_q_BxTxGxRxF, phi_k_BxTxGxF, v_BxTxGxK, state, eps: float, chunk: int):
    """The same y as `prefix_sum_attention`, with the prefix sums taken only at chunk boundaries.

    Inside a chunk of C tokens the kernel is formed explicitly ([C, C] per head, masked j <= i);
    earlier chunks enter through their summed state S = Σ φ(k)⊗v. This keeps [B, T/C, G, F, K]
    instead of [B, T, G, F, K] and was ~10x faster on CPU (the per-token prefix sum is pure
    memory traffic). `state` = (S_BxGxFxK, z_BxGxF) before the first token; returns the new one.
    """
    b, t, g, r, f = phi_q_BxTxGxRxF.shape
    kd = v_BxTxGxK.shape[-1]
    c = min(chunk, t)
    n = -(-t // c)
    pad = n * c - t
    if pad:  # zero keys add nothing to any sum; padded query rows are dropped below
        widths = [(0, 0), (0, pad)]
        phi_q_BxTxGxRxF = jnp.pad(phi_q_BxTxGxRxF, widths + [(0, 0)] * 3)
        phi_k_BxTxGxF = jnp.pad(phi_k_BxTxGxF, widths + [(0, 0)] * 2)
        v_BxTxGxK = jnp.pad(v_BxTxGxK, widths + [(0, 0)] * 2)
    q = phi_q_BxTxGxRxF.reshape(b, n, c, g, r, f)
    k = phi_k_BxTxGxF.reshape(b, n, c, g, f)
    v = v_BxTxGxK.reshape(b, n, c, g, kd)
    a_BxNxGxRxCxC = jnp.where(jnp.tril(jnp.ones((c, c), bool)), jnp.einsum("bncgrf,bnsgf->bngrcs", q, k), 0.0)
    num = jnp.einsum("bngrcs,bnsgk->bncgrk", a_BxNxGxRxCxC, v)
    den = jnp.sum(a_BxNxGxRxCxC, axis=-1).transpose(0, 1, 4, 2, 3)
    s0_BxGxFxK, z0_BxGxF = state
    s_BxNxGxFxK = jnp.cumsum(jnp.einsum("bnsgf,bnsgk->bngfk", k, v), axis=1) + s0_BxGxFxK[:, None]
    z_BxNxGxF = jnp.cumsum(jnp.sum(k, axis=2), axis=1) + z0_BxGxF[:, None]
    # Chunk n reads the state after chunk n-1 (exclusive prefix).
    s_before = jnp.concatenate([s0_BxGxFxK[:, None], s_BxNxGxFxK[:, :-1]], axis=1)
    z_before = jnp.concatenate([z0_BxGxF[:, None], z_BxNxGxF[:, :-1]], axis=1)
    num = num + jnp.einsum("bncgrf,bngfk->bncgrk", q, s_before)
    den = den + jnp.einsum("bncgrf,bngf->bncgr", q, z_before)
    y = (num / (den[..., None] + eps)).reshape(b, n * c, g, r, kd)[:, :t]
    return y, (s_BxNxGxFxK[:, -1], z_BxNxGxF[:, -1])


def _reference(module: "FractalAttention", x_BxTxD, positions_BxT):
    """Obviously correct: one query at a time, κ(q_i, k_j) by enumerating every address."""
    q, k, v = module.project(x_BxTxD, positions_BxT)
    rq_BxTxHxLxm, rk_BxTxGxLxm = module.routes(q, k)
    rep = q.shape[2] // k.shape[2]
    rk, v = jnp.repeat(rk_BxTxGxLxm, rep, axis=2), jnp.repeat(v, rep, axis=2)
    outs = []
    for i in range(x_BxTxD.shape[1]):
        kappa_BxSxH = path_kernel_enumerated(rq_BxTxHxLxm[:, i:i + 1], rk)
        ok_BxSx1 = (positions_BxT <= positions_BxT[:, i:i + 1])[..., None]
        kappa_BxSxH = jnp.where(ok_BxSx1, kappa_BxSxH, 0.0)
        w_BxSxH = kappa_BxSxH / (jnp.sum(kappa_BxSxH, axis=1, keepdims=True) + module.cfg.eps)
        outs.append(jnp.einsum("bsh,bshk->bhk", w_BxSxH, v))
    y = jnp.stack(outs, axis=1).astype(x_BxTxD.dtype)
    return module.wo(y.reshape(*y.shape[:2], -1))


def _flops(dims: AttentionDims, cfg: FractalConfig, seq_len: int) -> float:
    # Projections; the router (K -> d·m) on H query and G key heads plus ~4 ops per softmax
    # entry and one multiply per feature per level; per query head the in-chunk kernel and its
    # aggregation over the whole C x C block (2·C·F + 2·C·K, plus mask and row sum), the read of
    # the earlier chunks' state (2·F·K + 2·F) and the division; per kv head the chunk state
    # φ(k)ᵀv (2·F·K + F). The prefix sum over the T/C chunk states is O(F·K/C) and left out.
    h, g, kd = dims.n_heads, dims.n_kv_heads, dims.head_dim
    f, lm, c = cfg.features, cfg.levels * cfg.branches, min(cfg.chunk, seq_len)
    router = (h + g) * (2.0 * kd * lm + 4.0 * lm + f * (cfg.levels - 1))
    read = h * (c * (2.0 * f + 2.0 * kd + 2.0) + 2.0 * f * kd + 2.0 * f + kd)
    state = g * (2.0 * f * kd + f)
    return pairwise_flops(dims, seq_len) + router + read + state


@register("fractal", config_cls=FractalConfig, flops_per_token=_flops, reference=_reference,
          description="IFS path-probability kernel Π_l⟨r_l(q), r_l(k)⟩ as causal linear attention")
class FractalAttention(nnx.Module):
    def __init__(self, dims: AttentionDims, cfg: FractalConfig, *, rngs: nnx.Rngs):
        cfg.validate(dims)
        self.dims, self.cfg = dims, cfg
        self.qkv = QKVProjection(dims, rngs=rngs)
        # One router shared by queries and keys (the kernel is P(same path) under the same IFS)
        # and by all heads; the heads differ through their q/k projections.
        self.router = Dense(dims.head_dim, cfg.levels * cfg.branches, rngs=rngs)
        self.wo = Dense(dims.n_heads * dims.head_dim, dims.d_model, rngs=rngs)

    def init_cache(self, batch: int, dtype=jnp.float32) -> dict:
        """The running sums S = Σ φ(k)⊗v `[B, G, F, K]` and z = Σ φ(k) `[B, G, F]`: O(1) per token.
        Always float32 (a long bf16 running sum would lose every small new term)."""
        g, f, kd = self.dims.n_kv_heads, self.cfg.features, self.dims.head_dim
        return {"s": jnp.zeros((batch, g, f, kd), jnp.float32), "z": jnp.zeros((batch, g, f), jnp.float32)}

    def project(self, x_BxTxD, positions_BxT):
        q, k, v = self.qkv(x_BxTxD, positions_BxT, rope=self.cfg.rope)
        return q, k, v.astype(jnp.float32)

    def routes(self, q_BxTxHxK, k_BxTxGxK):
        """Per-level branch probabilities `[..., d, m]` of queries and keys (float32)."""
        cfg = self.cfg

        def r(x):
            return route(self.router(x).reshape(*x.shape[:-1], cfg.levels, cfg.branches), cfg.temperature)

        return r(q_BxTxHxK), r(k_BxTxGxK)

    def __call__(self, x_BxTxD, positions_BxT, cache=None):
        b, t, _ = x_BxTxD.shape
        dm, cfg = self.dims, self.cfg
        g, r = dm.n_kv_heads, dm.n_heads // dm.n_kv_heads
        q, k, v = self.project(x_BxTxD, positions_BxT)
        rq, rk = self.routes(q, k)
        ent_BxTxH = -jnp.mean(jnp.sum(rq * jnp.log(rq + 1e-30), axis=-1), axis=-1)
        self.sow(nnx.Intermediate, "route_entropy", jax.lax.stop_gradient(ent_BxTxH),
                 reduce_fn=lambda _, new: new, init_fn=lambda: None)
        phi_q = path_features(rq).reshape(b, t, g, r, cfg.features)
        phi_k = path_features(rk)
        state = (cache["s"], cache["z"]) if cache is not None else (
            jnp.zeros((b, g, cfg.features, dm.head_dim), jnp.float32), jnp.zeros((b, g, cfg.features), jnp.float32))
        y, (s_new, z_new) = chunked_linear_attention(phi_q, phi_k, v, state, cfg.eps, cfg.chunk)
        if cache is not None:
            cache = {"s": s_new, "z": z_new}
        y_BxTxHK = y.reshape(b, t, -1).astype(x_BxTxD.dtype)
        return self.wo(y_BxTxHK), cache
