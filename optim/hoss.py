"""HOSS, the Hyperreal OU Shadow Step: the exact step of the loss's linearised gradient-flow SDE.

Freeze the gradient g and Hessian H at w. The linearised SDE dU = -(H U + g) dτ + Σ^½ dB_τ is an
Ornstein–Uhlenbeck process, solved exactly over a macro-time δ:

    w⁺ = w − Φ_δ(H) g + η,   Φ_δ(H) = H⁻¹(I − e^{−δH}),   η ~ N(0, C_δ),
    C_δ = ∫₀^δ e^{−sH} Σ e^{−sH} ds.

H is never formed: r Hessian-vector products (forward-over-reverse, `jax.linearize` of
`jax.grad(value_fn)`) drive a rank-r Lanczos process started at g with full
reorthogonalisation, and Φ_δ(H) g ≈ ‖g‖ V Φ_δ(T) e₁ is evaluated from the eigendecomposition of
the small tridiagonal T (exact when the Krylov space is H-invariant, e.g. r ≥ dim). Ritz values
below `curvature_floor` (negative curvature included) are raised to it; at 0 the stable limit
Φ_δ(0) = δ applies, so such directions move like gradient descent with step δ. The macro-time is
δ = delta_scale × the schedule's learning rate. With Σ = σ²I, only the noise inside the Krylov
subspace is sampled (covariance σ²(1 − e^{−2δλ})/(2λ) per Ritz pair); the orthogonal
complement's noise is not modelled. Noise is off by default (σ = 0); its PRNG key lives in the
optax state. The HVPs are inside the jitted step, so XLA's FLOP count charges them to HOSS.
Math, claims and tests: markdown_documentation/hoss.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from core.errors import MgrError
from optim.registry import register

_HI = jax.lax.Precision.HIGHEST
# A Lanczos residual this small relative to ‖H v‖ means the Krylov space is exhausted
# (invariant): later basis vectors are set to zero instead of amplifying rounding noise.
_BREAKDOWN_RTOL = 1e-5


@dataclass(frozen=True, kw_only=True)
class HossConfig:
    rank: int = 8  # Lanczos steps r = Hessian-vector products per step
    delta_scale: float = 300.0  # macro-time δ = delta_scale * schedule lr (≈0.9 at lr 3e-3)
    curvature_floor: float = 0.0  # Ritz values below this (incl. negative) are raised to it
    noise_std: float = 0.0  # σ of Σ = σ²I; 0 gives the deterministic shadow step
    seed: int = 0  # seed of the noise key kept in the optax state

    def __post_init__(self):
        if self.rank < 1:
            raise MgrError(f"hoss: rank must be at least 1, got {self.rank}")
        if self.delta_scale <= 0:
            raise MgrError(f"hoss: delta_scale must be positive, got {self.delta_scale}")
        if self.curvature_floor < 0:
            raise MgrError("hoss: curvature_floor must be >= 0 (negative curvature is floored)")
        if self.noise_std < 0:
            raise MgrError("hoss: noise_std must be >= 0")


class HossState(NamedTuple):
    count: jax.Array  # int32 step counter (drives a step-indexed schedule)
    key: jax.Array  # raw uint32[2] PRNG key for the noise (raw so orbax stores it as an array)
    ritz_values: jax.Array  # float32[r], the last step's floored Ritz values (diagnostics)


def phi(lam, delta):
    """Φ_δ(λ) = (1 − e^{−δλ})/λ, with the limit δ at λ = 0 (elementwise, λ ≥ 0)."""
    x = -delta * lam
    small = jnp.abs(x) < 1e-6
    safe = jnp.where(small, 1.0, x)
    return delta * jnp.where(small, 1.0 + x / 2, jnp.expm1(safe) / safe)


def lanczos(hvp, g, rank: int):
    """Rank-`rank` Lanczos from `g` with full reorthogonalisation.

    Returns (V [rank, n] orthonormal rows (zero rows after breakdown), alphas [rank],
    betas [rank - 1]) with T = tridiag(betas, alphas, betas) ≈ V H Vᵀ.

    The loop is unrolled on purpose: XLA's cost analysis counts a while-loop body once, so a
    `fori_loop` would hide r − 1 of the r Hessian-vector products from the FLOPs budget.
    """
    tiny = jnp.finfo(g.dtype).tiny
    basis = [g / jnp.maximum(jnp.linalg.norm(g), tiny)]
    alphas, betas = [], []
    for j in range(rank):
        v = basis[j]
        hv = hvp(v)
        alphas.append(jnp.dot(v, hv, precision=_HI))
        if j == rank - 1:
            break
        vs = jnp.stack(basis)
        # Gram–Schmidt against every basis vector so far, twice.
        w = hv - jnp.dot(jnp.dot(vs, hv, precision=_HI), vs, precision=_HI)
        w = w - jnp.dot(jnp.dot(vs, w, precision=_HI), vs, precision=_HI)
        beta = jnp.linalg.norm(w)
        alive = beta > _BREAKDOWN_RTOL * jnp.linalg.norm(hv) + tiny
        betas.append(jnp.where(alive, beta, 0.0))
        basis.append(jnp.where(alive, w / jnp.where(alive, beta, 1.0), 0.0))
    return jnp.stack(basis), jnp.stack(alphas), jnp.asarray(betas, g.dtype).reshape(rank - 1)


def krylov_step(hvp, g, rank: int, delta, floor: float, noise_std: float, key):
    """Deterministic part −‖g‖ Vᵀ Φ_δ(T) e₁, noise in span(V), and the floored Ritz values."""
    basis, alphas, betas = lanczos(hvp, g, rank)
    tri = jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)
    lam, u = jnp.linalg.eigh(tri)
    lam = jnp.maximum(lam, floor)
    coeff = u @ (phi(lam, delta) * u[0])  # Φ_δ(T) e₁
    step = -jnp.linalg.norm(g) * jnp.dot(coeff, basis, precision=_HI)
    if noise_std > 0:
        # C_δ(T) = σ² Φ_{2δ}(T)/2 in T's eigenbasis; sample U diag(√c) z and lift by Vᵀ.
        c = phi(lam, 2.0 * delta) / 2.0
        z = jax.random.normal(key, lam.shape, g.dtype)
        step = step + noise_std * jnp.dot(u @ (jnp.sqrt(c) * z), basis, precision=_HI)
    return step, lam


@register("hoss", config_cls=HossConfig,
          description="Hyperreal OU Shadow Step: exact linearised-SDE step via rank-r Lanczos "
                      "HVPs; delta = delta_scale x lr (rank, delta_scale, curvature_floor, "
                      "noise_std, seed); needs value_fn")
def build_hoss(cfg: HossConfig, learning_rate, *, stacked: bool = False
               ) -> optax.GradientTransformationExtraArgs:
    del stacked  # HOSS treats all parameters as one vector

    def init(params):
        del params
        return HossState(count=jnp.zeros([], jnp.int32),
                         key=jax.random.PRNGKey(cfg.seed),
                         ritz_values=jnp.zeros((cfg.rank,), jnp.float32))

    def update(updates, state, params=None, *, value_fn=None, **extra_args):
        del extra_args
        if params is None or value_fn is None:
            raise MgrError("hoss needs params and the loss as value_fn=lambda p: loss(p) in "
                           "tx.update(grads, state, params, value_fn=...)")
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        delta = cfg.delta_scale * jnp.asarray(lr, jnp.float32)
        g, unravel = ravel_pytree(updates)
        flat_dtype = g.dtype
        g = g.astype(jnp.float32)  # Lanczos in float32 even for low-precision parameters
        # Forward-over-reverse: one linearisation of ∇f at w, then r cheap tangent evaluations.
        _, grad_lin = jax.linearize(jax.grad(value_fn), params)
        hvp = lambda v: ravel_pytree(grad_lin(unravel(v.astype(flat_dtype))))[0].astype(g.dtype)
        key, sub = jax.random.split(state.key)
        step, lam = krylov_step(hvp, g, cfg.rank, delta, cfg.curvature_floor, cfg.noise_std, sub)
        new_state = HossState(count=optax.safe_increment(state.count), key=key, ritz_values=lam)
        return unravel(step.astype(flat_dtype)), new_state

    return optax.GradientTransformationExtraArgs(init, update)
