"""2-simplicial attention: each query attends to *pairs* of earlier positions.

Math: for a simplicial head, s_ijk = (1/sqrt(K)) sum_c q_ic k_jc k'_kc over pairs (j, k) with
j in (i-w1, i] and k in (i-w2, i]; p_ijk = softmax over the pair (j, k); y_i = sum_jk p_ijk
v_j * v'_k (elementwise). The remaining heads are ordinary pairwise softmax heads over the full
causal prefix, so the layer mixes long-range pairwise lookups with local three-way interactions.
With k' = v' = 1 a simplicial head is exactly pairwise softmax attention over (i-w1, i] (the
softmax over (j, k) marginalises over k), and with w1 = w2 the kernel is symmetric in its two
streams (the module's own streams are not tied: k' is pair-shared and carries no RoPE). Claimed
benefit: a head can score a *combination* of two tokens (a logical AND of two features), which
pairwise attention cannot in one layer. The windowed fast path costs O(T * w1 * w2 * K) per
head; the dense O(T^3) form is the reference. See markdown_documentation/simplicial.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attention.base import (AlgebraConfig, AttentionDims, Dense, QKVProjection, init_kv_cache,
                            mask_value, pairwise_flops, require, rms_normalize, update_kv_cache, loop_map)
from attention.registry import register
from attention.standard import grouped_softmax_attention

_FAR = jnp.iinfo(jnp.int32).max  # position of padding slots: after every query, so always masked


@dataclass(frozen=True, kw_only=True)
class SimplicialConfig(AlgebraConfig):
    """Knobs of 2-simplicial attention.

    n_simplicial_heads: how many query heads (the last ones) are 2-simplicial; the rest are
        standard pairwise heads. None means half of the heads (at least one).
    window_1, window_2: each query sees keys j in (i - window_1, i] of the first stream and
        k in (i - window_2, i] of the second. Equal windows keep the head symmetric in its streams.
    """

    n_simplicial_heads: int | None = None
    window_1: int = 16
    window_2: int = 16

    def simplicial_heads(self, dims: AttentionDims) -> int:
        if self.n_simplicial_heads is None:
            return max(1, dims.n_heads // 2)
        return self.n_simplicial_heads

    def validate(self, dims: AttentionDims) -> None:
        h = self.simplicial_heads(dims)
        require(1 <= h <= dims.n_heads,
                f"simplicial: n_simplicial_heads must be in 1..{dims.n_heads}, got {h}")
        require(self.window_1 >= 1 and self.window_2 >= 1,
                f"simplicial: windows must be >= 1, got ({self.window_1}, {self.window_2})")
        require(dims.head_dim % 2 == 0, f"simplicial: head_dim must be even, got {dims.head_dim}")


# ---------------------------------------------------------------- the kernel (pure functions)

def _windows(x_BxCx_, t: int, w: int, pad: int):
    """[B, T, w, ...]: entry a of query t is context slot t + pad - a (key position i - a).

    One gather with a static [T, w] index, never a loop over positions.
    """
    idx_TxW = np.arange(t)[:, None] + pad - np.arange(w)[None, :]
    return jnp.take(x_BxCx_, jnp.asarray(idx_TxW, jnp.int32), axis=1)


def _window_block(q_BxTxHxK, k1_BxCxHxK, v1_BxCxHxK, k2_BxCxHxK, v2_BxCxHxK, q_pos_BxT,
                  c_pos_BxC, w1: int, w2: int):
    """Windowed 2-simplicial heads for one block of T queries. The context holds their keys
    preceded by `pad` earlier slots (C = T + pad, pad >= max(w1, w2) - 1); masking is by
    position, so padding slots (position _FAR) and anything outside (i - w, i] get no weight."""
    b, t, h, k = q_BxTxHxK.shape
    pad = c_pos_BxC.shape[1] - t
    f32 = jnp.float32
    k1_BxTxHxAxK = jnp.swapaxes(_windows(k1_BxCxHxK, t, w1, pad), 2, 3).astype(f32)
    k2_BxTxHxCxK = jnp.swapaxes(_windows(k2_BxCxHxK, t, w2, pad), 2, 3).astype(f32)
    # Scale once on q: the trilinear sum of K unit-variance products has variance K.
    qk_BxTxHxAxK = (q_BxTxHxK.astype(f32) * k ** -0.5)[:, :, :, None] * k1_BxTxHxAxK
    s_BxTxHxAxC = jnp.einsum("bthak,bthck->bthac", qk_BxTxHxAxK, k2_BxTxHxCxK)

    qp_BxTx1 = q_pos_BxT[:, :, None]
    p1_BxTxA, p2_BxTxC = _windows(c_pos_BxC, t, w1, pad), _windows(c_pos_BxC, t, w2, pad)
    ok1 = (p1_BxTxA <= qp_BxTx1) & (p1_BxTxA > qp_BxTx1 - w1)
    ok2 = (p2_BxTxC <= qp_BxTx1) & (p2_BxTxC > qp_BxTx1 - w2)
    ok_BxTx1xAxC = (ok1[:, :, :, None] & ok2[:, :, None, :])[:, :, None]
    s_BxTxHxAxC = jnp.where(ok_BxTx1xAxC, s_BxTxHxAxC, mask_value(f32))
    # The pair (i, i) is always allowed, so no row is fully masked.
    p = jax.nn.softmax(s_BxTxHxAxC.reshape(b, t, h, w1 * w2), axis=-1).reshape(b, t, h, w1, w2)

    dt = v1_BxCxHxK.dtype
    v1_BxTxHxAxK = jnp.swapaxes(_windows(v1_BxCxHxK, t, w1, pad), 2, 3)
    v2_BxTxHxCxK = jnp.swapaxes(_windows(v2_BxCxHxK, t, w2, pad), 2, 3)
    # y = sum_a v1_a * (sum_c p_ac v2_c): contract the second stream first, O(w1*w2*K).
    u_BxTxHxAxK = jnp.einsum("bthac,bthck->bthak", p.astype(dt), v2_BxTxHxCxK)
    return jnp.sum(u_BxTxHxAxK * v1_BxTxHxAxK, axis=3)


# Queries per scan step. Window tensors are [T, H, w, K]-sized, so the whole-sequence form
# streams them through memory several times; blocks of 32 queries with the block recomputed
# in the backward pass (checkpoint) halved the CPU time of forward+backward at B=8, T=256,
# H=2, K=32, w=16 (about 40 ms vs 76 ms on XLA:CPU); 128-query blocks were no better than none.
_QUERY_BLOCK = 32


def _window_attention(q_BxTxHxK, k1_BxCxHxK, v1_BxCxHxK, k2_BxCxHxK, v2_BxCxHxK, q_pos_BxT,
                      c_pos_BxC, w1: int, w2: int, block: int = _QUERY_BLOCK):
    """`_window_block` over blocks of `block` queries with lax.map; context as there."""
    b, t, h, k = q_BxTxHxK.shape
    if t <= block:
        return _window_block(q_BxTxHxK, k1_BxCxHxK, v1_BxCxHxK, k2_BxCxHxK, v2_BxCxHxK, q_pos_BxT,
                             c_pos_BxC, w1, w2)
    pad, qb = c_pos_BxC.shape[1] - t, block
    nb = -(-t // qb)
    extra = nb * qb - t  # tail queries (position 0, output dropped) so blocks are equal

    def tail(x, fill=0):
        return jnp.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)

    q, q_pos = tail(q_BxTxHxK), tail(q_pos_BxT)
    kv = [tail(x) for x in (k1_BxCxHxK, v1_BxCxHxK, k2_BxCxHxK, v2_BxCxHxK)]
    c_pos = tail(c_pos_BxC, _FAR)

    @jax.checkpoint
    def one_block(n):
        def sl(x, size):
            return jax.lax.dynamic_slice_in_dim(x, n * qb, size, axis=1)
        return _window_block(sl(q, qb), *[sl(x, qb + pad) for x in kv], sl(q_pos, qb),
                             sl(c_pos, qb + pad), w1, w2)

    y_NxBxQxHxK = loop_map(one_block, jnp.arange(nb))
    return jnp.moveaxis(y_NxBxQxHxK, 0, 1).reshape(b, nb * qb, h, k)[:, :t]


def simplicial_attention(q_BxTxHxK, k1_BxTxHxK, v1_BxTxHxK, k2_BxTxHxK, v2_BxTxHxK, positions_BxT,
                         w1: int, w2: int, block: int = _QUERY_BLOCK):
    """Windowed 2-simplicial attention of a sequence over itself (one key/value per head),
    computed `block` queries at a time."""
    t = q_BxTxHxK.shape[1]
    w1, w2 = min(w1, t), min(w2, t)  # a window longer than the sequence only adds masked slots
    pad = max(w1, w2) - 1

    def ctx(x):
        return jnp.pad(x, [(0, 0), (pad, 0)] + [(0, 0)] * (x.ndim - 2))

    c_pos = jnp.pad(positions_BxT, [(0, 0), (pad, 0)], constant_values=_FAR)
    return _window_attention(q_BxTxHxK, ctx(k1_BxTxHxK), ctx(v1_BxTxHxK), ctx(k2_BxTxHxK),
                             ctx(v2_BxTxHxK), positions_BxT, c_pos, w1, w2, block)


def dense_simplicial_attention(q_BxTxHxK, k1_BxTxHxK, v1_BxTxHxK, k2_BxTxHxK, v2_BxTxHxK,
                               positions_BxT, w1: int, w2: int):
    """Reference: for each query, all T x T pairs scored, masked, softmaxed. O(T^3)."""
    k = q_BxTxHxK.shape[-1]
    pos = positions_BxT
    outs = []
    for i in range(q_BxTxHxK.shape[1]):
        s_BxHxJxK = jnp.einsum("bhc,bjhc,bkhc->bhjk", q_BxTxHxK[:, i], k1_BxTxHxK,
                               k2_BxTxHxK) / jnp.sqrt(k)
        pi = pos[:, i:i + 1]
        ok_j = (pos <= pi) & (pos > pi - w1)
        ok_k = (pos <= pi) & (pos > pi - w2)
        ok_BxJxK = ok_j[:, :, None] & ok_k[:, None, :]
        s_BxHxJxK = jnp.where(ok_BxJxK[:, None], s_BxHxJxK, -1e30)
        shape = s_BxHxJxK.shape
        p = jax.nn.softmax(s_BxHxJxK.reshape(*shape[:2], -1), axis=-1).reshape(shape)
        outs.append(jnp.einsum("bhjk,bjhc,bkhc->bhc", p, v1_BxTxHxK, v2_BxTxHxK))
    return jnp.stack(outs, axis=1)


# ---------------------------------------------------------------- the module

def _head_slice(x_BxSxGxK, first: int, n: int, rep: int):
    """Per-head view [B, S, n, K] of kv groups for query heads first..first+n-1 (head h uses
    group h // rep). Repeat + slice, not a gather, so the backward pass stays a plain sum."""
    g0, g1 = first // rep, -(-(first + n) // rep)
    x = jnp.repeat(x_BxSxGxK[:, :, g0:g1], rep, axis=2)
    return x[:, :, first - g0 * rep:first - g0 * rep + n]


def _reference(module: "SimplicialAttention", x_BxTxD, positions_BxT):
    """Pairwise heads one query at a time (as standard's reference), simplicial heads by the
    dense O(T^3) form, explicit per-head kv."""
    q, k, v, k2, v2 = module.streams(x_BxTxD, positions_BxT)
    hp, hs, rep = module.n_pairwise, module.n_simplicial, module.rep
    k_h, v_h = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
    outs = []
    for i in range(x_BxTxD.shape[1]):
        s_BxHxS = jnp.einsum("bhk,bshk->bhs", q[:, i, :hp], k_h[:, :, :hp]) / jnp.sqrt(q.shape[-1])
        ok_BxS = positions_BxT <= positions_BxT[:, i:i + 1]
        s_BxHxS = jnp.where(ok_BxS[:, None, :], s_BxHxS, -1e30)
        outs.append(jnp.einsum("bhs,bshk->bhk", jax.nn.softmax(s_BxHxS, axis=-1), v_h[:, :, :hp]))
    y_pair = jnp.stack(outs, axis=1)
    # Second-stream groups start at the first simplicial head's group.
    g_lo = hp // rep
    k2_h, v2_h = jnp.repeat(k2, rep, axis=2), jnp.repeat(v2, rep, axis=2)
    lo = hp - g_lo * rep
    y_simp = dense_simplicial_attention(q[:, :, hp:], k_h[:, :, hp:], v_h[:, :, hp:],
                                        k2_h[:, :, lo:lo + hs], v2_h[:, :, lo:lo + hs],
                                        positions_BxT, module.cfg.window_1, module.cfg.window_2)
    y = jnp.concatenate([y_pair, y_simp], axis=2)
    return module.wo(y.reshape(*y.shape[:2], -1))


def _flops(dims: AttentionDims, cfg: SimplicialConfig, seq_len: int) -> float:
    hs = cfg.simplicial_heads(dims)
    hp, k, rep = dims.n_heads - hs, dims.head_dim, dims.n_heads // dims.n_kv_heads
    gs = dims.n_kv_heads - hp // rep
    w1, w2 = min(cfg.window_1, seq_len), min(cfg.window_2, seq_len)
    proj = pairwise_flops(dims, seq_len) + 2.0 * dims.d_model * gs * (k // 2 + k)
    pair = 4.0 * hp * k * seq_len  # q.k and p.v over the full row, as standard counts it
    # q*k1 (w1*K), trilinear scores (2*w1*w2*K), p.v2 (2*w1*w2*K), v1*u summed over a (2*w1*K).
    simp = hs * (4.0 * w1 * w2 * k + 3.0 * w1 * k)
    return proj + pair + simp


@register("simplicial", config_cls=SimplicialConfig, flops_per_token=_flops, reference=_reference,
          description="2-simplicial heads (trilinear scores over windowed key pairs) mixed with "
                      "pairwise softmax heads",
          relative_positions=True)
class SimplicialAttention(nnx.Module):
    def __init__(self, dims: AttentionDims, cfg: SimplicialConfig, *, rngs: nnx.Rngs):
        cfg.validate(dims)
        self.dims, self.cfg = dims, cfg
        self.rep = dims.n_heads // dims.n_kv_heads
        self.n_simplicial = cfg.simplicial_heads(dims)
        self.n_pairwise = dims.n_heads - self.n_simplicial
        # Only the kv groups that some simplicial head reads get a second stream.
        self.n_groups2 = dims.n_kv_heads - self.n_pairwise // self.rep
        k = dims.head_dim
        self.qkv = QKVProjection(dims, rngs=rngs)
        # k' has K/2 entries, each shared by one RoPE rotation pair: then sum_c q_c k_c k'_c is a
        # k'-weighted sum of rotation-pair dot products, so RoPE stays purely relative in i - j.
        self.wk2 = Dense(dims.d_model, self.n_groups2 * (k // 2), rngs=rngs)
        self.wv2 = Dense(dims.d_model, self.n_groups2 * k, rngs=rngs)
        self.wo = Dense(dims.n_heads * k, dims.d_model, rngs=rngs)
        # Queries per scan step of the windowed kernel. Not a config knob (it changes no result);
        # tests shrink it so that a tiny T runs the scanned, checkpointed path the decoder runs.
        self.query_block = _QUERY_BLOCK

    def streams(self, x_BxTxD, positions_BxT):
        """q [B,T,H,K]; k, v [B,T,G,K]; second stream k2, v2 [B,T,G2,K] (k2 RMS-normed, its two
        halves equal: one weight per RoPE pair)."""
        b, t, _ = x_BxTxD.shape
        q, k, v = self.qkv(x_BxTxD, positions_BxT)
        k2 = rms_normalize(self.wk2(x_BxTxD).reshape(b, t, self.n_groups2, -1))
        k2 = jnp.concatenate([k2, k2], axis=-1)
        v2 = self.wv2(x_BxTxD).reshape(b, t, self.n_groups2, -1)
        return q, k, v, k2, v2

    def init_cache(self, batch: int, dtype=jnp.float32) -> dict:
        cache = init_kv_cache(batch, self.dims, dtype, n_streams=2)
        s, k = self.dims.max_seq_len, self.dims.head_dim
        for name in ("s2", "s3"):
            cache[name] = jnp.zeros((batch, s, self.n_groups2, k), dtype)
        return cache

    def __call__(self, x_BxTxD, positions_BxT, cache=None):
        b, t, _ = x_BxTxD.shape
        hp, hs, rep = self.n_pairwise, self.n_simplicial, self.rep
        q, k, v, k2, v2 = self.streams(x_BxTxD, positions_BxT)
        k_pos = positions_BxT
        if cache is not None:
            cache = update_kv_cache(cache, positions_BxT, k, v, k2, v2)
            k_all, v_all, k_pos = cache["s0"], cache["s1"], cache["pos"]
        else:
            k_all, v_all = k, v
        ys = []
        if hp:
            if hp % rep == 0:  # pairwise heads own whole kv groups: keep GQA's shared layout
                kp, vp = k_all[:, :, :hp // rep], v_all[:, :, :hp // rep]
            else:
                kp, vp = _head_slice(k_all, 0, hp, rep), _head_slice(v_all, 0, hp, rep)
            ys.append(grouped_softmax_attention(q[:, :, :hp], kp, vp, positions_BxT, k_pos))

        lo = hp - (hp // rep) * rep  # first simplicial head's index within the second stream

        def heads(x, x2):
            return _head_slice(x, hp, hs, rep), _head_slice(x2, lo, hs, rep)

        w1, w2 = self.cfg.window_1, self.cfg.window_2
        if cache is None:
            (k1h, k2h), (v1h, v2h) = heads(k, k2), heads(v, v2)
            ys.append(simplicial_attention(q[:, :, hp:], k1h, v1h, k2h, v2h, positions_BxT, w1, w2,
                                           self.query_block))
        else:
            # Context: the window-1 slots before this chunk plus the chunk itself. The slot index
            # is the position, so pad w-1 slots in front and slice at the chunk's first position.
            w1, w2 = min(w1, self.dims.max_seq_len), min(w2, self.dims.max_seq_len)
            pad = max(w1, w2) - 1
            start = positions_BxT[0, 0]

            def ctx(x, fill=0):
                xp = jnp.pad(x, [(0, 0), (pad, 0)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
                return jax.lax.dynamic_slice_in_dim(xp, start, t + pad, axis=1)

            (k1h, k2h), (v1h, v2h) = (heads(ctx(cache["s0"]), ctx(cache["s2"])),
                                      heads(ctx(cache["s1"]), ctx(cache["s3"])))
            ys.append(_window_attention(q[:, :, hp:], k1h, v1h, k2h, v2h, positions_BxT,
                                        ctx(cache["pos"], _FAR), w1, w2, self.query_block))
        y_BxTxHxK = jnp.concatenate(ys, axis=2) if len(ys) > 1 else ys[0]
        return self.wo(y_BxTxHxK.reshape(b, t, -1)), cache
