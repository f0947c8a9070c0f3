"""Brute-force solvers of the probe tasks, written from the task definitions in
markdown_documentation/probes.md and never from the generators: plain Python over each row.

`SOLVERS[name]` gives `solve(tokens, cfg, table) -> expected targets` (IGNORE where the
definition asks nothing), `answers(cfg) -> (lo, hi)` (the answer tokens, hi exclusive) and, for
tasks whose answer depends on a hidden fixed table, `learn(train_sets, cfg) -> table`, read off
the training targets (and checked to be a function) before predicting the held-out ones.
`BAD[name]` lists impossible knobs; `VARIANTS[name]` non-default knobs also checked; `SLICES[name]`
the default train length, test slices with their lengths, and headline.
"""

import itertools
from typing import Callable, NamedTuple

import numpy as np

IGNORE = -1
UNSEEN = -2  # a learned-table task asked about an entry training never showed


def _recall(tokens, is_key):
    """A key that occurred earlier asks for the token that followed its first occurrence."""
    out = np.full(tokens.shape, IGNORE)
    for n, row in enumerate(tokens.tolist()):
        first = {}
        for t, tok in enumerate(row):
            if is_key(tok):
                if tok in first:
                    out[n, t] = row[first[tok] + 1]
                else:
                    first[tok] = t
    return out


