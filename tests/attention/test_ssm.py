"""The `ssm` mixer (Mamba-2 / SSD form): the chunked scan the module runs equals the step-by-step
recurrence for any chunk size, on values, final states and gradients; the registered module equals
its recurrent reference (gradients w.r.t. every parameter included) across ragged chunks with a
live conv; its decoding state after T tokens is the recurrence's, continues across prefill pieces
and token steps, and has a size independent of the context; the known-answer limits a = 1 (linear
attention) and a = 0 (memoryless); knobs are validated. Causality, jit, batch independence and
relative positions are the contract suite's (tests/attention/test_contract.py)."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import example, given, settings, strategies as st

import attention
from attention.base import AttentionDims
from attention.ssd import ssd_chunked, ssd_recurrent
from attention.ssm import SSMConfig, recurrent_forward
from core.errors import MgrError
from mgr.config import ModelConfig

B, T, H, G, P, N = 2, 8, 4, 2, 4, 3
DIMS = AttentionDims(d_model=16, n_heads=H, n_kv_heads=G, head_dim=P, max_seq_len=16)
CFG = SSMConfig(state_size=N, chunk=3)  # T = 8 is three chunks, the last one ragged
POS = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))


def kernel_inputs(seed: int):
    """Random x, dt > 0, log a ≤ 0 (from barely decaying to a ≈ e^-20 per token), B, C, S0, in
    float32. Drawn with NumPy: eager JAX ops would each compile once."""
    rng = np.random.default_rng(seed)
    dt = np.logaddexp(0.0, rng.normal(size=(B, T, H)) - 1.0)  # softplus
    log_a = -dt * np.exp(1.5 * rng.normal(size=(B, T, H)))
    out = (rng.normal(size=(B, T, H, P)), dt, log_a, rng.normal(size=(B, T, G, N)),
           rng.normal(size=(B, T, G, N)), 0.5 * rng.normal(size=(B, H, N, P)))
    return tuple(np.asarray(a, np.float32) for a in out)


def _loss(kernel, args, w_y, w_s):
    y, s = kernel(*args)
    return jnp.sum(y * w_y) + jnp.sum(s * w_s), (y, s)


@functools.cache
def grads_of(chunk):
    """Jitted (y, final state) and gradients w.r.t. all six inputs: the chunked kernel at `chunk`,
    or the recurrence for chunk None. Cached: one compile per effective chunk size."""
    kernel = ssd_recurrent if chunk is None else functools.partial(ssd_chunked, chunk=chunk)
    return jax.jit(jax.grad(functools.partial(_loss, kernel), has_aux=True))


# Chunk 1, a divisor of T, a non-divisor (ragged last chunk), T itself and more than T (one
# chunk, the same program as T): each drawn value is one compile, so the draws are from these.
CHUNKS = (1, 3, 4, T, T + 3)


@settings(max_examples=8, deadline=None)
@given(chunk=st.sampled_from(CHUNKS), seed=st.integers(0, 2 ** 16))
@example(chunk=1, seed=0)
@example(chunk=3, seed=1)
@example(chunk=4, seed=2)
@example(chunk=T + 3, seed=3)
def test_chunked_scan_equals_the_recurrence_for_any_chunk(chunk, seed):
    """Outputs, final state and gradients w.r.t. x, dt, log a, B, C and the initial state all
    equal the token-by-token recurrence."""
    args = kernel_inputs(seed)
    rng = np.random.default_rng(seed + 1)
    w_y, w_s = rng.normal(size=args[0].shape), rng.normal(size=args[5].shape)
    g_ref, (y_ref, s_ref) = grads_of(None)(args, w_y, w_s)
    g, (y, s) = grads_of(min(chunk, T))(args, w_y, w_s)
    np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(s, s_ref, atol=1e-5, rtol=1e-4)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-3)


def test_strong_decays_neither_overflow_nor_poison_gradients():
    """a = e^-60 per token over one chunk of T: L_i − L_j above the diagonal reaches +420, whose
    exp is inf in float32. Masked before exp, values and gradients stay finite and equal the
    recurrence (masking only after exp gives inf·0 = NaN in the backward pass)."""
    x, dt, _, b, c, s0 = kernel_inputs(5)
    args = (x, dt, np.full(dt.shape, -60.0, np.float32), b, c, s0)
    w_y, w_s = np.ones(x.shape, np.float32), np.ones(s0.shape, np.float32)
    g, (y, s) = grads_of(T)(args, w_y, w_s)
    g_ref, (y_ref, _) = grads_of(None)(args, w_y, w_s)
    np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=1e-4)
    for a, b in zip(g, g_ref):
        assert bool(jnp.all(jnp.isfinite(a)))
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-3)


def test_a_equal_one_with_fixed_dt_is_causal_linear_attention():
    """log a = 0 (A → 0) and dt = d0: y_t = C_t·(S0 + d0·Σ_{j≤t} B_j x_jᵀ), a cumulative sum,
    computed here in float64 with an explicit head → group index."""
    x, _, _, b, c, s0 = kernel_inputs(3)
    d0 = 0.37
    args = (x, np.full((B, T, H), d0, np.float32), np.zeros((B, T, H), np.float32), b, c, s0)
    y, s = grads_of(3)(args, np.zeros(x.shape), np.zeros(s0.shape))[1]
    x, b, c, s0 = (np.asarray(a, np.float64) for a in (x, b, c, s0))
    group = np.arange(H) // (H // G)
    kv_BxTxHxNxP = np.cumsum(b[:, :, group, :, None] * x[..., None, :], axis=1)
    want = np.einsum("bthk,bthkp->bthp", c[:, :, group], s0[:, None] + d0 * kv_BxTxHxNxP)
    np.testing.assert_allclose(y, want, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(s, s0 + d0 * kv_BxTxHxNxP[:, -1], atol=1e-4, rtol=1e-4)


def test_a_equal_zero_is_memoryless():
    """a = 0: every state is forgotten at once, so y_t = dt_t·(C_t·B_t)·x_t depends on token t
    alone (not on earlier tokens, nor on the initial state), and the final state is the last
    token's write."""
    x, dt, _, b, c, s0 = kernel_inputs(4)
    log_a = np.full(dt.shape, -1e4, np.float32)  # exp underflows to exactly 0
    y, s = grads_of(3)((x, dt, log_a, b, c, s0), np.zeros(x.shape), np.zeros(s0.shape))[1]
    group = np.arange(H) // (H // G)
    cb_BxTxH = np.sum(c[:, :, group] * b[:, :, group], axis=-1)
    np.testing.assert_allclose(y, (dt * cb_BxTxH)[..., None] * x, atol=1e-5, rtol=1e-5)
    last = dt[:, -1, :, None, None] * b[:, -1, group, :, None] * x[:, -1, :, None, :]
    np.testing.assert_allclose(s, last, atol=1e-5, rtol=1e-5)


