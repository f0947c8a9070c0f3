"""Oriented simplicial complexes and their boundary operators (numpy, for the simplicial demo only:
SimplicialAttention does not call anything here, so none of this is in the decoder's path).

A k-simplex is a tuple of k+1 distinct vertex ids; its orientation is the vertex order up to
even permutations. The boundary of [v0..vk] is sum_i (-1)^i [v0..^vi..vk], each face rewritten in
the orientation the complex stores for it (times the sign of the permutation between the two
orders). The identity d_{k-1} d_k = 0 is what makes homology (Betti numbers) and the Hodge
Laplacians L_k = d_k^T d_k + d_{k+1} d_{k+1}^T well defined; tests/attention/test_complexes.py
checks it, Euler-Poincare and Hodge's theorem on random complexes with random orientations.
See markdown_documentation/simplicial.md.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


def permutation_sign(order: tuple[int, ...], reference: tuple[int, ...]) -> int:
    """+1 if `order` is an even permutation of `reference`, -1 if odd (same vertex set)."""
    if sorted(order) != sorted(reference):
        raise ValueError(f"{order} is not a permutation of {reference}")
    where = {v: i for i, v in enumerate(reference)}
    perm = [where[v] for v in order]
    sign, seen = 1, [False] * len(perm)
    for i in range(len(perm)):  # each cycle of length L contributes (-1)^(L-1)
        j, length = i, 0
        while not seen[j]:
            seen[j], j, length = True, perm[j], length + 1
        if length and length % 2 == 0:
            sign = -sign
    return sign


@dataclass(frozen=True)
class SimplicialComplex:
    """`simplices[k]` lists the k-simplices, each in its stored orientation, in a fixed order."""

    simplices: tuple[tuple[tuple[int, ...], ...], ...]

    @classmethod
    def from_simplices(cls, given) -> "SimplicialComplex":
        """The closure of `given` under taking faces.

        A given simplex keeps the orientation it was given in; a face that was not given
        inherits the vertex order of the first simplex it was cut from.
        """
        stored: dict[frozenset, tuple[int, ...]] = {}
        for s in given:
            s = tuple(int(v) for v in s)
            if len(set(s)) != len(s) or not s:
                raise ValueError(f"a simplex needs distinct vertices, got {s}")
            stored.setdefault(frozenset(s), s)
        for s in list(stored.values()):
            for r in range(1, len(s)):
                for face in itertools.combinations(s, r):
                    stored.setdefault(frozenset(face), face)
        top = max(len(s) for s in stored.values()) if stored else 0
        by_dim = [sorted((s for s in stored.values() if len(s) == k + 1), key=sorted)
                  for k in range(top)]
        return cls(tuple(tuple(level) for level in by_dim))

    @property
    def dim(self) -> int:
        return len(self.simplices) - 1

    def count(self, k: int) -> int:
        return len(self.simplices[k]) if 0 <= k <= self.dim else 0

    def boundary(self, k: int) -> np.ndarray:
        """d_k as an integer matrix [n_{k-1}, n_k]: k-chains to (k-1)-chains (d_0 maps to 0)."""
        rows = self.simplices[k - 1] if 1 <= k <= self.dim + 1 else ()
        cols = self.simplices[k] if 0 <= k <= self.dim else ()
        d = np.zeros((len(rows), len(cols)), np.int64)
        if k < 1:
            return d
        index = {frozenset(r): (i, r) for i, r in enumerate(rows)}
        for j, s in enumerate(cols):
            for i in range(len(s)):
                face = s[:i] + s[i + 1:]
                row, stored = index[frozenset(face)]
                d[row, j] += (-1) ** i * permutation_sign(face, stored)
        return d

    def betti_numbers(self) -> tuple[int, ...]:
        """beta_k = dim ker d_k - rank d_{k+1}, real coefficients (SVD ranks: small complexes)."""
        def rank(m):
            return int(np.linalg.matrix_rank(m.astype(float))) if m.size else 0
        return tuple(self.count(k) - rank(self.boundary(k)) - rank(self.boundary(k + 1))
                     for k in range(self.dim + 1))

    def euler_characteristic(self) -> int:
        return sum((-1) ** k * self.count(k) for k in range(self.dim + 1))

    def hodge_laplacian(self, k: int) -> np.ndarray:
        """L_k = d_k^T d_k + d_{k+1} d_{k+1}^T; its kernel has dimension beta_k (Hodge)."""
        down, up = self.boundary(k), self.boundary(k + 1)
        return down.T @ down + up @ up.T
