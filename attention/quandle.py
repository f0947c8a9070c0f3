"""Pure helpers for braid attention: the labelled Alexander quandle, its crossings, the braid
group action on tuples of strands, and the affine maps that crossings compose into.

An element (a "strand") is a pair (x, t): a colour x in a module M (here arrays) and a label t,
an invertible element acting elementwise on x (a per-channel diagonal, so all labels commute).
The operation

    (x, s) ◁ (y, u) = (u·x + (1 − u)·y, s)

is the Alexander quandle x ◁ y = t·x + (1 − t)·y with the over-strand's label as t. Because the
labels commute and a label never changes along its strand, this is still a quandle (idempotent,
right-invertible, self-distributive), so a key-dependent t keeps every braid law. At fixed t it
is the plain Alexander quandle; t = −1 would be Takasaki's 2y − x. See
markdown_documentation/braid.md.

Every helper works on jax or numpy arrays; labels must broadcast against colours.
"""

from __future__ import annotations


def alexander(x, y, t):
    """x ◁ y = t·x + (1 − t)·y: strand x passing under strand y whose crossing parameter is t."""
    return t * x + (1 - t) * y


def alexander_inverse(z, y, t):
    """The x with x ◁ y = z (right-invertibility; needs t invertible, i.e. t ≠ 0)."""
    return (z - (1 - t) * y) / t


def triangle(p, q):
    """Labelled quandle operation (x, s) ◁ (y, u) = (u·x + (1 − u)·y, s)."""
    (x, s), (y, u) = p, q
    return alexander(x, y, u), s


def triangle_inverse(p, q):
    """The inverse of `· ◁ q`: the strand that becomes p after passing under q."""
    (z, s), (y, u) = p, q
    return alexander_inverse(z, y, u), s


def crossing(p, q):
    """The set-theoretic Yang–Baxter map R(p, q) = (q, p ◁ q): p passes under q."""
    return q, triangle(p, q)


def crossing_inverse(a, b):
    """R^{-1}: from (a, b) = R(p, q) = (q, p ◁ q) recover q = a and p = b ◁^{-1} a."""
    return triangle_inverse(b, a), a


def sigma(strands, i, inverse=False):
    """Braid generator σ_i (0-based: strands i and i+1 cross) acting on a tuple of strands.

    σ_i: (…, p_i, p_{i+1}, …) ↦ (…, p_{i+1}, p_i ◁ p_{i+1}, …): the right strand moves left over
    the left one, which is recoloured by it. σ_i^{-1} undoes it.
    """
    out = list(strands)
    f = crossing_inverse if inverse else crossing
    out[i], out[i + 1] = f(out[i], out[i + 1])
    return tuple(out)


def braid_word(strands, word):
    """Apply a braid word, a sequence of generator indices (negative index −(i+1) = σ_i^{-1})."""
    for g in word:
        strands = sigma(strands, g) if g >= 0 else sigma(strands, -g - 1, inverse=True)
    return strands


def inverse_word(word):
    """The word of the inverse braid: the generators reversed, each inverted."""
    return [-g - 1 for g in reversed(word)]


def arrival_word(n: int):
    """The braid braid attention builds from n strands: strand j+1 arrives on the right and moves
    left over strands j, …, 1 (σ_j σ_{j−1} ⋯ σ_1, 0-based σ_{j-1} … σ_0), for j = 1..n−1. This
    is one word for the half twist Δ_n."""
    return [g for j in range(1, n) for g in range(j - 1, -1, -1)]


def affine_compose(first, second):
    """`second ∘ first` for elementwise affine maps (a, b): x ↦ a2·(a1·x + b1) + b2.

    Associative, so a run of crossings composes with `jax.lax.associative_scan`.
    """
    (a1, b1), (a2, b2) = first, second
    return a1 * a2, a2 * b1 + b2
