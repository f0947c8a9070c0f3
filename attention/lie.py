"""so(4) generators and SO(4) rotations through unit-quaternion pairs, for gauge attention.

Every 4x4 skew matrix splits uniquely as A = L(p) + R(r), where L(u) x = u·x and R(u) x = x·u
are left and right quaternion multiplication by pure quaternions p, r ∈ R^3 (so(4) ≅ so(3) ⊕
so(3)). L and R commute, so exp(A) = L(e^p)·R(e^r): the rotation x ↦ a·x·b with the unit
quaternions a = e^p, b = e^r. Composition is (a2, b2) ∘ (a1, b1) = (a2·a1, b1·b2), the inverse
is (ā, b̄), and neither factor commutes in general: these are non-abelian transports. The
quaternion form is exact (no Padé or Taylor truncation) and costs 2 Hamilton products per
4-vector instead of a 4x4 matrix; the explicit matrices here serve the tests and the slow
reference. See markdown_documentation/gauge.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_SMALL = 1e-4  # below this θ², cos and sin(θ)/θ use their Taylor series (sqrt has no gradient at 0)


def qmul(a, b):
    """Hamilton product of quaternions `[..., 4]` (w, x, y, z)."""
    aw, ax, ay, az = jnp.moveaxis(a, -1, 0)
    bw, bx, by, bz = jnp.moveaxis(b, -1, 0)
    return jnp.stack([aw * bw - ax * bx - ay * by - az * bz,
                      aw * bx + ax * bw + ay * bz - az * by,
                      aw * by - ax * bz + ay * bw + az * bx,
                      aw * bz + ax * by - ay * bx + az * bw], axis=-1)


def qconj(a):
    return a * jnp.asarray([1.0, -1.0, -1.0, -1.0], a.dtype)


def qexp(p_x3):
    """e^p = (cos θ, sin(θ)/θ · p) with θ = |p|, for pure quaternions p `[..., 3]`: a unit quaternion."""
    th2 = jnp.sum(p_x3 * p_x3, axis=-1, keepdims=True)
    small = th2 < _SMALL
    th = jnp.sqrt(jnp.where(small, 1.0, th2))  # the double-where keeps the unused branch's gradient finite
    cos = jnp.where(small, 1.0 - th2 / 2 + th2 * th2 / 24, jnp.cos(th))
    sinc = jnp.where(small, 1.0 - th2 / 6 + th2 * th2 / 120, jnp.sin(th) / th)
    return jnp.concatenate([cos, sinc * p_x3], axis=-1)


def pure(p_x3):
    return jnp.concatenate([jnp.zeros_like(p_x3[..., :1]), p_x3], axis=-1)


def left_matrix(a):
    """L(a) `[..., 4, 4]` with L(a) x = a·x."""
    return jnp.stack([qmul(a, e) for e in jnp.eye(4, dtype=a.dtype)], axis=-1)


def right_matrix(b):
    """R(b) `[..., 4, 4]` with R(b) x = x·b."""
    return jnp.stack([qmul(e, b) for e in jnp.eye(4, dtype=b.dtype)], axis=-1)


def so4_hat(p_x3, r_x3):
    """The skew generator A = L(p) + R(r) `[..., 4, 4]` of the pair of pure quaternions (p, r)."""
    return left_matrix(pure(p_x3)) + right_matrix(pure(r_x3))


def so4_exp(p_x3, r_x3):
    """exp(L(p) + R(r)) as the quaternion pair (e^p, e^r)."""
    return qexp(p_x3), qexp(r_x3)


def pair_matrix(pair):
    """The SO(4) matrix L(a)·R(b) of x ↦ a·x·b."""
    a, b = pair
    return left_matrix(a) @ right_matrix(b)


def pair_compose(later, earlier):
    """later ∘ earlier: x ↦ a_l·(a_e·x·b_e)·b_l."""
    return qmul(later[0], earlier[0]), qmul(earlier[1], later[1])


def pair_inverse(pair):
    return qconj(pair[0]), qconj(pair[1])


def pair_apply(pair, x_x4):
    """Rotate 4-vectors by x ↦ a·x·b (pair and x broadcast over leading axes)."""
    return qmul(qmul(pair[0], x_x4), pair[1])


def pair_apply_inverse(pair, x_x4):
    """Rotate by the inverse (the transpose): x ↦ ā·x·b̄."""
    return qmul(qmul(qconj(pair[0]), x_x4), qconj(pair[1]))


def pair_normalize(pair):
    """Project back onto unit quaternions: long f32 products drift off the group."""
    return tuple(q * jax.lax.rsqrt(jnp.sum(q * q, axis=-1, keepdims=True)) for q in pair)


def prefix_transports(pair_BxT, axis: int = 1):
    """T_i = U_i ∘ U_{i-1} ∘ … ∘ U_1 along `axis` by an associative scan (composition is associative)."""
    return jax.lax.associative_scan(lambda earlier, later: pair_compose(later, earlier), pair_BxT, axis=axis)


def holonomy(u_prev, u_next):
    """‖U_i U_{i-1} U_i⁻¹ U_{i-1}⁻¹ − I‖_F: the transport around the smallest loop of two links.

    Zero exactly when the two rotations commute, so it measures the connection's curvature
    (non-commutativity) at that step; bounded by 2·sqrt(4) = 4 for SO(4).
    """
    loop = pair_compose(u_next, pair_compose(u_prev, pair_compose(pair_inverse(u_next), pair_inverse(u_prev))))
    return jnp.sqrt(jnp.sum(jnp.square(pair_matrix(loop) - jnp.eye(4, dtype=loop[0].dtype)), axis=(-2, -1)))
