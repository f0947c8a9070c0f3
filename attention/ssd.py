"""Kernels of the `ssm` mixer (attention/ssm.py): the state-space duality (SSD) chunked scan of
Mamba-2, its step-by-step recurrence (the slow oracle) and the short causal depthwise conv.

The recurrence, per head h with G groups of B/C shared by R = H/G heads each (head h reads
group h // R):

    S_t = a_t·S_{t-1} + dt_t·B_t x_tᵀ      S: [N, P]
    y_t = C_tᵀ S_t

with a_t = exp(log_a_t) ∈ (0, 1]. Shapes: x `[B, T, H, P]`, dt and log_a `[B, T, H]`,
B and C `[B, T, G, N]`, the state `[B, H, N, P]`. See markdown_documentation/ssm.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attention.base import scan


def ssd_chunked(x_BxTxHxP, dt_BxTxH, log_a_BxTxH, b_BxTxGxN, c_BxTxGxN, s0_BxHxNxP, chunk: int):
    """The fast path: y `[B, T, H, P]` and the state after the last token `[B, H, N, P]`.

    The sequence is cut into chunks of c = min(chunk, T) tokens. With L_i = Σ_{l≤i} log a_l
    inside a chunk, token j reaches token i ≥ j of the same chunk with weight
    (C_i·B_j)·e^{L_i − L_j}·dt_j (the quadratic "masked decay" form, a [c, c] matrix per head,
    never [.., c, c, P]); the state entering the chunk reaches token i with weight e^{L_i}; the
    chunk adds Σ_j e^{L_c − L_j}·dt_j·B_j x_jᵀ to the state and decays it by e^{L_c}. Only that
    last step is sequential, a `scan` over chunks (unrolled when the FLOPs budget counts it).
    Every exponent is a sum of log a ≤ 0, so no factor exceeds 1: nothing overflows for any
    chunk or decay, unlike the e^{−L_j} factorisation. A ragged tail is padded with dt = 0
    (no input) and log a = 0 (no decay), which leaves the state as the last real token left it.
    Everything float32.
    """
    bsz, t, h, p = x_BxTxHxP.shape
    g, n_state = b_BxTxGxN.shape[2], b_BxTxGxN.shape[3]
    r = h // g
    c = min(chunk, t)
    n = -(-t // c)
    pad = n * c - t

    def chunks(a):
        a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
        return a.reshape(bsz, n, c, *a.shape[2:])

    x = chunks(x_BxTxHxP).reshape(bsz, n, c, g, r, p)
    dt_BxNxGxRxC = jnp.moveaxis(chunks(dt_BxTxH).reshape(bsz, n, c, g, r), 2, -1)
    la_BxNxGxRxC = jnp.moveaxis(chunks(log_a_BxTxH).reshape(bsz, n, c, g, r), 2, -1)
    bm, cm = chunks(b_BxTxGxN), chunks(c_BxTxGxN)  # [B, n, c, G, N]

    cum = jnp.cumsum(la_BxNxGxRxC, axis=-1)
    # Segment sums L_i − L_j, masked *before* exp: above the diagonal they are positive and
    # could overflow, and an inf there would poison the gradient even after a `where`.
    tril = jnp.tril(jnp.ones((c, c), bool))
    seg_BxNxGxRxCxC = jnp.where(tril, cum[..., :, None] - cum[..., None, :], 0.0)
    decay = jnp.where(tril, jnp.exp(seg_BxNxGxRxCxC), 0.0)
    cb_BxNxGxCxC = jnp.einsum("bnigk,bnjgk->bngij", cm, bm)
    w = cb_BxNxGxCxC[:, :, :, None] * decay * dt_BxNxGxRxC[..., None, :]
    y_intra = jnp.einsum("bngrij,bnjgrp->bnigrp", w, x)

    # What each chunk adds to the state, and how much it keeps of the state entering it.
    to_end = jnp.exp(cum[..., -1:] - cum) * dt_BxNxGxRxC  # [B, n, G, R, c]
    s_add_BxNxGxRxKxP = jnp.einsum("bnjgk,bngrj,bnjgrp->bngrkp", bm, to_end, x)
    keep_BxNxGxR = jnp.exp(cum[..., -1])

    def step(s, inp):
        keep, add = inp
        return keep[..., None, None] * s + add, s

    s0 = s0_BxHxNxP.reshape(bsz, g, r, n_state, p)
    s_end, s_in = scan(step, s0, (jnp.moveaxis(keep_BxNxGxR, 1, 0), jnp.moveaxis(s_add_BxNxGxRxKxP, 1, 0)))
    s_in_BxNxGxRxKxP = jnp.moveaxis(s_in, 0, 1)
    enter_BxNxCxGxR = jnp.moveaxis(jnp.exp(cum), -1, 2)
    y_inter = jnp.einsum("bnigk,bngrkp->bnigrp", cm, s_in_BxNxGxRxKxP) * enter_BxNxCxGxR[..., None]

    y = (y_intra + y_inter).reshape(bsz, n * c, h, p)[:, :t]
    return y, s_end.reshape(bsz, h, n_state, p)


def ssd_step(s_BxHxNxP, x_BxHxP, dt_BxH, log_a_BxH, b_BxGxN, c_BxGxN):
    """One token of the recurrence: the new state and y = Cᵀ S."""
    r = x_BxHxP.shape[1] // b_BxGxN.shape[1]
    b_h, c_h = jnp.repeat(b_BxGxN, r, axis=1), jnp.repeat(c_BxGxN, r, axis=1)  # head h -> group h // R
    s_BxHxNxP = (jnp.exp(log_a_BxH)[..., None, None] * s_BxHxNxP
                 + dt_BxH[..., None, None] * b_h[..., :, None] * x_BxHxP[..., None, :])
    return s_BxHxNxP, jnp.einsum("bhk,bhkp->bhp", c_h, s_BxHxNxP)


def ssd_recurrent(x_BxTxHxP, dt_BxTxH, log_a_BxTxH, b_BxTxGxN, c_BxTxGxN, s0_BxHxNxP):
    """The recurrence itself, one token at a time (the slow oracle; a plain `lax.scan` over
    positions, never used by the module's forward). Same arguments and results as `ssd_chunked`."""
    seq = tuple(jnp.moveaxis(a, 1, 0) for a in (x_BxTxHxP, dt_BxTxH, log_a_BxTxH, b_BxTxGxN, c_BxTxGxN))
    s_end, y_TxBxHxP = jax.lax.scan(lambda s, inp: ssd_step(s, *inp), s0_BxHxNxP, seq)
    return jnp.moveaxis(y_TxBxHxP, 0, 1), s_end


def causal_conv(u_BxTxC, buf_BxWm1xC, w_WxC, bias_C):
    """Depthwise causal conv of width W: out_t = bias + Σ_k w_k·u_{t−W+1+k}, where the W − 1
    inputs before the first are `buf` (zeros at the start of a sequence, the cache when
    decoding). Returns the output and the last W − 1 inputs (the next call's `buf`). A sum over
    the W taps of shifted views: a loop over taps, not positions."""
    width, t = w_WxC.shape[0], u_BxTxC.shape[1]
    full = jnp.concatenate([buf_BxWm1xC, u_BxTxC], axis=1)
    out = bias_C + sum(w_WxC[k] * full[:, k:k + t] for k in range(width))
    return out, full[:, t:]
