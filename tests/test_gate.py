"""The correctness gate: every registered algebra passes; a module that reads the future, a
reference that disagrees, a cache that forgets or a module that raises each fail, with a reason
that names the check, and the registry is left as it was."""

import dataclasses
import json

import jax.numpy as jnp
import pytest

import attention
from mgr.bench import gate

STANDARD = attention.get("standard")


@pytest.mark.parametrize("name", attention.names())
def test_every_registered_algebra_passes_the_gate(name):
    result = gate.check_algebra(name)
    assert result["passed"], (name, result["reason"])
    assert result["algebra"] == name and result["reason"] is None
    checks = result["checks"]
    assert checks["causal_max_leak"] <= gate.CAUSAL_ATOL
    assert checks["reference_max_err"] <= gate.REFERENCE_RTOL
    if attention.get(name).supports_cache:
        assert checks["cache_max_err"] <= gate.CACHE_ATOL
    else:
        assert checks["cache_max_err"] is None
    json.dumps(result, allow_nan=False)  # it is written to the suite's gates/<name>.json


class _Peeking(STANDARD.module_cls):
    """Standard attention plus the mean of the input from each position to the end."""

    def __call__(self, x, positions, cache=None):
        y, cache = super().__call__(x, positions, cache)
        t = x.shape[1]
        future_mean = jnp.flip(jnp.cumsum(jnp.flip(x, 1), 1), 1) / jnp.arange(t, 0, -1)[None, :, None]
        return y + future_mean, cache


class _OnePairLeak(STANDARD.module_cls):
    """Reads the future at one place only: position 2 sees position 3. Caught only if the cut
    between them (change inputs from position 3 on) is among those tried."""

    def __call__(self, x, positions, cache=None):
        y, cache = super().__call__(x, positions, cache)
        if x.shape[1] < 4:
            return y, cache
        return y.at[:, 2].add(0.1 * x[:, 3]), cache


class _Forgetful(STANDARD.module_cls):
    """Right on whole sequences; when decoding it throws the cached prefix away."""

    def __call__(self, x, positions, cache=None):
        if cache is not None and x.shape[1] == 1:
            cache = self.init_cache(x.shape[0])
        return super().__call__(x, positions, cache)


class _Raising(STANDARD.module_cls):
    def __call__(self, x, positions, cache=None):
        raise ValueError("kernel exploded\nsecond line")


class _Unbuildable(STANDARD.module_cls):
    def __init__(self, dims, cfg, *, rngs):
        raise RuntimeError("no such parameter")


class _NaN(STANDARD.module_cls):
    def __call__(self, x, positions, cache=None):
        y, cache = super().__call__(x, positions, cache)
        return y * jnp.nan, cache


def own_forward(module, x, positions):
    """A reference that agrees with the module by construction: only the named check fails."""
    return module(x, positions)[0]


def _check(**changes):
    return gate.check_entry(dataclasses.replace(STANDARD, **changes), gate.gate_config("standard"))


@pytest.mark.parametrize("changes, check, words", [
    ({"module_cls": _Peeking, "reference": own_forward}, "causal_max_leak", "causality: outputs before"),
    ({"module_cls": _OnePairLeak, "reference": own_forward}, "causal_max_leak", "before position 3 moved"),
    ({"reference": lambda m, x, p: m(x, p)[0] + 1e-2}, "reference_max_err", "reference: the fast path"),
    ({"module_cls": _Forgetful, "reference": own_forward}, "cache_max_err", "cache: prefill + decoding"),
], ids=["reads-the-future", "one-pair-leak", "reference-disagrees", "cache-forgets"])
def test_a_broken_algebra_fails_the_named_check(changes, check, words):
    result = _check(**changes)
    assert not result["passed"]
    assert words in result["reason"] and "\n" not in result["reason"]
    tolerance = {"causal_max_leak": gate.CAUSAL_ATOL, "reference_max_err": gate.REFERENCE_RTOL,
                 "cache_max_err": gate.CACHE_ATOL}[check]
    assert result["checks"][check] > tolerance
    assert f"{result['checks'][check]:.3g}" in result["reason"]  # the reason carries the number
    # The registered standard module itself was not what ran, and the registry is unchanged.
    assert attention.get("standard") is STANDARD


@pytest.mark.parametrize("changes, reason", [
    ({"module_cls": _Raising}, "forward raised ValueError: kernel exploded"),
    ({"module_cls": _Unbuildable}, "build raised RuntimeError: no such parameter"),
    ({"module_cls": _NaN}, "forward raised FloatingPointError: the output is not finite"),
], ids=["forward-raises", "build-raises", "not-finite"])
def test_a_module_that_raises_is_a_failed_gate_not_a_crash(changes, reason):
    result = _check(**changes)
    assert not result["passed"] and result["reason"] == reason
    assert result["checks"] == {"causal_max_leak": None, "reference_max_err": None, "cache_max_err": None}


def test_a_raising_reference_fails_only_its_own_check():
    def broken(module, x, positions):
        raise NotImplementedError("reference missing")

    result = _check(reference=broken)
    assert result["reason"] == "reference raised NotImplementedError: reference missing"
    assert result["checks"]["causal_max_leak"] <= gate.CAUSAL_ATOL
    assert result["checks"]["cache_max_err"] <= gate.CACHE_ATOL


def test_an_unregistered_variant_is_checked_under_its_own_name_and_then_removed():
    entry = dataclasses.replace(STANDARD, name="peeking", module_cls=_Peeking, reference=own_forward)
    result = gate.check_entry(entry, gate.gate_config("standard"))
    assert result["algebra"] == "peeking" and not result["passed"]
    assert "peeking" not in attention.names()


def test_each_algebra_and_options_is_checked_once_per_process(monkeypatch):
    calls = []

    def fake(entry, cfg, *, seed=0):
        calls.append((entry.name, cfg.attention_options, seed))
        return {"algebra": entry.name, "passed": True, "reason": None, "seconds": 0.0,
                "checks": {"causal_max_leak": 0.0, "reference_max_err": 0.0, "cache_max_err": 0.0}}

    monkeypatch.setattr(gate, "_RESULTS", {})
    monkeypatch.setattr(gate, "check_entry", fake)
    first = gate.check_algebra("fractal", {"levels": 2, "branches": 3})
    first["checks"]["causal_max_leak"] = 99.0  # a caller editing its copy
    again = gate.check_algebra("fractal", {"branches": 3, "levels": 2})
    assert again["checks"]["causal_max_leak"] == 0.0
    gate.check_algebra("fractal", {"levels": 3})
    gate.check_algebra("fractal", {"levels": 3}, seed=1)
    assert calls == [("fractal", {"fractal": {"levels": 2, "branches": 3}}, 0),
                     ("fractal", {"fractal": {"levels": 3}}, 0), ("fractal", {"fractal": {"levels": 3}}, 1)]


def test_options_the_algebra_rejects_fail_the_gate_and_an_unknown_name_raises(monkeypatch):
    monkeypatch.setattr(gate, "_RESULTS", {})
    result = gate.check_algebra("fractal", {"branches": 1})
    assert not result["passed"] and result["reason"].startswith("config: fractal branches must be >= 2")
    with pytest.raises(KeyError, match="unknown attention"):
        gate.check_algebra("no-such-algebra")
