"""Muon: Newton–Schulz-orthogonalised momentum on every hidden matrix, AdamW on everything else.

For a hidden weight matrix the momentum M (Nesterov by default) is replaced by its approximate
polar factor O ≈ U Vᵀ (M = U S Vᵀ), computed by five quintic Newton–Schulz iterations, so every
singular direction moves by the same amount: steepest descent under the spectral norm. The
embedding table, the head, norms, vectors and scalars get AdamW at their own learning rate.
Which parameter is which is decided in `optim/partition.py` (the reference routed nothing to
Muon in JAX and built the same optimizer for `adamw` and `muon`). Leading axes of a matrix (a
stacked layer axis from `nnx.scan`) are batch axes: each layer's matrix is orthogonalised on
its own. Math, claims and tests: markdown_documentation/muon.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import optax
from optax.contrib import MuonDimensionNumbers, scale_by_muon

from core.errors import MgrError
from optim import partition
from optim.registry import register

MUON, ADAM = "muon", "adam"
# Keller Jordan's quintic coefficients (modded-nanogpt): fast growth of small singular values,
# ending in a band around 1 rather than exactly at 1.
NS5_COEFFS = (3.4445, -4.7750, 2.0315)


@dataclass(frozen=True, kw_only=True)
class MuonConfig:
    beta: float = 0.95  # momentum of the Muon branch
    nesterov: bool = True  # Nesterov momentum (both branches)
    ns_steps: int = 5  # Newton–Schulz iterations
    consistent_rms: float | None = 0.2  # update RMS of a Muon matrix; None = width scaling
    weight_decay: float = 0.1  # decoupled decay on matrices only (both branches)
    adam_lr_ratio: float = 1.0  # AdamW learning rate = adam_lr_ratio * Muon learning rate
    adam_b1: float = 0.9
    adam_b2: float = 0.95
    eps: float = 1e-8

    def __post_init__(self):
        if not 0 <= self.beta < 1:
            raise MgrError(f"muon: beta must lie in [0, 1), got {self.beta}")
        if self.ns_steps < 1:
            raise MgrError(f"muon: ns_steps must be at least 1, got {self.ns_steps}")
        if self.consistent_rms is not None and self.consistent_rms <= 0:
            raise MgrError("muon: consistent_rms must be positive or None")
        if self.adam_lr_ratio <= 0 or self.weight_decay < 0 or self.eps <= 0:
            raise MgrError("muon: adam_lr_ratio and eps must be positive, weight_decay >= 0")
        if not (0 <= self.adam_b1 < 1 and 0 <= self.adam_b2 < 1):
            raise MgrError("muon: adam_b1 and adam_b2 must lie in [0, 1)")


def labels(params, *, stacked: bool = False):
    """'muon' for every hidden matrix, 'adam' for the rest (from `partition.roles`)."""
    return jax.tree.map(lambda r: MUON if r == partition.MATRIX else ADAM,
                        partition.roles(params, stacked=stacked))


def _dimension_numbers(tree):
    # Called on the Muon branch's own (masked) tree, where every leaf is a matrix.
    return jax.tree.map(lambda x: MuonDimensionNumbers(*partition.matrix_axes(x.ndim)), tree)


def _shape_factor(fan_in: int, fan_out: int, consistent_rms: float | None) -> float:
    if consistent_rms is None:
        # modded-nanogpt's width transfer: taller-than-wide outputs move more.
        return math.sqrt(max(1.0, fan_out / fan_in))
    # An orthogonal (m, n) matrix has RMS 1/sqrt(max(m, n)); this sets the RMS to
    # consistent_rms, so Muon can share AdamW's learning rate (Liu et al. 2025, "Moonlight").
    return consistent_rms * math.sqrt(max(fan_in, fan_out))


def scale_by_shape(consistent_rms: float | None) -> optax.GradientTransformation:
    """Per-matrix constant factor from its (in, out) shape; leading axes are batch axes."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(
            lambda u: u * _shape_factor(*u.shape[-2:], consistent_rms), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update)


def _scaled(learning_rate, ratio: float):
    if callable(learning_rate):
        return lambda count: ratio * learning_rate(count)
    return ratio * learning_rate


@register("muon", config_cls=MuonConfig,
          description="Newton–Schulz orthogonalised momentum on hidden matrices, AdamW on "
                      "embedding/head/vectors at adam_lr_ratio x lr (beta, nesterov, ns_steps, "
                      "consistent_rms, weight_decay on matrices, adam_b1, adam_b2, eps)")
def build_muon(cfg: MuonConfig, learning_rate, *, stacked: bool = False
               ) -> optax.GradientTransformationExtraArgs:
    muon_branch = optax.chain(
        scale_by_muon(ns_coeffs=NS5_COEFFS, ns_steps=cfg.ns_steps, beta=cfg.beta, eps=cfg.eps,
                      nesterov=cfg.nesterov, weight_dimension_numbers=_dimension_numbers),
        scale_by_shape(cfg.consistent_rms),
        optax.add_decayed_weights(cfg.weight_decay),  # every leaf here is a matrix
        optax.scale_by_learning_rate(learning_rate),
    )
    adam_branch = optax.adamw(
        _scaled(learning_rate, cfg.adam_lr_ratio), b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.eps,
        weight_decay=cfg.weight_decay, nesterov=cfg.nesterov,
        mask=lambda p: partition.decay_mask(p, stacked=stacked))
    return optax.partition({MUON: muon_branch, ADAM: adam_branch},
                           lambda p: labels(p, stacked=stacked))
