"""Exact and near-duplicate removal, in memory that grows by a few dozen bytes per kept document.

Exact: a 64-bit blake2b digest of the cleaned text (two different documents share one with
probability about n^2 / 2^65: 3e-8 for a million documents). Near: datasketch's MinHash (affine32
scheme, seed 1) over word 5-gram shingles and datasketch's MinHashLSH banding for the threshold
(b bands of r rows chosen to balance false positives and negatives); a document is a near
duplicate when one of its b band keys is already held, i.e. it shares a whole band with a kept
document (the LSH candidate rule, no further Jaccard check). datasketch finds no banding of two
or more bands at 64 permutations above a threshold of about 0.95, so higher thresholds use 128,
256 or 512 permutations (0.99: 3 bands of 170) and above about 0.99 one band of 512 (a candidate
then shares all 512 values: probability J^512).

Storage is ours, not MinHashLSH's: its dict storage keeps bytes objects, sets and a key list per
document, measured at about 2 kB per document (64 permutations, threshold 0.85: 4 bands of 15
rows), 2 GB per million documents, so band keys are kept as 64-bit hashes in a sorted numpy array
plus a small insert buffer: 8 bytes per band and document (40 bytes with the exact digest).
Word shingles are hashed with crc32 per word, combined per 5-gram in numpy, so no
shingle string is built.
"""

from __future__ import annotations

import hashlib
import zlib

import numpy as np

# Odd 64-bit multipliers combining a shingle's word hashes (a polynomial hash mod 2^64).
_MULT = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5,
                  0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x85EBCA77C2B2AE63, 0xD6E8FEB86659FD93],
                 dtype=np.uint64)


class HashSet64:
    """A growing set of uint64 keys: a sorted array plus a Python-set buffer merged into it when
    it passes an eighth of the array (timsort merges the two sorted runs in linear time)."""

    def __init__(self, min_buffer: int = 1 << 16):
        self.main = np.empty(0, dtype=np.uint64)
        self.buf: set[int] = set()
        self.min_buffer = min_buffer

    def __len__(self) -> int:
        return len(self.main) + len(self.buf)

    def nbytes(self) -> int:
        return self.main.nbytes + len(self.buf) * 64  # a buffered int: its object and set slot

    def _in_main(self, keys: list[int]) -> np.ndarray:
        q = np.array(keys, dtype=np.uint64)
        if not len(self.main):
            return np.zeros(len(q), dtype=bool)
        i = np.searchsorted(self.main, q)
        return self.main[np.minimum(i, len(self.main) - 1)] == q

    def contains_any(self, keys: list[int]) -> bool:
        return any(k in self.buf for k in keys) or bool(self._in_main(keys).any())

    def add(self, keys: list[int]) -> None:
        held = self._in_main(keys)
        self.buf.update(k for k, h in zip(keys, held) if not h)
        if len(self.buf) > max(self.min_buffer, len(self.main) >> 3):
            merged = np.concatenate([self.main, np.sort(np.fromiter(self.buf, np.uint64, len(self.buf)))])
            merged.sort(kind="stable")
            self.main, self.buf = merged, set()


def _identity(x):
    return x


class Dedup:
    def __init__(self, near_threshold: float | None, num_perm: int = 64, shingle: int = 5):
        self.exact = HashSet64()
        self.near_threshold = near_threshold
        self.shingle = shingle
        self.bands = None
        if near_threshold is not None:
            from datasketch import MinHash, MinHashLSH

            while True:
                try:  # [(start, end)] of each band, from datasketch's optimum
                    self.bands = MinHashLSH(threshold=near_threshold, num_perm=num_perm).hashranges
                    break
                except ValueError:  # the optimum has under 2 bands: more permutations, finer bands
                    if num_perm >= 512:
                        self.bands = [(0, num_perm)]  # datasketch refuses b = 1 even as params
                        break
                    num_perm *= 2
            self._m = MinHash(num_perm=num_perm, seed=1, hashfunc=_identity)
            self.near = HashSet64()

    def state_bytes(self) -> int:
        return self.exact.nbytes() + (self.near.nbytes() if self.bands is not None else 0)

    def shingles(self, text: str) -> list[int]:
        """32-bit hashes of the distinct word 5-grams (the whole text when it has fewer words)."""
        w = np.fromiter(map(zlib.crc32, text.encode().split()), dtype=np.uint64)
        k = min(self.shingle, max(1, len(w)))
        if len(w) == 0:
            return [0]
        n = len(w) - k + 1
        h = np.zeros(n, dtype=np.uint64)
        for j in range(k):
            h += w[j:j + n] * _MULT[j]
        return np.unique(h >> np.uint64(32)).tolist()

    def band_keys(self, text: str) -> list[int]:
        m = self._m
        m.clear()
        m.update_batch(self.shingles(text))
        hv = m.hashvalues
        return [int.from_bytes(hashlib.blake2b(bytes([i]) + hv[s:e].tobytes(), digest_size=8).digest(), "little")
                for i, (s, e) in enumerate(self.bands)]

    def check(self, text: str) -> str | None:
        """Return None when `text` is new (and remember it), else 'exact' or 'near'."""
        h = [int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")]
        if self.exact.contains_any(h):
            return "exact"
        if self.bands is not None:
            keys = self.band_keys(text)
            if self.near.contains_any(keys):
                return "near"
            self.near.add(keys)
        self.exact.add(h)
        return None
