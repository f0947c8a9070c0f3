"""SSM: a selective state-space sequence mixer in the Mamba-2 (SSD) form.

Math: per head h (H = n_heads heads of P = head_dim channels) a state S_t ∈ R^{N×P} follows
S_t = a_t·S_{t−1} + dt_t·B_t x_tᵀ and the head reads y_t = C_tᵀ S_t + D_h·x_t, with an
input-dependent step dt_t = softplus(w_dt·u_t + bias_h) > 0 and a scalar-times-identity
transition a_t = exp(−dt_t·exp(A_log_h)) ∈ (0, 1). x_t ∈ R^P and B_t, C_t ∈ R^N come from one
projection of the token u_t, through a short causal depthwise conv and SiLU; B and C are shared
by the R = H/G heads of each of the G = n_kv_heads groups; the output is gated by SiLU(z_t)
(optionally RMS-normalised per head) and projected back to D. Within a chunk the recurrence is a masked
C×C "decay" matrix (the state-space duality), across chunks a scan of the state. Claimed
benefit: linear time in T and a constant-size decoding state ([H, N, P] plus W − 1 conv
inputs) whatever the context, with content-dependent forgetting. It reads no positions.
See markdown_documentation/ssm.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from attention.base import AlgebraConfig, AttentionDims, Dense, require, rms_normalize
from attention.registry import register
from attention.ssd import causal_conv, ssd_chunked, ssd_step


@dataclass(frozen=True, kw_only=True)
class SSMConfig(AlgebraConfig):
    """state_size N: rows of each head's state (keys of its memory). chunk: tokens per block of
    the chunked scan (a speed knob; the output does not depend on it). conv_width W: taps of the
    causal depthwise conv on x, B, C (0 turns it off). dt_min, dt_max: the step sizes at init,
    log-spaced over heads. a_min, a_max: the decay rates exp(A_log) at init, spaced over heads.
    gated_norm: RMS-normalise each head after the SiLU(z) gate (Mamba-2's gated norm, here
    parameter-free). The init defaults are not Mamba-2's (dt in [1e-3, 0.1], rates in [1, 16],
    gated norm on): those target wide models with many heads; at the test suite's 4 heads over
    16 tokens they kept associative recall near chance (markdown_documentation/ssm.md)."""

    state_size: int = 16
    chunk: int = 16
    conv_width: int = 4
    dt_min: float = 0.03
    dt_max: float = 0.3
    a_min: float = 0.1
    a_max: float = 1.0
    gated_norm: bool = False

    def validate(self, dims: AttentionDims) -> None:
        require(self.state_size >= 1, f"ssm state_size must be >= 1, got {self.state_size}")
        require(self.chunk >= 1, f"ssm chunk must be >= 1 token, got {self.chunk}")
        require(self.conv_width == 0 or 2 <= self.conv_width <= 16,
                f"ssm conv_width must be 0 (off) or in 2..16, got {self.conv_width}")
        require(0.0 < self.dt_min <= self.dt_max,
                f"ssm needs 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        require(0.0 < self.a_min <= self.a_max,
                f"ssm needs 0 < a_min <= a_max, got {self.a_min}, {self.a_max}")


def _widths(dims: AttentionDims, cfg: SSMConfig) -> tuple[int, int, int]:
    """(H·P, G·N, conv channels): x is H·P wide, B and C G·N each; the conv runs on all three."""
    hp, gn = dims.n_heads * dims.head_dim, dims.n_kv_heads * cfg.state_size
    return hp, gn, hp + 2 * gn


def _project(module: "SSMMixer", u_BxTxD):
    """One projection to z `[B, T, H·P]`, the conv's input xBC `[B, T, H·P + 2·G·N]` and the raw
    step `[B, T, H]`, in float32."""
    hp, _, cw = _widths(module.dims, module.cfg)
    zxbcdt = module.in_proj(u_BxTxD).astype(jnp.float32)
    return zxbcdt[..., :hp], zxbcdt[..., hp:hp + cw], zxbcdt[..., hp + cw:]


def _heads(module: "SSMMixer", xbc, dt_raw):
    """From the conv's activated output and the raw step (any leading axes): x `[..., H, P]`,
    B, C `[..., G, N]`, dt `[..., H]` and log a = −dt·exp(A_log) `[..., H]`."""
    dm, n = module.dims, module.cfg.state_size
    hp, gn, _ = _widths(dm, module.cfg)
    lead = xbc.shape[:-1]
    x = xbc[..., :hp].reshape(*lead, dm.n_heads, dm.head_dim)
    b = xbc[..., hp:hp + gn].reshape(*lead, dm.n_kv_heads, n)
    c = xbc[..., hp + gn:].reshape(*lead, dm.n_kv_heads, n)
    dt = jax.nn.softplus(dt_raw + module.dt_bias[...])
    return x, b, c, dt, -dt * jnp.exp(module.a_log[...])


def _readout(module: "SSMMixer", y_BxTxHxP, x_BxTxHxP, z_BxTxHP, dtype):
    """y + D·x, gated by SiLU(z), optionally RMS-normalised per head, projected back to D."""
    b, t, h, p = y_BxTxHxP.shape
    y = (y_BxTxHxP + module.d_skip[...][:, None] * x_BxTxHxP) * jax.nn.silu(z_BxTxHP).reshape(b, t, h, p)
    if module.cfg.gated_norm:
        y = rms_normalize(y)
    return module.out_proj(y.astype(dtype).reshape(b, t, h * p))


def recurrent_forward(module: "SSMMixer", u_BxTxD, cache: dict):
    """Obviously correct: one token at a time from the decoding state `cache`, the conv as a
    shift register of its last W − 1 inputs and the state updated by the recurrence itself.
    Returns the output and the state after the last token. Shares only the per-token maps
    (`_project`, `_heads`, `_readout`) with the fast path."""
    z, xbc, dt_raw = _project(module, u_BxTxD)
    width = module.cfg.conv_width

    def step(carry, inp):
        window, s = carry
        xbc_t, dt_raw_t = inp
        if width:
            window = jnp.concatenate([window, xbc_t[:, None]], axis=1)  # [B, W, C]: oldest first
            xbc_t = jnp.einsum("bwc,wc->bc", window, module.conv_w[...]) + module.conv_b[...]
            window = window[:, 1:]
        x_t, b_t, c_t, dt_t, la_t = _heads(module, jax.nn.silu(xbc_t), dt_raw_t)
        s, y_t = ssd_step(s, x_t, dt_t, la_t, b_t, c_t)
        return (window, s), (y_t, x_t)

    window0 = cache["conv"] if width else jnp.zeros(())
    (window, s), (y, x) = jax.lax.scan(step, (window0, cache["state"]),
                                       (jnp.moveaxis(xbc, 1, 0), jnp.moveaxis(dt_raw, 1, 0)))
    y, x = jnp.moveaxis(y, 0, 1), jnp.moveaxis(x, 0, 1)
    out = _readout(module, y, x, z, u_BxTxD.dtype)
    return out, ({"state": s, "conv": window} if width else {"state": s})


def _reference(module: "SSMMixer", x_BxTxD, positions_BxT):
    return recurrent_forward(module, x_BxTxD, module.init_cache(x_BxTxD.shape[0]))[0]


def _flops(dims: AttentionDims, cfg: SSMConfig, seq_len: int) -> float:
    # Forward FLOPs per token (2 per multiply-add); elementwise gates, softplus, norm ignored.
    h, p, g, n, d = dims.n_heads, dims.head_dim, dims.n_kv_heads, cfg.state_size, dims.d_model
    hp, _, cw = _widths(dims, cfg)
    c = min(cfg.chunk, seq_len)
    proj = 2.0 * d * (hp + cw + h) + 2.0 * hp * d  # in_proj (z, xBC, dt) and out_proj
    conv = 2.0 * cfg.conv_width * cw
    intra = 2.0 * g * c * n + 2.0 * h * c * p  # C·B and the decay-weighted sum of x, full chunk row
    state = 2.0 * h * n * p * 2 + 2.0 * h * n * p / c  # chunk's state add, reading the entering state, scan
    return proj + conv + intra + state


@register("ssm", config_cls=SSMConfig, flops_per_token=_flops, reference=_reference,
          relative_positions=True,
          description="Mamba-2 selective state space: input-dependent step, per-head scalar decay, "
                      "N×P state per head; chunked SSD scan, constant-size decoding state")
class SSMMixer(nnx.Module):
    def __init__(self, dims: AttentionDims, cfg: SSMConfig, *, rngs: nnx.Rngs):
        cfg.validate(dims)
        self.dims, self.cfg = dims, cfg
        h = dims.n_heads
        hp, _, cw = _widths(dims, cfg)
        self.in_proj = Dense(dims.d_model, hp + cw + h, rngs=rngs)
        if cfg.conv_width:
            # The conv starts as the identity (current-token tap 1, earlier taps 0), so B and C
            # start as the token's own projections. Mamba-2's random init (PyTorch's, fan-in W)
            # blends each key with its neighbours' and kept recall at 0.17 (vs 0.75) in 400 steps.
            self.conv_w = nnx.Param(jnp.zeros((cfg.conv_width, cw), jnp.float32).at[-1].set(1.0))
            self.conv_b = nnx.Param(jnp.zeros((cw,), jnp.float32))
        # Step sizes log-spaced over heads in [dt_min, dt_max] (Mamba-2 draws them at random in
        # that range), stored as softplus⁻¹(dt); decay rates spaced over [a_min, a_max]. The
        # heads thus start with memories from ~1/(dt_min·a_min) down to ~1/(dt_max·a_max) tokens.
        frac = jnp.arange(h, dtype=jnp.float32) / max(h - 1, 1)
        dt = jnp.exp(math.log(cfg.dt_min) + frac * (math.log(cfg.dt_max) - math.log(cfg.dt_min)))
        self.dt_bias = nnx.Param(dt + jnp.log(-jnp.expm1(-dt)))
        self.a_log = nnx.Param(jnp.log(cfg.a_min + frac * (cfg.a_max - cfg.a_min)))
        self.d_skip = nnx.Param(jnp.ones((h,), jnp.float32))
        self.out_proj = Dense(hp, dims.d_model, rngs=rngs)

    def init_cache(self, batch: int, dtype=jnp.float32) -> dict:
        # Float32 whatever the activation dtype: the state summarises the whole prefix. Its size
        # does not depend on the context length.
        dm, cfg = self.dims, self.cfg
        cache = {"state": jnp.zeros((batch, dm.n_heads, cfg.state_size, dm.head_dim), jnp.float32)}
        if cfg.conv_width:
            cache["conv"] = jnp.zeros((batch, cfg.conv_width - 1, _widths(dm, cfg)[2]), jnp.float32)
        return cache

    def __call__(self, x_BxTxD, positions_BxT, cache=None):
        # Positions are not read: order comes from the recurrence. A cache continues from the
        # state its last call left, so each call's tokens must directly follow the cached ones.
        fresh = self.init_cache(x_BxTxD.shape[0]) if cache is None else cache
        z, xbc, dt_raw = _project(self, x_BxTxD)
        new = {}
        if self.cfg.conv_width:
            xbc, new["conv"] = causal_conv(xbc, fresh["conv"], self.conv_w[...], self.conv_b[...])
        x, b, c, dt, log_a = _heads(self, jax.nn.silu(xbc), dt_raw)
        # Keep the last value only: a growing tuple would change the module's state structure,
        # and so retrace every jitted call.
        self.sow(nnx.Intermediate, "decay", jax.lax.stop_gradient(jnp.mean(jnp.exp(log_a))),
                 reduce_fn=lambda _, new: new, init_fn=lambda: None)
        y, new["state"] = ssd_chunked(x, dt, log_a, b, c, fresh["state"], self.cfg.chunk)
        return _readout(self, y, x, z, x_BxTxD.dtype), (None if cache is None else new)
