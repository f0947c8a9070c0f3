"""Selective copying (MAD, Poli et al. 2024, arXiv 2403.17844).

A context of `context_len` positions that are blank (token 0) except `num_tokens` content tokens
(drawn with replacement from `num_content` content tokens 2 .. num_content+1) at random
positions; then the separator (token 1); then the content tokens in their order of appearance,
teacher forced. Scored: the separator and the copied tokens but the last, each with the next
content token to emit, so `num_tokens` targets per sequence and T = context_len + num_tokens.

Why: where the content sits changes from sequence to sequence, so a mixer has to select by
content (attention) rather than by a fixed filter or fixed offsets (convolutions, fixed decays).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mgr.bench.probes.base import IGNORE, ProbeData, ProbeSet, TaskConfig, held_out, require, streams
from mgr.bench.probes.registry import register

SEP = 1
FIRST_CONTENT = 2


@dataclass(frozen=True, kw_only=True)
class SelectiveCopyConfig(TaskConfig):
    context_len: int = 32
    num_tokens: int = 4     # content tokens to copy
    num_content: int = 16   # size of the content vocabulary (MAD's baseline V = 16)

    def validate(self) -> None:
        super().validate()
        require(self.num_tokens >= 1, "selective_copy num_tokens must be positive")
        require(self.num_tokens <= self.context_len,
                f"selective_copy num_tokens {self.num_tokens} exceeds context_len {self.context_len}")
        require(self.num_content >= 2, "selective_copy num_content must be at least 2")


def sample(rng: np.random.Generator, n: int, cfg: SelectiveCopyConfig) -> ProbeSet:
    c, k = cfg.context_len, cfg.num_tokens
    rows = np.arange(n)[:, None]
    where = np.sort(rng.random((n, c)).argsort(axis=1)[:, :k], axis=1)  # k distinct positions, in order
    content = rng.integers(FIRST_CONTENT, FIRST_CONTENT + cfg.num_content, (n, k))
    tokens = np.zeros((n, c + k), np.int32)
    tokens[rows, where] = content
    tokens[:, c] = SEP
    tokens[:, c + 1:] = content[:, :-1]
    targets = np.full((n, c + k), IGNORE, np.int32)
    targets[:, c:] = content
    return ProbeSet(tokens, targets)


@register("selective_copy", config_cls=SelectiveCopyConfig,
          claim="Content-dependent selection (attention) copies scattered tokens that fixed filters and "
                "fixed-offset mixers cannot pick out (MAD).",
          description="Content tokens scattered among blanks, a separator, then the content tokens copied "
                      "in order; every copied token is scored.")
def build(cfg: SelectiveCopyConfig, seed: int) -> ProbeData:
    rng = streams(seed, "selective_copy")
    train = sample(rng["train"], cfg.n_train, cfg)
    tune, test = held_out([train], sample(rng["tune"], cfg.n_test, cfg),
                          {"test": sample(rng["test"], cfg.n_test, cfg)})
    return ProbeData(vocab_size=FIRST_CONTENT + cfg.num_content, train=(train,), tune=tune, test=test,
                     headline=("test",))
