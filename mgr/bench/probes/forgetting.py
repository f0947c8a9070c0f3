"""Catastrophic forgetting across two training phases (MAD's memorization task, twice).

Two fixed random maps from keys to values, drawn once per seed from the `table` stream and
shared by every split: task A ("first") on keys 1 .. num_keys, task B ("second") on the disjoint
keys num_keys+1 .. 2·num_keys, both into the values 2·num_keys+1 .. 2·num_keys+num_values. A
sequence of task X is seq_len/2 (key, value) pairs with distinct keys of X and values by X's
map. Keys never repeat within a sequence, so the map cannot be read from context: it has to be
stored in the weights. Scored: every key, with its value.

Training is A (phase "first") then B (phase "second"), the budget split evenly; test slices
`first` and `second` hold fresh sequences of each; the headline is `first`, i.e. how much of A
survives training on B. The tune set is half A, half B, so the learning rate is chosen for
keeping both. Why: fractal attention claims resistance to catastrophic forgetting; this is the
forgetting audit's probe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mgr.bench.probes.base import (IGNORE, ProbeData, ProbeSet, TaskConfig, held_out, pad_stack, require,
                                   split_counts, streams)
from mgr.bench.probes.registry import register


@dataclass(frozen=True, kw_only=True)
class ForgettingConfig(TaskConfig):
    num_keys: int = 32     # per task
    num_values: int = 32
    seq_len: int = 32      # seq_len/2 distinct keys per sequence

    def validate(self) -> None:
        super().validate()
        require(self.seq_len >= 2 and self.seq_len % 2 == 0, "forgetting seq_len must be even and at least 2")
        require(self.seq_len // 2 <= self.num_keys, f"forgetting seq_len {self.seq_len} needs "
                                                    f"{self.seq_len // 2} distinct keys, num_keys is {self.num_keys}")
        require(self.num_values >= 2, "forgetting num_values must be at least 2")


def sample(rng: np.random.Generator, n: int, cfg: ForgettingConfig, task: int, value_of: np.ndarray) -> ProbeSet:
    pairs = cfg.seq_len // 2
    idx = rng.random((n, cfg.num_keys)).argsort(axis=1)[:, :pairs]
    tokens = np.zeros((n, cfg.seq_len), np.int32)
    targets = np.full((n, cfg.seq_len), IGNORE, np.int32)
    tokens[:, 0::2] = 1 + task * cfg.num_keys + idx
    tokens[:, 1::2] = targets[:, 0::2] = 1 + 2 * cfg.num_keys + value_of[idx]
    return ProbeSet(tokens, targets)


@register("forgetting", config_cls=ForgettingConfig,
          claim="Fractal attention keeps a first memorised key-value map after training on a second one "
                "(the forgetting audit).",
          description="Phase one memorises a fixed key-value map, phase two another on disjoint keys; scored "
                      "on fresh sequences of both, headline the first.")
def build(cfg: ForgettingConfig, seed: int) -> ProbeData:
    rng = streams(seed, "forgetting")
    maps = rng["table"].integers(0, cfg.num_values, (2, cfg.num_keys))
    train = tuple(sample(rng["train"], cfg.n_train, cfg, task, maps[task]) for task in (0, 1))
    halves = split_counts(cfg.n_test, 2)
    tune = pad_stack([sample(rng["tune"], halves[t], cfg, t, maps[t]) for t in (0, 1)], rng["tune"])
    test = {name: sample(rng["test"], cfg.n_test, cfg, t, maps[t]) for t, name in enumerate(("first", "second"))}
    tune, test = held_out(train, tune, test)
    return ProbeData(vocab_size=1 + 2 * cfg.num_keys + cfg.num_values, train=train, tune=tune, test=test,
                     headline=("first",), phase_names=("first", "second"))
