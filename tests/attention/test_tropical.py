"""Properties of tropical attention's mathematics: semiring laws, tropical linearity, Lipschitz
bounds, Maslov convergence, and the fast paths against each other. The registered module itself
(brute-force reference, sown margins, the certificates they give) is checked in
test_tropical_module.py."""

import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

from attention.base import AttentionDims, mask_value
from attention.tropical import (TropicalAttention, TropicalConfig, _chunked_attention,
                                _dequantised_attention, _reference, tropical_reduce)

B, G, R, T, K = 1, 1, 2, 5, 4
POS = jnp.arange(T, dtype=jnp.int32)[None]
ALLOWED = POS[:, None, :] <= POS[:, :, None]
SETTINGS = settings(max_examples=20, deadline=None)


def arr(shape, lo=-3.0, hi=3.0):
    return hnp.arrays(np.float32, shape, elements=st.floats(lo, hi, width=32))


def ints(shape):
    return hnp.arrays(np.float32, shape, elements=st.integers(-20, 20).map(float))


def tmatmul(a, b, beta):
    """Tropical matrix product (A ⊗ B)_ik = ⊕_j (A_ij + B_jk)."""
    return tropical_reduce(a[:, :, None] + b[None], 1, beta)


def tplus(a, b, beta):
    return tropical_reduce(jnp.stack([a, b]), 0, beta)


@SETTINGS
@given(ints((3, 4)), ints((4, 2)), ints((2, 3)), ints((4, 2)))
def test_max_plus_semiring_laws_exact(a, b, c, b2):
    a, b, c, b2 = map(jnp.asarray, (a, b, c, b2))
    # Integer-valued floats make + and max exact, so the laws must hold bit for bit.
    np.testing.assert_array_equal(tmatmul(tmatmul(a, b, None), c, None),
                                  tmatmul(a, tmatmul(b, c, None), None))
    np.testing.assert_array_equal(tmatmul(a, tplus(b, b2, None), None),
                                  tplus(tmatmul(a, b, None), tmatmul(a, b2, None), None))
    np.testing.assert_array_equal(tplus(b, b2, None), tplus(b2, b, None))
    eye = jnp.where(jnp.eye(4, dtype=bool), 0.0, mask_value(jnp.float32))  # the tropical identity
    np.testing.assert_array_equal(tmatmul(a, eye, None), a)
    np.testing.assert_array_equal(tplus(a, jnp.full_like(a, mask_value(jnp.float32)), None), a)


