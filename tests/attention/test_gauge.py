"""Properties of gauge attention: the so(4) exponential is exact and lands in SO(4), the scanned
transports equal the ordered matrix products and stay orthogonal at T = 256, scores are gauge
invariant and outputs gauge covariant, constant links give relative-position (RoPE-like) scores,
and the holonomy diagnostic vanishes exactly for commuting links."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from flax import nnx
from hypothesis import given, settings, strategies as st

from attention.base import AttentionDims
from attention.gauge import (GaugeAttention, GaugeConfig, gauge_scores, loop_holonomy, pull_back, push_forward,
                             transports)
from attention.lie import (holonomy, pair_compose, pair_inverse, pair_matrix, prefix_transports, qexp, so4_exp,
                           so4_hat)
from attention.standard import grouped_softmax_attention
from core.errors import MgrError

SETTINGS = settings(max_examples=15, deadline=None)
T, N = 6, 2  # tokens, so(4) blocks (head dim 8)


def arr(shape, lo=-3.0, hi=3.0):
    return hnp.arrays(np.float32, shape, elements=st.floats(lo, hi, width=32))


# Jitted once: eager associative scans dispatch (and compile) dozens of small ops per call.
jit_transport_matrices = jax.jit(lambda links, renormalize=True: pair_matrix(transports(links, renormalize=renormalize)),
                                 static_argnames="renormalize")


def orth_err(m):
    return float(jnp.max(jnp.abs(jnp.swapaxes(m, -1, -2) @ m - jnp.eye(m.shape[-1]))))


def block_diag(m_xNx4x4):
    n = m_xNx4x4.shape[-3]
    return jnp.stack([jnp.concatenate([m_xNx4x4[..., i, :, :] if i == j else jnp.zeros_like(m_xNx4x4[..., 0, :, :])
                                       for j in range(n)], axis=-1) for i in range(n)], axis=-3).reshape(
        *m_xNx4x4.shape[:-3], 4 * n, 4 * n)


@SETTINGS
@given(arr((3,)), arr((3,)), st.sampled_from([1e-4, 1e-2, 1.0]))
def test_exponential_is_exact_and_special_orthogonal(p, r, scale):
    """exp(L(p) + R(r)) = L(e^p) R(e^r), checked against scipy's float64 Padé expm (jax's float32
    expm is itself off by ~5e-5 at angles near 6), small angles included."""
    p, r = jnp.asarray(p) * scale, jnp.asarray(r) * scale
    a = so4_hat(p, r)
    np.testing.assert_allclose(a, -a.T, atol=0)  # a generator of so(4)
    m = pair_matrix(so4_exp(p, r))
    np.testing.assert_allclose(m, scipy.linalg.expm(np.asarray(a, np.float64)), atol=3e-6)
    assert orth_err(m) < 2e-6
    np.testing.assert_allclose(jnp.linalg.det(m), 1.0, atol=1e-5)


def test_generators_span_so4():
    """(p, r) -> L(p) + R(r) is a bijection R^6 -> so(4): the six images are independent."""
    basis = jnp.stack([so4_hat(e[:3], e[3:]).reshape(-1) for e in jnp.eye(6)])
    assert int(jnp.linalg.matrix_rank(basis)) == 6
    # and the two factors do not commute among themselves: the links are non-abelian
    pi, pj = jnp.asarray([1.0, 0, 0]), jnp.asarray([0, 1.0, 0])
    comm = so4_hat(pi, 0 * pi) @ so4_hat(pj, 0 * pj) - so4_hat(pj, 0 * pj) @ so4_hat(pi, 0 * pi)
    assert float(jnp.max(jnp.abs(comm))) > 1.0


def links_from(gen):
    g = jnp.asarray(gen)
    return qexp(g[..., :3]), qexp(g[..., 3:])


@SETTINGS
@given(arr((1, T, 1, N, 6)))
def test_scanned_transports_are_the_ordered_products(gen):
    links = links_from(gen)
    u = pair_matrix(links)[0, :, 0]  # [T, N, 4, 4]
    want, acc = [], None
    for i in range(T):
        acc = u[i] if acc is None else u[i] @ acc  # T_i = U_i ... U_0
        want.append(acc)
    got = jit_transport_matrices(links)[0, :, 0]
    np.testing.assert_allclose(got, jnp.stack(want), atol=2e-5)
    assert orth_err(got) < 2e-6
    np.testing.assert_allclose(jnp.linalg.det(got), 1.0, atol=1e-5)
    # Starting from a cached transport (the decode path) composes on the right.
    prev = (links[0][:, 2], links[1][:, 2])
    np.testing.assert_allclose(pair_matrix(transports(links, prev))[0, :, 0], jnp.stack(want) @ u[2], atol=2e-5)


def test_orthogonality_at_t256():
    """Long f32 products drift; renormalised transports stay orthogonal to ~1e-6 (measured at T=256:
    ~7e-6 raw, ~5e-7 renormalised, with angles of order 1)."""
    gen = jax.random.normal(jax.random.key(0), (1, 256, 4, 8, 6))
    links = links_from(gen)
    raw = orth_err(jit_transport_matrices(links, renormalize=False))
    fixed = orth_err(jit_transport_matrices(links))
    assert raw < 5e-5 and fixed < 2e-6 and fixed < raw


def attend(q, k, v, t_pair):
    """The fast path's core on one batch row: pull back, softmax attention, push forward."""
    pos = jnp.arange(q.shape[1], dtype=jnp.int32)[None]
    y0 = grouped_softmax_attention(pull_back(t_pair, q), pull_back(t_pair, k), pull_back(t_pair, v), pos, pos)
    return push_forward(t_pair, y0)


