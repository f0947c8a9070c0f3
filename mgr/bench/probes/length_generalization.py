"""Length generalisation of associative recall (the Chomsky-hierarchy protocol, Delétang et al.
2023: train on short inputs, score on longer ones).

A sequence of length L = 4P: P key-value pairs (distinct keys from 1 .. num_keys, values from
num_keys+1 .. num_keys+num_values), then all P keys queried in a random order, each followed by
its value (teacher forced). Scored: each query, with its key's value. The rule (recall the value
that followed this key) is the same at every length, and softmax attention learns it at short
lengths. Training mixes P = 2 .. n/4 (lengths 8 .. n, padded to n); test slices `len_{n}`
(reference, in distribution), `len_{2n}` and `len_{4n}` (the headline) hold more pairs and
longer distances than anything seen in training.

Why: Hashemi et al. (2025) claim max-plus (tropical) attention generalises out of the training
length where softmax's averaging dilutes; the longer slices test exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mgr.bench.probes.base import (IGNORE, ProbeData, ProbeSet, TaskConfig, held_out, pad_stack, require,
                                   split_counts, streams)
from mgr.bench.probes.registry import register

MIN_PAIRS = 2
TEST_SCALES = (1, 2, 4)  # test lengths as multiples of the longest training length n


@dataclass(frozen=True, kw_only=True)
class LengthGeneralizationConfig(TaskConfig):
    n: int = 32             # longest training length; tests at n, 2n, 4n
    num_keys: int = 32      # must cover the 4n/4 = n distinct keys of the longest slice
    num_values: int = 32

    def validate(self) -> None:
        super().validate()
        require(self.n % 4 == 0 and self.n >= 4 * MIN_PAIRS,
                f"length_generalization n must be a multiple of 4 and at least {4 * MIN_PAIRS}, got {self.n}")
        require(self.num_keys >= self.n, f"length_generalization num_keys {self.num_keys} is fewer than the "
                                         f"{self.n} distinct keys a length-{4 * self.n} sequence holds")
        require(self.num_values >= 2, "length_generalization num_values must be at least 2")


def sample(rng: np.random.Generator, n: int, pairs: int, cfg: LengthGeneralizationConfig) -> ProbeSet:
    rows = np.arange(n)[:, None]
    keys = rng.random((n, cfg.num_keys)).argsort(axis=1)[:, :pairs] + 1
    values = rng.integers(cfg.num_keys + 1, cfg.num_keys + cfg.num_values + 1, (n, pairs))
    order = rng.random((n, pairs)).argsort(axis=1)
    tokens = np.zeros((n, 4 * pairs), np.int32)
    targets = np.full((n, 4 * pairs), IGNORE, np.int32)
    tokens[:, 0:2 * pairs:2], tokens[:, 1:2 * pairs:2] = keys, values
    tokens[:, 2 * pairs::2] = keys[rows, order]
    tokens[:, 2 * pairs + 1::2] = values[rows, order]
    targets[:, 2 * pairs::2] = values[rows, order]
    return ProbeSet(tokens, targets)


@register("length_generalization", config_cls=LengthGeneralizationConfig,
          claim="Max-plus (tropical) attention keeps a length-independent recall rule at 2x and 4x the "
                "training length (Hashemi et al.; Chomsky-hierarchy protocol).",
          description="Key-value pairs then every key queried, trained at lengths up to n and scored at n, "
                      "2n and 4n.")
def build(cfg: LengthGeneralizationConfig, seed: int) -> ProbeData:
    rng = streams(seed, "length_generalization")
    train_pairs = range(MIN_PAIRS, cfg.n // 4 + 1)

    def mixture(r: np.random.Generator, n: int) -> ProbeSet:
        counts = split_counts(n, len(train_pairs))
        return pad_stack([sample(r, k, p, cfg) for p, k in zip(train_pairs, counts)], r)

    train = mixture(rng["train"], cfg.n_train)
    tune = mixture(rng["tune"], cfg.n_test)
    test = {f"len_{s * cfg.n}": sample(rng["test"], cfg.n_test, s * cfg.n // 4, cfg) for s in TEST_SCALES}
    tune, test = held_out([train], tune, test)
    return ProbeData(vocab_size=1 + cfg.num_keys + cfg.num_values, train=(train,), tune=tune, test=test,
                     headline=tuple(f"len_{s * cfg.n}" for s in TEST_SCALES if s > 1))