@SETTINGS
@given(arr((3, 4)), arr((4, 2)), arr((2, 3)), arr((4, 2)), st.floats(0.5, 8.0))
def test_log_sum_exp_semiring_laws(a, b, c, b2, beta):
    """At finite β the same laws hold (it is isomorphic to (R+, +, x) via e^{βx})."""
    a, b, c, b2 = map(jnp.asarray, (a, b, c, b2))
    np.testing.assert_allclose(tmatmul(tmatmul(a, b, beta), c, beta),
                               tmatmul(a, tmatmul(b, c, beta), beta), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(tmatmul(a, tplus(b, b2, beta), beta),
                               tplus(tmatmul(a, b, beta), tmatmul(a, b2, beta), beta), atol=1e-5, rtol=1e-5)


def heads(q, k, v):
    return (jnp.asarray(q).reshape(B, G, R, T, K), jnp.asarray(k).reshape(B, G, T, K),
            jnp.asarray(v).reshape(B, G, T, K))


def y_exact(q, k, v, block=2):
    return _chunked_attention(*heads(q, k, v), POS, POS, None, block, True)


QKV = (arr((R * T, K)), arr((T, K)), arr((T, K)))


@SETTINGS
@given(*QKV, arr((T, K)), st.floats(-5.0, 5.0))
def test_exact_aggregation_is_tropically_linear_in_v(q, k, v, v2, c):
    y1, y2 = y_exact(q, k, v)[0], y_exact(q, k, v2)[0]
    # Rounding is monotone, so max commutes with the fast path exactly.
    np.testing.assert_array_equal(y_exact(q, k, np.maximum(v, v2))[0], jnp.maximum(y1, y2))
    np.testing.assert_allclose(y_exact(q, k, v + np.float32(c))[0], y1 + c, atol=1e-5)


@SETTINGS
@given(*QKV, arr((T, K), -1.0, 1.0), st.sampled_from([None, 0.7, 3.0]))
def test_output_is_1_lipschitz_in_v(q, k, v, dv, beta):
    fn = ((lambda *a: y_exact(*a)[0]) if beta is None else
          (lambda q, k, v: _dequantised_attention(*heads(q, k, v), ALLOWED, beta)[0]))
    gap = float(jnp.max(jnp.abs(fn(q, k, v + dv) - fn(q, k, v))))
    assert gap <= float(np.max(np.abs(dv))) + 1e-5


@SETTINGS
@given(arr((R * T, K)), arr((T, K)), arr((R * T, K), -1.0, 1.0), arr((T, K), -1.0, 1.0), st.floats(0.5, 8.0))
def test_scores_are_1_lipschitz_in_q_and_k(q, k, dq, dk, beta):
    for b in (None, beta):
        s = tropical_reduce(q[:, None] + k[None], -1, b)
        assert float(jnp.max(jnp.abs(tropical_reduce((q + dq)[:, None] + k[None], -1, b) - s))) \
            <= np.max(np.abs(dq)) + 1e-5
        assert float(jnp.max(jnp.abs(tropical_reduce(q[:, None] + (k + dk)[None], -1, b) - s))) \
            <= np.max(np.abs(dk)) + 1e-5


@SETTINGS
@given(*QKV, st.floats(0.3, 8.0))
def test_dequantised_path_equals_log_sum_exp_chunks(q, k, v, beta):
    """The matmul form of the Maslov isomorphism computes the same scores and outputs as
    direct logsumexp reductions."""
    qh, kh, vh = heads(q, k, v)
    y_mm, s_mm = _dequantised_attention(qh, kh, vh, ALLOWED, beta)
    y_ch, _ = _chunked_attention(qh, kh, vh, POS, POS, beta, 2, False)
    np.testing.assert_allclose(y_mm, y_ch, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(s_mm, tropical_reduce(qh[..., None, :] + kh[:, :, None, None], -1, beta),
                               atol=2e-5, rtol=1e-4)


@SETTINGS
@given(*QKV, st.floats(1.0, 1e4))
def test_finite_beta_converges_to_max_plus(q, k, v, beta):
    y_inf = y_exact(q, k, v)[0]
    y_b = _chunked_attention(*heads(q, k, v), POS, POS, beta, 2, False)[0]
    # Each ⊕ over n terms overshoots max by at most log(n)/β: log K (score) + log T (keys).
    bound = (math.log(K) + math.log(T)) / beta
    assert float(jnp.max(jnp.abs(y_b - y_inf))) <= bound + 1e-4
    if beta > 1e3:
        np.testing.assert_allclose(y_b, y_inf, atol=1e-2)


DIMS = AttentionDims(d_model=16, n_heads=4, n_kv_heads=2, head_dim=4, max_seq_len=12)


@pytest.mark.parametrize("cfg", [TropicalConfig(beta=None, block=3), TropicalConfig(beta=50.0, block=4)])
def test_chunked_module_matches_reference_and_cache(cfg):
    """The non-default (chunked) configurations: fast == reference, cache == full forward."""
    m = TropicalAttention(DIMS, cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 7, 16))
    pos = jnp.broadcast_to(jnp.arange(7, dtype=jnp.int32), (2, 7))
    full = m(x, pos)[0]
    np.testing.assert_allclose(full, _reference(m, x, pos), atol=2e-5, rtol=2e-4)
    cache = m.init_cache(2)
    y0, cache = m(x[:, :4], pos[:, :4], cache)
    y1, cache = m(x[:, 4:], pos[:, 4:], cache)
    np.testing.assert_allclose(jnp.concatenate([y0, y1], 1), full, atol=1e-5, rtol=1e-4)
    route = m.route_margin[...]  # sown by the last call: [B, T_chunk, H]
    assert route.shape == (2, 3, 4) and bool(jnp.all(route >= 0))


def test_config_validation():
    from core.errors import MgrError

    for bad in (dict(beta=0.0), dict(beta=-1.0), dict(block=1)):
        with pytest.raises(MgrError):
            TropicalConfig(**bad).validate(DIMS)