def mqar(tokens, cfg, _):
    return _recall(tokens, lambda x: 1 <= x < cfg.vocab_size // 2)


def noisy_recall(tokens, cfg, _):
    return _recall(tokens, lambda x: 1 <= x <= cfg.kv_vocab // 2)


def length_generalization(tokens, cfg, _):
    return _recall(tokens, lambda x: 1 <= x <= cfg.num_keys)


def selective_copy(tokens, cfg, _):
    out = np.full(tokens.shape, IGNORE)
    for n, row in enumerate(tokens.tolist()):
        sep = row.index(1)
        for j, tok in enumerate([x for x in row[:sep] if x != 0]):
            if sep + j < len(row):
                out[n, sep + j] = tok
    return out


def state_tracking(tokens, cfg, _):
    k = {"S3": 3, "S5": 5}[cfg.group]
    perms = list(itertools.permutations(range(k)))
    index = {p: i for i, p in enumerate(perms)}
    out = np.full(tokens.shape, IGNORE)
    for n, row in enumerate(tokens.tolist()):
        p = tuple(range(k))
        for t, tok in enumerate(row):
            g = perms[tok - 1]
            p = tuple(p[g[i]] for i in range(k))  # p ∘ g
            out[n, t] = index[p] + 1
    return out


def hierarchical_recall(tokens, cfg, _):
    d, out = cfg.depth, np.full(tokens.shape, IGNORE)
    for n, row in enumerate(tokens.tolist()):
        value_of = {}
        for u in range(0, len(row), d + 1):
            path = tuple(row[u:u + d])
            if path in value_of:
                out[n, u + d - 1] = value_of[path]
            else:
                value_of[path] = row[u + d]
    return out


def _forgetting_keys(tokens, cfg):
    return [[(t, x) for t, x in enumerate(row) if 1 <= x <= 2 * cfg.num_keys] for row in tokens.tolist()]


def _triples_queries(tokens, cfg):
    """(position, (latest a, latest b)) of every query token."""
    s, q, found = cfg.num_symbols, 2 * cfg.num_symbols + cfg.num_filler + 1, []
    for row in tokens.tolist():
        a = b = None
        found.append([])
        for t, x in enumerate(row):
            a = x if 1 <= x <= s else a
            b = x if s < x <= 2 * s else b
            if x == q:
                found[-1].append((t, (a, b)))
    return found


def _learner(parse):
    def learn(sets, cfg):
        table = {}
        for s in sets:
            for n, items in enumerate(parse(s.tokens, cfg)):
                for t, key in items:
                    assert table.setdefault(key, s.targets[n, t]) == s.targets[n, t], f"{key} has two answers"
        return table
    return learn


def _lookup(parse):
    def solve(tokens, cfg, table):
        out = np.full(tokens.shape, IGNORE)
        for n, items in enumerate(parse(tokens, cfg)):
            for t, key in items:
                out[n, t] = table.get(key, UNSEEN)
        return out
    return solve


class Solver(NamedTuple):
    solve: Callable
    answers: Callable
    learn: Callable | None = None


SOLVERS = {
    "mqar": Solver(mqar, lambda c: (c.vocab_size // 2, c.vocab_size)),
    "selective_copy": Solver(selective_copy, lambda c: (2, 2 + c.num_content)),
    "noisy_recall": Solver(noisy_recall, lambda c: (c.kv_vocab // 2 + 1, c.kv_vocab + 1)),
    "length_generalization": Solver(length_generalization,
                                    lambda c: (c.num_keys + 1, c.num_keys + c.num_values + 1)),
    "state_tracking": Solver(state_tracking, lambda c: (1, {"S3": 6, "S5": 120}[c.group] + 1)),
    "hierarchical_recall": Solver(hierarchical_recall, lambda c: (1 + c.depth * c.branching,
                                                                  1 + c.depth * c.branching + c.num_values)),
    "forgetting": Solver(_lookup(_forgetting_keys), lambda c: (1 + 2 * c.num_keys, 1 + 2 * c.num_keys + c.num_values),
                         _learner(_forgetting_keys)),
    "triples": Solver(_lookup(_triples_queries), lambda c: (2 * c.num_symbols + c.num_filler + 2,
                                                            3 * c.num_symbols + c.num_filler + 2),
                      _learner(_triples_queries)),
}

SMALL = {"n_train": 512, "n_test": 64}
VARIANTS = {
    "mqar": [{"settings": [[16, 2], [48, 12]], "vocab_size": 40, **SMALL}],
    "selective_copy": [{"context_len": 20, "num_tokens": 9, "num_content": 3, **SMALL}],
    "noisy_recall": [{"frac_noise": 0.6, "test_noise": [0.0, 0.9], "num_keys": 3, "seq_len": 23, **SMALL}],
    "length_generalization": [{"n": 16, "num_keys": 16, **SMALL}],
    "state_tracking": [{"group": "S5", "seq_len": 33, **SMALL}],
    "hierarchical_recall": [{"depth": 2, "branching": 3, "num_pairs": 9, "siblings": 3, **SMALL}],
    "forgetting": [{"num_keys": 6, "num_values": 3, "seq_len": 8, **SMALL}],  # 360 sequences: dedup at work
    "triples": [{"num_symbols": 3, "num_filler": 1, "seq_len": 20, "segment_len": 4, "n_train": 2048}],
}
BAD = {
    "mqar": [{"settings": [[32, 9]]}, {"settings": [[64, 8]], "vocab_size": 16}, {"settings": []},
             {"settings": [32, 4]}, {"settings": [[32, 4], [32, 4]]}],
    "selective_copy": [{"context_len": 4, "num_tokens": 5}, {"num_tokens": 0}],
    "noisy_recall": [{"num_keys": 17}, {"frac_noise": 1.0}, {"kv_vocab": 31}, {"test_noise": [0.2]}],
    "length_generalization": [{"n": 30}, {"num_keys": 31}],
    "state_tracking": [{"group": "S4"}, {"seq_len": 1}],
    "hierarchical_recall": [{"num_pairs": 7}, {"siblings": 5}, {"depth": 1}, {"num_pairs": 40, "siblings": 2}],
    "forgetting": [{"seq_len": 66}, {"seq_len": 7}],
    "triples": [{"seq_len": 30}, {"segment_len": 3}],
}
SLICES = {  # defaults: (train length, {test slice: length}, headline)
    "mqar": (64, {"T32_kv4": 32, "T64_kv8": 64}, ("T32_kv4", "T64_kv8")),
    "selective_copy": (36, {"test": 36}, ("test",)),
    "noisy_recall": (64, {"noise20": 64, "noise40": 64}, ("noise20",)),
    "length_generalization": (32, {"len_32": 32, "len_64": 64, "len_128": 128}, ("len_64", "len_128")),
    "state_tracking": (16, {"test": 16}, ("test",)),
    "hierarchical_recall": (48, {"test": 48}, ("test",)),
    "forgetting": (32, {"first": 32, "second": 32}, ("first",)),
    "triples": (32, {"test": 32}, ("test",)),
}
