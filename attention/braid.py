"""Braid attention: each query strand passes under the strands of earlier tokens, and every
crossing acts by the Alexander quandle.

Math: token j is a strand coloured by the pair (Y_j, t_j): Y_j = k_j v_jᵀ (a K×K matrix) and a
crossing parameter t_j ∈ [t_min, 1)^K (one per RoPE pair of key channels) computed from token j.
A strand x passing under strand j becomes x ◁ (Y_j, t_j) = t_j·x + (1 − t_j)·Y_j (t_j acts on
the rows); with the label carried along its strand this is a quandle, so the crossings satisfy
the Yang–Baxter equation and the braid relations for any t (see attention/quandle.py). The
strand of query i starts at X = 0 (or at the cached state), passes under strands 1..i, and is
read out with the query: y_i = q_i·X_i / √K = Σ_{j≤i} (Σ_c q_ic w_ijc k_jc) v_j / √K, where the weights
w_ijc = (1 − t_jc) Π_{j<l≤i} t_lc are convex (they sum to 1 − Π t ≤ 1). Crossings are affine
maps x ↦ a·x + b, which compose associatively, so the running colour is a prefix scan: O(T·K²)
per head, causal by construction, with an O(1) decoding cache (the colour). Claimed benefit:
linear-time, constant-memory decoding whose mixing is a bona fide braid-group action with
data-dependent, always-invertible crossings. See markdown_documentation/braid.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import AlgebraConfig, AttentionDims, Dense, QKVProjection, pairwise_flops, require
from attention.quandle import affine_compose, alexander
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


def braid_scan(q_BxTxGxRxK, k_BxTxGxK, v_BxTxGxK, log_t_BxTxGxK, x0_BxGxKxK, chunk: int):
    """The fast path: every query strand's colour after passing under strands 1..i, read out.

    Inside a chunk of C strands the composed crossings are explicit: with L_i = Σ_{l≤i} log t_l,
    strand j reaches i with weight e^{L_i − L_j}(1 − t_j), so the intra-chunk part is a masked
    C×C product. Each chunk as a whole is one affine map (a, b); those compose with
    `lax.associative_scan`, giving the colour entering each chunk. Returns y `[B, T, G, R, K]`
    (without the 1/√K) and the final colour `[B, G, K, K]`. Everything float32.
    """
    b, t, g, r, k = q_BxTxGxRxK.shape
    c = min(chunk, t)
    n = -(-t // c)
    pad = n * c - t

    def chunks(x):  # pad with identity crossings (log t = 0, so t = 1 and 1 − t = 0)
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return x.reshape(b, n, c, *x.shape[2:])

    q, kk, v, log_t = chunks(q_BxTxGxRxK), chunks(k_BxTxGxK), chunks(v_BxTxGxK), chunks(log_t_BxTxGxK)
    cum_BxNxCxGxK = jnp.cumsum(log_t, axis=2)
    one_minus_t = -jnp.expm1(log_t)  # 1 − t without cancellation when t is close to 1
    q_dec = q * jnp.exp(cum_BxNxCxGxK)[:, :, :, :, None]
    k_grow = kk * one_minus_t * jnp.exp(-cum_BxNxCxGxK)
    s_BxNxGxRxCxC = jnp.einsum("bnigrk,bnjgk->bngrij", q_dec, k_grow)
    # Masked entries can be as large as t_min^{-C}; `where` drops them before they meet v.
    tril = jnp.tril(jnp.ones((c, c), bool))
    s_BxNxGxRxCxC = jnp.where(tril, s_BxNxGxRxCxC, 0.0)
    y_intra = jnp.einsum("bngrij,bnjgk->bnigrk", s_BxNxGxRxCxC, v)

    # Chunk n as one affine map of the colour: a = Π t, b = Σ_j (1 − t_j) Π_{l>j} t_l Y_j.
    last_BxNxGxK = cum_BxNxCxGxK[:, :, -1]
    a_BxNxGxKx1 = jnp.exp(last_BxNxGxK)[..., None]
    k_end = kk * one_minus_t * jnp.exp(last_BxNxGxK[:, :, None] - cum_BxNxCxGxK)
    b_BxNxGxKxK = jnp.einsum("bnjgk,bnjgv->bngkv", k_end, v)
    a_pre, b_pre = jax.lax.associative_scan(affine_compose, (a_BxNxGxKx1, b_BxNxGxKxK), axis=1)
    x_end_BxNxGxKxK = a_pre * x0_BxGxKxK[:, None] + b_pre
    x_start = jnp.concatenate([x0_BxGxKxK[:, None], x_end_BxNxGxKxK[:, :-1]], axis=1)
    y_inter = jnp.einsum("bnigrk,bngkv->bnigrv", q_dec, x_start)

    y_BxTxGxRxK = (y_intra + y_inter).reshape(b, n * c, g, r, k)[:, :t]
    return y_BxTxGxRxK, x_end_BxNxGxKxK[:, -1]


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
    """Obviously correct: one strand crossing at a time, the query strand read out after each."""
    q, kk, v, log_t = _features(module, x_BxTxD, positions_BxT)
    b, t, g, r, k = q.shape
    colour_BxGxKxK = jnp.zeros((b, g, k, k), jnp.float32)
    outs = []
    for i in range(t):
        y_BxGxKxK = kk[:, i, :, :, None] * v[:, i, :, None, :]
        colour_BxGxKxK = alexander(colour_BxGxKxK, y_BxGxKxK, jnp.exp(log_t[:, i])[..., None])
        outs.append(jnp.einsum("bgrk,bgkv->bgrv", q[:, i], colour_BxGxKxK) / math.sqrt(k))
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
          description="query strands cross earlier strands by the Alexander quandle; prefix-scanned affine maps")
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
        # The colour of a query strand that has passed under every cached strand. Kept in
        # float32 whatever the activation dtype: it is a running sum over the whole prefix.
        g, k = self.dims.n_kv_heads, self.dims.head_dim
        return {"colour": jnp.zeros((batch, g, k, k), jnp.float32)}

    def __call__(self, x_BxTxD, positions_BxT, cache=None):
        b, t, _ = x_BxTxD.shape
        q, kk, v, log_t = _features(self, x_BxTxD, positions_BxT)
        self.sow(nnx.Intermediate, "crossing_t", jnp.mean(jnp.exp(log_t)))
        g, k = self.dims.n_kv_heads, self.dims.head_dim
        x0 = jnp.zeros((b, g, k, k), jnp.float32) if cache is None else cache["colour"]
        y_BxTxGxRxK, colour = braid_scan(q, kk, v, log_t, x0, self.cfg.chunk)
        y = (y_BxTxGxRxK * k ** -0.5).astype(x_BxTxD.dtype)
        out = self.wo(y.reshape(b, t, -1))
        return out, (None if cache is None else {"colour": colour})
