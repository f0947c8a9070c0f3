"""The correctness gate: before an algebra is timed or scored, check it in the same process.

A speedup or a score is only evidence if the mechanism computed what it claims. Three quick
checks on the module the decoder runs (built as `mgr.model.blocks.make_stack` builds it: the
algebra's stack for an entry with a stack factory, else the attention module of a block), at
tiny sizes:

1. causality: changing inputs after position t leaves every output up to t unchanged;
2. fast path against the registry's `reference` (the slow, obviously correct form);
3. prefill plus token-by-token decoding equals the full forward (for caching algebras).

A check that raises counts as failed; `check_entry` never raises for a broken algebra.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp

B, T, PREFILL = 2, 8, 3
CAUSAL_ATOL, REFERENCE_RTOL, CACHE_ATOL = 1e-5, 1e-3, 1e-4

_CACHE: dict[tuple, dict] = {}


def _module(entry, cfg):
    """Built from `entry` itself (not looked up again by name) exactly as `make_stack` builds it:
    the stack spanning every layer, or the attention module a `Block` holds."""
    from flax import nnx

    rngs = nnx.Rngs(0)
    if entry.stack_factory is not None:
        return entry.stack_factory(cfg, list(range(cfg.n_layers)), rngs=rngs)
    return entry.module_cls(cfg.attention_dims(), cfg.algebra_config(entry.name), rngs=rngs)


def check_entry(entry, cfg, *, seed: int = 0) -> dict:
    """Run the three checks on `entry` built with the dimensions of ModelConfig `cfg`."""
    from flax import nnx

    t0 = time.perf_counter()
    checks: dict[str, Any] = {"causal_max_leak": None, "reference_max_err": None, "cache_max_err": None}
    failures: list[str] = []
    try:
        m = _module(entry, cfg)
        x = jax.random.normal(jax.random.key(seed + 1), (B, T, cfg.d_model), jnp.float32)
        pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        run = nnx.jit(lambda mod, x, p: mod(x, p)[0])
        y = run(m, x, pos)
        cut = T // 2  # positions >= cut are changed; outputs < cut must not move
        noise = 3.0 * jax.random.normal(jax.random.key(seed + 2), x[:, cut:].shape)
        y2 = run(m, x.at[:, cut:].add(noise), pos)
        leak = float(jnp.max(jnp.abs(y2[:, :cut] - y[:, :cut])))
        checks["causal_max_leak"] = leak
        if not leak <= CAUSAL_ATOL:
            failures.append(f"causality: outputs before position {cut} moved by {leak:.3g} when later "
                            f"inputs changed")
        ref = nnx.jit(lambda mod, x, p: entry.reference(mod, x, p))(m, x, pos)
        err = float(jnp.max(jnp.abs(ref - y)) / jnp.maximum(jnp.max(jnp.abs(ref)), 1.0))
        checks["reference_max_err"] = err
        if not err <= REFERENCE_RTOL:
            failures.append(f"reference: the fast path differs from the reference by {err:.3g} (relative)")
        if entry.supports_cache:
            err = _cache_error(m, x, pos, y)
            checks["cache_max_err"] = err
            if not err <= CACHE_ATOL:
                failures.append(f"cache: prefill + decode differs from the full forward by {err:.3g}")
    except Exception as e:  # noqa: BLE001 - a broken algebra is a failed gate, not a crash
        first = (str(e).strip().splitlines() or [""])[0][:200]
        failures.append(f"raised {type(e).__name__}: {first}")
    return {"algebra": entry.name, "passed": not failures, "reason": "; ".join(failures) or None,
            "checks": checks, "seconds": round(time.perf_counter() - t0, 3)}


def _cache_error(m, x, pos, full) -> float:
    from flax import nnx

    cache = m.init_cache(B)
    y0, cache = nnx.jit(lambda mod, xt, pt, c: mod(xt, pt, c))(m, x[:, :PREFILL], pos[:, :PREFILL], cache)
    step = nnx.jit(lambda mod, xt, pt, c: mod(xt, pt, c))
    outs = [y0]
    for t in range(PREFILL, T):  # decoding is sequential by nature; T is 8
        yt, cache = step(m, x[:, t:t + 1], pos[:, t:t + 1], cache)
        outs.append(yt)
    return float(jnp.max(jnp.abs(jnp.concatenate(outs, axis=1) - full)))


def gate_config(name: str, options: dict | None = None):
    """The tiny decoder configuration the gate builds `name` with."""
    import attention
    from mgr.config import ModelConfig

    entry = attention.get(name)
    return ModelConfig(vocab_size=64, d_model=32, n_layers=2 if entry.stack_factory else 1, n_heads=4,
                       n_kv_heads=2, max_seq_len=16, attention=name,
                       attention_options={name: options} if options else {})


def check_algebra(name: str, options: dict | None = None, *, seed: int = 0) -> dict:
    """`check_entry` for a registered algebra (with its knobs), once per process."""
    import json

    import attention

    key = (name, json.dumps(options or {}, sort_keys=True), seed)
    if key not in _CACHE:
        _CACHE[key] = check_entry(attention.get(name), gate_config(name, options), seed=seed)
    return _CACHE[key]
