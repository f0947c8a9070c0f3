"""Noisy in-context recall (MAD, Poli et al. 2024, arXiv 2403.17844).

Each sequence has its own random map from `num_keys` distinct keys (drawn from the key half
1 .. kv_vocab/2 of the key-value vocabulary) to values (the other half). The sequence is a
stream of units, each either a (key, value) pair with a uniformly drawn key of the map, or one
noise token from a separate noise vocabulary (kv_vocab+1 .. kv_vocab+noise_vocab); units are
noise with the probability that makes `frac_noise` the expected fraction of noise tokens. Noise
never splits a pair, so a key is always followed by its value. Scored: every key that already
occurred earlier in the sequence, with its value (first occurrences cannot be known). A pair
cut by the end of the sequence keeps its key, still scored if it is a repeat.

Why: the map is only in context, and noise tokens dilute it; the claim is that max-plus
(tropical) attention, which picks the best match instead of averaging, is robust to that noise.
Test slices: `noise{p}` at the training fraction (the headline) and at each of `test_noise`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mgr.bench.probes.base import (IGNORE, ProbeData, ProbeSet, TaskConfig, held_out, keep_scored, require,
                                   streams)
from mgr.bench.probes.registry import register


@dataclass(frozen=True, kw_only=True)
class NoisyRecallConfig(TaskConfig):
    seq_len: int = 64
    kv_vocab: int = 32         # keys are its lower half, values its upper half (MAD's baseline V = 32)
    noise_vocab: int = 16
    num_keys: int = 8          # distinct keys of one sequence's map
    frac_noise: float = 0.2
    test_noise: tuple[float, ...] = (0.4,)  # extra test slices at other noise fractions

    def __post_init__(self):
        try:
            object.__setattr__(self, "test_noise", tuple(float(f) for f in self.test_noise))
        except (TypeError, ValueError):
            pass  # validate() reports it

    def validate(self) -> None:
        super().validate()
        require(self.seq_len >= 4, "noisy_recall seq_len must be at least 4")
        require(self.kv_vocab >= 4 and self.kv_vocab % 2 == 0, "noisy_recall kv_vocab must be even and >= 4")
        require(self.noise_vocab >= 1, "noisy_recall noise_vocab must be positive")
        require(1 <= self.num_keys <= self.kv_vocab // 2,
                f"noisy_recall num_keys must be in 1..{self.kv_vocab // 2} (the key half of kv_vocab)")
        require(isinstance(self.test_noise, tuple), "noisy_recall test_noise must be a list of fractions")
        for f in (self.frac_noise, *self.test_noise):
            require(0 <= f <= 0.9, f"noisy_recall noise fractions must be in [0, 0.9], got {f}")
        names = [slice_name(f) for f in (self.frac_noise, *self.test_noise)]
        require(len(set(names)) == len(names), "noisy_recall test_noise must differ from frac_noise and each other")


def slice_name(frac: float) -> str:
    return f"noise{round(100 * frac)}"


def sample(rng: np.random.Generator, n: int, cfg: NoisyRecallConfig, frac: float) -> ProbeSet:
    t, half = cfg.seq_len, cfg.kv_vocab // 2
    rows = np.arange(n)[:, None]
    keys = rng.random((n, half)).argsort(axis=1)[:, :cfg.num_keys] + 1
    values = rng.integers(half + 1, cfg.kv_vocab + 1, (n, cfg.num_keys))
    # A unit is noise with prob q; q / (q + 2(1 - q)) = frac makes frac the share of noise tokens.
    q = 2 * frac / (1 + frac)
    units = t  # every unit has at least one token, so t units always fill the sequence
    noise = rng.random((n, units)) < q
    which = rng.integers(0, cfg.num_keys, (n, units))
    noise_tok = rng.integers(cfg.kv_vocab + 1, cfg.kv_vocab + cfg.noise_vocab + 1, (n, units))
    start = np.cumsum(np.where(noise, 1, 2), axis=1) - np.where(noise, 1, 2)
    fits = start < t
    pair, lone = fits & ~noise, fits & noise
    # Repeats: a pair whose key index occurred in an earlier pair of the row.
    onehot = (which[:, :, None] == np.arange(cfg.num_keys)) & pair[:, :, None]
    before = np.cumsum(onehot, axis=1) - onehot
    repeat = pair & np.take_along_axis(before, which[:, :, None], axis=2)[:, :, 0].astype(bool)
    tokens = np.zeros((n, t + 1), np.int32)  # one spare column takes a value cut off by the end
    targets = np.full((n, t + 1), IGNORE, np.int32)
    r = np.broadcast_to(rows, (n, units))
    key_tok, val_tok = np.take_along_axis(keys, which, 1), np.take_along_axis(values, which, 1)
    tokens[r[lone], start[lone]] = noise_tok[lone]
    tokens[r[pair], start[pair]] = key_tok[pair]
    tokens[r[pair], start[pair] + 1] = val_tok[pair]
    targets[r[repeat], start[repeat]] = val_tok[repeat]
    return keep_scored(tokens[:, :t], targets[:, :t])


@register("noisy_recall", config_cls=NoisyRecallConfig,
          claim="Max-plus (tropical) attention keeps recalling a per-sequence key-value map when noise "
                "tokens are mixed in (MAD noisy recall).",
          description="A stream of key-value pairs from a per-sequence map with noise tokens inserted; every "
                      "repeated key is scored with its value.")
def build(cfg: NoisyRecallConfig, seed: int) -> ProbeData:
    rng = streams(seed, "noisy_recall")
    train = sample(rng["train"], cfg.n_train, cfg, cfg.frac_noise)
    tune = sample(rng["tune"], cfg.n_test, cfg, cfg.frac_noise)
    test = {slice_name(f): sample(rng["test"], cfg.n_test, cfg, f) for f in (cfg.frac_noise, *cfg.test_noise)}
    tune, test = held_out([train], tune, test)
    return ProbeData(vocab_size=1 + cfg.kv_vocab + cfg.noise_vocab, train=(train,), tune=tune, test=test,
                     headline=(slice_name(cfg.frac_noise),))
