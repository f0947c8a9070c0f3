"""The attention contract, checked for every registered algebra.

A new algebra gets every test here for free; capabilities (caching, relative positions,
invertibility, a stack factory) come from its registry entry, never from a list of names. The
module under test is the one the decoder runs (`mgr.model.blocks.make_stack`): the algebra's
stack for an entry with a stack factory, else its attention module. Dimensions are tiny so each
algebra compiles in seconds.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention
from mgr.config import ModelConfig
from mgr.model.blocks import make_stack

B, T, D, H, G, S_MAX = 2, 8, 32, 4, 2, 16
NAMES = attention.names()


def decoder_module(entry):
    """What the decoder builds for layers of this algebra: one stack module spanning two
    layers when the entry has a stack factory, else the attention module inside the block."""
    layers = 2 if entry.stack_factory is not None else 1
    cfg = ModelConfig(vocab_size=64, d_model=D, n_layers=layers, n_heads=H, n_kv_heads=G,
                      max_seq_len=S_MAX, attention=entry.name)
    first = make_stack(cfg, rngs=nnx.Rngs(0))[0]
    return first if entry.stack_factory is not None else first.attn


@pytest.fixture(scope="module", params=NAMES)
def algebra(request):
    entry = attention.get(request.param)
    return entry, decoder_module(entry)


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
    w = jax.random.normal(jax.random.key(5), x.shape)

    def outputs_and_grads(fn):
        # Jitted: the references loop in Python, and compiling the unrolled loop once is much
        # cheaper on a cold cache than dispatching (and compiling) every op of it eagerly.
        def loss(mod, x):
            y = fn(mod, x, pos)
            return jnp.sum(y * w), y

        grads, y = nnx.jit(nnx.grad(loss, argnums=(0, 1), has_aux=True))(m, x)
        return y, jax.tree.leaves(grads)

    y_fast, flat_fast = outputs_and_grads(forward)
    y_ref, flat_ref = outputs_and_grads(entry.reference)
    np.testing.assert_allclose(y_fast, y_ref, atol=2e-5, rtol=2e-4)
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


def test_relative_positions(algebra):
    """Shifting every position by one constant (per row: a batch may mix shifts) leaves the
    output unchanged. Not vacuous: either spreading positions apart (same order, so the same
    causal mask, other distances) moves the output, or the module reads no position at all,
    so that even a permutation of positions, which reorders the causal mask, changes nothing."""
    entry, m = algebra
    if not entry.relative_positions:
        pytest.skip(f"{entry.name} registers relative_positions=False")
    x, pos = inputs()
    run = nnx.jit(forward)
    y = run(m, x, pos)
    for shift in (jnp.array([[5], [5]]), jnp.array([[3], [8]])):  # stays below max_seq_len
        np.testing.assert_allclose(run(m, x, pos + shift), y, atol=2e-5, rtol=1e-4)
    spread = float(jnp.max(jnp.abs(run(m, x, 2 * pos) - y)))
    if spread < 1e-4:
        perm = jnp.array([3, 0, 6, 1, 7, 2, 4, 5], jnp.int32)
        np.testing.assert_array_equal(run(m, x, jnp.broadcast_to(perm, pos.shape)), y)


def test_inverse_recovers_the_input(algebra):
    """An invertible module's `inverse` undoes its forward pass on its own parameters."""
    entry, m = algebra
    if not entry.invertible:
        pytest.skip(f"{entry.name} registers invertible=False")
    x, pos = inputs()
    y = nnx.jit(forward)(m, x, pos)
    assert float(jnp.max(jnp.abs(y - x))) > 1e-1  # the map is far from the identity
    np.testing.assert_allclose(nnx.jit(lambda mod, y, p: mod.inverse(y, p))(m, y, pos), x, atol=1e-5)
