"""The fair protocol's statistics against answers worked out by hand (or by closed forms that
do not go through the code under test), plus Hypothesis properties where one is natural."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mgr.bench.stats import (compare_arms, crossing, error_of_accuracy, hedges_g, holm, power_law_fit,
                             spread)

SLOW_OK = settings(deadline=None, max_examples=150)  # a shared two-core machine: no deadlines


# ---------------------------------------------------------------- Holm


def test_holm_on_a_textbook_example():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> raised to 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.4, 0.3, 0.6]) == pytest.approx([0.9, 0.9, 0.9])  # 0.3*3 = 0.9 lifts the rest
    assert holm([0.5, 0.7]) == pytest.approx([1.0, 1.0])  # 0.5*2 = 1.0, then the running max
    assert holm([0.7, 0.6]) == pytest.approx([1.0, 1.0])  # 0.6*2 = 1.2, capped at 1


def test_holm_passes_none_through_and_does_not_count_it():
    assert holm([0.02, None, 0.5, None]) == pytest.approx([0.04, None, 0.5, None])  # m = 2, not 4
    assert holm([None, None]) == [None, None]
    assert holm([]) == []
    assert holm([0.03]) == pytest.approx([0.03])


@pytest.mark.parametrize("bad", [float("nan"), -0.1, 1.5])
def test_holm_refuses_a_p_value_outside_the_unit_interval(bad):
    with pytest.raises(ValueError, match="holm"):
        holm([0.01, bad])


def _step_down_rejections(ps, alpha):
    """Holm's procedure as a sequence of decisions: reject the k-th smallest while
    p_(k) * (m - k + 1) <= alpha, stop at the first that is not."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    rejected = set()
    for k, i in enumerate(order):
        if ps[i] * (len(ps) - k) > alpha:
            break
        rejected.add(i)
    return rejected


@SLOW_OK
@given(st.lists(st.one_of(st.none(), st.floats(0.0, 1.0)), max_size=12),
       st.sampled_from([0.01, 0.05, 0.1]))
def test_holm_properties(ps, alpha):
    adj = holm(ps)
    assert len(adj) == len(ps)
    pairs = [(p, a) for p, a in zip(ps, adj) if p is not None]
    assert all(a is None for p, a in zip(ps, adj) if p is None)
    m = len(pairs)
    for p, a in pairs:
        assert p <= a <= 1.0
        assert a <= min(1.0, m * p) + 1e-12  # never more conservative than Bonferroni
    for p1, a1 in pairs:  # monotone: a smaller raw p never gets a larger adjusted one
        for p2, a2 in pairs:
            if p1 < p2:
                assert a1 <= a2
    real = [p for p in ps if p is not None]
    adjusted = [a for a in adj if a is not None]
    assert {i for i, a in enumerate(adjusted) if a <= alpha} == _step_down_rejections(real, alpha)


# ---------------------------------------------------------------- Hedges' g


def test_hedges_g_by_hand():
    # a: mean 5, sum of squares 20; b: mean 2, sum of squares 2; df = 4, pooled var 22/4 = 5.5;
    # d = 3 / sqrt(5.5) = 1.27920; J = 1 - 3/15 = 0.8.
    assert hedges_g([2.0, 4.0, 6.0, 8.0], [1.0, 3.0]) == pytest.approx(1.0233634385069301, rel=1e-12)
    assert hedges_g([1.0, 3.0], [2.0, 4.0, 6.0, 8.0]) == pytest.approx(-1.0233634385069301, rel=1e-12)


def test_hedges_g_edge_cases():
    assert hedges_g([1.0], [1.0, 2.0]) is None
    assert hedges_g([1.0, 2.0], []) is None
    assert hedges_g([2.0, 2.0], [1.0, 1.0]) == math.inf
    assert hedges_g([1.0, 1.0], [2.0, 2.0]) == -math.inf
    assert hedges_g([1.0, 1.0], [1.0, 1.0]) == 0.0


# ---------------------------------------------------------------- compare_arms

# Two values a side, both of variance 2, means m and 0: Welch's t = m / sqrt(2) with df = 2,
# where the t distribution has a closed form, so p = 1 - m / sqrt(m^2 + 4), and an arm with a
# chosen p has m = 2r / sqrt(1 - r^2), r = 1 - p. Hedges' g = (m / sqrt 2) * (1 - 3/7).
BASE = [1.0, -1.0]


def _arm_with_p(p):
    r = 1.0 - p
    m = 2 * r / math.sqrt(1 - r * r)
    return [m + 1.0, m - 1.0], m


