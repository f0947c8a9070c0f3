"""Hierarchical (tree-path) associative recall.

A key is a root-to-leaf path of `depth` choices in a tree of branching factor `branching`; the
choice c at level l is token 1 + l·branching + c, so every level has its own tokens. Values are
tokens after the path tokens. A sequence is `num_pairs` units (path tokens, then the value),
then the same keys as queries in a random order (path, then its value, teacher forced). Scored:
the last token of each query path, with the key's value. T = 2·num_pairs·(depth+1).

Keys are drawn in sibling groups: num_pairs/siblings distinct parents (depth-1 prefixes), each
with `siblings` distinct children. Every key therefore shares its whole prefix with another key
of the sequence, and with few choices per level the last token alone repeats too, so only the
full path identifies the value: neither prefix nor suffix matching is enough.

Why: ultrametric attention (distances on a tree) and fractal attention claim a built-in
tree/prefix structure; this asks for matching on exactly that structure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mgr.bench.probes.base import IGNORE, ProbeData, ProbeSet, TaskConfig, held_out, require, streams
from mgr.bench.probes.registry import register


@dataclass(frozen=True, kw_only=True)
class HierarchicalRecallConfig(TaskConfig):
    depth: int = 3
    branching: int = 4
    num_pairs: int = 6
    siblings: int = 2     # keys per shared parent
    num_values: int = 16

    def validate(self) -> None:
        super().validate()
        require(self.depth >= 2, "hierarchical_recall depth must be at least 2")
        require(2 <= self.siblings <= self.branching,
                f"hierarchical_recall siblings must be in 2..branching ({self.branching})")
        require(self.num_pairs >= self.siblings and self.num_pairs % self.siblings == 0,
                f"hierarchical_recall num_pairs must be a positive multiple of siblings ({self.siblings})")
        parents = self.branching ** (self.depth - 1)
        require(self.num_pairs // self.siblings <= parents,
                f"hierarchical_recall needs {self.num_pairs // self.siblings} distinct parents, the tree has {parents}")
        require(self.num_values >= 2, "hierarchical_recall num_values must be at least 2")

    @property
    def first_value(self) -> int:
        return 1 + self.depth * self.branching


def sample(rng: np.random.Generator, n: int, cfg: HierarchicalRecallConfig) -> ProbeSet:
    d, b, p, u = cfg.depth, cfg.branching, cfg.num_pairs, cfg.depth + 1
    groups = p // cfg.siblings
    parent = rng.random((n, b ** (d - 1))).argsort(axis=1)[:, :groups]
    child = rng.random((n, groups, b)).argsort(axis=2)[:, :, :cfg.siblings]
    leaf = (parent[:, :, None] * b + child).reshape(n, p)
    rows = np.arange(n)[:, None]
    leaf = leaf[rows, rng.random((n, p)).argsort(axis=1)]  # siblings need not sit side by side
    values = rng.integers(cfg.first_value, cfg.first_value + cfg.num_values, (n, p))
    levels = np.arange(d)
    paths = (leaf[:, :, None] // b ** (d - 1 - levels)) % b + 1 + levels * b  # [n, p, d] tokens
    order = rng.random((n, p)).argsort(axis=1)
    units = np.concatenate([np.concatenate([paths, values[:, :, None]], 2),
                            np.concatenate([paths[rows, order], values[rows, order][:, :, None]], 2)], 1)
    tokens = units.reshape(n, 2 * p * u).astype(np.int32)
    targets = np.full(tokens.shape, IGNORE, np.int32)
    targets[:, p * u + d - 1::u] = values[rows, order]
    return ProbeSet(tokens, targets)


@register("hierarchical_recall", config_cls=HierarchicalRecallConfig,
          claim="Ultrametric and fractal attention's tree/prefix structure recalls values keyed by tree "
                "paths that share prefixes.",
          description="Pairs of (tree path of depth tokens, value) whose paths share prefixes, then each path "
                      "queried; the value is scored at the query path's last token.")
def build(cfg: HierarchicalRecallConfig, seed: int) -> ProbeData:
    rng = streams(seed, "hierarchical_recall")
    train = sample(rng["train"], cfg.n_train, cfg)
    tune, test = held_out([train], sample(rng["tune"], cfg.n_test, cfg), {"test": sample(rng["test"], cfg.n_test, cfg)})
    return ProbeData(vocab_size=cfg.first_value + cfg.num_values, train=(train,), tune=tune, test=test,
                     headline=("test",))
