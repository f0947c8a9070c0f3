"""Bias-free linear layer, ReLU² feed-forward and RMS normalisation, shared by every layer above."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def rms_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Parameter-free RMSNorm over the last axis, computed in float32."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return y.astype(x.dtype)


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)


def _transposed(a_MxN: jax.Array) -> jax.Array:
    """`a.T` as a row-major array of its own. A plain `.T` becomes a column-major layout of the
    same buffer, and XLA:CPU runs a bfloat16 dot with a column-major operand in float32 (its
    operand upcaster keeps bfloat16 only for dots its libraries take); the swap through a
    leading unit axis is materialised row-major (checked in tests/test_precision.py)."""
    return jnp.swapaxes(a_MxN[None], 1, 2)[0]


@jax.custom_vjp
def matmul_low(x_NxD: jax.Array, w_DxF: jax.Array) -> jax.Array:
    """`x @ w` for low-precision (bfloat16) operands: accumulated in float32, returned in the
    operands' dtype, with every product of the backward pass in the operands' dtype too.

    Written out because JAX's own backward of a float32-accumulating product converts both
    operands to float32, and a bfloat16-accumulating product is rewritten by XLA:CPU as a
    float32 one: either way the bfloat16 arithmetic would be lost where most FLOPs are.
    """
    return _mm(x_NxD, w_DxF).astype(x_NxD.dtype)


def _matmul_low_fwd(x_NxD, w_DxF):
    return _mm(x_NxD, w_DxF).astype(x_NxD.dtype), (x_NxD, w_DxF)


def _matmul_low_bwd(res, g_NxF):
    x_NxD, w_DxF = res
    g_NxF = g_NxF.astype(x_NxD.dtype)
    dx_NxD = _mm(g_NxF, _transposed(w_DxF)).astype(x_NxD.dtype)
    dw_DxF = _mm(_transposed(x_NxD), g_NxF).astype(w_DxF.dtype)
    return dx_NxD, dw_DxF


matmul_low.defvjp(_matmul_low_fwd, _matmul_low_bwd)


class Dense(nnx.Module):
    """A bias-free linear layer that always multiplies 2-D `(N, in)` activations.

    On XLA:CPU a `(B, T, D) @ (D, F)` matmul's backward pass is much slower than the same
    product on `(B*T, D)` (measured 1.7x on a whole train step), so every caller's leading
    axes are flattened here and restored after. The float32 master kernel is cast to the
    activations' dtype; a product in a lower precision goes through `matmul_low`.
    """

    def __init__(self, d_in: int, d_out: int, *, rngs: nnx.Rngs, std: float | None = None):
        std = d_in ** -0.5 if std is None else std
        init = jax.nn.initializers.normal(std) if std > 0 else jax.nn.initializers.zeros
        self.kernel = nnx.Param(init(rngs.params(), (d_in, d_out), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        lead = x.shape[:-1]
        x_NxD, w_DxF = x.reshape(-1, x.shape[-1]), self.kernel[...].astype(x.dtype)
        y_NxF = x_NxD @ w_DxF if x.dtype == jnp.float32 else matmul_low(x_NxD, w_DxF)
        return y_NxF.reshape(*lead, y_NxF.shape[-1])


class MLP(nnx.Module):
    """ReLU² feed-forward on 2-D activations, no biases (the `relu2` kind of ffn/relu2.py is this
    module; reversible's stack uses it directly)."""

    def __init__(self, d_model: int, hidden: int, *, rngs: nnx.Rngs, out_std: float | None = None):
        self.up = Dense(d_model, hidden, rngs=rngs)
        self.down = Dense(hidden, d_model, rngs=rngs, std=out_std)

    def __call__(self, x):
        return self.down(jnp.square(jax.nn.relu(self.up(x))))