def randomise(module, seed=0):
    """Move every non-kernel parameter off its init: a conv that mixes neighbours (its init is the
    identity, which would hide a wrong conv buffer), varied steps, decays and skips."""
    rng = np.random.default_rng(seed)
    for name, draw in (("conv_w", lambda n: rng.uniform(-0.8, 0.8, n)), ("conv_b", lambda n: 0.1 * rng.normal(size=n)),
                       ("dt_bias", lambda n: rng.normal(size=n) - 1.0), ("a_log", lambda n: rng.normal(size=n)),
                       ("d_skip", lambda n: 1.0 + 0.5 * rng.normal(size=n))):
        param = getattr(module, name)
        param[...] = jnp.asarray(draw(param.shape), jnp.float32)
    return module


def inputs(seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, T, DIMS.d_model)), jnp.float32)


@pytest.fixture(scope="module")
def ssm():
    """The registered module with randomised parameters, a jitted cached call, and one full pass
    of both forms from an empty cache (outputs, final caches, gradients of a random projection
    of the output w.r.t. every parameter and the input), shared so each program compiles once."""
    module = randomise(attention.get("ssm").module_cls(DIMS, CFG, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(module)
    call = jax.jit(lambda x, pos, cache: nnx.merge(graphdef, state)(x, pos, cache))
    x, w = inputs(1), inputs(2)

    def grads(form):
        def loss(st, x):
            y, cache = form(nnx.merge(graphdef, st), x)
            return jnp.sum(y * w), (y, cache)
        return jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(state, x)

    fast = grads(lambda m, x: m(x, POS, m.init_cache(B)))
    ref = grads(lambda m, x: recurrent_forward(m, x, m.init_cache(B)))  # what `reference` runs
    return module, call, x, fast, ref


def test_module_equals_its_reference_on_values_and_parameter_gradients(ssm):
    """Three chunks (one ragged) and a live conv: the module's output and its gradients w.r.t.
    every parameter and the input equal those of the token-by-token recurrence."""
    _, _, _, ((g_mod, g_x), (y, _)), ((g_mod_ref, g_x_ref), (y_ref, _)) = ssm
    np.testing.assert_allclose(y, y_ref, atol=2e-5, rtol=2e-4)
    np.testing.assert_allclose(g_x, g_x_ref, atol=1e-4, rtol=1e-3)
    flat, flat_ref = jax.tree.leaves_with_path(g_mod), jax.tree.leaves(g_mod_ref)
    assert {jax.tree_util.keystr(p) for p, _ in flat} >= {f"['{k}'].value" for k in
                                                          ("conv_w", "dt_bias", "a_log", "d_skip")}
    for (path, a), b in zip(flat, flat_ref, strict=True):
        assert float(jnp.max(jnp.abs(a))) > 0, path  # every parameter is live
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-3, err_msg=jax.tree_util.keystr(path))


def test_decoding_state_after_t_tokens_is_the_recurrences(ssm):
    """A cached call over T tokens leaves the recurrence's final state [B, H, N, P] and its last
    W − 1 conv inputs."""
    _, _, _, (_, (_, cache)), (_, (_, cache_ref)) = ssm
    assert set(cache) == {"state", "conv"} and cache["state"].shape == (B, H, N, P)
    np.testing.assert_allclose(cache["state"], cache_ref["state"], atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(cache["conv"], cache_ref["conv"], atol=1e-6)
    assert float(jnp.max(jnp.abs(cache["state"]))) > 1e-2


def test_prefill_in_pieces_then_token_steps_equals_one_pass(ssm):
    """3 tokens, 2 more (fewer than the conv's W − 1 = 3 buffered inputs, so the buffer mixes
    the two calls), then one at a time: equals one pass, with a cache of one size throughout."""
    module, call, x, (_, (full, _)), _ = ssm
    outs, cache = [], module.init_cache(B)
    shapes = jax.tree.map(jnp.shape, cache)
    for lo, hi in [(0, 3), (3, 5)] + [(t, t + 1) for t in range(5, T)]:
        y, cache = call(x[:, lo:hi], POS[:, lo:hi], cache)
        outs.append(y)
        assert jax.tree.map(jnp.shape, cache) == shapes
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5, rtol=1e-4)


def test_decoding_state_size_does_not_grow_with_the_context():
    """The probe suite's state-size report (Decoder.init_cache under eval_shape) is the same at a
    context of 16 and of 4096, and is H·N·P + (W − 1)·(H·P + 2·G·N) floats per layer."""
    from mgr.bench.probe_train import state_bytes

    def cfg(ctx, **kw):
        return ModelConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=H, n_kv_heads=G,
                           max_seq_len=ctx, attention="ssm", attention_options={"ssm": {"state_size": N, **kw}})

    per_layer = H * N * P + 3 * (H * P + 2 * G * N)
    assert state_bytes(cfg(16)) == state_bytes(cfg(4096)) == 2 * 4 * per_layer
    assert state_bytes(cfg(16, conv_width=0)) == 2 * 4 * H * N * P


@pytest.mark.parametrize("knobs, words", [
    (dict(state_size=0), "state_size must be >= 1"),
    (dict(chunk=0), "chunk must be >= 1"),
    (dict(conv_width=1), "conv_width must be 0 (off) or in 2..16"),
    (dict(dt_min=0.5, dt_max=0.1), "0 < dt_min <= dt_max"),
    (dict(a_min=0.0), "0 < a_min <= a_max"),
])
def test_config_rejects_bad_knobs_in_one_line(knobs, words):
    with pytest.raises(MgrError, match=re.escape(words)) as err:
        ModelConfig(vocab_size=64, d_model=16, n_heads=H, n_kv_heads=G, attention="ssm",
                    attention_options={"ssm": knobs})
    assert "\n" not in str(err.value)
