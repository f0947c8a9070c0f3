"""Iterated function systems: the geometry behind fractal attention's routing tree.

An IFS on m anchors c_0..c_{m-1} uses the contractions f_a(x) = s·x + (1 - s)·c_a (0 < s < 1).
Each f_a has the unique fixed point c_a, and the attractor is the set of limits of F_w(x) for
infinite addresses w, where F_{w1..wn} = f_{w1} ∘ … ∘ f_{wn} (the first symbol is the coarsest
level, as in fractal attention's router). F_w is a similarity with ratio s^n, so every point
with address prefix w lies in F_w(hull), a set of diameter s^n·diam(hull); with s < 1/2 and
simplex anchors, cylinders of distinct addresses are separated. Descending the tree is the
inverse: a point in the cylinder of w is F_w(y), and F_w^{-1}(x) = f_{wn}^{-1}(… f_{w1}^{-1}(x))
= (x − F_w(0))/s^n is where it sits at the child's scale; fractal attention's router routes that
point at every level. Pure jax functions (numpy inputs work too), used by fractal attention, its
tests and its demo. See markdown_documentation/fractal.md.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp


def simplex_anchors(m: int) -> jnp.ndarray:
    """m anchors at the unit vectors of R^m: every pair is sqrt(2) apart, the hull's diameter."""
    return jnp.eye(m, dtype=jnp.float32)


def ifs_map(x, a: int, s: float, anchors):
    """f_a(x) = s·x + (1 - s)·c_a, a contraction by s towards anchor a."""
    return s * x + (1.0 - s) * anchors[a]


def compose(address: Sequence[int], x, s: float, anchors):
    """F_w(x) = f_{w1}(f_{w2}(… f_{wn}(x))) by applying the maps one at a time (innermost first)."""
    for a in reversed(list(address)):
        x = ifs_map(x, a, s, anchors)
    return x


def address_point(address: Sequence[int], s: float, anchors, x0=None):
    """Closed form of F_w(x0): s^n·x0 + (1 - s)·Σ_l s^(l-1)·c_{w_l}; x0 defaults to the centroid."""
    x0 = jnp.mean(anchors, axis=0) if x0 is None else x0
    n = len(address)
    out = s ** n * x0
    for level, a in enumerate(address):
        out = out + (1.0 - s) * s ** level * anchors[a]
    return out


def inverse_map(x, a: int, s: float, anchors):
    """f_a^{-1}(x) = (x − (1 − s)·c_a)/s: zoom from the cylinder of symbol a back to full scale."""
    return (x - (1.0 - s) * anchors[a]) / s


def cylinder_corners(anchors, s: float, depth: int):
    """F_w(0) for every address w of length `depth`, as `[m^depth, dim]` rows in address order
    (first symbol most significant): F_{wa}(0) = F_w(0) + s^{|w|}·(1 − s)·c_a. A loop over
    levels (a small static depth), building all m^depth corners at once. numpy in, numpy out."""
    corners = 0.0 * anchors[:1]
    for level in range(depth):
        corners = (corners[:, None, :] + (1.0 - s) * s ** level * anchors[None]).reshape(-1, anchors.shape[-1])
    return corners


def diameter(points_Nxd) -> jnp.ndarray:
    """Largest pairwise distance of a finite point set."""
    d = points_Nxd[:, None] - points_Nxd[None]
    return jnp.max(jnp.sqrt(jnp.sum(d * d, axis=-1)))


def separation_bound(s: float, anchors, depth: int) -> float:
    """A lower bound on the distance between F_{u a}(hull) and F_{u b}(hull) for a != b, |u| = depth.

    |F_a(x) - F_b(y)| >= (1 - s)·|c_a - c_b| - s·|x - y| >= (1 - s)·δ - s·diam, with δ the
    smallest anchor gap; the common prefix u scales it by s^depth. Positive iff the first-level
    cylinders are disjoint (for simplex anchors: s < 1/2).
    """
    m = anchors.shape[0]
    d = anchors[:, None] - anchors[None]
    dist = jnp.sqrt(jnp.sum(d * d, axis=-1))
    gap = float(jnp.min(jnp.where(jnp.eye(m, dtype=bool), jnp.inf, dist)))
    return s ** depth * ((1.0 - s) * gap - s * float(diameter(anchors)))
