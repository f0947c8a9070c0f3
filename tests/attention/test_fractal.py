"""Properties of fractal attention: the kernel is the same-path probability of an IFS router, the
attention weights are positive and normalised, the chunked fast path equals the prefix-sum form
(for any chunk and any prefill split), and the IFS geometry behind the addresses holds."""

import itertools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

from attention import ifs
from attention.base import AttentionDims
from attention.fractal import (FractalAttention, FractalConfig, _reference, chunked_linear_attention,
                               path_features, path_kernel_enumerated, prefix_sum_attention, route)
from core.errors import MgrError

SETTINGS = settings(max_examples=15, deadline=None)
EPS = 1e-6


def arr(shape, lo=-4.0, hi=4.0):
    return hnp.arrays(np.float32, shape, elements=st.floats(lo, hi, width=32))


@st.composite
def routed_pair(draw):
    """Router probabilities of a query and a key for a random tree shape (m branches, d levels)."""
    m, d = draw(st.integers(2, 4)), draw(st.integers(1, 3))
    tau = draw(st.floats(0.3, 3.0))
    return route(jnp.asarray(draw(arr((d, m)))), tau), route(jnp.asarray(draw(arr((d, m)))), tau)


@SETTINGS
@given(routed_pair())
def test_kernel_is_the_same_path_probability(pair):
    rq, rk = pair
    d, m = rq.shape
    phi_q, phi_k = path_features(rq), path_features(rk)
    assert phi_q.shape == (m ** d,)
    # φ is the distribution over addresses, indexed with the first level most significant.
    np.testing.assert_allclose(jnp.sum(phi_q), 1.0, rtol=1e-5)
    for w in itertools.islice(itertools.product(range(m), repeat=d), 7):
        index = sum(a * m ** (d - 1 - lvl) for lvl, a in enumerate(w))
        np.testing.assert_allclose(phi_q[index], np.prod([rq[lvl, a] for lvl, a in enumerate(w)]), rtol=1e-5)
    kappa = jnp.dot(phi_q, phi_k)
    np.testing.assert_allclose(kappa, path_kernel_enumerated(rq, rk), rtol=1e-5)
    np.testing.assert_allclose(kappa, jnp.prod(jnp.sum(rq * rk, axis=-1)), rtol=1e-5)
    assert 0.0 < float(kappa) <= 1.0


def features(logits_q, logits_k, d, m, tau=1.0):
    """φ of a [T, H=1] query stream and [T, G=1] key stream, shaped for the attention functions."""
    t = logits_q.shape[0]
    phi_q = path_features(route(jnp.asarray(logits_q).reshape(t, d, m), tau))
    phi_k = path_features(route(jnp.asarray(logits_k).reshape(t, d, m), tau))
    return phi_q.reshape(1, t, 1, 1, -1), phi_k.reshape(1, t, 1, -1)


def zero_state(f, k):
    return jnp.zeros((1, 1, f, k)), jnp.zeros((1, 1, f))


T, D_, M_ = 7, 2, 3  # tokens, levels, branches for the attention-level tests


@SETTINGS
@given(arr((T, D_ * M_)), arr((T, D_ * M_)), st.integers(1, 9))
def test_weights_are_positive_causal_and_rows_sum_to_one(lq, lk, chunk):
    """Feeding the identity as values (v_j = e_j) makes the output row i the weight row w_i·."""
    phi_q, phi_k = features(lq, lk, D_, M_)
    v = jnp.eye(T).reshape(1, T, 1, T)
    w, _ = chunked_linear_attention(phi_q, phi_k, v, zero_state(M_ ** D_, T), EPS, chunk)
    w = np.asarray(w[0, :, 0, 0])
    kappa = np.asarray(phi_q[0, :, 0, 0] @ phi_k[0, :, 0].T)
    expect = np.tril(kappa) / (np.sum(np.tril(kappa), axis=1, keepdims=True) + EPS)
    np.testing.assert_allclose(w, expect, rtol=1e-4, atol=1e-6)
    assert np.all(w[np.tril_indices(T)] > 0)  # every visible key gets positive weight
    np.testing.assert_array_equal(np.triu(w, 1), 0.0)  # and no future key gets any
    # Rows sum to Σκ/(Σκ + ε): one, up to the ε bias, which is at most ε/Σκ.
    mass = np.sum(np.tril(kappa), axis=1)
    assert np.all(np.abs(w.sum(axis=1) - 1.0) <= EPS / mass + 1e-5)


