"""Small statistics for comparing arms over seeds: mean, std, t-based 95% CI, Welch's t-test,
Holm's correction, Hedges' g, the comparison of every arm with a baseline, the spread of a
learning-rate grid, power-law fits of a score against the budget and their crossings.

Pure Python on short lists (a few seeds per arm): the numbers are small enough that clarity
beats vectorising. scipy only supplies the t distribution.
"""

from __future__ import annotations

import math
from typing import Sequence

from scipy import stats as sps


def describe(xs: list[float]) -> dict:
    """n, mean, sample std and the half-width of the two-sided 95% t interval (None if n < 2)."""
    n = len(xs)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95": None}
    mean = sum(xs) / n
    if n < 2:
        return {"n": 1, "mean": mean, "std": None, "ci95": None}
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return {"n": n, "mean": mean, "std": std, "ci95": float(sps.t.ppf(0.975, n - 1)) * std / math.sqrt(n)}


def welch(a: list[float], b: list[float]) -> dict | None:
    """Welch's unequal-variance t-test of mean(a) - mean(b); None unless both have >= 2 values."""
    if len(a) < 2 or len(b) < 2:
        return None
    va = sum((x - sum(a) / len(a)) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - sum(b) / len(b)) ** 2 for x in b) / (len(b) - 1)
    diff = sum(a) / len(a) - sum(b) / len(b)
    se2 = va / len(a) + vb / len(b)
    if se2 == 0:
        return {"diff": diff, "t": math.inf if diff else 0.0, "df": None, "p_value": 0.0 if diff else 1.0}
    t = diff / math.sqrt(se2)
    df = se2 ** 2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
    return {"diff": diff, "t": t, "df": df, "p_value": float(2 * sps.t.sf(abs(t), df))}


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values, in the order given.

    Step-down: the k-th smallest of the m p-values is multiplied by (m - k + 1), a running
    maximum keeps the adjusted values in the order of the raw ones, and each is capped at 1.
    Rejecting where the adjusted value is below alpha controls the family-wise error rate at
    alpha. None (a comparison that could not be tested) passes through as None and does not
    count towards m. A p-value outside [0, 1] (NaN included) raises ValueError: max() would
    silently skip a NaN and report the p before it.
    """
    for p in pvalues:
        if p is not None and not 0.0 <= p <= 1.0:
            raise ValueError(f"holm: p-values must lie in [0, 1], got {p}")
    idx = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    m, out, running = len(idx), [None] * len(pvalues), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def hedges_g(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Hedges' g: (mean(a) - mean(b)) / pooled sd, times the small-sample correction
    J(df) ≈ 1 - 3 / (4 df - 1), df = n_a + n_b - 2 (Hedges 1981; above the exact gamma-function
    form by 1.3% at the smallest df = 2, 0.27% at df = 4 (3 seeds a side), < 0.06% from df = 8).

    None unless both samples have >= 2 values. A pooled sd of zero gives ±inf for a nonzero
    difference and 0.0 for none (identical constant samples).
    """
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return None
    ma, mb = sum(a) / na, sum(b) / nb
    ss = sum((x - ma) ** 2 for x in a) + sum((x - mb) ** 2 for x in b)
    df = na + nb - 2
    sd = math.sqrt(ss / df)
    if sd == 0:
        return 0.0 if ma == mb else math.copysign(math.inf, ma - mb)
    return (ma - mb) / sd * (1 - 3 / (4 * df - 1))


def compare_arms(samples: dict[str, Sequence[float]], baseline: str, *, higher_is_better: bool,
                 alpha: float = 0.05) -> dict[str, dict | None]:
    """Every arm against `baseline`, Holm-corrected over the arms that could be tested.

    `samples` maps an arm to its per-seed values (finite numbers). For each arm other than the
    baseline: {"baseline", "diff" (mean(arm) - mean(baseline)), "p" (Welch; None unless both
    sides have >= 2 values), "p_holm" (Holm over the arms that have a p), "significant"
    (p_holm < alpha), "effect_size" (Hedges' g of arm vs baseline), "better" (when significant:
    whether the difference points the good way, given `higher_is_better`; else None)}. The
    baseline, an arm with no values, and every arm when the baseline has none map to None.
    Raises ValueError for a baseline not in `samples` or a non-finite value.
    """
    if baseline not in samples:
        raise ValueError(f"compare_arms: baseline '{baseline}' is not among the arms {sorted(samples)}")
    for arm, values in samples.items():
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"compare_arms: arm '{arm}' has a non-finite value; drop failed runs first")
    base = list(samples[baseline])
    out: dict[str, dict | None] = {}
    for arm, values in samples.items():
        values = list(values)
        if arm == baseline or not values or not base:
            out[arm] = None
            continue
        test = welch(values, base)
        out[arm] = {"baseline": baseline, "diff": sum(values) / len(values) - sum(base) / len(base),
                    "p": test["p_value"] if test else None, "p_holm": None, "significant": False,
                    "effect_size": hedges_g(values, base), "better": None}
    # One family: the correction spans every comparison made here, tested or not counted.
    tested = [v for v in out.values() if v is not None]
    for v, p_holm in zip(tested, holm([v["p"] for v in tested])):
        v["p_holm"] = p_holm
        v["significant"] = p_holm is not None and p_holm < alpha
        if v["significant"]:
            v["better"] = (v["diff"] > 0) == higher_is_better
    return out


