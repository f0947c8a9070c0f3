"""The fused, chunked head + soft-capped cross-entropy against the unfused path it replaced.

The reference is what the decoder computed before: whole `[N, V]` logits from `Decoder.logits`
(cap * tanh(z / cap)) and optax's integer-label softmax cross-entropy. Values and gradients
must agree to float32 rounding for any chunking (padding rows included), both shift paths
(cap <= 40 without the max shift, larger caps with it), the primal (evaluation) path and
forward-over-reverse (HOSS's Hessian-vector products).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from mgr.config import ModelConfig
from mgr.model import Decoder
from mgr.model.head_loss import mean_softcap_cross_entropy


def _unfused(h_NxD, kernel_DxV, targets_N, cap):
    z_NxV = cap * jnp.tanh((h_NxD @ kernel_DxV) / cap)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z_NxV, targets_N))


def _inputs(seed, n, d, v, scale):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    return (jax.random.normal(k1, (n, d)) * scale, jax.random.normal(k2, (d, v)),
            jax.random.randint(k3, (n,), 0, v))


@functools.lru_cache(maxsize=None)
def _compiled(cap, chunk):
    """Jitted fused / reference / primal functions, shared by the examples of one (cap, chunk)."""
    fused = jax.jit(jax.value_and_grad(lambda a, b, t: mean_softcap_cross_entropy(a, b, t, cap, chunk), (0, 1)))
    ref = jax.jit(jax.value_and_grad(lambda a, b, t: _unfused(a, b, t, cap), (0, 1)))
    primal = jax.jit(lambda a, b, t: mean_softcap_cross_entropy(a, b, t, cap, chunk))
    return fused, ref, primal


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.sampled_from([1, 13]), chunk=st.sampled_from([4, 16]),
       cap=st.sampled_from([3.0, 60.0]), scale=st.sampled_from([0.1, 3.0]))
def test_fused_value_and_gradients_equal_unfused(seed, n, chunk, cap, scale):
    """n = 13 with chunks of 4 pads the last chunk; chunks of 16 give one padded chunk; cap 3
    takes the unshifted exponentials, cap 60 the max-shifted ones."""
    h, kernel, targets = _inputs(seed, n, 4, 11, scale)
    fused, ref, primal = _compiled(cap, chunk)
    (v1, (dh1, dk1)), (v2, (dh2, dk2)) = fused(h, kernel, targets), ref(h, kernel, targets)
    np.testing.assert_allclose(v1, v2, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(dh1, dh2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dk1, dk2, rtol=1e-5, atol=1e-7)
    # The primal (evaluation, no gradient) path is separate code: it must agree too.
    np.testing.assert_allclose(primal(h, kernel, targets), v2, rtol=2e-6, atol=2e-6)


def test_saturated_logits_stay_finite_on_both_shift_paths():
    # Every logit at the cap: without a shift e^cap overflows for cap = 100; with the
    # no-shift path (cap <= 40) the sums stay finite by construction.
    h, kernel, targets = _inputs(0, 6, 4, 9, 1.0)
    kernel = jnp.abs(kernel) * 1e4
    h = jnp.abs(h)
    for cap in (40.0, 100.0):
        v, (dh, dk) = jax.jit(jax.value_and_grad(
            lambda a, b: mean_softcap_cross_entropy(a, b, targets, cap, 4), (0, 1)))(h, kernel)
        ref = _unfused(h, kernel, targets, cap)
        assert np.isfinite(v) and np.isfinite(dh).all() and np.isfinite(dk).all()
        np.testing.assert_allclose(v, ref, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_decoder():
    cfg = ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, max_seq_len=16)
    graphdef, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    batch = jax.random.randint(jax.random.PRNGKey(1), (3, 12), 0, 64)  # 33 rows: not a chunk multiple
    return graphdef, params, batch


def _decoder_losses(graphdef):
    def fused(p, batch):
        return nnx.merge(graphdef, p).loss(batch)

    def unfused(p, batch):  # the decoder's loss before fusion: whole logits + optax
        model = nnx.merge(graphdef, p)
        h, _ = model.hidden(batch[:, :-1])
        logits = model.logits(h.reshape(-1, h.shape[-1]))
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:].reshape(-1)))

    return fused, unfused


def test_decoder_loss_and_gradients_equal_the_unfused_path(tiny_decoder, monkeypatch):
    import mgr.model.head_loss as head_loss

    monkeypatch.setattr(head_loss, "CHUNK", 8)  # several chunks and a padded last one
    graphdef, params, batch = tiny_decoder
    fused, unfused = _decoder_losses(graphdef)
    (v1, g1), (v2, g2) = (jax.jit(jax.value_and_grad(f))(params, batch) for f in (fused, unfused))
    np.testing.assert_allclose(v1, v2, rtol=2e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_hessian_vector_products_equal_the_unfused_path():
    """HOSS linearises the gradient (forward-over-reverse): the custom VJP must support it, and
    give the unfused path's Hessian-vector products (on the head alone: the rest of the decoder
    is ordinary autodiff)."""
    h, kernel, targets = _inputs(3, 13, 4, 11, 1.0)
    v = _inputs(4, 13, 4, 11, 1.0)[:2]

    def hvp(loss):
        grad = jax.grad(lambda a, b: loss(a, b, targets, 15.0), (0, 1))
        return jax.jit(lambda a, b, va, vb: jax.linearize(grad, a, b)[1](va, vb))(h, kernel, *v)

    fused = hvp(lambda a, b, t, c: mean_softcap_cross_entropy(a, b, t, c, 4))
    for a, b in zip(fused, hvp(_unfused)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_float32_gradients_keep_no_transposed_copy_of_the_kernel():
    """dh = dz @ kernelᵀ: a [V, D] copy of the kernel made before the chunk loop would be 12 MiB
    more temporaries in every step at V = 50304, D = 64. In float32 the transpose is folded
    into the dot, so the compiled gradient program holds no float32 [V, D] array (bfloat16
    keeps its copy: XLA:CPU's bfloat16 dot is slow on a transposed operand)."""
    n, d, v = 64, 24, 1000  # distinct sizes, so f32[v,d] can only be a transposed kernel
    h, kernel, targets = _inputs(0, n, d, v, 1.0)
    grads = jax.jit(jax.grad(lambda a, b: mean_softcap_cross_entropy(a, b, targets, 15.0, 16), (0, 1)))
    assert f"f32[{v},{d}]" not in grads.lower(h, kernel).compile().as_text()
    lo = jax.jit(jax.grad(lambda a, b: mean_softcap_cross_entropy(a, b, targets, 15.0, 16).astype(jnp.float32),
                          (0, 1)))
    assert f"bf16[{v},{d}]" in lo.lower(h.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)).compile().as_text()
