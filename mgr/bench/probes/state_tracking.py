"""The S3 / S5 word problem (Merrill, Petty & Sabharwal 2024, arXiv 2404.08819).

The group's elements are the permutations of range(k) (k = 3 or 5) in lexicographic order
(itertools.permutations); element i is token i+1 (0 is never used). A sequence is `seq_len`
uniformly drawn elements g_1 .. g_T; the target at every position t is the prefix product
p_t = g_1 ∘ g_2 ∘ … ∘ g_t, with (a ∘ b)[i] = a[b[i]]. Every position is scored (no warm-up): the
first ones are easy, the later ones need the whole history, so accuracy falls with depth into
the sequence for a mixer that cannot track state.

Why: S3 and S5 are non-commutative (S5 is not even solvable), so the running product depends on
the order of the inputs; a commutative or diagonal-state mixer cannot represent it, while
non-commutative algebras (quaternion, octonion, braid, gauge) have an order-sensitive state.
The prefix products are a log-depth Hillis-Steele scan over the multiplication table.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from mgr.bench.probes.base import ProbeData, ProbeSet, TaskConfig, held_out, require, streams
from mgr.bench.probes.registry import register

DEGREE = {"S3": 3, "S5": 5}


@dataclass(frozen=True, kw_only=True)
class StateTrackingConfig(TaskConfig):
    group: str = "S3"
    seq_len: int = 16  # short by default so softmax can learn it; longer is harder for TC0 mixers

    def validate(self) -> None:
        super().validate()
        require(self.group in DEGREE, f"state_tracking group must be one of {', '.join(DEGREE)}, got {self.group!r}")
        require(self.seq_len >= 2, "state_tracking seq_len must be at least 2")


def multiplication_table(k: int) -> np.ndarray:
    """`table[a, b]` = index of a ∘ b, element indices in lexicographic order."""
    perms = np.array(list(itertools.permutations(range(k))))
    composed = np.take_along_axis(perms[:, None, :].repeat(len(perms), 1), perms[None, :, :].repeat(len(perms), 0), 2)
    code = k ** np.arange(k)
    index = np.zeros(k ** k, np.int64)
    index[perms @ code] = np.arange(len(perms))
    return index[composed @ code]


def sample(rng: np.random.Generator, n: int, seq_len: int, table: np.ndarray) -> ProbeSet:
    g = rng.integers(0, len(table), (n, seq_len))
    prefix, shift = g.copy(), 1
    while shift < seq_len:  # log2(seq_len) rounds, each over all positions at once
        prefix[:, shift:] = table[prefix[:, :-shift], prefix[:, shift:]]
        shift *= 2
    return ProbeSet((g + 1).astype(np.int32), (prefix + 1).astype(np.int32))


@register("state_tracking", config_cls=StateTrackingConfig,
          claim="Non-commutative algebras (quaternion, octonion, braid, gauge) track the running product of "
                "permutations that commutative mixers cannot (Merrill et al.).",
          description="A sequence of S3 (or S5) permutations; every position is scored with the composition "
                      "of the prefix.")
def build(cfg: StateTrackingConfig, seed: int) -> ProbeData:
    rng = streams(seed, "state_tracking")
    table = multiplication_table(DEGREE[cfg.group])
    train = sample(rng["train"], cfg.n_train, cfg.seq_len, table)
    tune, test = held_out([train], sample(rng["tune"], cfg.n_test, cfg.seq_len, table),
                          {"test": sample(rng["test"], cfg.n_test, cfg.seq_len, table)})
    return ProbeData(vocab_size=len(table) + 1, train=(train,), tune=tune, test=test, headline=("test",))
