"""The pieces under the fair protocol, each against an answer computed another way: the masked
probe loss and accuracy, Holm's correction, Hedges' g, power-law fits and their crossings."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

from mgr.bench import stats
from mgr.bench.probe_train import EVAL_CHUNK, accuracy, masked_loss
from mgr.bench.probes import IGNORE, ProbeSet
from mgr.config import ModelConfig
from mgr.model import Decoder

CFG = ModelConfig(vocab_size=24, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, max_seq_len=12)


def _set(n, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 24, (n, 12)).astype(np.int32)
    targets = np.where(rng.random((n, 12)) < 0.3, rng.integers(0, 24, (n, 12)), IGNORE).astype(np.int32)
    targets[:, -1] = tokens[:, 0]  # every row scores at least one position
    return ProbeSet(tokens, targets)


def test_masked_loss_is_the_mean_cross_entropy_of_the_scored_positions_only():
    model = Decoder(CFG, rngs=nnx.Rngs(0))
    s = _set(5)
    logits = np.asarray(model(jnp.asarray(s.tokens)), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    scored = s.targets != IGNORE
    want = -np.mean(np.take_along_axis(logp, np.where(scored, s.targets, 0)[..., None], -1)[..., 0][scored])
    batch = {"tokens": jnp.asarray(s.tokens), "targets": jnp.asarray(s.targets)}
    assert float(masked_loss(model, batch)) == pytest.approx(want, rel=1e-5)


def test_accuracy_counts_scored_positions_of_every_row_and_no_padding():
    model = Decoder(CFG, rngs=nnx.Rngs(1))
    s = _set(EVAL_CHUNK + 7, seed=2)  # not a whole number of evaluation chunks
    pred = np.asarray(jnp.argmax(model(jnp.asarray(s.tokens)), -1))
    scored = s.targets != IGNORE
    want = float(np.mean(pred[scored] == s.targets[scored]))
    graphdef, params = nnx.split(model, nnx.Param)
    assert accuracy(graphdef, params, s, "protocol-test") == pytest.approx(want, abs=1e-12)


def test_holm_on_a_textbook_example_and_none_entries():
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = stats.holm([0.02, None, 0.5])  # None is not a comparison: m = 2
    assert out[1] is None and out[0] == pytest.approx(0.04) and out[2] == pytest.approx(0.5)
    assert stats.holm([0.4, 0.3, 0.6]) == pytest.approx([0.9, 0.9, 0.9])  # capped, then monotone


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=12))
def test_holm_adjusted_p_is_at_least_raw_monotone_and_at_most_one(ps):
    adj = stats.holm(ps)
    assert all(a >= p - 1e-15 and a <= 1.0 for a, p in zip(adj, ps))
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    assert all(adj[i] <= adj[j] + 1e-15 for i, j in zip(order, order[1:]))


def test_hedges_g_by_hand():
    a, b = [1.0, 2.0, 3.0], [3.0, 4.0, 5.0, 6.0]
    # means 2 and 4.5; pooled variance (2 + 5) / 5 = 1.4; J = 1 - 3 / (4 * 5 - 1)
    assert stats.hedges_g(a, b) == pytest.approx(-2.5 / math.sqrt(1.4) * (1 - 3 / 19))
    assert stats.hedges_g([1.0], b) is None
    assert stats.hedges_g([2.0, 2.0], [1.0, 1.0]) == math.inf


def test_power_law_fit_recovers_an_exact_law_and_noisy_data_within_its_interval():
    cs = [1e9, 1e10, 1e11, 1e12]
    fit = stats.power_law_fit(cs, [[3.0 * c ** -0.2] * 2 for c in cs])
    assert fit["a"] == pytest.approx(3.0, rel=1e-9) and fit["b"] == pytest.approx(-0.2, abs=1e-12)
    rng = np.random.default_rng(0)
    noisy = [[3.0 * c ** -0.2 * math.exp(rng.normal(0, 0.02)) for _ in range(3)] for c in cs]
    fit = stats.power_law_fit(cs, noisy)
    assert abs(fit["b"] + 0.2) <= fit["b_ci95"] and 0.9 < fit["r2"] <= 1.0
    assert stats.power_law_fit([1e9, 1e9], [[1.0], [2.0]]) is None  # one budget
    assert stats.power_law_fit(cs, [[1.0], [0.0], [1.0], [1.0]]) is None  # log of zero


def test_crossing_of_two_known_laws():
    f = {"a": 10.0, "b": -0.5}
    g = {"a": 1.0, "b": -0.25}  # 10 C^-0.5 = C^-0.25  <=>  C = 10^4
    assert stats.crossing(f, g, 1e3, 1e5) == pytest.approx(1e4)
    assert stats.crossing(f, g, 1e5, 1e6) is None
    assert stats.crossing(f, {"a": 2.0, "b": -0.5}, 1, 1e9) is None  # parallel
