"""The correctness gate: before an algebra is timed or scored, check it in the same process.

A speedup or a score is only evidence if the mechanism computed what it claims. Three quick
checks on the module the decoder runs (built by `mgr.model.blocks.make_stack`: the algebra's
stack for an entry with a stack factory, else the attention module of the first block), at
tiny sizes:

1. causality: changing the inputs at positions >= t leaves every output before t unchanged,
   for every t in 1..T-1 (max abs change <= CAUSAL_ATOL);
2. the fast path against the registry's `reference`, the slow, obviously correct form (max
   abs difference over max |reference| <= REFERENCE_RTOL);
3. for caching algebras: a prefill then token-by-token decoding equals the full forward (max
   abs difference <= CACHE_ATOL).

The causality forward runs every cut as one batch of copies, and checks 2 and 3 run on the
plain batch and compare with its copy, so a module that mixes the sequences of a batch fails
them. A check that raises counts as failed, with the exception's first line as the reason:
`check_entry` never raises for a broken algebra. Each check is one jitted program (the module
is split once and merged inside the trace), so an algebra costs three small compiles.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    from attention.base import AttentionEntry
    from mgr.config import ModelConfig

B, T, PREFILL = 2, 8, 3
CAUSAL_ATOL, REFERENCE_RTOL, CACHE_ATOL = 1e-5, 1e-3, 1e-4
NOISE = 3.0  # the scale of the change made to later inputs: large against unit-normal x

# (name, options as canonical JSON, seed) -> result. The gate is a property of the code loaded
# in this process, so one check per process is enough however many runs an arm has.
_RESULTS: dict[tuple, dict] = {}


def gate_config(name: str, options: dict | None = None) -> ModelConfig:
    """The tiny decoder configuration the gate builds `name` (with its `options`) at."""
    from mgr.config import ModelConfig

    return ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=12,
                       attention=name, attention_options={name: options} if options else {})


def check_algebra(name: str, options: dict | None = None, *, seed: int = 0) -> dict:
    """`check_entry` for the registered algebra `name` with its knobs `options`, at the sizes
    of `gate_config`; computed once per process for each (name, options, seed).

    An unknown name raises (it is the caller's mistake, not a broken algebra); options the
    algebra rejects at these sizes are a failed gate with the validation message as reason.
    """
    import attention
    from core.errors import MgrError

    entry = attention.get(name)
    key = (name, json.dumps(options or {}, sort_keys=True, default=repr), seed)
    if key not in _RESULTS:
        try:
            cfg = gate_config(name, options)
        except MgrError as e:
            _RESULTS[key] = _result(name, [f"config: {_first_line(e)}"], _empty_checks(), 0.0)
        else:
            _RESULTS[key] = check_entry(entry, cfg, seed=seed)
    cached = _RESULTS[key]
    return {**cached, "checks": dict(cached["checks"])}  # callers may edit their copy


def check_entry(entry: AttentionEntry, dims_cfg: ModelConfig, *, seed: int = 0) -> dict:
    """Check the algebra `entry` (an `attention.AttentionEntry`, registered or not) built at the
    sizes of the ModelConfig `dims_cfg`, on random inputs drawn from `seed`.

    Returns {"algebra": entry.name, "passed": bool, "reason": None or one line naming each
    failed check and its measured error, "checks": {"causal_max_leak": float,
    "reference_max_err": float, "cache_max_err": float or None (no cache)}, "seconds": float}.
    A measurement a failure prevented stays None.
    """
    from flax import nnx

    t0 = time.perf_counter()
    checks, failures = _empty_checks(), []
    # Highest matmul precision: the tolerances judge the algebra, not TF32 rounding on a GPU.
    with jax.default_matmul_precision("highest"):
        try:
            graphdef, state = nnx.split(_decoder_module(entry, dims_cfg))
        except Exception as e:  # noqa: BLE001 - a broken algebra is a failed gate, not a crash
            return _result(entry.name, [f"build raised {_describe(e)}"], checks, time.perf_counter() - t0)
        kx, kn = jax.random.split(jax.random.key(seed))
        x = jax.random.normal(kx, (B, T, dims_cfg.d_model), jnp.float32)
        noise = NOISE * jax.random.normal(kn, x.shape, jnp.float32)
        pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        try:
            y, checks["causal_max_leak"], problem = _causality(graphdef, state, x, noise, pos)
        except Exception as e:  # noqa: BLE001
            return _result(entry.name, [f"forward raised {_describe(e)}"], checks, time.perf_counter() - t0)
        failures += [problem] if problem else []
        later = [("reference_max_err", "reference", _reference)]
        later += [("cache_max_err", "cache", _cache)] if entry.supports_cache else []
        for key, label, check in later:
            try:
                checks[key], problem = check(entry, graphdef, state, x, pos, y)
            except Exception as e:  # noqa: BLE001
                problem = f"{label} raised {_describe(e)}"
            failures += [problem] if problem else []
    return _result(entry.name, failures, checks, time.perf_counter() - t0)


def _decoder_module(entry, dims_cfg):
    """The module the decoder runs for layers of `entry`, built by `make_stack` itself.

    `make_stack` finds algebras through the registry by name, so an entry that is not the
    registered one (a variant under test) is installed under its name while the stack is
    built, and the registry is restored at once; the checks then run on what was built.
    """
    from flax import nnx

    from mgr.model.blocks import make_stack

    with _registered(entry):
        cfg = dims_cfg if dims_cfg.attention == entry.name else dataclasses.replace(dims_cfg,
                                                                                    attention=entry.name)
        first = make_stack(cfg, rngs=nnx.Rngs(0))[0]
    return first if entry.stack_factory is not None else first.attn


@contextlib.contextmanager
def _registered(entry):
    from attention import registry

    table = registry._REGISTRY  # no public way to swap an entry; the swap lasts one build
    previous = table.get(entry.name)
    table[entry.name] = entry
    try:
        yield
    finally:
        if previous is None:
            del table[entry.name]
        else:
            table[entry.name] = previous


def _causality(graphdef, state, x, noise, pos) -> tuple[jax.Array, float, str | None]:
    """The full forward on `x` (the other checks compare to it), the largest leak, a problem."""
    from flax import nnx

    # Copy c of the batch (c = 1..T-1) has its inputs changed at positions >= c; copy 0 is
    # `x` itself. One forward over all the copies covers every cut in one compile.
    cuts = jnp.arange(T)

    def run(state, x, noise, pos):
        later = (jnp.arange(T)[None, :] >= cuts[:, None]) & (cuts[:, None] > 0)  # [C, T]
        xs = x[None] + noise[None] * later[:, None, :, None]  # [C, B, T, D]
        ys = nnx.merge(graphdef, state)(xs.reshape(T * B, T, -1), jnp.tile(pos, (T, 1)))[0]
        ys = ys.reshape(xs.shape)
        moved = jnp.where(later[:, None, :, None], 0.0, jnp.abs(ys - ys[:1]))
        by_cut = jnp.max(moved, axis=(1, 2, 3))[1:]
        # max and argmax propagate NaN, so a NaN leak reads as a failure, never as a pass.
        return ys[0], jnp.max(by_cut), jnp.argmax(by_cut) + 1

    y, leak, worst_cut = _jit(run)(state, x, noise, pos)
    leak = float(leak)
    if not bool(jnp.all(jnp.isfinite(y))):  # nothing downstream can be measured on it
        raise FloatingPointError("the output is not finite")
    if not leak <= CAUSAL_ATOL:
        return y, leak, (f"causality: outputs before position {int(worst_cut)} moved by {leak:.3g} "
                         f"when later inputs changed")
    return y, leak, None


def _reference(entry, graphdef, state, x, pos, y) -> tuple[float, str | None]:
    from flax import nnx

    # Jitted: references loop in Python, and one compile beats dispatching every op eagerly.
    ref = _jit(lambda state, x, pos: entry.reference(nnx.merge(graphdef, state), x, pos))(state, x, pos)
    err = float(jnp.max(jnp.abs(ref - y)) / jnp.maximum(jnp.max(jnp.abs(ref)), 1e-6))
    if not err <= REFERENCE_RTOL:
        return err, (f"reference: the fast path differs from the reference by {err:.3g} "
                     f"(max error / max |ref|)")
    return err, None


def _cache(entry, graphdef, state, x, pos, y) -> tuple[float, str | None]:
    from flax import nnx

    from attention.base import scan

    def run(state, x, pos):
        module = nnx.merge(graphdef, state)
        y0, cache = module(x[:, :PREFILL], pos[:, :PREFILL], module.init_cache(B))

        def step(cache, token):  # one decoding step: a [B, 1] slice, as generation feeds it
            yt, cache = nnx.merge(graphdef, state)(token[0], token[1], cache)
            return cache, yt

        tokens = (jnp.swapaxes(x[:, PREFILL:, None], 0, 1), jnp.swapaxes(pos[:, PREFILL:, None], 0, 1))
        _, ys = scan(step, cache, tokens)  # [T - PREFILL, B, 1, D]
        return jnp.concatenate([y0, jnp.swapaxes(ys[:, :, 0], 0, 1)], axis=1)

    err = float(jnp.max(jnp.abs(_jit(run)(state, x, pos) - y)))
    if not err <= CACHE_ATOL:
        return err, f"cache: prefill + decoding differs from the full forward by {err:.3g}"
    return err, None


def _jit(fn):
    # LLVM optimisation off: these programs run once, and on CPU it halves their compile time.
    return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0})


def _empty_checks() -> dict[str, Any]:
    return {"causal_max_leak": None, "reference_max_err": None, "cache_max_err": None}


def _result(name: str, failures: list[str], checks: dict, seconds: float) -> dict:
    return {"algebra": name, "passed": not failures, "reason": "; ".join(failures) or None,
            "checks": checks, "seconds": round(seconds, 3)}


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {_first_line(e)}"


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]
