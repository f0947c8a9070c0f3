"""Property tests of Cayley–Dickson octonions and of octonion rotor attention's core."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from attention.base import AttentionDims
from attention.hypercomplex import (OCTONION, oconj, oleft, omul, oright, pre_rotate, qmul,
                                    rotor_attention, rotor_attention_reference, slot_scores)
from attention.octonion import OctonionConfig
from core.errors import MgrError
from rotor_checks import check_module_against_independent_reference

N = 6  # octonions per example, checked together
octs = arrays(np.float32, (N, 8), elements=st.floats(-3, 3, width=32))
seeds = st.integers(0, 2**31 - 1)
SETTINGS = settings(max_examples=40, deadline=None)


def norm(x):
    return np.linalg.norm(np.asarray(x, np.float64), axis=-1)


def assert_close(a, b, scale):
    """Row-wise |a - b| <= 1e-5 * scale + 1e-5: f32 error grows with the operands' norms."""
    err = norm(np.asarray(a) - np.asarray(b))
    assert np.all(err <= 1e-5 * np.asarray(scale) + 1e-5), (err.max(), np.asarray(scale).max())


def test_quaternion_subalgebra_and_basis_table():
    e = np.eye(8, dtype=np.float32)
    for a in range(1, 8):
        np.testing.assert_array_equal(omul(e[a], e[a]), -e[0])
    for a, b in itertools.combinations(range(1, 8), 2):
        ab = np.asarray(omul(e[a], e[b]))
        np.testing.assert_array_equal(ab, -np.asarray(omul(e[b], e[a])))  # imaginary units anticommute
        assert np.sum(np.abs(ab)) == 1 and ab[0] == 0  # ... and multiply to ± another unit
    x, y = np.random.default_rng(0).normal(size=(2, 5, 4)).astype(np.float32)
    pad = lambda q: np.concatenate([q, np.zeros_like(q)], -1)
    np.testing.assert_allclose(omul(pad(x), pad(y)), pad(qmul(x, y)), atol=1e-5)


@SETTINGS
@given(octs, octs)
def test_norm_is_multiplicative(x, y):
    np.testing.assert_allclose(norm(omul(x, y)), norm(x) * norm(y), rtol=1e-5, atol=1e-4)


@SETTINGS
@given(octs, octs)
def test_alternative(x, y):
    s = norm(x) ** 2 * norm(y)
    assert_close(omul(x, omul(x, y)), omul(omul(x, x), y), s)
    assert_close(omul(omul(y, x), x), omul(y, omul(x, x)), s)


@SETTINGS
@given(octs, octs, octs)
def test_moufang(x, y, z):
    assert_close(omul(z, omul(x, omul(z, y))), omul(omul(omul(z, x), z), y), norm(z) ** 2 * norm(x) * norm(y))


@SETTINGS
@given(seeds)
def test_not_associative(seed):
    """A random triple's associator is far from zero, relative to the operands' norms."""
    x, y, z = np.random.default_rng(seed).normal(size=(3, 8)).astype(np.float32)
    assoc = omul(omul(x, y), z) - omul(x, omul(y, z))
    assert norm(assoc) > 1e-2 * norm(x) * norm(y) * norm(z)


@SETTINGS
@given(octs, octs)
def test_block_matrices_reproduce_the_product(x, y):
    prod = omul(x, y)
    assert_close(jnp.einsum("nab,nb->na", oleft(x), y), prod, norm(x) * norm(y))
    assert_close(jnp.einsum("nab,nb->na", oright(y), x), prod, norm(x) * norm(y))


@SETTINGS
@given(octs, octs)
def test_conjugation_reverses_products(x, y):
    assert_close(oconj(omul(x, y)), omul(oconj(y), oconj(x)), norm(x) * norm(y))


# Jitted once per file: each Hypothesis example then runs compiled code (eager per-op
# dispatch of the per-pair reference dominated the test time).
@jax.jit
def fast_core(q, k, v, pos):
    return rotor_attention(OCTONION, q, k, pre_rotate(OCTONION, k, v, 1e-6), pos, pos, 1e-6)


@functools.partial(jax.jit, static_argnames="bracket")
def reference_core(q, k, v, pos, bracket):
    return rotor_attention_reference(OCTONION, q, k, v, pos, pos, 1e-6, bracket=bracket)


@jax.jit
def scores_and_rotated_scores(q, k, u):
    rot = lambda x: OCTONION.mul(u, x.reshape(*x.shape[:-1], -1, OCTONION.n)).reshape(x.shape)
    return slot_scores(OCTONION, q, k), slot_scores(OCTONION, rot(q), rot(k))


def random_qkv(seed, b=2, t=5, h=4, g=2, k=16, v_scale=1.0):
    rng = np.random.default_rng(seed)
    q, kk_ = rng.normal(size=(b, t, h, k)), rng.normal(size=(b, t, g, k))
    v = rng.normal(size=(b, t, g, k)) * v_scale
    pos = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t))
    return q.astype(np.float32), kk_.astype(np.float32), v.astype(np.float32), pos


@SETTINGS
@given(seeds)
def test_scores_invariant_under_joint_left_multiplication(seed):
    q, k, _, _ = random_qkv(seed)
    u = np.random.default_rng(seed + 1).normal(size=8).astype(np.float32)
    u = u / np.linalg.norm(u)
    s, s_rot = scores_and_rotated_scores(q[:, :, :2], k, u)  # each query head vs each kv head
    np.testing.assert_allclose(s_rot, s, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(s, np.sum(q[:, :, :2] * k, -1) / 4.0, atol=1e-5, rtol=1e-5)


@SETTINGS
@given(seeds)
def test_fast_core_equals_per_pair_bracketing_and_the_bracketing_matters(seed):
    """fast == Σ_j p_ij q̂_i (conj(k̂_j) v_j) per pair, and != Σ_j p_ij (q̂_i conj(k̂_j)) v_j."""
    q, k, v, pos = random_qkv(seed)
    fast = fast_core(q, k, v, pos)
    split = reference_core(q, k, v, pos, bracket="split")
    np.testing.assert_allclose(fast, split, atol=2e-5, rtol=1e-4)
    relative = reference_core(q, k, v, pos, bracket="relative")
    gap = norm(np.asarray(relative - fast).reshape(-1, 8))
    assert gap.max() > 0.05  # outputs are O(1): non-associativity changes them visibly


@SETTINGS
@given(seeds, st.floats(1e-3, 1e3))
def test_output_norm_bounded_by_largest_value_norm(seed, v_scale):
    q, k, v, pos = random_qkv(seed, v_scale=v_scale)
    y = fast_core(q, k, v, pos)
    y_n = norm(np.asarray(y).reshape(2, 5, 2, 2, 2, 8))  # [B, T, G, R, slot]
    v_max = np.maximum.accumulate(norm(np.asarray(v).reshape(2, 5, 2, 2, 8)), axis=1)
    assert np.all(y_n <= v_max[:, :, :, None] * (1 + 1e-5))
    np.testing.assert_allclose(y_n[:, 0], np.broadcast_to(v_max[:, 0, :, None], y_n[:, 0].shape), rtol=1e-4)


def test_validate_rejects_head_dim_not_divisible_by_8():
    dims = lambda k: AttentionDims(d_model=4 * k, n_heads=4, n_kv_heads=2, head_dim=k, max_seq_len=8)
    OctonionConfig().validate(dims(16))
    with pytest.raises(MgrError, match="divisible by 8"):
        OctonionConfig().validate(dims(12))


def test_decoder_module_equals_independent_reference_and_keeps_the_norm_bound():
    check_module_against_independent_reference("octonion", 8)
