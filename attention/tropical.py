"""Tropical attention: max-plus scores and max-plus aggregation, with a Maslov temperature.

Math: in the max-plus semiring (a ⊕ b = max(a, b), a ⊗ b = a + b) the score of query i and key j
is s_ij = max_c(q_ic + k_jc) and the output is y_ic = max_{j<=i}(s_ij + v_jc) - max_{j<=i} s_ij
(score centring: the best key scores 0). At a finite Maslov temperature β every max becomes
(1/β)·logsumexp(β·), the log-sum-exp semiring, which tends to max-plus as β → ∞ (the error is at
most log(n)/β) and has smooth gradients; then y_ic = (1/β) log Σ_j softmax_j(β s_ij) e^{β v_jc}.
Claimed benefit: piecewise-linear (at β = ∞), 1-Lipschitz in ℓ∞, tropically linear in v, with
runner-up margins that certify the selected routes. Positions enter absolutely: RoPE rotates q
and k by their own positions' angles, and max_c(q_c + k_c), unlike a dot product, is not
invariant when both are rotated alike. See markdown_documentation/tropical.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import (ProjectedAttention, AlgebraConfig, AttentionDims, causal_mask,
                            mask_value, pairwise_flops, require, rms_normalize,
                            scan, update_kv_cache)
from attention.registry import register

# exp(-87) is the smallest normal float32. With RMS-normalised q, k, v every exponent the
# matmul path forms is >= -2·β·sqrt(K) (see `_dequantised_attention`), so β·sqrt(K) <= 40 keeps
# every exponential normal; above that the chunked log-sum-exp path is used instead.
_MAX_BETA_SQRT_K = 40.0
_TINY = 1e-37


@dataclass(frozen=True, kw_only=True)
class TropicalConfig(AlgebraConfig):
    """beta: Maslov temperature; None (or inf) is exact max-plus. block: keys per chunk in the
    chunked path. margins: sow runner-up margins. rope: rotary positions on q and k."""

    beta: float | None = 4.0
    block: int = 64
    margins: bool = True
    rope: bool = True

    def validate(self, dims: AttentionDims) -> None:
        require(self.beta is None or self.beta > 0, f"tropical beta must be > 0 or None, got {self.beta}")
        require(self.block >= 2, f"tropical block must be >= 2 keys, got {self.block}")

    @property
    def exact(self) -> bool:
        return self.beta is None or math.isinf(self.beta)


def tropical_reduce(x, axis, beta, where=None):
    """The semiring 'sum' ⊕ over `axis` (restricted to `where`): max at β = None, else
    (1/β)·logsumexp(β·x), which lies in [max, max + log(n)/β]."""
    if beta is None:
        return jnp.max(x, axis=axis, where=where, initial=mask_value(x.dtype))
    return jax.nn.logsumexp(beta * x, axis=axis, where=where) / beta


def _dequantised_attention(q, k, v, allowed_BxTxS, beta):
    """Finite β via the Maslov isomorphism x ↦ e^{βx}: log-sum-exp sums become matmuls.

    q `[B, G, R, T, K]`, k, v `[B, G, S, K]` (float32, RMS-normalised). Per-row maxima are
    factored out before exponentiating, so every exponential lies in [e^{-2β√K}, 1]; the
    matmuls then run in plain float32 at BLAS speed instead of forming `[T, S, K]` tensors.
    """
    hi = jax.lax.Precision.HIGHEST  # TF32 on GPUs would break the log of a small sum
    mq = jnp.max(q, axis=-1, keepdims=True)
    mk = jnp.max(k, axis=-1, keepdims=True)
    dot_BxGxRxTxS = jnp.einsum("bgrtk,bgsk->bgrts", jnp.exp(beta * (q - mq)), jnp.exp(beta * (k - mk)),
                               precision=hi)
    mk_Bx1x1xS = jnp.swapaxes(mk, -1, -2)[:, :, None]
    s_BxGxRxTxS = mq + mk_Bx1x1xS + jnp.log(jnp.maximum(dot_BxGxRxTxS, _TINY)) / beta
    neg = mask_value(jnp.float32)
    bs = jnp.where(allowed_BxTxS[:, None, None], beta * s_BxGxRxTxS, neg)
    log_z_BxGxRxT = jax.nn.logsumexp(bs, axis=-1)  # the centring term, β·(soft max_j s_ij)
    mv = jnp.max(v, axis=-1)  # per-key shift folded into the weights keeps e^{β(v - mv)} <= 1
    a = jnp.where(allowed_BxTxS[:, None, None], bs + beta * mv[:, :, None, None, :], neg)
    a_max = jnp.max(a, axis=-1, keepdims=True)
    num_BxGxRxTxK = jnp.einsum("bgrts,bgsk->bgrtk", jnp.exp(a - a_max), jnp.exp(beta * (v - mv[..., None])),
                               precision=hi)
    y = (jnp.log(jnp.maximum(num_BxGxRxTxK, _TINY)) + a_max - log_z_BxGxRxT[..., None]) / beta
    return y, s_BxGxRxTxS


def _top2_merge(a1, a2, b1, b2):
    return jnp.maximum(a1, b1), jnp.maximum(jnp.minimum(a1, b1), jnp.maximum(a2, b2))


def _top2(x, axis):
    """Best and runner-up along `axis` (a tie for best gives runner-up = best). Cheaper than
    lax.top_k on CPU, which dominated the train step when margins were on."""
    x = jax.lax.stop_gradient(x)
    m1 = jnp.max(x, axis=axis, keepdims=True)
    is_top = x == m1
    m2 = jnp.max(jnp.where(is_top, mask_value(x.dtype), x), axis=axis)
    m1 = jnp.squeeze(m1, axis)
    return m1, jnp.where(jnp.sum(is_top, axis=axis) > 1, m1, m2)


def _gap(top1, top2):
    # No runner-up (a single visible key): nothing can overtake the winner, so the margin is inf.
    return jnp.where(top2 > mask_value(jnp.float32) / 2, top1 - top2, jnp.inf)


def _chunked_attention(q, k, v, q_pos_BxT, k_pos_BxS, beta, block, margins):
    """Any β, scanning over key blocks so only `[B, G, R, T, block, K]` exists at once.

    Carries a running ⊕ of s_ij (centring) and of s_ij + v_jc (output): a running max at
    β = None, an online logsumexp (max and rescaled sum) otherwise. With `margins` it also
    carries the best two values of each, for the runner-up gaps.
    """
    b, g, r, t, kd = q.shape
    s_len = k.shape[2]
    n_blk = -(-s_len // block)
    pad = n_blk * block - s_len
    # Padded keys get a position beyond every query, so the causal mask hides them.
    k = jnp.pad(k, ((0, 0), (0, 0), (0, pad), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, 0), (0, pad), (0, 0)))
    k_pos = jnp.pad(k_pos_BxS, ((0, 0), (0, pad)), constant_values=jnp.iinfo(jnp.int32).max)
    xs = (jnp.moveaxis(k.reshape(b, g, n_blk, block, kd), 2, 0),
          jnp.moveaxis(v.reshape(b, g, n_blk, block, kd), 2, 0),
          jnp.moveaxis(k_pos.reshape(b, n_blk, block), 1, 0))
    neg = mask_value(jnp.float32)
    scale = 1.0 if beta is None else beta

    def step(carry, blk):
        k_b, v_b, kp_b = blk
        ok = causal_mask(q_pos_BxT, kp_b)[:, None, None]  # [B, 1, 1, T, C]
        s = tropical_reduce(q[:, :, :, :, None, :] + k_b[:, :, None, None], -1, beta)  # [B, G, R, T, C]
        z = s[..., None] + v_b[:, :, None, None]  # [B, G, R, T, C, K]
        # Mask after scaling by β: β·mask_value would overflow to -inf.
        parts = {"s": (s, ok, -1), "z": (z, ok[..., None], -2)}
        new = {}
        for name, (raw, okx, ax) in parts.items():
            x = jnp.where(okx, scale * raw, neg)
            m = jnp.maximum(carry[name], jnp.max(x, axis=ax))
            new[name] = m
            if beta is not None:
                new[name + "_sum"] = (carry[name + "_sum"] * jnp.exp(carry[name] - m)
                                      + jnp.sum(jnp.exp(x - jnp.expand_dims(m, ax)), axis=ax))
            if margins:
                top1, top2 = _top2(jnp.where(okx, raw, neg), ax)
                new[name + "1"], new[name + "2"] = _top2_merge(carry[name + "1"], carry[name + "2"],
                                                               top1, top2)
        return new, None

    init = {"s": jnp.full((b, g, r, t), neg), "z": jnp.full((b, g, r, t, kd), neg)}
    if beta is not None:
        init.update(s_sum=jnp.zeros((b, g, r, t)), z_sum=jnp.zeros((b, g, r, t, kd)))
    if margins:
        init.update(s1=init["s"], s2=init["s"], z1=init["z"], z2=init["z"])
    out, _ = scan(step, init, xs)
    if beta is None:
        y = out["z"] - out["s"][..., None]
    else:
        y = (out["z"] + jnp.log(out["z_sum"]) - (out["s"] + jnp.log(out["s_sum"]))[..., None]) / beta
    gaps = None
    if margins:
        gaps = (_gap(out["s1"], out["s2"]), jnp.min(_gap(out["z1"], out["z2"]), axis=-1))
    return y, gaps


def _score_gap(s_BxGxRxTxS, allowed_BxTxS):
    """Best minus runner-up key score per query (the centring route's margin)."""
    return _gap(*_top2(jnp.where(allowed_BxTxS[:, None, None], s_BxGxRxTxS, mask_value(jnp.float32)), -1))


def _route_gap(s_BxGxRxTxS, v_BxGxSxK, allowed_BxTxS, block):
    """min over channels of best minus runner-up over keys of s_ij + v_jc, for the scores the
    matmul path computed. That path never forms s + v, so the margins scan key blocks (only
    `[B, G, R, T, block, K]` at once) and merge each block's best two into the running best two,
    i.e. the gap is over the union of all blocks. Forward-only: a train step never reads the
    sown value, so XLA removes this loop there."""
    b, g, r, t, s_len = s_BxGxRxTxS.shape
    kd = v_BxGxSxK.shape[-1]
    n_blk = -(-s_len // block)
    pad = n_blk * block - s_len
    neg = mask_value(jnp.float32)
    s = jnp.pad(s_BxGxRxTxS, ((0, 0),) * 4 + ((0, pad),))
    v = jnp.pad(v_BxGxSxK, ((0, 0), (0, 0), (0, pad), (0, 0)))
    ok = jnp.pad(allowed_BxTxS, ((0, 0), (0, 0), (0, pad)))  # padded keys are never visible
    xs = (jnp.moveaxis(s.reshape(b, g, r, t, n_blk, block), 4, 0),
          jnp.moveaxis(v.reshape(b, g, n_blk, block, kd), 2, 0),
          jnp.moveaxis(ok.reshape(b, t, n_blk, block), 2, 0))

    def step(carry, blk):
        s_b, v_b, ok_b = blk
        z = jnp.where(ok_b[:, None, None, :, :, None], s_b[..., None] + v_b[:, :, None, None], neg)
        return _top2_merge(*carry, *_top2(z, -2)), None

    init = (jnp.full((b, g, r, t, kd), neg),) * 2
    (z1, z2), _ = scan(step, init, xs)
    return jnp.min(_gap(z1, z2), axis=-1)


def _heads(x, b, t, g, r):
    """`[B, T, G*R, K]` -> `[B, G, R, T, K]`."""
    return jnp.moveaxis(x.reshape(b, t, g, r, x.shape[-1]), 1, 3)


def _reference(module: "TropicalAttention", x_BxTxD, positions_BxT):
    """Obviously correct: one query at a time, kv heads repeated, the semiring sums written out."""
    beta = None if module.cfg.exact else float(module.cfg.beta)
    q, k, v = module.project(x_BxTxD, positions_BxT)
    rep = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
    outs = []
    for i in range(x_BxTxD.shape[1]):
        ok_BxSx1 = (positions_BxT <= positions_BxT[:, i:i + 1])[..., None]
        s_BxSxH = tropical_reduce(q[:, None, i] + k, -1, beta)  # ⊕_c (q_ic ⊗ k_jc)
        # ⊕_j (s_ij ⊗ v_jc)
        y = tropical_reduce(s_BxSxH[..., None] + v, 1, beta, where=ok_BxSx1[..., None])
        outs.append(y - tropical_reduce(s_BxSxH, 1, beta, where=ok_BxSx1)[..., None])  # centring
    y = jnp.stack(outs, axis=1).astype(x_BxTxD.dtype)
    return module.wo(y.reshape(*y.shape[:2], -1))


def _flops(dims: AttentionDims, cfg: TropicalConfig, seq_len: int) -> float:
    # Projections plus work per (query head, key) pair over the full row, as for standard.
    # Matmul path: two K-long multiply-adds (scores, aggregation) plus ~26 elementwise ops on
    # the [T, S] scores (exp/log count one each, as XLA counts them; margins included).
    # Chunked path, per (pair, channel): add, max, add v, mask, max = 5 at β = ∞, ~11 with the
    # online logsumexp (both checked against XLA with a single block), +5 for runner-up
    # tracking. XLA counts a scan body once, so with several key blocks its own number
    # undercounts the chunked path by the number of blocks.
    h, kd = dims.n_heads, dims.head_dim
    if not cfg.exact and cfg.beta * math.sqrt(kd) <= _MAX_BETA_SQRT_K:
        pair = 4.0 * kd + 26.0
    else:
        pair = ((5.0 if cfg.exact else 11.0) + (5.0 if cfg.margins else 0.0)) * kd
    return pairwise_flops(dims, seq_len) + h * seq_len * pair


# relative_positions=False: with RoPE the max-plus score depends on absolute positions (see the
# module docstring); the page says so.
@register("tropical", config_cls=TropicalConfig, flops_per_token=_flops, reference=_reference,
          description="max-plus (log-sum-exp at finite Maslov β) scores and aggregation",
          relative_positions=False)
class TropicalAttention(ProjectedAttention):
    def project(self, x_BxTxD, positions_BxT):
        """q `[B, T, H, K]`, k, v `[B, T, G, K]` in float32; v is RMS-normalised like q and k so
        scores and values share one scale (they are added inside the max)."""
        q, k, v = self.qkv(x_BxTxD, positions_BxT, rope=self.cfg.rope)
        return q.astype(jnp.float32), k.astype(jnp.float32), rms_normalize(v.astype(jnp.float32))

    def __call__(self, x_BxTxD, positions_BxT, cache=None):
        b, t, _ = x_BxTxD.shape
        dm, cfg = self.dims, self.cfg
        g, r = dm.n_kv_heads, dm.n_heads // dm.n_kv_heads
        q, k, v = self.project(x_BxTxD, positions_BxT)
        k_pos = positions_BxT
        if cache is not None:
            cache = update_kv_cache(cache, positions_BxT, k, v)
            k, v, k_pos = cache["s0"].astype(jnp.float32), cache["s1"].astype(jnp.float32), cache["pos"]
        q_g = _heads(q, b, t, g, r)
        k_g, v_g = jnp.moveaxis(k, 1, 2), jnp.moveaxis(v, 1, 2)  # [B, G, S, K]
        beta = None if cfg.exact else float(cfg.beta)
        if beta is not None and beta * math.sqrt(dm.head_dim) <= _MAX_BETA_SQRT_K:
            allowed = causal_mask(positions_BxT, k_pos)
            y, s = _dequantised_attention(q_g, k_g, v_g, allowed, beta)
            gaps = None
            if cfg.margins and s.shape[-1] > 1:
                gaps = (_score_gap(s, allowed), _route_gap(s, v_g, allowed, cfg.block))
        else:
            y, gaps = _chunked_attention(q_g, k_g, v_g, positions_BxT, k_pos, beta, cfg.block, cfg.margins)
        if gaps is not None:
            # Keep only the latest call's value: the default tuple-append would grow the module's
            # state on every call outside nnx.capture (and retrace jitted steps).
            keep_last = dict(reduce_fn=lambda _, new: new, init_fn=lambda: None)
            for name, gap in zip(("score_margin", "route_margin"), gaps):
                self.sow(nnx.Intermediate, name, jnp.moveaxis(gap.reshape(b, g * r, t), 1, 2), **keep_last)
        y_BxTxHxK = jnp.moveaxis(y, 3, 1).reshape(b, t, -1).astype(x_BxTxD.dtype)
        return self.wo(y_BxTxHxK), cache