def rotate_blocks(pair, x):
    """Apply per-token rotations `[1, T, 1, N, 4]` pairs to `[1, T, 1, 4N]` vectors."""
    return push_forward(pair, x)


@SETTINGS
@given(arr((1, T, 1, N, 6)), arr((1, T, 1, N, 6)), arr((1, 1, 1, N, 6)), arr((3, 1, T, 1, 4 * N)))
def test_gauge_invariance(gen, gauge, base, qkv):
    """q_i → g_i q_i, k_i → g_i k_i, v_i → g_i v_i, U_i → g_i U_i g_{i-1}⁻¹ (so T_i → g_i T_i g_{-1}⁻¹)
    leaves every score unchanged and rotates every output by its own g_i."""
    q, k, v = map(jnp.asarray, qkv)
    links, g = links_from(gen), links_from(gauge)
    g_base = links_from(base)
    g_before = tuple(jnp.concatenate([gb, gi[:, :-1]], axis=1) for gb, gi in zip(g_base, g))
    new_links = pair_compose(g, pair_compose(links, pair_inverse(g_before)))
    t_old, t_new = transports(links), transports(new_links)
    q2, k2, v2 = (rotate_blocks(g, x) for x in (q, k, v))
    dense = lambda pair: block_diag(pair_matrix(pair))[0, :, 0]  # noqa: E731
    s_old = gauge_scores(q[0, :, 0], k[0, :, 0], dense(t_old))
    s_new = gauge_scores(q2[0, :, 0], k2[0, :, 0], dense(t_new))
    np.testing.assert_allclose(s_new, s_old, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(attend(q2, k2, v2, t_new), rotate_blocks(g, attend(q, k, v, t_old)), atol=2e-4)


@SETTINGS
@given(arr((N, 6)), arr((2, T + 1, 4 * N)))
def test_constant_links_give_relative_scores(gen, qk):
    """With U_i = U for all i, T_i T_jᵀ = U^{i-j}: a score depends on (q_i, k_j, i - j) only, so
    prepending a token shifts the score matrix by one (RoPE is the commuting special case)."""
    q, k = map(jnp.asarray, qk)
    links = links_from(jnp.broadcast_to(jnp.asarray(gen), (1, T + 1, 1, N, 6)))
    dense = block_diag(pair_matrix(transports(links)))[0, :, 0]  # [T+1, K, K]
    s_long = gauge_scores(q, k, dense)
    s_short = gauge_scores(q[1:], k[1:], dense[:-1])
    np.testing.assert_allclose(s_long[1:, 1:], s_short, atol=2e-4, rtol=1e-4)


@SETTINGS
@given(arr((2, 6)), arr((2,)))
def test_holonomy_measures_non_commutativity(gen, axial):
    gen = jnp.asarray(gen)
    prev, nxt = links_from(gen[0]), links_from(gen[1])
    # The closed form equals ‖U_i U_{i-1} U_i⁻¹ U_{i-1}⁻¹ − I‖_F computed on explicit matrices.
    np.testing.assert_allclose(loop_holonomy(prev, nxt), holonomy(prev, nxt), atol=1e-4)
    # Links restricted to one axis per factor (the abelian mode) commute: zero holonomy.
    ax = jnp.asarray(axial)
    u1 = so4_exp(jnp.asarray([ax[0], 0.0, 0.0]), jnp.asarray([ax[1], 0.0, 0.0]))
    u2 = so4_exp(jnp.asarray([ax[1], 0.0, 0.0]), jnp.asarray([-ax[0], 0.0, 0.0]))
    assert float(loop_holonomy(u1, u2)) < 1e-5


def test_module_sows_curvature_and_abelian_mode_is_flat():
    dims = AttentionDims(d_model=16, n_heads=2, n_kv_heads=1, head_dim=8, max_seq_len=8)
    x = jax.random.normal(jax.random.key(0), (1, 5, 16))
    pos = jnp.arange(5, dtype=jnp.int32)[None]
    for abelian in (False, True):
        m = GaugeAttention(dims, GaugeConfig(abelian=abelian, generator_init=1.0), rngs=nnx.Rngs(0))
        nnx.jit(lambda mod, x: mod(x, pos))(m, x)
        hol = m.holonomy[...]
        assert hol.shape == (1, 5, 1)
        assert (float(jnp.max(hol)) < 1e-5) if abelian else (float(jnp.min(hol[:, 1:])) > 1e-2)


def test_config_rejects_head_dim_not_multiple_of_4():
    with pytest.raises(MgrError):
        GaugeConfig().validate(AttentionDims(d_model=12, n_heads=2, n_kv_heads=1, head_dim=6, max_seq_len=8))
    with pytest.raises(MgrError):
        GaugeConfig(generator_init=-1.0).validate(AttentionDims(d_model=16, n_heads=2, n_kv_heads=1,
                                                                head_dim=8, max_seq_len=8))


def test_prefix_transports_order():
    """T_1 = U_1 U_0, not U_0 U_1 (the order matters for non-commuting links)."""
    links = links_from(jnp.asarray([[1.0, 0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0, 0]]).reshape(1, 2, 1, 1, 6))
    u = pair_matrix(links)[0, :, 0, 0]
    t1 = pair_matrix(prefix_transports(links))[0, 1, 0, 0]
    np.testing.assert_allclose(t1, u[1] @ u[0], atol=1e-5)
    assert float(jnp.max(jnp.abs(t1 - u[0] @ u[1]))) > 1e-2
