"""Octonion rotor attention: quaternion rotor attention on 8-channel Cayley–Dickson octonions.

Math: each head's K channels are K/8 octonions (a, b) with (a,b)(c,d) = (ac − d̄b, da + bc̄).
Scores are Σ_slots Re(q_i conj(k_j)) / √K. Octonions are not associative, so the transport
needs an explicit bracketing; it is *defined* as y_i = q̂_i (Σ_j p_ij (conj(k̂_j) v_j)), i.e.
per pair q̂_i (conj(k̂_j) v_j) — which is NOT ((q̂_i conj(k̂_j)) v_j), and the tests show the
difference is real. Left multiplication is linear, so the fast path (one attention over
pre-rotated values, one product per query, O(T²K)) equals the per-pair reference exactly.
Claim: scores are invariant under q, k -> u q, u k for unit u, each transport is a product of
two isometries of R⁸ (not a single left multiplication), so each output octonion is a convex
combination of moved values and its norm never exceeds the largest value norm.
See markdown_documentation/octonion.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from attention.base import AlgebraConfig, AttentionDims, pairwise_flops, require
from attention.hypercomplex import OCTONION, RotorAttention, rotor_flops
from attention.registry import register


@dataclass(frozen=True, kw_only=True)
class OctonionConfig(AlgebraConfig):
    """unit_eps: floor in q̂ = q / sqrt(|q|² + eps); keeps gradients finite at q = 0."""

    unit_eps: float = 1e-6

    def validate(self, dims: AttentionDims) -> None:
        require(dims.head_dim % 8 == 0,
                f"octonion attention needs head_dim divisible by 8, got {dims.head_dim}")
        require(self.unit_eps > 0, f"octonion unit_eps must be > 0, got {self.unit_eps}")


def _reference(module: "OctonionAttention", x_BxTxD, positions_BxT):
    """Per query, every pair's q̂_i (conj(k̂_j) v_j) built with the defined bracketing."""
    return module.reference(x_BxTxD, positions_BxT, bracket="split")


def _flops(dims: AttentionDims, cfg: OctonionConfig, seq_len: int) -> float:
    return pairwise_flops(dims, seq_len) + rotor_flops(OCTONION, dims, seq_len)


@register("octonion", config_cls=OctonionConfig, flops_per_token=_flops, reference=_reference,
          description="softmax on Re(q conj k); values moved by q̂ (conj(k̂) v) on Cayley–Dickson octonions",
          relative_positions=True)
class OctonionAttention(RotorAttention):
    algebra = OCTONION
