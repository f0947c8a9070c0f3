"""Quaternion rotor attention: softmax scores from Re(q ⊗ conj(k)), values moved by rotors.

Math: each head's K channels are K/4 quaternions. The score of query i and key j is
Σ_slots Re(q_i ⊗ conj(k_j)) / √K, and the value of key j reaches query i transported by the
relative rotor r_ij = q̂_i ⊗ conj(k̂_j) of the unit quaternions: y_i = Σ_j p_ij r_ij ⊗ v_j.
Because the Hamilton product is associative, r_ij ⊗ v_j = q̂_i ⊗ (conj(k̂_j) ⊗ v_j), so the
fast path is one attention over pre-rotated values followed by one product per query
(O(T²K), like standard attention); the reference builds every r_ij explicitly.
Claim: scores are invariant under a joint left rotation of q and k, and every transport is
an isometry of R⁴, so (before the output projection) each output quaternion is a convex
combination of rotated values and never exceeds the largest value norm.
See markdown_documentation/quaternion.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from attention.base import AlgebraConfig, AttentionDims, pairwise_flops, require
from attention.hypercomplex import QUATERNION, RotorAttention, rotor_flops
from attention.registry import register


@dataclass(frozen=True, kw_only=True)
class QuaternionConfig(AlgebraConfig):
    """unit_eps: floor in q̂ = q / sqrt(|q|² + eps); keeps gradients finite at q = 0."""

    unit_eps: float = 1e-6

    def validate(self, dims: AttentionDims) -> None:
        require(dims.head_dim % 4 == 0,
                f"quaternion attention needs head_dim divisible by 4, got {dims.head_dim}")
        require(self.unit_eps > 0, f"quaternion unit_eps must be > 0, got {self.unit_eps}")


def _reference(module: "QuaternionAttention", x_BxTxD, positions_BxT):
    """Per query, every relative rotor r_ij = q̂_i ⊗ conj(k̂_j) built and applied as (r_ij ⊗ v_j)."""
    return module.reference(x_BxTxD, positions_BxT, bracket="relative")


def _flops(dims: AttentionDims, cfg: QuaternionConfig, seq_len: int) -> float:
    return pairwise_flops(dims, seq_len) + rotor_flops(QUATERNION, dims, seq_len)


@register("quaternion", config_cls=QuaternionConfig, flops_per_token=_flops, reference=_reference,
          description="softmax on Re(q conj k); values moved by the relative rotor of unit quaternions",
          relative_positions=True)
class QuaternionAttention(RotorAttention):
    algebra = QUATERNION
