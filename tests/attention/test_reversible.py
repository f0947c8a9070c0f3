"""Properties of the reversible stack: exact inversion, unit Jacobian determinant, custom-VJP
gradients equal to plain autodiff, cached decoding, training, and activation memory that does not
grow with depth. The contract suite (tests/attention/test_contract.py) checks the stack the
decoder builds too: causality, jit, batch independence, cache == full forward, relative
positions, inversion, and custom-VJP values and gradients against the entry's reference (a
Python loop over layers under plain autodiff)."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import adam_losses
from flax import nnx
from hypothesis import given, settings, strategies as st

from attention import revstack
from attention.base import AttentionDims
from attention.reversible import ReversibleConfig, ReversibleStack, half_dims
from mgr.config import ModelConfig
from core.errors import MgrError
from mgr.model import Decoder

SETTINGS = settings(max_examples=15, deadline=None)
B, T, D = 2, 8, 32


# ---- the coupling algebra on toy branches (any F, G must work) ------------------------------

def toy_f(p, x):
    return jnp.tanh(x @ p["w"] + 0.5)  # F(0) != 0: the map is never the identity


def toy_g(p, x):
    return jnp.sin(x @ p["w"]) + jnp.tanh(jnp.square(x)) @ p["v"]  # bounded: no blow-up with depth


def arr(shape, lo=-2.0, hi=2.0):
    return hnp.arrays(np.float32, shape, elements=st.floats(lo, hi, width=32))


def toy_params(seed, depth, k):
    # Weights ~ N(0, 1/k) keep each branch about 1-Lipschitz, as a trained net's are: inversion
    # error is rounding amplified by the branches' Lipschitz constants, layer after layer.
    keys = jax.random.split(jax.random.key(seed), 3)
    n = lambda i: jax.random.normal(keys[i], (depth, k, k)) / k ** 0.5  # noqa: E731
    return {"w": n(0)}, {"w": n(1), "v": 0.3 * n(2)}


# Module-level jitted functions: Hypothesis examples of one depth reuse one compilation.
toy_forward = jax.jit(lambda p_f, p_g, *x: revstack.scan_forward(toy_f, toy_g, p_f, p_g, *x))
toy_inverse = jax.jit(lambda p_f, p_g, *y: revstack.scan_inverse(toy_f, toy_g, p_f, p_g, *y))


@jax.custom_vjp
def toy_reversible(p_f, p_g, x1, x2):
    return revstack.scan_forward(toy_f, toy_g, p_f, p_g, x1, x2)


def _toy_fwd(p_f, p_g, x1, x2):
    y = revstack.scan_forward(toy_f, toy_g, p_f, p_g, x1, x2)
    return y, (p_f, p_g, *y)  # the outputs only, as in the stack


toy_reversible.defvjp(_toy_fwd, lambda res, cts: revstack.scan_backward(toy_f, toy_g, *res, *cts))


def toy_loss(fwd, p_f, p_g, x1, x2, w1, w2):
    y1, y2 = fwd(p_f, p_g, x1, x2)
    return jnp.sum(y1 * w1) + jnp.sum(jnp.tanh(y2) * w2)


toy_grads = jax.jit(jax.grad(toy_loss, argnums=(1, 2, 3, 4)), static_argnums=0)


@SETTINGS
@given(arr((3, 4)), arr((3, 4)), st.integers(1, 4), st.integers(0, 10_000))
def test_toy_stack_inverse_recovers_input(x1, x2, depth, seed):
    p_f, p_g = toy_params(seed, depth, 4)
    y1, y2 = toy_forward(p_f, p_g, x1, x2)
    r1, r2 = toy_inverse(p_f, p_g, y1, y2)
    np.testing.assert_allclose(r1, x1, atol=1e-5)
    np.testing.assert_allclose(r2, x2, atol=1e-5)
    assert float(jnp.max(jnp.abs(y2 - x2))) > 1e-3  # the map is not the identity


@SETTINGS
@given(arr((5,)), arr((5,)), st.integers(1, 3), st.integers(0, 10_000))
def test_toy_stack_preserves_volume(x1, x2, depth, seed):
    """Each coupling is a shear, so the Jacobian determinant of the whole stack is exactly 1."""
    p_f, p_g = toy_params(seed, depth, 5)
    jac = jax.jacfwd(lambda x: jnp.concatenate(toy_forward(p_f, p_g, x[:5], x[5:])))(
        jnp.concatenate([x1, x2]))
    sign, logdet = np.linalg.slogdet(np.asarray(jac, np.float64))
    assert sign == 1.0 and abs(logdet) < 1e-3, (sign, logdet)


@SETTINGS
@given(arr((3, 4)), arr((3, 4)), arr((3, 4)), arr((3, 4)), st.integers(1, 4),
       st.integers(0, 10_000))
def test_toy_custom_vjp_matches_autodiff(x1, x2, w1, w2, depth, seed):
    """The reversible backward pass (inversion + per-layer VJPs) equals ordinary autodiff."""
    p_f, p_g = toy_params(seed, depth, 4)
    g_rev = toy_grads(toy_reversible, p_f, p_g, x1, x2, w1, w2)
    g_ref = toy_grads(toy_forward, p_f, p_g, x1, x2, w1, w2)
    for a, b in zip(jax.tree.leaves(g_rev), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


# ---- the real stack (attention F, MLP G on half-width streams) ------------------------------

def make_stack(depth=3, **opts):
    cfg = ModelConfig(vocab_size=64, d_model=D, n_layers=depth, n_heads=4, n_kv_heads=2,
                      max_seq_len=16, attention="reversible",
                      attention_options={"reversible": opts} if opts else {})
    return ReversibleStack(cfg, list(range(depth)), rngs=nnx.Rngs(0))


stack_forward = nnx.jit(lambda s, x, pos: s(x, pos)[0])
stack_inverse = nnx.jit(lambda s, y, pos: s.inverse(y, pos))


@pytest.fixture(scope="module")
def stack():
    return make_stack()


def inputs(seed=1, t=T):
    x = jax.random.normal(jax.random.key(seed), (B, t, D), jnp.float32)
    return x, jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (B, t))


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.5, 10.0))
def test_stack_inverse_of_forward_is_identity(stack, seed, scale):
    # Streams of unit-ish scale, as the decoder's N(0, 1) embeddings give. Much smaller streams
    # lose digits: the pre-norm amplifies a reconstruction error by 1/rms(stream).
    x, pos = inputs(seed)
    x = x * scale
    y = stack_forward(stack, x, pos)
    assert float(jnp.max(jnp.abs(y - x))) > 1e-2
    np.testing.assert_allclose(stack_inverse(stack, y, pos), x, atol=1e-5 * max(1.0, scale))


def test_decoder_cached_decoding_equals_full_forward():
    cfg = ModelConfig(vocab_size=64, d_model=D, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=16,
                      attention="reversible")
    model = Decoder(cfg, rngs=nnx.Rngs(1))
    tokens = jax.random.randint(jax.random.key(2), (B, 10), 0, 64)
    full = model(tokens)
    pos = jnp.broadcast_to(jnp.arange(10, dtype=jnp.int32), (B, 10))
    out, caches = model.decode(tokens[:, :4], pos[:, :4], model.init_cache(B))
    outs = [out]
    step = nnx.jit(lambda m, t, p, c: m.decode(t, p, c))
    for t in range(4, 10):
        out, caches = step(model, tokens[:, t:t + 1], pos[:, t:t + 1], caches)
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-4, rtol=1e-4)


def test_decoder_trains_through_the_reversible_backward_pass():
    cfg = ModelConfig(vocab_size=64, d_model=D, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=16,
                      attention="reversible")
    losses = adam_losses(cfg, steps=10, lr=1e-2)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.3, losses


@pytest.mark.slow  # 42 s cold (three depths compiled); the depth benchmark measures the same claim
def test_train_step_memory_does_not_grow_with_depth():
    from mgr.bench import depth

    table = depth.depth_memory_table(
        (2, 16), {k: depth.DEPTH_VARIANTS[k] for k in ("reversible", "standard")},
        d_model=32, n_heads=4, seq_len=64, batch=4, vocab=128)
    rev = table["reversible"][16] / table["reversible"][2]
    std = table["standard"][16] / table["standard"][2]
    assert rev <= 1.5 and std > rev, table


# ---- configuration ----------------------------------------------------------------------------

@SETTINGS
@given(st.integers(1, 4), st.sampled_from([1, 2, 3, 4]), st.sampled_from([2, 4, 8]))
def test_half_dims_split_the_stream_evenly(r_half, g, k):
    h = 2 * r_half * g  # any valid head count: G divides H, H even
    dims = AttentionDims(d_model=h * k, n_heads=h, n_kv_heads=g, head_dim=k, max_seq_len=8)
    ReversibleConfig().validate(dims)
    half = half_dims(dims)
    assert 2 * half.d_model == dims.d_model and half.n_heads * half.head_dim == half.d_model
    assert half.n_heads % half.n_kv_heads == 0


def test_odd_heads_are_rejected():
    dims = AttentionDims(d_model=24, n_heads=3, n_kv_heads=3, head_dim=8, max_seq_len=8)
    with pytest.raises(MgrError, match="must be even"):
        ReversibleConfig().validate(dims)
