"""Small statistics for comparing arms over seeds: mean, std, t-based 95% CI, Welch's t-test,
Holm's correction, Hedges' g, power-law fits of a score against the budget and their crossings."""

from __future__ import annotations

import math

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


def holm(pvalues) -> list:
    """Holm–Bonferroni step-down adjusted p-values (monotone, capped at 1); None passes through
    and does not count towards the number of comparisons."""
    idx = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    m, out, running = len(idx), [None] * len(pvalues), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def hedges_g(a: list[float], b: list[float]) -> float | None:
    """Bias-corrected standardised mean difference (mean(a) - mean(b)) / pooled sd; None unless
    both have >= 2 values. Zero pooled sd gives ±inf for a difference, 0 for none."""
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


def spread(means) -> float | None:
    """max - min (a learning-rate grid's sensitivity); None for fewer than two values."""
    means = [m for m in means if m is not None]
    return max(means) - min(means) if len(means) >= 2 else None


def error_of_accuracy(acc: float, floor: float = 1e-3) -> float:
    """1 - accuracy, floored so a perfect score still has a logarithm in a power-law fit."""
    return max(1.0 - acc, floor)


def power_law_fit(budgets, values) -> dict | None:
    """Fit quantity = a * C^b by least squares of log(value) on log(C) over every (budget,
    value) point; `values[i]` are the per-seed values at `budgets[i]`. Returns a, b, b's
    standard error and 95% half-width (t, n - 2 df), r2 and the per-budget means; None with
    fewer than two distinct budgets or a value that is not positive and finite."""
    pts = [(float(c), float(v)) for c, vs in zip(budgets, values) for v in vs]
    if len({c for c, _ in pts}) < 2 or any(not (v > 0 and math.isfinite(v)) or c <= 0 for c, v in pts):
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
            "r2": 1 - sse / sst if sst > 0 else 1.0, "n_points": n, "n_budgets": len(set(budgets)),
            "points": [[float(c), sum(vs) / len(vs)] for c, vs in zip(budgets, values) if vs]}


def crossing(fit_a: dict, fit_b: dict, lo: float, hi: float) -> float | None:
    """The budget C in [lo, hi] where a1 C^b1 = a2 C^b2; None if parallel or outside."""
    db = fit_a["b"] - fit_b["b"]
    if db == 0:
        return None
    c = math.exp(math.log(fit_b["a"] / fit_a["a"]) / db)
    return c if lo <= c <= hi else None
