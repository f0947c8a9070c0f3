"""The attention contract, checked for every registered algebra.

A new algebra gets every test here for free; capabilities (caching) come from its registry
entry, never from a list of names. Dimensions are tiny so each algebra compiles in seconds.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention
from attention.base import AttentionDims

B, T, D, H, G = 2, 8, 32, 4, 2
DIMS = AttentionDims(d_model=D, n_heads=H, n_kv_heads=G, head_dim=D // H, max_seq_len=16)
NAMES = attention.names()


@pytest.fixture(scope="module", params=NAMES)
def algebra(request):
    entry = attention.get(request.param)
    module = entry.module_cls(DIMS, entry.config_cls(), rngs=nnx.Rngs(0))
    return entry, module


def inputs(seed=1, t=T, start=0):
    x = jax.random.normal(jax.random.key(seed), (B, t, D), jnp.float32)
    pos = jnp.broadcast_to(jnp.arange(start, start + t, dtype=jnp.int32), (B, t))
    return x, pos


def forward(module, x, pos):
    return module(x, pos)[0]


def test_shape_dtype_finite(algebra):
    _, m = algebra
    x, pos = inputs()
    y, cache = m(x, pos)
    assert y.shape == x.shape and y.dtype == x.dtype and cache is None
    assert bool(jnp.all(jnp.isfinite(y)))
    assert float(jnp.std(y)) > 1e-4  # a module that outputs zeros would pass everything else
    yb, _ = m(x.astype(jnp.bfloat16), pos)
    assert yb.dtype == jnp.bfloat16 and yb.shape == x.shape and bool(jnp.all(jnp.isfinite(yb)))


def test_causal(algebra):
    """Changing inputs after position t leaves outputs up to t unchanged, and changes t+1..."""
    _, m = algebra
    x, pos = inputs()
    y = forward(m, x, pos)
    for t in (0, 3, T - 2):
        noise = jax.random.normal(jax.random.key(t + 7), x[:, t + 1:].shape) * 3.0
        y2 = forward(m, x.at[:, t + 1:].add(noise), pos)
        np.testing.assert_allclose(y2[:, :t + 1], y[:, :t + 1], atol=1e-5, rtol=1e-5)
        assert float(jnp.max(jnp.abs(y2[:, t + 1:] - y[:, t + 1:]))) > 1e-4


def test_jit_equals_eager(algebra):
    _, m = algebra
    x, pos = inputs()
    eager = forward(m, x, pos)
    jitted = nnx.jit(forward)(m, x, pos)
    np.testing.assert_allclose(jitted, eager, atol=1e-5, rtol=1e-5)


def test_batch_independence(algebra):
    _, m = algebra
    x, pos = inputs()
    y = forward(m, x, pos)
    other = jax.random.normal(jax.random.key(99), x[1:].shape)
    y2 = forward(m, jnp.concatenate([x[:1], other]), pos)
    np.testing.assert_allclose(y2[:1], y[:1], atol=1e-5, rtol=1e-5)


def test_fast_equals_reference_values_and_grads(algebra):
    entry, m = algebra
    x, pos = inputs(t=6, start=2)
    np.testing.assert_allclose(forward(m, x, pos), entry.reference(m, x, pos), atol=2e-5, rtol=2e-4)
    w = jax.random.normal(jax.random.key(5), x.shape)

    def loss(mod, x, fn):
        return jnp.sum(fn(mod, x, pos) * w)

    g_fast = nnx.grad(loss, argnums=(0, 1))(m, x, forward)
    g_ref = nnx.grad(loss, argnums=(0, 1))(m, x, entry.reference)
    flat_fast, flat_ref = jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)
    assert len(flat_fast) == len(flat_ref) and len(flat_fast) > 1
    for a, b in zip(flat_fast, flat_ref):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-3)
    assert any(float(jnp.max(jnp.abs(a))) > 0 for a in flat_fast[:-1])  # gradients reach params


def test_cache_equals_full_forward(algebra):
    entry, m = algebra
    if not entry.supports_cache:
        pytest.skip(f"{entry.name} registers supports_cache=False")
    x, pos = inputs(t=T)
    full = forward(m, x, pos)
    cache = m.init_cache(B)
    prefill = 3
    y0, cache = m(x[:, :prefill], pos[:, :prefill], cache)
    outs = [y0]
    step = nnx.jit(lambda mod, xt, pt, c: mod(xt, pt, c))
    for t in range(prefill, T):
        yt, cache = step(m, x[:, t:t + 1], pos[:, t:t + 1], cache)
        outs.append(yt)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5, rtol=1e-4)
