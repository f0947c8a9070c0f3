"""Multi-query associative recall (Zoology, Arora et al. 2023, arXiv 2312.04927).

A sequence of `seq_len` tokens: first `num_pairs` key-value pairs (key token, then its value
token), keys distinct and drawn from the lower half of the vocabulary (1 .. V/2-1), values from
the upper half (V/2 .. V-1); then every key is asked once, in a random order, in a query region
of two-token slots (the key, then its value, teacher forced) separated by filler 0. The slot of
each query is drawn without replacement with p(slot i) ∝ a·i^(a-1), a = 0.01, as in Zoology,
which favours short gaps between the context and the queries. Only the query positions are
scored: their target is the value the key was paired with.

Why: softmax attention solves it with one lookup per query, while a mixer with a fixed-size
state has to hold every pair at once; Zoology shows such mixers degrade as pairs grow at fixed
width. Training mixes every (seq_len, num_pairs) setting, padded to the longest; each setting is
one test slice (`T{seq_len}_kv{num_pairs}`), all of them the headline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mgr.bench.probes.base import (IGNORE, ProbeData, ProbeSet, TaskConfig, held_out, pad_stack, require,
                                   split_counts, streams)
from mgr.bench.probes.registry import register


@dataclass(frozen=True, kw_only=True)
class MQARConfig(TaskConfig):
    settings: tuple[tuple[int, int], ...] = ((32, 4), (64, 8))  # (seq_len, num_pairs): easy, then harder
    vocab_size: int = 64
    power_a: float = 0.01

    def __post_init__(self):
        # JSON options arrive as lists of lists; the config is hashable and printable as tuples.
        try:
            settings = tuple(tuple(int(x) for x in s) for s in self.settings)
        except (TypeError, ValueError):
            return  # validate() reports it in one line
        object.__setattr__(self, "settings", settings)

    def validate(self) -> None:
        super().validate()
        ok = isinstance(self.settings, tuple) and bool(self.settings) and all(
            isinstance(s, tuple) and len(s) == 2 for s in self.settings)
        require(ok, "mqar settings must be a non-empty list of (seq_len, num_pairs) pairs")
        require(len(set(self.settings)) == len(self.settings), "mqar settings must not repeat a setting")
        require(self.vocab_size >= 4, "mqar vocab_size must be at least 4")
        n_keys = self.vocab_size // 2 - 1
        for seq_len, pairs in self.settings:
            require(pairs >= 1, f"mqar num_pairs must be positive (setting {seq_len}, {pairs})")
            require(4 * pairs <= seq_len, f"mqar needs 4*num_pairs <= seq_len, got num_pairs {pairs} "
                                          f"and seq_len {seq_len}")
            require(pairs <= n_keys, f"mqar vocab_size {self.vocab_size} has {n_keys} keys, fewer than "
                                     f"num_pairs {pairs} distinct keys")
        require(self.power_a > 0, "mqar power_a must be positive")
        require(self.n_train >= len(self.settings), "mqar n_train must cover every setting")


def slice_name(seq_len: int, pairs: int) -> str:
    return f"T{seq_len}_kv{pairs}"


def sample(rng: np.random.Generator, n: int, seq_len: int, pairs: int, vocab_size: int,
           power_a: float) -> ProbeSet:
    half = vocab_size // 2
    rows = np.arange(n)[:, None]
    keys = rng.random((n, half - 1)).argsort(axis=1)[:, :pairs] + 1  # distinct within a row
    values = rng.integers(half, vocab_size, (n, pairs))
    tokens = np.zeros((n, seq_len), np.int32)
    targets = np.full((n, seq_len), IGNORE, np.int32)
    tokens[:, 0:2 * pairs:2], tokens[:, 1:2 * pairs:2] = keys, values
    # Weighted sampling of `pairs` distinct slots without replacement: the top-k of
    # log p + Gumbel noise has the same law as drawing one slot at a time.
    space = (seq_len - 2 * pairs) // 2
    log_p = np.log(power_a) + (power_a - 1) * np.log(np.arange(1, space + 1))
    slots = np.argsort(-(log_p + rng.gumbel(size=(n, space))), axis=1)[:, :pairs]
    query_at = 2 * pairs + 2 * slots
    tokens[rows, query_at], tokens[rows, query_at + 1] = keys, values
    targets[rows, query_at] = values
    return ProbeSet(tokens, targets)


@register("mqar", config_cls=MQARConfig,
          claim="Softmax attention recalls every pair while fixed-state mixers degrade as the number of "
                "pairs grows (Zoology).",
          description="Key-value pairs, then each key queried once after power-law gaps of filler; the "
                      "value is scored at each query.")
def build(cfg: MQARConfig, seed: int) -> ProbeData:
    rng = streams(seed, "mqar")
    knobs = (cfg.vocab_size, cfg.power_a)

    def mixture(r: np.random.Generator, n: int) -> ProbeSet:
        parts = [sample(r, k, t, p, *knobs) for (t, p), k in zip(cfg.settings, split_counts(n, len(cfg.settings)))]
        return pad_stack(parts, r)

    train = mixture(rng["train"], cfg.n_train)
    tune = mixture(rng["tune"], cfg.n_test)
    test = {slice_name(t, p): sample(rng["test"], cfg.n_test, t, p, *knobs) for t, p in cfg.settings}
    tune, test = held_out([train], tune, test)
    return ProbeData(vocab_size=cfg.vocab_size, train=(train,), tune=tune, test=test, headline=tuple(test))