def test_compare_arms_finds_the_clear_difference_and_not_the_absent_one():
    samples = {"base": [0.50, 0.51, 0.49, 0.50], "clear": [0.70, 0.71, 0.69, 0.70],
               "same": [0.50, 0.52, 0.48, 0.50], "one-seed": [0.9], "empty": []}
    out = compare_arms(samples, "base", higher_is_better=True)
    assert out["base"] is None and out["empty"] is None
    clear, same, one = out["clear"], out["same"], out["one-seed"]
    assert clear["baseline"] == "base" and clear["diff"] == pytest.approx(0.2)
    assert clear["significant"] and clear["better"] is True and clear["p_holm"] < 1e-5
    # Identical means: t = 0, p = 1 exactly, Holm keeps it at 1; g = 0.
    assert same["diff"] == pytest.approx(0.0, abs=1e-12) and same["p"] == pytest.approx(1.0)
    assert same["p_holm"] == pytest.approx(1.0) and not same["significant"] and same["better"] is None
    assert same["effect_size"] == pytest.approx(0.0, abs=1e-9)
    # One seed: a difference, no test, and the Holm family is the two tested arms.
    assert one["diff"] == pytest.approx(0.4) and one["p"] is None and one["p_holm"] is None
    assert not one["significant"] and one["effect_size"] is None and one["better"] is None
    assert clear["p_holm"] == pytest.approx(2 * clear["p"])
    lower = compare_arms(samples, "base", higher_is_better=False)["clear"]
    assert lower["significant"] and lower["better"] is False  # a higher loss is worse


def test_the_correction_overturns_two_nominally_significant_arms():
    p03, m03 = _arm_with_p(0.03)
    p04, m04 = _arm_with_p(0.04)
    tight, _ = _arm_with_p(0.0002)
    out = compare_arms({"base": BASE, "p03": p03, "p04": p04, "tight": tight}, "base", higher_is_better=True)
    assert out["p03"]["p"] == pytest.approx(0.03, rel=1e-9)
    assert out["p04"]["p"] == pytest.approx(0.04, rel=1e-9)
    # m = 3: 0.0002 * 3 = 0.0006; 0.03 * 2 = 0.06; 0.04 * 1 = 0.04, raised to 0.06.
    assert out["tight"]["p_holm"] == pytest.approx(0.0006, rel=1e-9) and out["tight"]["significant"]
    assert out["p03"]["p_holm"] == pytest.approx(0.06, rel=1e-9)
    assert out["p04"]["p_holm"] == pytest.approx(0.06, rel=1e-9)
    assert not out["p03"]["significant"] and not out["p04"]["significant"]
    assert out["p03"]["better"] is None and out["tight"]["better"] is True
    assert out["p04"]["diff"] == pytest.approx(m04)
    assert out["p04"]["effect_size"] == pytest.approx(m04 / math.sqrt(2) * 4 / 7)
    # Alone, the same arm is significant: only the family makes it not.
    alone = compare_arms({"base": BASE, "p03": p03}, "base", higher_is_better=True)["p03"]
    assert alone["p_holm"] == pytest.approx(0.03) and alone["significant"]
    assert m03 > 0


def test_compare_arms_refuses_an_unknown_baseline_and_non_finite_values():
    no_baseline = compare_arms({"base": [], "a": [1.0, 2.0]}, "base", higher_is_better=True)
    assert no_baseline == {"base": None, "a": None}
    with pytest.raises(ValueError, match="baseline"):
        compare_arms({"a": [1.0, 2.0]}, "base", higher_is_better=True)
    with pytest.raises(ValueError, match="'a'"):
        compare_arms({"base": [1.0, 2.0], "a": [1.0, float("nan")]}, "base", higher_is_better=True)


# Three decimals, like real scores: variances of ~1e-300 would underflow inside Welch's df.
SCORES = st.floats(-10, 10).map(lambda v: round(v, 3))


@SLOW_OK
@given(st.dictionaries(st.sampled_from("abcdef"), st.lists(SCORES, max_size=5), max_size=6),
       st.lists(SCORES, min_size=2, max_size=5), st.booleans())
def test_compare_arms_properties(arms, base, higher):
    out = compare_arms({**arms, "base": base}, "base", higher_is_better=higher)
    assert out["base"] is None
    for arm, values in arms.items():
        v = out[arm]
        assert (v is None) == (not values)
        if v is None:
            continue
        assert (v["p"] is None) == (len(values) < 2) == (v["p_holm"] is None)
        if v["p"] is not None:
            assert v["p"] <= v["p_holm"] <= 1.0
        assert v["significant"] == (v["p_holm"] is not None and v["p_holm"] < 0.05)
        assert (v["better"] is None) == (not v["significant"])


# ---------------------------------------------------------------- power laws

CS = [1e3, 1e4, 1e5, 1e6]


def test_power_law_fit_recovers_an_exact_law():
    fit = power_law_fit(CS, [[3.0 * c ** -0.2] * 2 for c in CS])
    assert fit["a"] == pytest.approx(3.0, rel=1e-9) and fit["b"] == pytest.approx(-0.2, rel=1e-9)
    assert fit["r2"] == pytest.approx(1.0) and fit["b_se"] == pytest.approx(0.0, abs=1e-9)
    assert fit["n_points"] == 8 and fit["n_budgets"] == 4
    for (c, mean), want in zip(fit["points"], CS):
        assert c == want and mean == pytest.approx(3.0 * want ** -0.2)


