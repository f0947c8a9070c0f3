"""Exact and near-duplicate removal.

Exact: a set of 16-byte blake2b digests of the cleaned text. Near: datasketch MinHash over word
5-gram shingles, indexed in a MinHashLSH with the given Jaccard threshold; a document is dropped
when the index already holds a candidate. State grows with the number of KEPT documents (16 bytes
per hash; about num_perm*8 bytes per signature plus LSH buckets), never with their text.
"""

from __future__ import annotations

import hashlib


class Dedup:
    def __init__(self, near_threshold: float | None, num_perm: int = 64, shingle: int = 5):
        self.seen: set[bytes] = set()
        self.near_threshold = near_threshold
        self.num_perm, self.shingle = num_perm, shingle
        self.lsh = None
        self._n = 0
        if near_threshold is not None:
            from datasketch import MinHashLSH

            self.lsh = MinHashLSH(threshold=near_threshold, num_perm=num_perm)

    def _minhash(self, text: str):
        import numpy as np
        from datasketch import MinHash

        words = text.split()
        k = self.shingle
        grams = {" ".join(words[i:i + k]).encode() for i in range(max(1, len(words) - k + 1))}
        m = MinHash(num_perm=self.num_perm, seed=1)
        m.update_batch(list(grams))
        m.hashvalues = m.hashvalues.astype(np.uint64)
        return m

    def check(self, text: str) -> str | None:
        """Return None when `text` is new (and remember it), else 'exact' or 'near'."""
        h = hashlib.blake2b(text.encode(), digest_size=16).digest()
        if h in self.seen:
            return "exact"
        if self.lsh is not None:
            m = self._minhash(text)
            if self.lsh.query(m):
                return "near"
            self.lsh.insert(str(self._n), m)
        self.seen.add(h)
        self._n += 1
        return None
