"""The probe task generators: registry, determinism, targets proven by independent solvers,
only answer positions scored, no leakage between splits, shapes and vocabularies, bad knobs.

Generic properties run over `probes.names()`, so a new task without a solver, bad knobs or
expected slices in `probe_solvers.py` fails here. Each task also runs with non-default knobs
(`VARIANTS`), which exercise list-valued JSON options, padding and deduplication.
"""

import dataclasses
import functools
import json

import numpy as np
import pytest

from core.errors import MgrError
from mgr.bench import probes
from mgr.bench.probes import IGNORE, TaskConfig
from probe_solvers import BAD, SLICES, SOLVERS, VARIANTS

NAMES = probes.names()
CASES = [(n, None) for n in NAMES] + [(n, v) for n in NAMES for v in VARIANTS.get(n, [])]
CASE_IDS = [f"{n}-default" if v is None else f"{n}-variant" for n, v in CASES]


@functools.lru_cache(maxsize=None)
def _build(name, options_json, seed):
    return probes.get(name).make(json.loads(options_json), seed)


def build(name, options=None, seed=0):
    return _build(name, json.dumps(options or {}), seed)


def named_sets(data):
    """(label, ProbeSet) of every set of a ProbeData: train phases, tune, test slices."""
    return [(f"train:{p}", s) for p, s in zip(data.phase_names, data.train)] + [("tune", data.tune)] + [
        (f"test:{k}", s) for k, s in data.test.items()]


@functools.lru_cache(maxsize=None)
def solved(name, options_json):
    """{label: (ProbeSet, expected targets)} from the task's brute-force solver."""
    data = _build(name, options_json, 0)
    cfg = probes.get(name).config(json.loads(options_json))
    solver = SOLVERS[name]
    table = solver.learn(data.train, cfg) if solver.learn else None
    return {label: (s, solver.solve(s.tokens, cfg, table)) for label, s in named_sets(data)}


def test_every_task_has_a_solver_bad_knobs_and_slices():
    assert NAMES, "no probe task is registered"
    for table in (SOLVERS, BAD, SLICES):
        assert set(NAMES) <= set(table), f"missing: {sorted(set(NAMES) - set(table))}"


@pytest.mark.parametrize("name", NAMES)
def test_registry_entry_has_claim_description_and_frozen_kw_only_config(name):
    entry = probes.get(name)
    assert entry.name == name
    for text in (entry.claim, entry.description):
        assert text.strip() and "\n" not in text and len(text) < 200
    assert issubclass(entry.config_cls, TaskConfig)
    cfg = entry.config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_train = 1
    with pytest.raises(TypeError):
        entry.config_cls(1)  # kw_only
    json.dumps(cfg.to_dict())


