"""The algebra under braid attention (attention/quandle.py): the (labelled) Alexander quandle
axioms, the Yang–Baxter equation and braid relations of its crossings, invertibility, and why
the module reads its strands' own colours (an under-passing strand cannot see their crossings).
The module itself is tested in test_braid.py."""

import hypothesis.extra.numpy as hnp
import numpy as np
from hypothesis import given, settings, strategies as st

from attention.quandle import (alexander, alexander_inverse, arrival_word, braid_word, crossing, crossing_inverse,
                               inverse_word, triangle)

SETTINGS = settings(max_examples=25, deadline=None)
SHAPE = (3, 2)  # a colour: 3 "key channels" x 2 "value channels"; labels act on the rows


def colour():
    return hnp.arrays(np.float64, SHAPE, elements=st.floats(-3, 3))


def label(lo=0.05, hi=1.0):
    return hnp.arrays(np.float64, (SHAPE[0], 1), elements=st.floats(lo, hi))


def nonzero_t():
    """Any invertible t, including negative ones (t = −1 is Takasaki's quandle)."""
    return st.one_of(st.floats(-2.0, -0.1), st.floats(0.1, 2.0))


def strand():
    return st.tuples(colour(), label())


def close(a, b, tol=1e-9):
    np.testing.assert_allclose(a, b, atol=tol, rtol=tol)


def strands_close(p, q, tol=1e-9):
    assert len(p) == len(q)
    for (x, s), (y, u) in zip(p, q):
        close(x, y, tol)
        close(s, u, tol)


@SETTINGS
@given(colour(), colour(), colour(), nonzero_t())
def test_alexander_quandle_axioms_fixed_t(x, y, z, t):
    close(alexander(x, x, t), x)  # idempotence
    close(alexander_inverse(alexander(x, y, t), y, t), x)  # right-invertibility
    close(alexander(alexander_inverse(x, y, t), y, t), x)
    # self-distributivity (x◁y)◁z = (x◁z)◁(y◁z)
    close(alexander(alexander(x, y, t), z, t), alexander(alexander(x, z, t), alexander(y, z, t), t))


@SETTINGS
@given(strand(), strand(), strand())
def test_labelled_quandle_is_self_distributive_with_key_dependent_t(p, q, r):
    """Different t per strand (as in the model) still gives a quandle: labels ride their strand."""
    lhs = triangle(triangle(p, q), r)
    rhs = triangle(triangle(p, r), triangle(q, r))
    strands_close([lhs], [rhs])
    strands_close([triangle(p, p)], [p])


def test_self_distributivity_needs_the_label_to_stay_on_its_strand():
    """Control: if a crossing handed the over-strand's t to the result, the law would fail, so the
    test above can fail."""
    def bad(p, q):
        (x, _), (y, u) = p, q
        return alexander(x, y, u), u

    p, q, r = [(np.full(SHAPE, v), np.full((SHAPE[0], 1), t)) for v, t in ((1.0, 0.3), (-2.0, 0.5), (0.5, 0.9))]
    lhs, rhs = bad(bad(p, q), r), bad(bad(p, r), bad(q, r))
    assert np.max(np.abs(lhs[0] - rhs[0])) > 1e-3


@SETTINGS
@given(strand(), strand(), strand())
def test_yang_baxter_equation(p, q, r):
    """R12 R23 R12 = R23 R12 R23 for R(p, q) = (q, p ◁ q)."""
    def r12(s):
        return (*crossing(s[0], s[1]), s[2])

    def r23(s):
        return (s[0], *crossing(s[1], s[2]))

    s = (p, q, r)
    strands_close(r12(r23(r12(s))), r23(r12(r23(s))))


@SETTINGS
@given(st.lists(strand(), min_size=5, max_size=5))
def test_braid_relations_and_inverses(strands):
    s = tuple(strands)
    for i in range(3):  # σ_i σ_{i+1} σ_i = σ_{i+1} σ_i σ_{i+1} (words act left to right)
        strands_close(braid_word(s, [i, i + 1, i]), braid_word(s, [i + 1, i, i + 1]))
    for i, j in ((0, 2), (0, 3), (1, 3)):  # far generators commute
        strands_close(braid_word(s, [i, j]), braid_word(s, [j, i]))
    for i in range(4):  # every crossing is invertible: σ_i σ_i^{-1} = σ_i^{-1} σ_i = id
        strands_close(braid_word(s, [i, -(i + 1)]), s, tol=1e-7)
        strands_close(braid_word(s, [-(i + 1), i]), s, tol=1e-7)
    p, q = crossing_inverse(*crossing(s[0], s[1]))
    strands_close((p, q), s[:2], tol=1e-7)
    word = arrival_word(5) + [3, 3, 0, 2]  # Δ_5 then a tail: its reverse is another braid
    strands_close(braid_word(braid_word(s, word), inverse_word(word)), s, tol=1e-6)


@SETTINGS
@given(strand(), st.lists(strand(), min_size=2, max_size=5))
def test_an_under_passing_strand_cannot_see_the_braid_above_it(x0, strands):
    """Reidemeister III: a strand passing under the whole braid ends with the same colour whether
    or not the strands above it crossed each other (here by the module's arrival braid). So a
    readout by such a strand would ignore every key-key crossing; the module reads the strands'
    own colours instead (their mean moves: the control below)."""
    s, n = tuple(strands), len(strands)
    under = list(range(n))  # x0 starts on the left and passes under every strand
    close(braid_word((x0, *braid_word(s, arrival_word(n))), under)[-1][0], braid_word((x0, *s), under)[-1][0],
          tol=1e-8)


def test_the_strands_own_colours_do_see_the_crossings():
    s = tuple((np.full(SHAPE, v), np.full((SHAPE[0], 1), t)) for v, t in ((1.0, 0.3), (-2.0, 0.5), (0.5, 0.9)))
    braided = braid_word(s, arrival_word(3))
    assert np.abs(np.mean([c for c, _ in braided], 0) - np.mean([c for c, _ in s], 0)).max() > 0.1