def test_power_law_fit_standard_error_by_hand():
    # log C = 0, 1, 2 and log y = 0, 1, 1: b = sxy / sxx = 1 / 2, log a = 2/3 - 1/2 = 1/6;
    # residuals -1/6, 1/3, -1/6, sse = 1/6, se(b) = sqrt(sse / 1 / sxx) = sqrt(1/12);
    # r2 = 1 - (1/6) / (2/3) = 0.75; t(0.975, 1 df) = tan(0.475 pi) (the Cauchy quantile).
    fit = power_law_fit([1.0, math.e, math.e ** 2], [[1.0], [math.e], [math.e]])
    assert fit["b"] == pytest.approx(0.5) and fit["a"] == pytest.approx(math.exp(1 / 6))
    assert fit["b_se"] == pytest.approx(math.sqrt(1 / 12)) and fit["r2"] == pytest.approx(0.75)
    assert fit["b_ci95"] == pytest.approx(math.tan(0.475 * math.pi) * math.sqrt(1 / 12))


def _noisy_fit(seed, sigma=0.05):
    rng = np.random.default_rng(seed)
    cs = [1e3 * 4 ** i for i in range(6)]
    values = [[3.0 * c ** -0.2 * math.exp(sigma * rng.standard_normal()) for _ in range(3)] for c in cs]
    return cs, power_law_fit(cs, values)


def test_power_law_fit_on_noisy_data_recovers_the_law_within_its_error_bar():
    cs, fit = _noisy_fit(0)
    sigma = 0.05
    assert abs(fit["b"] - (-0.2)) <= 3 * fit["b_se"] and fit["a"] == pytest.approx(3.0, rel=0.2)
    logs = [math.log(c) for c in cs for _ in range(3)]
    mean = sum(logs) / len(logs)
    expected_se = sigma / math.sqrt(sum((x - mean) ** 2 for x in logs))  # the noise is known
    assert 0.5 * expected_se < fit["b_se"] < 2 * expected_se
    assert fit["n_points"] == 18 and 0.9 < fit["r2"] <= 1.0
    # The 95% interval is honest: over 1000 fixed seeds it covers the true exponent about 95% of
    # the time (93.7% here; binomial sd 0.7%, the band is 3 sd each side). A normal quantile in
    # place of t, or a standard error off by sqrt(n / (n - 2)), would land outside it.
    covered = sum(abs(f["b"] + 0.2) <= f["b_ci95"] for f in (_noisy_fit(s)[1] for s in range(1000)))
    assert 0.93 <= covered / 1000 <= 0.97


@SLOW_OK
@given(st.floats(0.1, 10.0), st.floats(-1.0, 0.5))
def test_power_law_fit_recovers_any_exact_law(a, b):
    fit = power_law_fit(CS, [[a * c ** b] for c in CS])
    assert fit["a"] == pytest.approx(a, rel=1e-6) and fit["b"] == pytest.approx(b, rel=1e-6, abs=1e-9)


def test_power_law_fit_none_cases():
    assert power_law_fit([1e9, 1e9], [[1.0], [2.0]]) is None  # one distinct budget
    assert power_law_fit([1e3, 1e4], [[1.0], []]) is None  # one budget with values
    for bad in (0.0, -1.0, math.nan, math.inf):
        assert power_law_fit(CS, [[1.0], [bad], [1.0], [1.0]]) is None
    assert power_law_fit([0.0, 1e3], [[1.0], [1.0]]) is None  # no logarithm of a zero budget
    two = power_law_fit([1e3, 1e4], [[1.0], [0.5]])  # a line through two points: no error bar
    assert two["b"] == pytest.approx(math.log10(0.5)) and two["b_se"] is None and two["b_ci95"] is None
    with pytest.raises(ValueError):
        power_law_fit([1e3, 1e4], [[1.0]])


def test_error_of_accuracy():
    assert error_of_accuracy(0.9, 1e-3) == pytest.approx(0.1)
    assert error_of_accuracy(1.0, 1 / (2 * 400)) == 1 / 800  # perfect: half of one answer in 400
    assert error_of_accuracy(1.0) == 1e-3


def test_crossing_of_two_known_laws():
    # 4 C^-0.5 = C^-0.3  <=>  C^0.2 = 4  <=>  C = 4^5 = 1024.
    f, g = {"a": 4.0, "b": -0.5}, {"a": 1.0, "b": -0.3}
    assert crossing(f, g, 1e3, 2e3) == pytest.approx(1024.0)
    assert crossing(g, f, 1e3, 2e3) == pytest.approx(1024.0)
    assert crossing(f, g, 1.0, 1e3) is None and crossing(f, g, 2e3, 1e6) is None
    assert crossing(f, {"a": 2.0, "b": -0.5}, 1.0, 1e9) is None  # parallel: never meet


def test_spread():
    assert spread([0.3, 0.1, 0.25]) == pytest.approx(0.2)
    assert spread([math.nan, 0.2, None, 0.5]) == pytest.approx(0.3)  # NaN first: max() would keep it
    assert spread([0.3]) is None and spread([]) is None and spread([None, 1.0]) is None
