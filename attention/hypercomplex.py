"""Quaternions, octonions and the rotor-attention core shared by both algebras.

Layout: a quaternion is an array `[..., 4]` = (w, x, y, z) meaning w + x i + y j + z k; an
octonion is `[..., 8]` = (a, b), a pair of quaternions (Cayley–Dickson), multiplied as
(a, b)(c, d) = (ac − d̄b, da + bc̄). Inside attention a head of K channels holds M = K / n
numbers of n channels each, consecutive channels forming one number (`[..., M, n]`).

Rotor attention (markdown_documentation/quaternion.md, markdown_documentation/octonion.md):
scores are Σ_slots Re(q ⊗ conj(k)) / √K (which equals q·k / √K) of the RoPE-rotated q and k;
the value of key j is transported by unit numbers before the weighted sum, with the bracketing
fixed as y_i = q̂_i ⊗ Σ_j p_ij (conj(k̂_j) ⊗ v_j), where the rotors q̂, k̂ come from q and k
BEFORE RoPE. RoPE rotates channel c with channel c + K/2, i.e. across numbers, so rotors built
after it would depend on absolute positions; built before it, the transport depends on content
only and the scores on relative positions only, so the layer is shift-invariant in positions.
Left multiplication distributes over the sum, so this is one attention over pre-rotated values
plus one product per query: O(T²K) like standard attention, with no per-pair hypercomplex work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from attention.base import ProjectedAttention, AttentionDims, apply_rope, update_kv_cache
from attention.standard import grouped_softmax_attention

# ----------------------------------------------------------------------------- quaternions


def qconj(a):
    """Quaternion conjugate: (w, -x, -y, -z)."""
    return jnp.concatenate([a[..., :1], -a[..., 1:]], axis=-1)


def qmul(a, b):
    """Hamilton product a ⊗ b of `[..., 4]` arrays (i² = j² = k² = ijk = −1), broadcasting."""
    a0, a1, a2, a3 = (a[..., i] for i in range(4))
    b0, b1, b2, b3 = (b[..., i] for i in range(4))
    return jnp.stack([
        a0 * b0 - a1 * b1 - a2 * b2 - a3 * b3,
        a0 * b1 + a1 * b0 + a2 * b3 - a3 * b2,
        a0 * b2 - a1 * b3 + a2 * b0 + a3 * b1,
        a0 * b3 + a1 * b2 - a2 * b1 + a3 * b0,
    ], axis=-1)


def _mat(rows):
    return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)


def qleft(a):
    """`[..., 4, 4]` matrix L(a) with L(a) @ b == a ⊗ b."""
    a0, a1, a2, a3 = (a[..., i] for i in range(4))
    return _mat([[a0, -a1, -a2, -a3], [a1, a0, -a3, a2], [a2, a3, a0, -a1], [a3, -a2, a1, a0]])


def qright(b):
    """`[..., 4, 4]` matrix R(b) with R(b) @ a == a ⊗ b (the reference project's was wrong)."""
    b0, b1, b2, b3 = (b[..., i] for i in range(4))
    return _mat([[b0, -b1, -b2, -b3], [b1, b0, b3, -b2], [b2, -b3, b0, b1], [b3, b2, -b1, b0]])


# ----------------------------------------------------------------------------- octonions

# conjugation as a matrix (numpy: no device work at import, which would pre-empt jax.distributed)
_J = np.diag(np.array([1.0, -1.0, -1.0, -1.0], np.float32))


def oconj(x):
    """Octonion conjugate: (ā, −b)."""
    return jnp.concatenate([qconj(x[..., :4]), -x[..., 4:]], axis=-1)


def omul(x, y):
    """Octonion product by Cayley–Dickson over quaternions: (a,b)(c,d) = (ac − d̄b, da + bc̄).

    Each bracket is a quaternion (associative) product, so this formula is the definition;
    the octonion product itself is not associative.
    """
    a, b, c, d = x[..., :4], x[..., 4:], y[..., :4], y[..., 4:]
    return jnp.concatenate([qmul(a, c) - qmul(qconj(d), b), qmul(d, a) + qmul(b, qconj(c))], axis=-1)


def _blocks(tl, tr, bl, br):
    return jnp.concatenate([jnp.concatenate([tl, tr], -1), jnp.concatenate([bl, br], -1)], -2)


def oleft(x):
    """`[..., 8, 8]` L(x) with L(x) @ y == x y, as 2×2 quaternion blocks [[L(a), −R(b)J], [L(b)J, R(a)]]."""
    a, b = x[..., :4], x[..., 4:]
    return _blocks(qleft(a), -qright(b) @ _J, qleft(b) @ _J, qright(a))


def oright(y):
    """`[..., 8, 8]` R(y) with R(y) @ x == x y, as blocks [[R(c), −L(d̄)], [L(d), R(c̄)]]."""
    c, d = y[..., :4], y[..., 4:]
    return _blocks(qright(c), -qleft(qconj(d)), qleft(d), qright(qconj(c)))


# ----------------------------------------------------------------------------- shared core


@dataclass(frozen=True)
class Algebra:
    """A normed division algebra of dimension n: its product and conjugation on `[..., n]`."""

    name: str
    n: int
    mul: Callable[[jax.Array, jax.Array], jax.Array]
    conj: Callable[[jax.Array], jax.Array]
    mul_flops: float  # forward FLOPs of one product (muls + adds/subs + negations)


QUATERNION = Algebra("quaternion", 4, qmul, qconj, mul_flops=16 + 12)
# 4 quaternion products, 2 conjugations (3 negations each), 8 adds/subs.
OCTONION = Algebra("octonion", 8, omul, oconj, mul_flops=4 * 28 + 6 + 8)


def to_slots(x, n: int):
    """`[..., K]` -> `[..., K // n, n]`: consecutive channels form one number."""
    return x.reshape(*x.shape[:-1], x.shape[-1] // n, n)


def unit(x_slots, eps: float):
    """x / sqrt(|x|² + eps) per number, in float32. eps keeps the gradient finite at x = 0
    and makes |x̂| < 1 there, which only tightens the norm bound of the output."""
    x32 = x_slots.astype(jnp.float32)
    return x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)


def pre_rotate(alg: Algebra, k_BxSxGxK, v_BxSxGxK, eps: float):
    """w_j = conj(k̂_j) ⊗ v_j per number: the key-side half of the transport (cacheable)."""
    k_hat = unit(to_slots(k_BxSxGxK, alg.n), eps)
    w = alg.mul(alg.conj(k_hat), to_slots(v_BxSxGxK, alg.n).astype(jnp.float32))
    return w.reshape(v_BxSxGxK.shape).astype(v_BxSxGxK.dtype)


def rotor_attention(alg: Algebra, q_BxTxHxK, k_BxSxGxK, w_BxSxGxK, q_pos_BxT, k_pos_BxS, eps: float,
                    q_rotor_BxTxHxK=None):
    """y_i = q̂_i ⊗ Σ_j p_ij w_j with p = causal softmax(q·k / √K) and w from `pre_rotate`.

    q̂ is the unit form of `q_rotor` (the module passes q before RoPE), or of q when omitted.

    q·k summed over a head equals Σ_slots Re(q ⊗ conj(k)), so the scores are a plain grouped
    attention; the query-side product is applied once per query after the weighted sum
    (exact, because left multiplication is linear). Returns `[B, T, H, K]` before the output
    projection; per number its norm is at most the largest |v_j| (a convex combination of
    values moved by isometries).
    """
    agg_BxTxHxK = grouped_softmax_attention(q_BxTxHxK, k_BxSxGxK, w_BxSxGxK, q_pos_BxT, k_pos_BxS)
    q_hat = unit(to_slots(q_BxTxHxK if q_rotor_BxTxHxK is None else q_rotor_BxTxHxK, alg.n), eps)
    y = alg.mul(q_hat, to_slots(agg_BxTxHxK, alg.n).astype(jnp.float32))
    return y.reshape(q_BxTxHxK.shape).astype(q_BxTxHxK.dtype)


def slot_scores(alg: Algebra, q_xK, k_xK):
    """The score by its definition: Σ_slots Re(q ⊗ conj(k)) / √K over the last axis."""
    prod = alg.mul(to_slots(q_xK, alg.n), alg.conj(to_slots(k_xK, alg.n)))
    return jnp.sum(prod[..., 0], axis=-1) * q_xK.shape[-1] ** -0.5


def rotor_attention_reference(alg: Algebra, q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, q_pos_BxT, k_pos_BxS,
                              eps: float, bracket: str, rotors=None):
    """Slow, per-pair form: every (i, j) transport built explicitly, `[B, T, S, H, M, n]`.

    Scores come from q, k; the rotors from `rotors` = (q, k) before RoPE (default: q, k).
    bracket "relative": ((q̂_i ⊗ conj(k̂_j)) ⊗ v_j), the relative rotor first (quaternions,
    where associativity makes it equal to the fast path's bracketing).
    bracket "split": q̂_i ⊗ (conj(k̂_j) ⊗ v_j), the fast path's definition (octonions).
    All pairs at once rather than a loop over queries: the same arithmetic, but one copy of it
    to compile (the unrolled loop's gradient took minutes to compile on a cold cache).
    """
    b, t, h, kd = q_BxTxHxK.shape
    rep = h // k_BxSxGxK.shape[2]
    q_rot, k_rot = (q_BxTxHxK, k_BxSxGxK) if rotors is None else rotors
    k = jnp.repeat(k_BxSxGxK, rep, axis=2).astype(jnp.float32)
    s_BxTxSxH = slot_scores(alg, q_BxTxHxK.astype(jnp.float32)[:, :, None], k[:, None])
    ok_BxTxS = k_pos_BxS[:, None, :] <= q_pos_BxT[:, :, None]
    p_BxTxSxH = jax.nn.softmax(jnp.where(ok_BxTxS[..., None], s_BxTxSxH, -1e30), axis=2)
    q_hat = unit(to_slots(q_rot, alg.n), eps)[:, :, None]  # [B, T, 1, H, M, n]
    k_hat_conj = alg.conj(unit(to_slots(jnp.repeat(k_rot, rep, axis=2), alg.n), eps))[:, None]
    v = to_slots(jnp.repeat(v_BxSxGxK, rep, axis=2).astype(jnp.float32), alg.n)[:, None]
    if bracket == "relative":
        moved = alg.mul(alg.mul(q_hat, k_hat_conj), v)
    elif bracket == "split":
        moved = alg.mul(q_hat, alg.mul(k_hat_conj, v))
    else:
        raise ValueError(f"unknown bracket {bracket!r}")
    y = jnp.einsum("btsh,btshmn->bthmn", p_BxTxSxH, moved).reshape(b, t, h, kd)
    return y.astype(q_BxTxHxK.dtype)


class RotorAttention(ProjectedAttention):
    """The module both algebras register (each as a subclass that fixes `algebra`).

    Cache: RoPE'd keys (for scores) and pre-rotated values w = conj(k̂) ⊗ v, so decoding does
    the key-side product once per token, never per (query, key) pair.
    """

    algebra: Algebra

    def features(self, x_BxTxD, positions_BxT):
        """(q, k) RoPE'd for the scores, (q, k) QK-normed but unrotated for the rotors, and v."""
        q0, k0, v = self.qkv(x_BxTxD, positions_BxT, rope=False)
        base = self.dims.rope_base
        return apply_rope(q0, positions_BxT, base), apply_rope(k0, positions_BxT, base), q0, k0, v

    def __call__(self, x_BxTxD, positions_BxT, cache=None):
        b, t, _ = x_BxTxD.shape
        q, k, q0, k0, v = self.features(x_BxTxD, positions_BxT)
        w = pre_rotate(self.algebra, k0, v, self.cfg.unit_eps)
        k_pos = positions_BxT
        if cache is not None:
            cache = update_kv_cache(cache, positions_BxT, k, w)
            k, w, k_pos = cache["s0"], cache["s1"], cache["pos"]
        y_BxTxHxK = rotor_attention(self.algebra, q, k, w, positions_BxT, k_pos, self.cfg.unit_eps,
                                    q_rotor_BxTxHxK=q0)
        return self.wo(y_BxTxHxK.reshape(b, t, -1)), cache

    def reference(self, x_BxTxD, positions_BxT, bracket: str):
        q, k, q0, k0, v = self.features(x_BxTxD, positions_BxT)
        y = rotor_attention_reference(self.algebra, q, k, v, positions_BxT, positions_BxT,
                                      self.cfg.unit_eps, bracket, rotors=(q0, k0))
        return self.wo(y.reshape(*y.shape[:2], -1))


def rotor_flops(alg: Algebra, dims: AttentionDims, seq_len: int) -> float:
    """Forward FLOPs per token beyond the projections: standard's q·k and p·w over the full
    row, plus per-token work: unit-normalising q and k (~3 per channel), conj(k̂) (negations)
    and one product per kv-head number (key side) and per query-head number (query side)."""
    h, g, k = dims.n_heads, dims.n_kv_heads, dims.head_dim
    per_token = 3.0 * (h + g) * k + g * k + alg.mul_flops / alg.n * (h + g) * k
    return 4.0 * h * k * seq_len + per_token
