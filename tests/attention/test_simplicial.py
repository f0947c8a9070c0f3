"""Properties of 2-simplicial attention and of the boundary-operator helper.

The kernel tests call the pure functions on small random arrays: the windowed fast path against
the dense O(T^3) form, symmetry under swapping tied streams, and the exact reduction to pairwise
softmax attention when the second stream is constant ones. The complex tests check d d = 0,
Euler-Poincare and Hodge's theorem on random complexes with random orientations.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from attention import simplicial as S
from attention.base import AttentionDims
from attention.complexes import SimplicialComplex, permutation_sign
from attention.simplicial import SimplicialAttention, SimplicialConfig, _reference
from attention.standard import grouped_softmax_attention
from core.errors import MgrError

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


@settings(max_examples=12, deadline=None)
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


@settings(max_examples=10, deadline=None)
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


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), shift=st.integers(1, 5))
def test_shifting_positions_leaves_kernel_unchanged(seed, shift):
    """Windows and causality are defined by relative positions only."""
    q, k1, v1, k2, v2 = streams(seed, 1, 6, 1, 4)
    y0 = simplicial_attention(q, k1, v1, k2, v2, positions(1, 6, 0), 3, 2)
    y1 = simplicial_attention(q, k1, v1, k2, v2, positions(1, 6, shift), 3, 2)
    np.testing.assert_allclose(y1, y0, atol=1e-6)


def test_scanned_kernel_gradients_match_dense():
    """Gradients through the scanned, checkpointed kernel (block 3, T = 7) match the dense form."""
    args = streams(3, 2, 7, 2, 4)
    pos = positions(2, 7, 1)
    w = jax.random.normal(jax.random.key(9), args[0].shape)

    def grads(fn):
        return jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) * w), argnums=(0, 1, 2, 3, 4)))(*args)

    fast = grads(lambda *a: S.simplicial_attention(*a, pos, 4, 3, 3))
    dense = grads(lambda *a: S.dense_simplicial_attention(*a, pos, 4, 3))
    for a, b in zip(fast, dense):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-3)


def test_fast_path_has_no_quadratic_tensor():
    """The windowed kernel (scan body included) never builds a tensor with two axes that grow
    with the sequence: every shape has at most one axis >= the query block."""
    t = 97
    args = streams(0, 1, t, 2, 4) + [positions(1, t, 0)]
    text = str(jax.make_jaxpr(lambda *a: S.simplicial_attention(*a, 5, 3))(*args))
    shapes_seen = [[int(n) for n in m.split(",") if n] for m in re.findall(r"\[([\d,]*)\]", text)]
    assert any(t in s for s in shapes_seen) and any(32 in s for s in shapes_seen)
    assert all(sum(n >= S._QUERY_BLOCK for n in s) <= 1 for s in shapes_seen)


DIMS = AttentionDims(d_model=16, n_heads=4, n_kv_heads=2, head_dim=4, max_seq_len=8)


@pytest.mark.parametrize("n_simp", [1, 3, 4])
def test_module_head_splits_match_reference_and_cache(n_simp):
    """Head splits that cut a kv group in two (R = 2) still match the reference and decoding."""
    cfg = SimplicialConfig(n_simplicial_heads=n_simp, window_1=3, window_2=2)
    m = SimplicialAttention(DIMS, cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 6, 16))
    pos = positions(2, 6, 0)
    call = nnx.jit(lambda mod, x, p, c: mod(x, p, c))
    y, _ = call(m, x, pos, None)
    np.testing.assert_allclose(y, nnx.jit(_reference)(m, x, pos), atol=2e-5, rtol=2e-4)
    cache = m.init_cache(2)
    y0, cache = call(m, x[:, :2], pos[:, :2], cache)
    outs = [y0]
    for i in range(2, 6):
        yi, cache = call(m, x[:, i:i + 1], pos[:, i:i + 1], cache)
        outs.append(yi)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), y, atol=1e-5, rtol=1e-4)


def test_config_rejects_impossible_shapes():
    for bad in (dict(n_simplicial_heads=0), dict(n_simplicial_heads=5), dict(window_1=0),
                dict(window_2=-1)):
        with pytest.raises(MgrError):
            SimplicialConfig(**bad).validate(DIMS)
    SimplicialConfig().validate(DIMS)


# ---------------------------------------------------------------- boundary operators

@st.composite
def complexes(draw):
    """Random triangles and tetrahedra (and a few edges) on up to 7 vertices, each simplex in a
    random vertex order, i.e. a random orientation."""
    n = draw(st.integers(3, 7))
    sizes = draw(st.lists(st.sampled_from([2, 3, 3, 4]), min_size=1, max_size=6))
    out = []
    for size in sizes:
        size = min(size, n)
        verts = draw(st.lists(st.integers(0, n - 1), min_size=size, max_size=size, unique=True))
        out.append(tuple(draw(st.permutations(verts))))
    return SimplicialComplex.from_simplices(out)


@settings(max_examples=40, deadline=None)
@given(cx=complexes())
def test_boundary_of_boundary_is_zero(cx):
    for k in range(1, cx.dim + 1):
        d_k, d_k1 = cx.boundary(k), cx.boundary(k + 1)
        assert d_k.shape == (cx.count(k - 1), cx.count(k))
        assert not np.any(d_k @ d_k1)
        if cx.count(k + 1):  # unsigned incidences do not cancel: signs matter
            assert np.any(np.abs(d_k) @ np.abs(d_k1))


@settings(max_examples=40, deadline=None)
@given(cx=complexes())
def test_euler_poincare_and_hodge(cx):
    betti = cx.betti_numbers()
    assert sum((-1) ** k * b for k, b in enumerate(betti)) == cx.euler_characteristic()
    for k, b in enumerate(betti):
        lap = cx.hodge_laplacian(k)
        nullity = lap.shape[0] - (np.linalg.matrix_rank(lap.astype(float)) if lap.size else 0)
        assert nullity == b


def test_known_homology():
    tet = [(0, 1, 2), (0, 3, 1), (1, 3, 2), (0, 2, 3)]
    assert SimplicialComplex.from_simplices(tet).betti_numbers() == (1, 0, 1)  # a 2-sphere
    assert SimplicialComplex.from_simplices([(0, 1), (1, 2), (2, 0)]).betti_numbers() == (1, 1)
    assert SimplicialComplex.from_simplices([(2, 0, 1)]).betti_numbers() == (1, 0, 0)
    two_circles = [(0, 1), (1, 2), (2, 0), (3, 4), (4, 5), (5, 3)]
    assert SimplicialComplex.from_simplices(two_circles).betti_numbers() == (2, 2)


@settings(max_examples=30, deadline=None)
@given(perm=st.permutations(list(range(5))))
def test_permutation_sign_is_determinant(perm):
    assert permutation_sign(tuple(perm), tuple(range(5))) == round(np.linalg.det(np.eye(5)[perm]))
