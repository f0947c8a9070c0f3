"""Property tests of the quaternion algebra and of quaternion rotor attention's core."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from attention.base import AttentionDims
from attention.hypercomplex import (QUATERNION, pre_rotate, qconj, qleft, qmul, qright,
                                    rotor_attention, rotor_attention_reference, slot_scores)
from attention.quaternion import QuaternionConfig
from core.errors import MgrError
from rotor_checks import check_module_against_independent_reference

N = 6  # quaternions per example, checked together
quats = arrays(np.float32, (N, 4), elements=st.floats(-4, 4, width=32))
seeds = st.integers(0, 2**31 - 1)
SETTINGS = settings(max_examples=40, deadline=None)


def norm(x):
    return np.linalg.norm(np.asarray(x, np.float64), axis=-1)


def assert_close(a, b, scale):
    """Row-wise |a - b| <= 1e-5 * scale + 1e-5: f32 error grows with the operands' norms."""
    err = norm(np.asarray(a) - np.asarray(b))
    assert np.all(err <= 1e-5 * np.asarray(scale) + 1e-5), (err.max(), np.asarray(scale).max())


def test_hamilton_basis_table():
    one, i, j, k = np.eye(4, dtype=np.float32)
    for u in (i, j, k):
        np.testing.assert_array_equal(qmul(u, u), -one)
    np.testing.assert_array_equal(qmul(qmul(i, j), k), -one)
    np.testing.assert_array_equal(qmul(i, j), k)
    np.testing.assert_array_equal(qmul(j, i), -k)
    np.testing.assert_array_equal(qmul(j, k), i)
    np.testing.assert_array_equal(qmul(k, i), j)


@SETTINGS
@given(quats, quats)
def test_norm_is_multiplicative(x, y):
    np.testing.assert_allclose(norm(qmul(x, y)), norm(x) * norm(y), rtol=1e-5, atol=1e-5)


@SETTINGS
@given(quats, quats, quats)
def test_associative(x, y, z):
    assert_close(qmul(qmul(x, y), z), qmul(x, qmul(y, z)), norm(x) * norm(y) * norm(z))


@SETTINGS
@given(quats, quats)
def test_left_and_right_matrices_reproduce_the_product(x, y):
    prod = qmul(x, y)
    assert_close(jnp.einsum("nab,nb->na", qleft(x), y), prod, norm(x) * norm(y))
    assert_close(jnp.einsum("nab,nb->na", qright(y), x), prod, norm(x) * norm(y))


@SETTINGS
@given(quats, quats)
def test_conjugation_reverses_products_and_gives_the_norm(x, y):
    assert_close(qconj(qmul(x, y)), qmul(qconj(y), qconj(x)), norm(x) * norm(y))
    xx = np.asarray(qmul(x, qconj(x)))
    np.testing.assert_allclose(xx[:, 0], norm(x) ** 2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(xx[:, 1:], 0.0, atol=1e-5 * (1 + norm(x).max() ** 2))


# Jitted once per file: each Hypothesis example then runs compiled code (eager per-op
# dispatch of the per-pair reference dominated the test time).
@jax.jit
def fast_core(q, k, v, pos):
    return rotor_attention(QUATERNION, q, k, pre_rotate(QUATERNION, k, v, 1e-6), pos, pos, 1e-6)


@functools.partial(jax.jit, static_argnames="bracket")
def reference_core(q, k, v, pos, bracket):
    return rotor_attention_reference(QUATERNION, q, k, v, pos, pos, 1e-6, bracket=bracket)


@jax.jit
def scores_and_rotated_scores(q, k, u):
    rot = lambda x: QUATERNION.mul(u, x.reshape(*x.shape[:-1], -1, QUATERNION.n)).reshape(x.shape)
    return slot_scores(QUATERNION, q, k), slot_scores(QUATERNION, rot(q), rot(k))


def random_qkv(seed, b=2, t=5, h=4, g=2, k=8, v_scale=1.0):
    rng = np.random.default_rng(seed)
    q, kk_ = rng.normal(size=(b, t, h, k)), rng.normal(size=(b, t, g, k))
    v = rng.normal(size=(b, t, g, k)) * v_scale
    pos = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t))
    return q.astype(np.float32), kk_.astype(np.float32), v.astype(np.float32), pos


@SETTINGS
@given(seeds)
def test_scores_invariant_under_joint_left_rotation(seed):
    q, k, _, _ = random_qkv(seed)
    u = np.random.default_rng(seed + 1).normal(size=4).astype(np.float32)
    u = u / np.linalg.norm(u)
    s, s_rot = scores_and_rotated_scores(q[:, :, :2], k, u)  # each query head vs each kv head
    np.testing.assert_allclose(s_rot, s, atol=1e-5, rtol=1e-5)
    # ... and the definition equals the dot product the fast path uses.
    np.testing.assert_allclose(s, np.sum(q[:, :, :2] * k, -1) / np.sqrt(8), atol=1e-5, rtol=1e-5)


@SETTINGS
@given(seeds)
def test_fast_core_equals_explicit_relative_rotors(seed):
    """Σ_j p_ij (q̂_i conj(k̂_j)) v_j == q̂_i Σ_j p_ij (conj(k̂_j) v_j): associativity at work."""
    q, k, v, pos = random_qkv(seed)
    fast = fast_core(q, k, v, pos)
    ref = reference_core(q, k, v, pos, bracket="relative")
    np.testing.assert_allclose(fast, ref, atol=2e-5, rtol=1e-4)


@SETTINGS
@given(seeds, st.floats(1e-3, 1e3))
def test_output_norm_bounded_by_largest_value_norm(seed, v_scale):
    q, k, v, pos = random_qkv(seed, v_scale=v_scale)
    y = fast_core(q, k, v, pos)
    y_n = norm(np.asarray(y).reshape(2, 5, 2, 2, 2, 4))  # [B, T, G, R, slot]
    v_max = np.maximum.accumulate(norm(np.asarray(v).reshape(2, 5, 2, 2, 4)), axis=1)  # over j <= i
    assert np.all(y_n <= v_max[:, :, :, None] * (1 + 1e-5))
    # The first position sees one key: the transport is an isometry, so the norm is kept.
    np.testing.assert_allclose(y_n[:, 0], np.broadcast_to(v_max[:, 0, :, None], y_n[:, 0].shape), rtol=1e-4)


def test_validate_rejects_head_dim_not_divisible_by_4():
    dims = lambda k: AttentionDims(d_model=4 * k, n_heads=4, n_kv_heads=2, head_dim=k, max_seq_len=8)
    QuaternionConfig().validate(dims(8))
    with pytest.raises(MgrError, match="divisible by 4"):
        QuaternionConfig().validate(dims(6))



def test_decoder_module_equals_independent_reference_and_keeps_the_norm_bound():
    check_module_against_independent_reference("quaternion", 4)
