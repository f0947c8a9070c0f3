"""Pair-dependent answers: f(a, b) for a fixed random latin square f (a probe for 2-simplicial
attention, Clift et al. 2019, Roy et al. 2025).

Tokens: a-symbols 1 .. S, b-symbols S+1 .. 2S, filler 2S+1 .. 2S+F, the query Q = 2S+F+1 and
answers 2S+F+2 .. 3S+F+1. A sequence is seq_len/segment_len segments; each segment holds one
a-symbol and one b-symbol at two random positions (either order) among random filler in its
first segment_len-2 positions, then Q, then the answer token of f(a, b) (teacher forced).
Scored: each Q, with the answer of the a and b of its own segment (the latest of each).

f is a latin square (every row and every column a permutation of the S answers), drawn once
per seed from the `table` stream and shared by all splits: a alone, or b alone, says nothing
about the answer (chance 1/S); only the pair does. Why: 2-simplicial (trilinear) attention
scores a query against pairs of keys at once, which is the structure this answer has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mgr.bench.probes.base import IGNORE, ProbeData, ProbeSet, TaskConfig, held_out, require, streams
from mgr.bench.probes.registry import register


@dataclass(frozen=True, kw_only=True)
class TriplesConfig(TaskConfig):
    num_symbols: int = 8   # S: the latin square is S x S
    num_filler: int = 8
    seq_len: int = 32
    segment_len: int = 8   # one query per segment

    def validate(self) -> None:
        super().validate()
        require(self.num_symbols >= 2, "triples num_symbols must be at least 2")
        require(self.num_filler >= 1, "triples num_filler must be positive")
        require(self.segment_len >= 4, "triples segment_len must be at least 4 (a, b, query, answer)")
        require(self.seq_len >= self.segment_len and self.seq_len % self.segment_len == 0,
                f"triples seq_len {self.seq_len} must be a multiple of segment_len {self.segment_len}")

    @property
    def query(self) -> int:
        return 2 * self.num_symbols + self.num_filler + 1


def latin_square(rng: np.random.Generator, s: int) -> np.ndarray:
    """A random latin square: the cyclic one with rows, columns and symbols permuted."""
    rows, cols, symbols = rng.permutation(s), rng.permutation(s), rng.permutation(s)
    return symbols[(rows[:, None] + cols[None, :]) % s]


def sample(rng: np.random.Generator, n: int, cfg: TriplesConfig, square: np.ndarray) -> ProbeSet:
    s, seg = cfg.num_symbols, cfg.segment_len
    m, slots = cfg.seq_len // seg, seg - 2
    a = rng.integers(0, s, (n, m))
    b = rng.integers(0, s, (n, m))
    where = rng.random((n, m, slots)).argsort(axis=2)[:, :, :2]  # distinct positions of a and b
    body = rng.integers(2 * s + 1, 2 * s + cfg.num_filler + 1, (n, m, slots))
    np.put_along_axis(body, where[:, :, :1], (a + 1)[:, :, None], axis=2)
    np.put_along_axis(body, where[:, :, 1:], (b + s + 1)[:, :, None], axis=2)
    answer = cfg.query + 1 + square[a, b]
    segs = np.concatenate([body, np.full((n, m, 1), cfg.query), answer[:, :, None]], axis=2)
    targets = np.full((n, m, seg), IGNORE)
    targets[:, :, seg - 2] = answer
    return ProbeSet(segs.reshape(n, -1).astype(np.int32), targets.reshape(n, -1).astype(np.int32))


@register("triples", config_cls=TriplesConfig,
          claim="2-simplicial (trilinear) attention answers questions whose answer depends jointly on a pair "
                "of earlier tokens and on neither alone.",
          description="Segments of filler holding one a- and one b-symbol, then a query scored with f(a, b) "
                      "for a fixed random latin square f.")
def build(cfg: TriplesConfig, seed: int) -> ProbeData:
    rng = streams(seed, "triples")
    square = latin_square(rng["table"], cfg.num_symbols)
    train = sample(rng["train"], cfg.n_train, cfg, square)
    tune, test = held_out([train], sample(rng["tune"], cfg.n_test, cfg, square),
                          {"test": sample(rng["test"], cfg.n_test, cfg, square)})
    return ProbeData(vocab_size=cfg.query + 1 + cfg.num_symbols, train=(train,), tune=tune, test=test,
                     headline=("test",))
