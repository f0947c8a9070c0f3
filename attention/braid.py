"""Braid attention: every token is a strand; each new strand crosses over the running braid,
recolouring every earlier strand by the Alexander quandle, and each token reads the braid's
mean colour.

Math: token j is a strand coloured by Y_j = k_j v_jᵀ (a K×K matrix) with a label, the crossing
parameter t_j ∈ [t_min, 1)^K (one per RoPE pair of key channels) computed from token j. When a
strand p passes under strand (Y, t) it is recoloured p ◁ (Y, t) = t·p + (1 − t)·Y (t acts on the
rows); with the label riding its strand this is a quandle, so the crossings satisfy the
Yang–Baxter equation and the braid relations for any t (see attention/quandle.py). Token i's
strand arrives on the right of the braid of tokens 1..i−1 and moves left over every earlier
strand (σ_{i−1} ⋯ σ_1): each earlier colour c_j becomes c_j ◁ (Y_i, t_i), so old strands are
recoloured by every later one and after T tokens the braid is the half twist Δ_T. Token i reads
the mean colour of the i strands, y_i = q_i·M_i/√K with M_i = (1/i) Σ_{j≤i} c_j, a convex
combination of the Y_j. (A strand that passed *under* the braid would see none of the crossings
among the strands above it, by Reidemeister III, so the readout reads the strands' own colours.)
The sum of the colours obeys P_i = t_i·P_{i−1} + (1 + (i−1)(1 − t_i))·Y_i, an affine map of the
state, so the sequence is a chunked prefix scan of affine maps: O(T·K²) per head, causal, with an
O(1) decoding cache (the mean colour and the strand count). Claimed benefit: linear-time,
constant-memory decoding whose mixing is a braid-group action on the tokens' strands with
data-dependent, always-invertible crossings. See markdown_documentation/braid.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import AlgebraConfig, AttentionDims, Dense, QKVProjection, pairwise_flops, require
from attention.quandle import affine_compose, braid_word
from attention.registry import register

# Inside a chunk the fast path factors Π t as e^{L_i}·e^{-L_j}: e^{-L_j} reaches t_min^{-chunk}
# and e^{L_i} t_min^{chunk}. e^{±60} (1e26, 1e-26) stays normal in float32 with room for a q·k
# of size K² and for the backward pass; e^{±88} would overflow or go subnormal.
_MAX_LOG_RANGE = 60.0


@dataclass(frozen=True, kw_only=True)
class BraidConfig(AlgebraConfig):
    """t_min: floor of the crossing parameter t ∈ [t_min, 1) (1/t_min bounds how far a crossing
    may amplify when inverted). chunk: strands per block of the chunked scan. rope: rotary
    positions on q and k (the decays already carry order)."""

    t_min: float = 0.05
    chunk: int = 16
    rope: bool = True

    def validate(self, dims: AttentionDims) -> None:
        require(dims.head_dim % 2 == 0, f"braid head_dim must be even (one t per RoPE pair), got {dims.head_dim}")
        require(0.0 < self.t_min < 1.0, f"braid t_min must lie in (0, 1), got {self.t_min}")
        require(self.chunk >= 1, f"braid chunk must be >= 1, got {self.chunk}")
        require(self.chunk * -math.log(self.t_min) <= _MAX_LOG_RANGE,
                f"braid chunk * log(1/t_min) must be <= {_MAX_LOG_RANGE} for float32, got "
                f"{self.chunk * -math.log(self.t_min):.1f}")


def crossing_log_t(z, bias, t_min: float):
    """log t = log(t_min)·sigmoid(z + bias): t ∈ [t_min, 1), never 0, so crossings invert."""
    return math.log(t_min) * jax.nn.sigmoid(z + bias)


def braid_scan(q_BxTxGxRxK, k_BxTxGxK, v_BxTxGxK, log_t_BxTxGxK, mean0_BxGxKxK, n0_B, chunk: int):
    """The fast path: after each token, the mean colour of the braid's strands, read with q.

    `mean0`, `n0`: the mean colour and the number of strands already in the braid (the cache).
    Token i (n_i = n0 + i strands after it) adds β_i·Y_i to the colour sum P and scales P's rows
    by t_i, with β_i = 1 + (n_i − 1)(1 − t_i): its own strand plus its pull on the n_i − 1 strands
    it crosses. Inside a chunk of C tokens, with L_i = Σ_{l≤i} log t_l, token j reaches i with
    weight e^{L_i − L_j}·β_j, so the intra-chunk part is a masked C×C product. A whole chunk maps
    the mean colour entering it to the mean leaving it by one affine map (a, b); those compose
    with `lax.associative_scan`. Counts are folded in per chunk (β_j/n_end and n_end/n_i are O(1)
    and n_start/n_end ≤ 1), so nothing grows with the context. Returns y `[B, T, G, R, K]`
    (without the 1/√K) and the final mean colour `[B, G, K, K]`. Everything float32.
    """
    b, t, g, r, k = q_BxTxGxRxK.shape
    c = min(chunk, t)
    n = -(-t // c)
    pad = n * c - t

    def chunks(x):  # pad with identity crossings (log t = 0, so t = 1) that add no strand
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return x.reshape(b, n, c, *x.shape[2:])

    q, kk, v, log_t = chunks(q_BxTxGxRxK), chunks(k_BxTxGxK), chunks(v_BxTxGxK), chunks(log_t_BxTxGxK)
    real_NxC = (jnp.arange(n * c) < t).reshape(n, c)
    # Strands in the braid after each token; padding adds none.
    count_BxNxC = n0_B[:, None, None] + jnp.minimum(jnp.arange(1, n * c + 1), t).reshape(n, c).astype(jnp.float32)
    n_end_BxN = count_BxNxC[:, :, -1]
    n_start_BxN = jnp.concatenate([n0_B[:, None], n_end_BxN[:, :-1]], axis=1)
    one_minus_t = -jnp.expm1(log_t)  # 1 − t without cancellation when t is close to 1
    beta = 1.0 + (count_BxNxC - 1.0)[..., None, None] * one_minus_t
    gain_BxNxCxGxK = jnp.where(real_NxC[:, :, None, None], beta, 0.0) / n_end_BxN[:, :, None, None, None]
    shrink_BxN = n_start_BxN / n_end_BxN  # P = n·M: the entering mean is diluted by the new strands
    rho_BxNxC = n_end_BxN[:, :, None] / count_BxNxC

    cum_BxNxCxGxK = jnp.cumsum(log_t, axis=2)
    q_dec = q * jnp.exp(cum_BxNxCxGxK)[:, :, :, :, None]
    k_grow = kk * gain_BxNxCxGxK * jnp.exp(-cum_BxNxCxGxK)
    s_BxNxGxRxCxC = jnp.einsum("bnigrk,bnjgk->bngrij", q_dec, k_grow)
    # Masked entries can be as large as t_min^{-C}; `where` drops them before they meet v.
    tril = jnp.tril(jnp.ones((c, c), bool))
    s_BxNxGxRxCxC = jnp.where(tril, s_BxNxGxRxCxC, 0.0)
    y_intra = jnp.einsum("bngrij,bnjgk->bnigrk", s_BxNxGxRxCxC, v)

    # Chunk n as one affine map of the mean colour: a = (n_start/n_end)·Π t,
    # b = Σ_j e^{L_C − L_j}·(β_j/n_end)·Y_j.
    last_BxNxGxK = cum_BxNxCxGxK[:, :, -1]
    a_BxNxGxKx1 = (jnp.exp(last_BxNxGxK) * shrink_BxN[:, :, None, None])[..., None]
    k_end = kk * gain_BxNxCxGxK * jnp.exp(last_BxNxGxK[:, :, None] - cum_BxNxCxGxK)
    b_BxNxGxKxK = jnp.einsum("bnjgk,bnjgv->bngkv", k_end, v)
    a_pre, b_pre = jax.lax.associative_scan(affine_compose, (a_BxNxGxKx1, b_BxNxGxKxK), axis=1)
    x_end_BxNxGxKxK = a_pre * mean0_BxGxKxK[:, None] + b_pre
    x_start = jnp.concatenate([mean0_BxGxKxK[:, None], x_end_BxNxGxKxK[:, :-1]], axis=1)
    y_inter = jnp.einsum("bnigrk,bngkv->bnigrv", q_dec, x_start) * shrink_BxN[:, :, None, None, None, None]

    y_BxNxCxGxRxK = (y_intra + y_inter) * rho_BxNxC[:, :, :, None, None, None]
    return y_BxNxCxGxRxK.reshape(b, n * c, g, r, k)[:, :t], x_end_BxNxGxKxK[:, -1]


def _features(module: "BraidAttention", x_BxTxD, positions_BxT):
    """q `[B, T, G, R, K]`, k, v, log t `[B, T, G, K]`, all float32."""
    b, t, _ = x_BxTxD.shape
    dm = module.dims
    g, k = dm.n_kv_heads, dm.head_dim
    q, kk, v = module.qkv(x_BxTxD, positions_BxT, rope=module.cfg.rope)
    f32 = jnp.float32
    z = module.wt(x_BxTxD).astype(f32).reshape(b, t, g, k // 2)
    log_t = crossing_log_t(z, module.t_bias[...], module.cfg.t_min)
    # One t per RoPE rotation pair (c, c + K/2): a pair decays as one, so q_i·k_j keeps its
    # rotation R_{j-i} (relative position). Different t within a pair would leak absolute position.
    log_t = jnp.concatenate([log_t, log_t], axis=-1)
    q = q.astype(f32).reshape(b, t, g, dm.n_heads // g, k)
    return q, kk.astype(f32), v.astype(f32), log_t


def _reference(module: "BraidAttention", x_BxTxD, positions_BxT):
    """Obviously correct: the braid itself. Strands are appended one at a time, the new one moves
    left over every earlier strand by the quandle generators σ_{i-1} … σ_0 of attention/quandle.py,
    and each token reads the mean of all strands' colours."""
    q, kk, v, log_t = _features(module, x_BxTxD, positions_BxT)
    b, t, g, r, k = q.shape
    strands, outs = (), []
    for i in range(t):
        new = (kk[:, i, :, :, None] * v[:, i, :, None, :], jnp.exp(log_t[:, i])[..., None])
        strands = braid_word(strands + (new,), list(range(i - 1, -1, -1)))
        mean_BxGxKxK = sum(colour for colour, _ in strands) / len(strands)
        outs.append(jnp.einsum("bgrk,bgkv->bgrv", q[:, i], mean_BxGxKxK) / math.sqrt(k))
    y = jnp.stack(outs, axis=1).astype(x_BxTxD.dtype)
    return module.wo(y.reshape(b, t, -1))