def spread(means: Sequence[float | None]) -> float | None:
    """max - min of the means over a learning-rate grid (its sensitivity to the rate); None and
    NaN entries (rates with no finished run) are skipped; None for fewer than two left."""
    means = [m for m in means if m is not None and not math.isnan(m)]
    return max(means) - min(means) if len(means) >= 2 else None


def error_of_accuracy(acc: float, floor: float = 1e-3) -> float:
    """The quantity an accuracy is fitted as: error = 1 - acc, floored at `floor` so that a
    perfect score still has a logarithm. Callers should pass floor = 1 / (2 * n_scored), half
    of the smallest error the scored answers could show (the default suits ~500 answers).
    """
    return max(1.0 - acc, floor)


def power_law_fit(budgets: Sequence[float], values: Sequence[Sequence[float]]) -> dict | None:
    """Fit quantity = a * C^b by ordinary least squares of log(value) on log(C).

    `values[i]` are the per-seed values at `budgets[i]`; every (budget, value) pair is one
    point, so seeds weigh as data, not as one mean. The quantity must decrease towards zero
    with budget and be positive: a loss as it is, an accuracy as `error_of_accuracy(acc)`.
    Returns {"a", "b", "b_se" (standard error of b; None if n_points < 3), "b_ci95" (the 95%
    half-width, t with n_points - 2 df; None if n_points < 3), "r2" (of the log-log fit),
    "n_points", "n_budgets", "points": [[budget, mean of its values], ...]}; None with fewer
    than two distinct budgets, or a value or budget that is not positive and finite.
    """
    if len(budgets) != len(values):
        raise ValueError(f"power_law_fit: {len(budgets)} budgets but {len(values)} value lists")
    pts = [(float(c), float(v)) for c, vs in zip(budgets, values) for v in vs]
    if any(not (v > 0 and math.isfinite(v) and c > 0 and math.isfinite(c)) for c, v in pts):
        return None
    n_budgets = len({c for c, _ in pts})
    if n_budgets < 2:
        return None
    xs, ys = [math.log(c) for c, _ in pts], [math.log(v) for _, v in pts]
    n = len(pts)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = math.exp(my - b * mx)
    resid = [y - (my + b * (x - mx)) for x, y in zip(xs, ys)]
    sse, sst = sum(r * r for r in resid), sum((y - my) ** 2 for y in ys)
    b_se = math.sqrt(sse / (n - 2) / sxx) if n > 2 else None
    return {"a": a, "b": b, "b_se": b_se,
            "b_ci95": float(sps.t.ppf(0.975, n - 2)) * b_se if b_se is not None else None,
            # A constant quantity is fitted exactly (b = 0): no variance left to explain.
            "r2": 1 - sse / sst if sst > 0 else 1.0, "n_points": n, "n_budgets": n_budgets,
            "points": [[float(c), sum(vs) / len(vs)] for c, vs in zip(budgets, values) if vs]}


def crossing(fit_a: dict, fit_b: dict, lo: float, hi: float) -> float | None:
    """The budget C in [lo, hi] where two fitted laws meet: a1 C^b1 = a2 C^b2, i.e.
    C = (a2 / a1)^(1 / (b1 - b2)). None if the exponents are equal (parallel in log-log: they
    never meet, or coincide) or the meeting point lies outside [lo, hi]."""
    db = fit_a["b"] - fit_b["b"]
    if db == 0:
        return None
    c = math.exp(math.log(fit_b["a"] / fit_a["a"]) / db)
    return c if lo <= c <= hi else None
