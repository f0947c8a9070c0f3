"""The windowed 2-simplicial kernel that SimplicialAttention calls (`simplicial_attention`, with
`_window_attention` on the cached path), on small random arrays with static windows.

Fast path == the dense O(T^3) form for random T, windows (binding or not) and query blocks that do
not divide T; tied streams are symmetric (swapping the keys alone is not); k' = v' = 1 gives
windowed pairwise attention, and with w1 >= T exactly standard attention; nothing quadratic in T
is built. The module around it is tested in test_simplicial.py.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from attention import simplicial as S
from attention.standard import grouped_softmax_attention

# Jitted with static windows: one compile per (shape, windows), reused through the persistent
# compilation cache; eager dispatch of every small op is what would make these tests slow.
simplicial_attention = jax.jit(S.simplicial_attention, static_argnums=(6, 7, 8))
dense_simplicial_attention = jax.jit(S.dense_simplicial_attention, static_argnums=(6, 7))


def streams(seed, b, t, h, k, n=5):
    keys = jax.random.split(jax.random.key(seed), n)
    return [jax.random.normal(kk, (b, t, h, k), jnp.float32) for kk in keys]


def positions(b, t, start):
    return jnp.broadcast_to(jnp.arange(start, start + t, dtype=jnp.int32), (b, t))


# Few distinct shapes (each costs a compile); the random content is what varies.
shapes = dict(seed=st.integers(0, 10_000), t=st.sampled_from([1, 4, 7]), h=st.just(2),
              k=st.just(4), start=st.integers(0, 3))


@settings(max_examples=8, deadline=None)
@given(w1=st.integers(1, 5), w2=st.integers(1, 5), block=st.sampled_from([3, 32]), **shapes)
def test_windowed_equals_dense(seed, t, h, k, start, w1, w2, block):
    """The windowed kernel, whole or scanned over query blocks (3 does not divide 4 or 7)."""
    q, k1, v1, k2, v2 = streams(seed, 2, t, h, k)
    pos = positions(2, t, start)
    fast = simplicial_attention(q, k1, v1, k2, v2, pos, w1, w2, block)
    dense = dense_simplicial_attention(q, k1, v1, k2, v2, pos, w1, w2)
    np.testing.assert_allclose(fast, dense, atol=2e-5, rtol=2e-4)


@settings(max_examples=10, deadline=None)
@given(w=st.integers(1, 5), **shapes)
def test_tied_streams_are_symmetric(seed, t, h, k, start, w):
    """Swapping (k, v) with (k', v') transposes the (j, k) score grid: same output."""
    q, k1, v1, k2, v2 = streams(seed, 2, t, h, k)
    pos = positions(2, t, start)
    y = simplicial_attention(q, k1, v1, k2, v2, pos, w, w)
    y_swapped = simplicial_attention(q, k2, v2, k1, v1, pos, w, w)
    np.testing.assert_allclose(y_swapped, y, atol=1e-5, rtol=1e-4)
    if t >= 2 and w >= 2:  # swapping the keys alone is not a symmetry: the test has teeth
        y_half = simplicial_attention(q, k2, v1, k1, v2, pos, w, w)
        assert float(jnp.max(jnp.abs(y_half - y))) > 1e-4


def windowed_pairwise(q, k, v, pos, w):
    """Numpy pairwise softmax attention over keys in (i - w, i]."""
    q, k, v, pos = map(np.asarray, (q, k, v, pos))
    s = np.einsum("bthc,bshc->bhts", q, k) / np.sqrt(q.shape[-1])
    ok = (pos[:, None, :] <= pos[:, :, None]) & (pos[:, None, :] > pos[:, :, None] - w)
    s = np.where(ok[:, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhts,bshc->bthc", p, v)


@settings(max_examples=6, deadline=None)
@given(w1=st.integers(1, 5), w2=st.integers(1, 5), **shapes)
def test_constant_second_stream_is_pairwise_attention(seed, t, h, k, start, w1, w2):
    """k' = v' = 1: scores are q.k/sqrt(K), the (j, k) softmax marginalises over k (whatever
    w2 is), and the output is windowed pairwise softmax attention; with w1 >= T it is exactly
    standard attention."""
    q, k1, v1 = streams(seed, 2, t, h, k, n=3)
    ones = jnp.ones_like(k1)
    pos = positions(2, t, start)
    y = simplicial_attention(q, k1, v1, ones, ones, pos, w1, w2)
    np.testing.assert_allclose(y, windowed_pairwise(q, k1, v1, pos, w1), atol=2e-5, rtol=2e-4)
    y_full = simplicial_attention(q, k1, v1, ones, ones, pos, t + w1, w2)
    np.testing.assert_allclose(y_full, grouped_softmax_attention(q, k1, v1, pos, pos),
                               atol=2e-5, rtol=2e-4)


def test_fast_path_has_no_quadratic_tensor():
    """The windowed kernel (scan body included) never builds a tensor with two axes that grow
    with the sequence: every shape has at most one axis >= the query block."""
    t = 97
    args = streams(0, 1, t, 2, 4) + [positions(1, t, 0)]
    text = str(jax.make_jaxpr(lambda *a: S.simplicial_attention(*a, 5, 3))(*args))
    shapes_seen = [[int(n) for n in m.split(",") if n] for m in re.findall(r"\[([\d,]*)\]", text)]
    assert any(t in s for s in shapes_seen) and any(32 in s for s in shapes_seen)
    assert all(sum(n >= S._QUERY_BLOCK for n in s) <= 1 for s in shapes_seen)

