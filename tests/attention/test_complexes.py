"""attention/complexes.py: oriented simplicial complexes and their boundary operators.

The simplicial demo (mgr/demos/simplicial.py) uses them; the attention module does not. Checked
on random complexes in random orientations: d d = 0 (and the unsigned incidences do not cancel),
Euler-Poincare, Hodge's theorem, known homology, and the permutation sign.
"""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from attention.complexes import SimplicialComplex, permutation_sign


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
