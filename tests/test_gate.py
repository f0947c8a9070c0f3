"""The correctness gate: every registered algebra passes; a module that reads the future, a
reference that disagrees, a cache that drifts or a module that raises each fail, with a reason."""

import dataclasses

import jax.numpy as jnp
import pytest

import attention
from mgr.bench.gate import check_algebra, check_entry, gate_config

STANDARD = attention.get("standard")


def test_every_registered_algebra_passes_the_gate():
    for name in attention.names():
        result = check_algebra(name)
        assert result["passed"], (name, result["reason"])
        assert result["checks"]["causal_max_leak"] <= 1e-5
        assert result["checks"]["reference_max_err"] <= 1e-3
        if attention.get(name).supports_cache:
            assert result["checks"]["cache_max_err"] <= 1e-4


class _Peeking(STANDARD.module_cls):
    """Standard attention plus the mean of *all* positions: reads the future."""

    def __call__(self, x, positions, cache=None):
        y, cache = super().__call__(x, positions, cache)
        return y + jnp.mean(x, axis=1, keepdims=True), cache


class _Drifting(STANDARD.module_cls):
    """Correct on full sequences, wrong when decoding one token at a time."""

    def __call__(self, x, positions, cache=None):
        y, cache = super().__call__(x, positions, cache)
        return (y + 0.01 if x.shape[1] == 1 else y), cache


class _Raising(STANDARD.module_cls):
    def __call__(self, x, positions, cache=None):
        raise ValueError("kernel exploded\nsecond line")


def _check(**changes):
    entry = dataclasses.replace(STANDARD, **changes)
    return check_entry(entry, gate_config("standard"))


@pytest.mark.parametrize("changes, check, words", [
    ({"module_cls": _Peeking, "reference": lambda m, x, p: m(x, p)[0]}, "causal_max_leak", "causality"),
    ({"reference": lambda m, x, p: m(x, p)[0] * 1.01}, "reference_max_err", "reference"),
    ({"module_cls": _Drifting, "reference": lambda m, x, p: m(x, p)[0]}, "cache_max_err", "cache"),
], ids=["reads-the-future", "reference-disagrees", "cache-drifts"])
def test_a_broken_algebra_fails_the_named_check(changes, check, words):
    result = _check(**changes)
    assert not result["passed"]
    assert words in result["reason"] and "\n" not in result["reason"]
    assert result["checks"][check] > 1e-3


def test_a_module_that_raises_is_a_failed_gate_not_a_crash():
    result = _check(module_cls=_Raising)
    assert not result["passed"]
    assert result["reason"] == "raised ValueError: kernel exploded"
