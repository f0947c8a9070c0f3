"""Small statistics for comparing arms over seeds: mean, std, t-based 95% CI, Welch's t-test."""

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
