"""The IFS geometry behind fractal attention's routing tree (attention/ifs.py): each map fixes its
anchor and contracts by s, F_w is a similarity of ratio s^|w| so cylinders shrink, distinct
addresses separate, and the descent the module uses (inverse maps, cylinder corners) inverts
the maps. The module itself is tested in test_fractal.py."""

import itertools

import hypothesis.extra.numpy as hnp
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

from attention import ifs

SETTINGS = settings(max_examples=15, deadline=None)
S_ = st.floats(0.05, 0.45)


def arr(shape, lo=-4.0, hi=4.0):
    return hnp.arrays(np.float32, shape, elements=st.floats(lo, hi, width=32))


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
@given(st.integers(2, 3), st.floats(0.1, 0.9), st.integers(0, 3), arr((4, 4)), arr((4,)))
def test_the_descent_inverts_the_maps(m, s, depth, anchors, x):
    """inverse_map undoes ifs_map; the corners F_w(0) of `cylinder_corners` are the closed form
    in address order; and zooming through the prefix's inverse maps one at a time is
    F_w^{-1}(x) = (x − F_w(0))/s^|w|, the identity the module's fast path rests on."""
    anchors, x = np.asarray(anchors[:m], np.float64), np.asarray(x, np.float64)  # float64 numpy throughout
    corners = ifs.cylinder_corners(anchors, s, depth)
    assert corners.shape == (m ** depth, 4)
    for i, w in enumerate(itertools.product(range(m), repeat=depth)):
        np.testing.assert_allclose(ifs.inverse_map(ifs.ifs_map(x, w[0] if w else 0, s, anchors), w[0] if w else 0,
                                                   s, anchors), x, atol=1e-9)
        np.testing.assert_allclose(corners[i], ifs.address_point(w, s, anchors, np.zeros(4)), atol=1e-9)
        zoomed = x
        for a in w:
            zoomed = ifs.inverse_map(zoomed, a, s, anchors)
        np.testing.assert_allclose(zoomed, (x - corners[i]) / s ** depth, rtol=1e-9, atol=1e-9)