def test_unknown_task_lists_the_valid_names():
    with pytest.raises(MgrError) as e:
        probes.get("no_such_task")
    msg = str(e.value)
    assert "no_such_task" in msg and "\n" not in msg
    assert all(n in msg for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_data_and_another_seed_differs(name):
    a, again, other = build(name), probes.get(name).make(None, 0), build(name, seed=1)
    assert (a.vocab_size, a.headline, a.phase_names) == (again.vocab_size, again.headline, again.phase_names)
    sa, sg, so = named_sets(a), named_sets(again), named_sets(other)
    assert [k for k, _ in sa] == [k for k, _ in sg] == [k for k, _ in so]
    for (label, x), (_, y), (_, z) in zip(sa, sg, so):
        np.testing.assert_array_equal(x.tokens, y.tokens, err_msg=label)
        np.testing.assert_array_equal(x.targets, y.targets, err_msg=label)
        n = min(x.n, z.n)
        assert x.tokens.shape[1:] != z.tokens.shape[1:] or not np.array_equal(x.tokens[:n], z.tokens[:n]), label


@pytest.mark.parametrize("name,options", CASES, ids=CASE_IDS)
def test_only_the_answer_positions_are_scored(name, options):
    for label, (s, expected) in solved(name, json.dumps(options or {})).items():
        wrong = (s.targets != IGNORE) != (expected != IGNORE)
        assert not wrong.any(), f"{label}: {wrong.sum()} positions scored against the definition, first at " \
                                f"{np.argwhere(wrong)[0]}"


@pytest.mark.parametrize("name,options", CASES, ids=CASE_IDS)
def test_a_brute_force_solver_reproduces_every_scored_target(name, options):
    for label, (s, expected) in solved(name, json.dumps(options or {})).items():
        scored = s.targets != IGNORE
        assert scored.any(axis=1).all(), label
        bad = scored & (s.targets != expected)
        assert not bad.any(), f"{label}: {bad.sum()} of {scored.sum()} targets differ from the solver's"


@pytest.mark.parametrize("name,options", CASES, ids=CASE_IDS)
def test_scored_targets_are_answer_tokens(name, options):
    cfg = probes.get(name).config(options)
    lo, hi = SOLVERS[name].answers(cfg)
    for label, s in named_sets(build(name, options)):
        scored = s.targets[s.targets != IGNORE]
        assert ((scored >= lo) & (scored < hi)).all(), f"{label}: targets outside the answers [{lo}, {hi})"


def _keys(tokens):
    # Equal up to trailing pad 0: the trainer pads training rows to one length.
    return {tuple(np.trim_zeros(np.asarray(r), "b").tolist()) for r in tokens}


@pytest.mark.parametrize("name,options", CASES, ids=CASE_IDS)
def test_no_held_out_sequence_is_a_training_sequence_and_tune_is_not_test(name, options):
    data = build(name, options)
    train = set().union(*(_keys(s.tokens) for s in data.train))
    tune = _keys(data.tune.tokens)
    assert not tune & train, "tune repeats training sequences"
    for k, s in data.test.items():
        test = _keys(s.tokens)
        assert not test & train, f"test slice {k} repeats training sequences"
        assert not test & tune, f"test slice {k} repeats tune sequences"


@pytest.mark.parametrize("name,options", CASES, ids=CASE_IDS)
def test_tokens_within_vocab_int32_and_max_seq_len_covers_every_set(name, options):
    data = build(name, options)
    for label, s in named_sets(data):
        assert s.tokens.dtype == np.int32 and s.targets.dtype == np.int32, label
        assert s.tokens.min() >= 0 and s.tokens.max() < data.vocab_size, label
        assert s.targets.max() < data.vocab_size, label
        assert s.seq_len <= data.max_seq_len and s.n > 0, label
    assert data.max_seq_len == max(s.seq_len for _, s in named_sets(data))
    assert len(data.phase_names) == len(data.train) and set(data.headline) <= set(data.test)


@pytest.mark.parametrize("name", NAMES)
def test_defaults_are_small_and_slices_as_documented(name):
    cfg, data = probes.get(name).config(None), build(name)
    assert data.vocab_size <= 256 and max(s.seq_len for s in data.train) <= 64
    assert all(s.n <= 4096 for s in data.train) and cfg.n_test <= 512 and data.max_seq_len <= 128
    train_len, slices, headline = SLICES[name]
    assert {s.seq_len for s in data.train} == {data.tune.seq_len} == {train_len}
    assert {k: s.seq_len for k, s in data.test.items()} == slices and data.headline == headline


BAD_CASES = [(n, b) for n in NAMES for b in BAD.get(n, [])] + [(n, {"n_train": 0}) for n in NAMES] + [
    (n, {"no_such_knob": 1}) for n in NAMES]


@pytest.mark.parametrize("name,bad", BAD_CASES, ids=[f"{n}-{json.dumps(b)}" for n, b in BAD_CASES])
def test_impossible_knobs_raise_one_line(name, bad):
    with pytest.raises(MgrError) as e:
        probes.get(name).make(bad, 0)
    assert "\n" not in str(e.value) and str(e.value)


def test_list_valued_options_are_stored_as_tuples():
    assert probes.get("mqar").config({"settings": [[16, 2]]}).settings == ((16, 2),)
    assert probes.get("noisy_recall").config({"test_noise": [0.5]}).test_noise == (0.5,)


def test_a_small_example_space_is_deduplicated_or_refused():
    data = build("state_tracking", {"seq_len": 4, "n_train": 1000, "n_test": 512})  # 6^4 = 1296 sequences
    assert data.tune.n < 512 and data.test["test"].n < 512  # collisions were removed (checked above too)
    assert not _keys(data.test["test"].tokens) & _keys(data.train[0].tokens)
    with pytest.raises(MgrError, match="too small"):
        probes.get("forgetting").make({"num_keys": 4, "seq_len": 8, "n_train": 4096}, 0)  # 24 sequences


def test_triples_answer_is_chance_given_either_token_alone():
    cfg = probes.get("triples").config(None)
    table = SOLVERS["triples"].learn(build("triples").train, cfg)
    s = cfg.num_symbols
    square = np.array([[table[(a, b + s)] for b in range(1, s + 1)] for a in range(1, s + 1)])
    for line in (*square, *square.T):  # a latin square: each a (row) and each b (column) leaves all answers
        assert len(set(line.tolist())) == s
