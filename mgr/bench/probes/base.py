"""What every probe task provides: a deterministic, offline generator of scored token sets.

A probe task turns a seed into token sequences whose answers are known. Only answer positions
are scored: `targets[n, t]` is the token the model must emit after reading `tokens[n, :t+1]`,
or `IGNORE` (-1) where nothing is asked. The model is trained with cross-entropy on the scored
positions only and judged by accuracy there, so filler never dilutes the score.

Every task returns three disjoint kinds of data from one seed: `train` (one `ProbeSet` per
training phase; most tasks have one, `forgetting` has two), `tune` (used only to choose the
learning rate) and `test` (named slices the results are reported on). Disjointness is by
construction (different generator streams) and checked by the tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from attention.base import require  # noqa: F401  (re-exported: every task validates with it)
from core.errors import MgrError

IGNORE = -1  # target value of a position that is not scored
PAD = 0      # the token the trainer right-pads with (and tasks may use as filler)


@dataclass(frozen=True)
class ProbeSet:
    """`tokens` and `targets`, both int32 `[N, T]`; `targets == IGNORE` where nothing is scored."""

    tokens: np.ndarray
    targets: np.ndarray

    def __post_init__(self):
        if self.tokens.shape != self.targets.shape or self.tokens.ndim != 2:
            raise ValueError(f"tokens {self.tokens.shape} and targets {self.targets.shape} must be equal [N, T]")
        if not (self.targets != IGNORE).any(axis=1).all():
            raise ValueError("every sequence must have at least one scored position")

    @property
    def n(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])


@dataclass(frozen=True)
class ProbeData:
    """Everything one run of a task sees. `vocab_size` covers every token of every set."""

    vocab_size: int
    train: tuple[ProbeSet, ...]      # phases, trained in order, the budget split evenly
    tune: ProbeSet                   # learning-rate selection only
    test: dict[str, ProbeSet]        # named slices the results are reported on
    headline: tuple[str, ...]        # the test slices whose mean accuracy is the task's score
    phase_names: tuple[str, ...] = ("train",)

    @property
    def max_seq_len(self) -> int:
        return max(s.seq_len for s in (*self.train, self.tune, *self.test.values()))


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """Base for each task's knobs (frozen kw_only dataclasses); `validate` rejects bad ones."""

    n_train: int = 4096
    n_test: int = 512

    def validate(self) -> None:
        """Raise MgrError for impossible knobs (one line). Subclasses call super().validate()."""
        require(self.n_train > 0 and self.n_test > 0, "n_train and n_test must be positive")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TaskEntry:
    """One registered task: `build(cfg, seed) -> ProbeData`, and the claim it tests."""

    name: str
    config_cls: type
    build: Callable[[Any, int], ProbeData]
    claim: str        # which algebra's claim this probes, in one sentence
    description: str  # what the sequences look like, in one sentence

    def make(self, options: dict | None, seed: int) -> ProbeData:
        cfg = self.config(options)
        return self.build(cfg, seed)

    def config(self, options: dict | None):
        try:
            cfg = self.config_cls(**(options or {}))
        except TypeError as e:
            raise MgrError(f"bad options for probe task '{self.name}': {e}") from None
        cfg.validate()
        return cfg


def streams(seed: int, task: str) -> dict[str, np.random.Generator]:
    """Independent generators for train, tune and test, derived from (task, seed), and `table`
    for what every split shares (a task's fixed random map, e.g. triples' latin square).

    Separate streams make the three splits independent draws; tasks whose example space is
    small must still remove exact overlaps (see `drop_overlap`).
    """
    base = np.random.SeedSequence([seed, *task.encode()])
    train, tune, test, table = base.spawn(4)  # spawn(4) keeps the first three of spawn(3)
    return {"train": np.random.default_rng(train), "tune": np.random.default_rng(tune),
            "test": np.random.default_rng(test), "table": np.random.default_rng(table)}


def _row_bytes(tokens: np.ndarray) -> list[bytes]:
    # Trailing PAD is dropped: the trainer right-pads every phase to one length, so a held-out
    # row equal to a shorter training row up to padding is the same sequence to the model.
    t = np.ascontiguousarray(tokens, dtype=np.int32)
    used = t != PAD
    ends = np.where(used.any(axis=1), t.shape[1] - np.argmax(used[:, ::-1], axis=1), 0)
    return [r[:e].tobytes() for r, e in zip(t, ends)]


def row_keys(tokens: np.ndarray) -> set[bytes]:
    """One key per row, equal for rows that are equal up to trailing PAD."""
    return set(_row_bytes(tokens))


def drop_overlap(candidate: ProbeSet, seen: set[bytes]) -> ProbeSet:
    """`candidate` without the sequences whose tokens appear in `seen` (exact duplicates, up to
    trailing PAD)."""
    keep = np.array([r not in seen for r in _row_bytes(candidate.tokens)])
    if not keep.any():
        raise MgrError("the task's example space is too small: every held-out sequence is also in train")
    return ProbeSet(candidate.tokens[keep], candidate.targets[keep])


def held_out(train: Sequence[ProbeSet], tune: ProbeSet,
             test: dict[str, ProbeSet]) -> tuple[ProbeSet, dict[str, ProbeSet]]:
    """`tune` without train sequences, every test slice without train or tune sequences."""
    seen = set().union(*(row_keys(s.tokens) for s in train))
    tune = drop_overlap(tune, seen)
    seen |= row_keys(tune.tokens)
    return tune, {k: drop_overlap(v, seen) for k, v in test.items()}


def keep_scored(tokens: np.ndarray, targets: np.ndarray) -> ProbeSet:
    """The rows that have at least one scored position (for tasks where a draw may have none)."""
    keep = (targets != IGNORE).any(axis=1)
    if not keep.any():
        raise MgrError("no generated sequence has a scored position; the knobs leave nothing to ask")
    return ProbeSet(tokens[keep], targets[keep])


def pad_stack(sets: Sequence[ProbeSet], rng: np.random.Generator | None = None) -> ProbeSet:
    """One set of all rows of `sets`, right-padded with PAD (targets IGNORE) to the longest,
    row order shuffled by `rng` when given (a mixture of settings or lengths)."""
    t = max(s.seq_len for s in sets)
    tokens = np.concatenate([np.pad(s.tokens, ((0, 0), (0, t - s.seq_len)), constant_values=PAD) for s in sets])
    targets = np.concatenate([np.pad(s.targets, ((0, 0), (0, t - s.seq_len)), constant_values=IGNORE)
                              for s in sets])
    if rng is not None:
        order = rng.permutation(len(tokens))
        tokens, targets = tokens[order], targets[order]
    return ProbeSet(tokens.astype(np.int32), targets.astype(np.int32))


def split_counts(n: int, parts: int) -> list[int]:
    """`n` split into `parts` near-equal counts (the first ones one larger)."""
    return [n // parts + (i < n % parts) for i in range(parts)]