@SETTINGS
@given(arr((T, D_ * M_)), arr((T, D_ * M_)), arr((T, 3)), st.integers(1, 9), st.integers(1, T - 1))
def test_chunked_with_state_equals_prefix_sums(lq, lk, v, chunk, split):
    """Any chunk size, and a prefill split whose state seeds the rest (the decode cache), give the
    prefix-sum form y_i = φ(q_i)·S_i / (φ(q_i)·z_i + ε)."""
    phi_q, phi_k = features(lq, lk, D_, M_)
    v = jnp.asarray(v).reshape(1, T, 1, 3)
    st0 = zero_state(M_ ** D_, 3)
    want, want_state = prefix_sum_attention(phi_q, phi_k, v, st0, EPS)
    y1, mid = chunked_linear_attention(phi_q[:, :split], phi_k[:, :split], v[:, :split], st0, EPS, chunk)
    y2, end = chunked_linear_attention(phi_q[:, split:], phi_k[:, split:], v[:, split:], mid, EPS, chunk)
    np.testing.assert_allclose(jnp.concatenate([y1, y2], axis=1), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(end[0], want_state[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(end[1], want_state[1], rtol=1e-5, atol=1e-6)


@SETTINGS
@given(arr((T, D_ * M_)), arr((T, D_ * M_)), arr((T, 3)))
def test_hot_router_is_the_causal_mean(lq, lk, v):
    """At a high temperature every address is equally likely, κ = 1/m^d for all pairs, and the
    output is the running mean of the values."""
    v = jnp.asarray(v).reshape(1, T, 1, 3)
    mean = jnp.cumsum(v, axis=1) / jnp.arange(1, T + 1)[None, :, None, None]
    phi_q, phi_k = features(lq, lk, D_, M_, tau=1e5)
    y, _ = chunked_linear_attention(phi_q, phi_k, v, zero_state(M_ ** D_, 3), EPS, 4)
    np.testing.assert_allclose(y[:, :, :, 0], mean, atol=1e-3)


def test_sharp_router_attends_to_the_same_address_only():
    """With near-one-hot routing, keys on another address get (almost) no weight."""
    lq = np.full((3, D_ * M_), -30.0, np.float32)
    lk = np.full((3, D_ * M_), -30.0, np.float32)
    addr = [(0, 1), (2, 0), (0, 1)]  # keys 0 and 2 share query 2's address, key 1 does not
    for t, w in enumerate(addr):
        for lvl, a in enumerate(w):
            lq[t, lvl * M_ + a] = lk[t, lvl * M_ + a] = 30.0
    phi_q, phi_k = features(lq, lk, D_, M_)
    v = jnp.asarray([[10.0], [-5.0], [2.0]]).reshape(1, 3, 1, 1)
    y, _ = chunked_linear_attention(phi_q, phi_k, v, zero_state(M_ ** D_, 1), EPS, 2)
    np.testing.assert_allclose(y[0, 2, 0, 0, 0], 6.0, atol=1e-4)  # mean of 10 and 2, not of all three


def test_module_with_padded_chunks_matches_path_enumeration():
    """The module's fast path with several (padded) chunks equals the enumerating reference, on
    values and gradients; the contract suite only sees one chunk at its short lengths."""
    dims = AttentionDims(d_model=16, n_heads=2, n_kv_heads=1, head_dim=8, max_seq_len=16)
    m = FractalAttention(dims, FractalConfig(chunk=3, branches=3, levels=2, temperature=0.5), rngs=nnx.Rngs(2))
    x = jax.random.normal(jax.random.key(3), (2, 7, 16))
    pos = jnp.broadcast_to(jnp.arange(7, dtype=jnp.int32), (2, 7))
    np.testing.assert_allclose(m(x, pos)[0], _reference(m, x, pos), atol=2e-5, rtol=2e-4)
    g_fast = nnx.grad(lambda mod, x: jnp.sum(jnp.sin(mod(x, pos)[0])), argnums=(0, 1))(m, x)
    g_ref = nnx.grad(lambda mod, x: jnp.sum(jnp.sin(_reference(mod, x, pos))), argnums=(0, 1))(m, x)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-3)


def test_config_rejects_impossible_shapes():
    dims = AttentionDims(d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, max_seq_len=16)
    FractalConfig().validate(dims)
    for bad in (dict(branches=1), dict(levels=0), dict(branches=8, levels=5), dict(temperature=0.0),
                dict(chunk=0)):
        with pytest.raises(MgrError):
            FractalConfig(**bad).validate(dims)


# --- the IFS geometry behind the addresses -------------------------------------------------

S_ = st.floats(0.05, 0.45)


def hull_point(m, weights):
    w = np.abs(np.asarray(weights, np.float32)) + 1e-3
    return jnp.asarray(w / w.sum()) @ ifs.simplex_anchors(m)


@SETTINGS
@given(st.integers(2, 5), S_, arr((5,), -3, 3), st.integers(1, 12))
def test_each_map_contracts_to_its_anchor(m, s, x, n):
    anchors = ifs.simplex_anchors(m)
    x = jnp.asarray(x[:m])
    for a in range(m):
        np.testing.assert_allclose(ifs.ifs_map(anchors[a], a, s, anchors), anchors[a], atol=1e-6)
        xn = x
        for _ in range(n):
            xn = ifs.ifs_map(xn, a, s, anchors)
        np.testing.assert_allclose(jnp.linalg.norm(xn - anchors[a]), s ** n * jnp.linalg.norm(x - anchors[a]),
                                   rtol=1e-4, atol=1e-6)


@SETTINGS
@given(st.integers(2, 4), S_, st.lists(st.integers(0, 3), min_size=1, max_size=5), arr((4,)), arr((4,)))
def test_address_cylinders_shrink_by_s_per_level(m, s, address, wx, wy):
    anchors = ifs.simplex_anchors(m)
    address = [a % m for a in address]
    x, y = hull_point(m, wx[:m]), hull_point(m, wy[:m])
    fx, fy = ifs.compose(address, x, s, anchors), ifs.compose(address, y, s, anchors)
    np.testing.assert_allclose(fx, ifs.address_point(address, s, anchors, x), atol=1e-6)
    n = len(address)
    # F_w is a similarity of ratio s^n, so the cylinder of prefix w has diameter s^n·diam(hull).
    np.testing.assert_allclose(jnp.linalg.norm(fx - fy), s ** n * jnp.linalg.norm(x - y), rtol=1e-3, atol=1e-6)
    assert float(jnp.linalg.norm(fx - fy)) <= s ** n * float(ifs.diameter(anchors)) + 1e-6


@SETTINGS
@given(st.integers(2, 4), S_, st.lists(st.integers(0, 3), min_size=0, max_size=3), st.integers(0, 3),
       st.integers(1, 3), st.lists(st.integers(0, 3), min_size=2, max_size=2), arr((4,)), arr((4,)))
def test_distinct_addresses_separate(m, s, prefix, a, shift, tails, wx, wy):
    """Addresses that first differ at depth j stay >= s^j·((1-s)·gap - s·diam) apart (s < 1/2)."""
    anchors = ifs.simplex_anchors(m)
    prefix = [p % m for p in prefix]
    a, b = a % m, (a + shift) % m
    if a == b:
        b = (a + 1) % m
    u = prefix + [a] + [t % m for t in tails[:1]]
    w = prefix + [b] + [t % m for t in tails[1:]]
    x, y = hull_point(m, wx[:m]), hull_point(m, wy[:m])
    bound = ifs.separation_bound(s, anchors, len(prefix))
    assert bound > 0
    assert float(jnp.linalg.norm(ifs.compose(u, x, s, anchors) - ifs.compose(w, y, s, anchors))) >= bound - 1e-6


@SETTINGS
@given(routed_pair(), S_)
def test_soft_address_is_the_path_mixture(pair, s):
    """The router's expected attractor point equals the explicit mixture over all m^d addresses."""
    r, _ = pair
    d, m = r.shape
    anchors = ifs.simplex_anchors(m)
    probs = path_features(r)
    mix = sum(probs[i] * ifs.address_point(w, s, anchors)
              for i, w in enumerate(itertools.product(range(m), repeat=d)))
    np.testing.assert_allclose(ifs.expected_point(r, s, anchors), mix, atol=1e-5)
    one_hot = jax.nn.one_hot(jnp.argmax(r, axis=-1), m)
    np.testing.assert_allclose(ifs.expected_point(one_hot, s, anchors),
                               ifs.address_point([int(i) for i in jnp.argmax(r, axis=-1)], s, anchors), atol=1e-6)