def _flops(dims: AttentionDims, cfg: BraidConfig, seq_len: int) -> float:
    h, g, k, d = dims.n_heads, dims.n_kv_heads, dims.head_dim, dims.d_model
    c = min(cfg.chunk, seq_len)
    gate = 2.0 * d * g * k / 2
    intra = 4.0 * h * c * k  # q·k over the full chunk row and the weighted sum of v
    inter = 2.0 * h * k * k  # reading the entering colour with the query
    state = 2.0 * g * k * k + 4.0 * g * k * k / c  # chunk maps b, and ~2 compositions per chunk
    return pairwise_flops(dims, seq_len) + gate + intra + inter + state


@register("braid", config_cls=BraidConfig, flops_per_token=_flops, reference=_reference,
          relative_positions=True,
          description="each token's strand crosses over the running braid (Alexander quandle); "
                      "tokens read the mean strand colour; chunked affine prefix scan")
class BraidAttention(nnx.Module):
    def __init__(self, dims: AttentionDims, cfg: BraidConfig, *, rngs: nnx.Rngs):
        cfg.validate(dims)
        self.dims, self.cfg = dims, cfg
        g, k = dims.n_kv_heads, dims.head_dim
        self.qkv = QKVProjection(dims, rngs=rngs)
        self.wt = Dense(dims.d_model, g * k // 2, rngs=rngs)
        # Half-lives spread log-uniformly over 1..max_seq_len across channel pairs: sigmoid(bias)
        # is the fraction of log(t_min) that gives t = 2^{-1/half_life}.
        half_life = dims.max_seq_len ** (jnp.arange(k // 2, dtype=jnp.float32) / max(k // 2 - 1, 1))
        frac = jnp.clip(math.log(2.0) / (half_life * -math.log(cfg.t_min)), 1e-4, 1 - 1e-4)
        self.t_bias = nnx.Param(jnp.broadcast_to(jnp.log(frac) - jnp.log1p(-frac), (g, k // 2)))
        self.wo = Dense(dims.n_heads * k, dims.d_model, rngs=rngs)

    def init_cache(self, batch: int, dtype=jnp.float32) -> dict:
        # The mean colour of the braid's strands and how many there are (the new strand's pull
        # on the old ones scales with their number). Float32 whatever the activation dtype: it
        # summarises the whole prefix.
        g, k = self.dims.n_kv_heads, self.dims.head_dim
        return {"colour": jnp.zeros((batch, g, k, k), jnp.float32), "strands": jnp.zeros((batch,), jnp.float32)}

    def __call__(self, x_BxTxD, positions_BxT, cache=None):
        b, t, _ = x_BxTxD.shape
        q, kk, v, log_t = _features(self, x_BxTxD, positions_BxT)
        self.sow(nnx.Intermediate, "crossing_t", jnp.mean(jnp.exp(log_t)))
        fresh = self.init_cache(b) if cache is None else cache
        y_BxTxGxRxK, colour = braid_scan(q, kk, v, log_t, fresh["colour"], fresh["strands"], self.cfg.chunk)
        y = (y_BxTxGxRxK * self.dims.head_dim ** -0.5).astype(x_BxTxD.dtype)
        out = self.wo(y.reshape(b, t, -1))
        return out, (None if cache is None else {"colour": colour, "strands": fresh["strands"] + t})
