"""The output head and its soft-capped cross-entropy, fused and chunked over tokens.

At a large vocabulary the head dominates a small model's step: at 2 layers, width 64 and
V = 50304 it is ~96% of the FLOPs, and the unfused path writes `[N, V]` float32 logits, their
tanh, their softmax and their gradient to memory (100 MB each at N = 512). Here the tokens are cut
into chunks of `CHUNK` rows; one pass per chunk computes the capped logits, the log-sum-exp, the
loss and (when differentiated) the gradients with respect to the hidden states and the head
kernel, so no `[N, V]` array ever exists whole and each chunk's logits are read while hot.

The gradients are computed in the forward pass (a `custom_vjp` whose backward only scales them
by the incoming cotangent): a separate backward would have to recompute each chunk's logits,
one more `[N, D] @ [D, V]` matmul. Evaluation calls the primal, which computes the loss alone.
The chunk loop goes through `attention.base.scan` / `loop_map`, so the FLOPs budget counts
every chunk. Values and gradients equal the unfused path to float32 rounding
(`tests/test_head_loss.py`), forward-over-reverse (HOSS's Hessian-vector products) included.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from attention.base import loop_map, scan

# 128 rows x V = 50304 is 26 MB of float32 logits per chunk. Measured on the 2-core machine at
# N = 512, D = 64, V = 50304 (value and both gradients): chunks of 32 / 64 / 128 rows took
# 238 / 132 / 110 ms against 171 ms unfused; smaller chunks pay for re-reading the [D, V]
# gradient accumulator once per chunk.
CHUNK = 128
# The loss alone (evaluation) is fastest in smaller chunks with its row sums taken as a
# matrix-vector product: XLA:CPU's fused exp-and-reduce over a long row is slow. Measured at
# N = 512, D = 64, V = 50304: 80 ms at 128 rows with a reduce, 38 ms at 32 rows with the product.
# (With the gradients the exponentials are needed whole anyway, and a reduce there was as fast.)
PRIMAL_CHUNK = 32
_NO_SHIFT_CAP = 40.0


def _chunks(h_NxD, targets_N, chunk: int):
    """Rows padded to a multiple of `chunk` (padding rows carry weight 0) and cut into chunks."""
    n, d = h_NxD.shape
    c = min(chunk, n)
    pad = -n % c
    valid_N = jnp.ones((n,), h_NxD.dtype)
    if pad:
        h_NxD = jnp.pad(h_NxD, ((0, pad), (0, 0)))
        targets_N = jnp.pad(targets_N, (0, pad))
        valid_N = jnp.pad(valid_N, (0, pad))
    k = (n + pad) // c
    return h_NxD.reshape(k, c, d), targets_N.reshape(k, c), valid_N.reshape(k, c)


def _capped(h_CxD, kernel_DxV, cap: float):
    # Logits accumulate in float32 whatever the compute dtype (bfloat16 inputs: the matmul
    # runs in bfloat16, the soft-cap, exponentials and loss in float32).
    u_CxV = jnp.tanh(jnp.matmul(h_CxD, kernel_DxV, preferred_element_type=jnp.float32) / cap)
    return u_CxV, cap * u_CxV


def _row_losses(z_CxV, targets_C, cap: float, sum_by_product: bool = False):
    """Per-row CE, exp(z - shift) and its row sums. The soft-cap bounds |z| by `cap`, so for
    cap <= 40 the exponentials can neither overflow nor underflow (e^40 * 2^20 < 3e38, and
    e^-40 is a normal float) and the shift is 0: the row-max pass, a whole read of the chunk's
    logits, is skipped. A larger cap takes the usual max shift."""
    m_C = jnp.zeros(z_CxV.shape[:1], z_CxV.dtype) if cap <= _NO_SHIFT_CAP else jnp.max(z_CxV, axis=-1)
    e_CxV = jnp.exp(z_CxV - m_C[:, None])
    s_C = e_CxV @ jnp.ones(e_CxV.shape[-1:], e_CxV.dtype) if sum_by_product else jnp.sum(e_CxV, axis=-1)
    z_target_C = jnp.take_along_axis(z_CxV, targets_C[:, None], axis=-1)[:, 0]
    return m_C + jnp.log(s_C) - z_target_C, e_CxV, s_C


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def mean_softcap_cross_entropy(h_NxD, kernel_DxV, targets_N, cap: float, chunk: int = CHUNK):
    """Mean over the N rows of `CE(cap * tanh(h @ kernel / cap), targets)`, float32."""
    h_KxCxD, t_KxC, valid_KxC = _chunks(h_NxD, targets_N, min(chunk, PRIMAL_CHUNK))

    def one(args):
        h_CxD, t_C, v_C = args
        ce_C, _, _ = _row_losses(_capped(h_CxD, kernel_DxV, cap)[1], t_C, cap, sum_by_product=True)
        return jnp.sum(ce_C * v_C)

    return jnp.sum(loop_map(one, (h_KxCxD, t_KxC, valid_KxC))) / h_NxD.shape[0]


def _forward_with_grads(h_NxD, kernel_DxV, targets_N, cap, chunk):
    n, d = h_NxD.shape
    h_KxCxD, t_KxC, valid_KxC = _chunks(h_NxD, targets_N, chunk)
    vocab = kernel_DxV.shape[1]

    # Both gradient matmuls get operands already laid out as [M, K] @ [K, N]: XLA:CPU runs a
    # bfloat16 dot that contracts a transposed operand in float32 (it converts both inputs), so
    # the transposes are made once here, outside the chunk loop, not folded into the dots. A
    # float32 dot takes the transposed kernel as fast (C1: 56.0-57.2 ms a step either way, the
    # same losses), and its [V, D] copy would add 12 MiB of temporaries at V = 50304: there the
    # transpose is left inside the loop, where XLA folds it into the dot.
    kernel_VxD = None if kernel_DxV.dtype == jnp.float32 else kernel_DxV.T
    h_KxDxC = jnp.swapaxes(h_KxCxD, 1, 2)

    def one(carry, args):
        dkernel_DxV, total = carry
        h_CxD, h_DxC, t_C, v_C = args
        u_CxV, z_CxV = _capped(h_CxD, kernel_DxV, cap)
        ce_C, e_CxV, s_C = _row_losses(z_CxV, t_C, cap)
        onehot_CxV = jnp.arange(vocab, dtype=t_C.dtype)[None, :] == t_C[:, None]
        # d mean / d z = (softmax - onehot) / N, through the cap times 1 - tanh². Padding rows
        # need no mask here: their h is 0, so they add nothing to the kernel's gradient, and
        # their dh is cut off below.
        dz_CxV = (e_CxV * (1.0 / (n * s_C))[:, None] - onehot_CxV * (1.0 / n)) * (1 - u_CxV * u_CxV)
        # Both gradient matmuls take their inputs in the compute dtype and accumulate in float32
        # (a no-op cast for float32; for bfloat16 it keeps the products on the fast path).
        dz_lo = dz_CxV.astype(h_CxD.dtype)
        dkernel_DxV = dkernel_DxV + jnp.matmul(h_DxC, dz_lo, preferred_element_type=jnp.float32)
        rhs_VxD = kernel_DxV.T if kernel_VxD is None else kernel_VxD
        dh_CxD = jnp.matmul(dz_lo, rhs_VxD, preferred_element_type=jnp.float32).astype(h_CxD.dtype)
        return (dkernel_DxV, total + jnp.sum(ce_C * v_C)), dh_CxD

    init = (jnp.zeros(kernel_DxV.shape, jnp.float32), jnp.zeros((), jnp.float32))
    (dkernel_DxV, total), dh_KxCxD = scan(one, init, (h_KxCxD, h_KxDxC, t_KxC, valid_KxC))
    dh_NxD = dh_KxCxD.reshape(-1, d)[:n]
    return total / n, (dh_NxD, dkernel_DxV.astype(kernel_DxV.dtype), targets_N)


def _fwd(h_NxD, kernel_DxV, targets_N, cap, chunk):
    return _forward_with_grads(h_NxD, kernel_DxV, targets_N, cap, chunk)


def _bwd(cap, chunk, res, g):
    del cap, chunk
    dh_NxD, dkernel_DxV, targets_N = res
    dtargets = jnp.zeros(targets_N.shape, jax.dtypes.float0)  # integer labels have no gradient
    # Cotangents keep their primals' dtypes (a float32 `g` would promote bfloat16 ones).
    return (g * dh_NxD).astype(dh_NxD.dtype), (g * dkernel_DxV).astype(dkernel_DxV.dtype), dtargets


mean_softcap_cross_entropy.defvjp(_fwd, _bwd)
