"""Demo `tropical`: max-plus routes, runner-up margins as an ℓ∞ robustness radius, tropical
linearity, and the Maslov limit β → ∞, all on the registered `tropical` module.

At β = ∞ (config `beta=None`) the module's output before `wo` is y_ic = max_j (s_ij + v_jc) −
max_j s_ij with s_ij = max_c (q_ic + k_jc): each output coordinate is selected by one key, its
route argmax_j (s_ij + v_jc), and the centring by argmax_j s_ij. The module sows the runner-up
gaps of both (`route_margin`, `score_margin`, nnx.Intermediate). An ℓ∞ perturbation of size εq,
εk, εv moves every s by at most εq + εk and every s + v by at most εq + εk + εv, so when twice
that stays below the smallest margin no route can change and y moves affinely. The demo feeds
q, k, v (taken from the registered module's own projection of a random input) straight into the
registered module's aggregation — a subclass whose `project` returns them and whose `wo` is the
identity — and checks:

- the fed path reproduces the real module's output (so the analysis is of the real module);
- the sown margins equal the gaps measured from s_ij + v_jc directly;
- `steps` random sign perturbations (vertices of the ℓ∞ ball) of q, k, v at 0.9 of the
  certified radius keep every route and the centring, and y moves exactly as the affine
  prediction on the fixed routes says;
- margins are tight: on the coordinate with the smallest margin >= 1e-4, moving its winner down
  and runner-up up by 0.8 of half the margin keeps its route, by 1.2 of it flips it (so a push
  past the radius does change a route: the certificate has teeth);
- tropical linearity y(max(v, v')) = max(y(v), y(v')) and y(v + c) = y(v) + c;
- finite β converges to max-plus, within the bound (log K + log n)/β;
- the DEFAULT configuration (finite β, the matmul path a model trains with) sows both margins,
  equal to the runner-up gaps of its own scores, and they certify its output: each ⊕ over n
  visible keys exceeds its max by at most log(1 + (n−1)e^{−βm})/β, m its margin, so y is that
  close to the hard-route output on the same scores.
The β = ∞ module runs with key blocks of 5 (three blocks for T = 12), so the margins the
certificates use are merged across blocks, as at any T above the default block of 64.
See markdown_documentation/tropical.md.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import attention
from attention.base import AttentionDims
from attention.tropical import tropical_reduce
from mgr.demos.base import DemoResult, check, demo

_B, _T, _H, _K = 1, 12, 2, 8
_DIMS = AttentionDims(d_model=_H * _K, n_heads=_H, n_kv_heads=_H, head_dim=_K, max_seq_len=_T)
_BETAS = (1.0, 4.0, 16.0, 64.0, 256.0)
_TOL = 1e-5  # float32 on O(1) values
_BLOCK = 5  # keys per chunk at β = ∞: T = 12 spans three blocks, so margins merge across them


def _fed_module(beta, seed: int, **cfg):
    """The registered module with q, k, v supplied by the caller (packed along the last axis of
    x) and `wo` set to the identity, so its output is the aggregation y itself."""
    entry = attention.get("tropical")

    class Fed(entry.module_cls):
        def project(self, x_BxTxD, positions_BxT):
            q, k, v = jnp.split(x_BxTxD, 3, axis=-1)
            b, t = x_BxTxD.shape[:2]
            return tuple(a.reshape(b, t, _H, _K) for a in (q, k, v))

    m = Fed(_DIMS, entry.config_cls(beta=beta, margins=True, **cfg), rngs=nnx.Rngs(seed))
    m.wo.kernel[...] = jnp.eye(_H * _K, dtype=jnp.float32)
    graphdef, state = nnx.split(m)

    @jax.jit
    def run(q, k, v, pos):
        mod = nnx.merge(graphdef, state)
        x = jnp.concatenate([a.reshape(*a.shape[:2], -1) for a in (q, k, v)], axis=-1)
        y, _ = mod(x, pos)
        inter = nnx.state(mod, nnx.Intermediate)
        margins = {n: inter[n][...] for n in ("route_margin", "score_margin") if n in inter}
        return y.reshape(*y.shape[:2], _H, _K), margins

    return run


@partial(jax.jit, static_argnums=3)
def _routes(q, k, v, beta=None):
    """Max-plus analysis of the aggregation on the scores s = ⊕_β over channels (max at β = None)
    `[B, T, S, H]`, z = s + v `[B, T, S, H, K]` (causal, masked to -inf): routes argmax_j z,
    centring argmax_j s, their runner-up gaps, and the hard-route y = max_j z − max_j s."""
    s = tropical_reduce(q[:, :, None] + k[:, None], -1, beta)
    ok = (jnp.arange(_T)[None, :] <= jnp.arange(_T)[:, None])[None, :, :, None]
    s = jnp.where(ok, s, -jnp.inf)
    z = s[..., None] + v[:, None]
    srt_z = jnp.sort(z, axis=2)
    srt_s = jnp.sort(s, axis=2)
    gap = lambda top1, top2: jnp.where(jnp.isfinite(top2), top1 - top2, jnp.inf)
    return {"route": jnp.argmax(z, axis=2), "centre": jnp.argmax(s, axis=2),
            "runner": jnp.argsort(z, axis=2)[:, :, -2],
            "route_gap": gap(srt_z[:, :, -1], srt_z[:, :, -2]),  # [B, T, H, K]
            "score_gap": gap(srt_s[:, :, -1], srt_s[:, :, -2]),  # [B, T, H]
            "y": srt_z[:, :, -1] - srt_s[:, :, -1][..., None], "s": s, "z": z}


def _affine_prediction(an0, q, k, v):
    """y at (q, k, v) if the routes and centring of `an0` are kept: z at the old route minus s
    at the old centre."""
    an = _routes(q, k, v)
    z_at = jnp.take_along_axis(an["z"], an0["route"][:, :, None], axis=2)[:, :, 0]
    s_at = jnp.take_along_axis(an["s"], an0["centre"][:, :, None], axis=2)[:, :, 0]
    return z_at - s_at[..., None], an


@demo("tropical", "max-plus routes with runner-up margins as a certified ℓ∞ robustness radius; "
      "tropical linearity; β → ∞ limit", default_steps=32)
def run(seed: int, steps: int) -> DemoResult:
    key = jax.random.key(seed)
    rng = np.random.default_rng(seed)
    entry = attention.get("tropical")
    exact_cfg = entry.config_cls(beta=None, margins=True)
    real = entry.module_cls(_DIMS, exact_cfg, rngs=nnx.Rngs(seed))
    x = jax.random.normal(jax.random.fold_in(key, 1), (_B, _T, _DIMS.d_model))
    pos = jnp.broadcast_to(jnp.arange(_T, dtype=jnp.int32), (_B, _T))
    q, k, v = real.project(x, pos)  # RoPE + QK-norm + RMS-normalised v, from the real module
    fed = _fed_module(None, seed, block=_BLOCK)
    certs, tables, notes = [], {}, []

    y, sown = fed(q, k, v, pos)
    real_out, _ = real(x, pos)
    via_fed = real.wo(y.reshape(_B, _T, -1))
    certs.append(check("fed_is_module", "max |module(x) − wo(y from fed q,k,v)| < 1e-5 (the analysed "
                       "aggregation is the registered module's)",
                       float(jnp.max(jnp.abs(real_out - via_fed))),
                       float(jnp.max(jnp.abs(real_out - via_fed))) < _TOL))
    an0 = _routes(q, k, v)
    err_y = float(jnp.max(jnp.abs(an0["y"] - y)))
    certs.append(check("max_plus_form", "max |y − (max_j(s_ij+v_jc) − max_j s_ij)| < 1e-5", err_y, err_y < _TOL))

    # The module's sown margins against the gaps measured directly (inf where only one key).
    route_gap_own = jnp.min(an0["route_gap"], axis=-1)  # [B, T, H], min over channels as sown
    have = "route_margin" in sown and "score_margin" in sown
    if have:
        diff = max(float(jnp.max(jnp.abs(jnp.where(jnp.isfinite(route_gap_own), sown["route_margin"] - route_gap_own, 0.0)))),
                   float(jnp.max(jnp.abs(jnp.where(jnp.isfinite(an0["score_gap"]), sown["score_margin"] - an0["score_gap"], 0.0)))))
        same_inf = bool(jnp.all(jnp.isfinite(route_gap_own) == jnp.isfinite(sown["route_margin"])))
        certs.append(check("sown_margins", "sown route/score margins == runner-up gaps of s_ij+v_jc and s_ij "
                           "(max diff < 1e-5, inf exactly where one key is visible)", diff,
                           diff < _TOL and same_inf))
        m_route = float(jnp.min(sown["route_margin"]))
        m_score = float(jnp.min(sown["score_margin"]))
    else:
        certs.append(check("sown_margins", "the module sows route_margin and score_margin", sorted(sown), False))
        m_route, m_score = float(jnp.min(an0["route_gap"])), float(jnp.min(an0["score_gap"]))

    # Certified radius: each of q, k, v moved by at most ρ/3 in ℓ∞. Every s moves by <= 2ρ/3 and
    # every s + v by <= ρ, so routes survive while 2ρ < m_route and the centring while
    # 4ρ/3 < m_score; use 0.9 of the largest such ρ (the rest is float32 headroom: a margin can
    # be as small as ~1e-5 on values of size ~5).
    rho = 0.9 * min(m_route / 2, 0.75 * m_score)
    eps = rho / 3
    kept, worst_affine = 0, 0.0
    for trial in range(steps):
        dq, dk, dv = (eps * rng.choice([-1.0, 1.0], size=a.shape).astype(np.float32) for a in (q, k, v))
        q2, k2, v2 = q + dq, k + dk, v + dv
        y2, _ = fed(q2, k2, v2, pos)
        pred, an = _affine_prediction(an0, q2, k2, v2)
        same = bool(jnp.all(an["route"] == an0["route"]) and jnp.all(an["centre"] == an0["centre"]))
        kept += same
        worst_affine = max(worst_affine, float(jnp.max(jnp.abs(y2 - pred))))
    certs.append(check("routes_certified", f"{steps} random ℓ∞ sign perturbations of q,k,v at 0.9 × the "
                       f"radius from the margins (ε = {eps:.3g} each) keep every route and centring",
                       f"{kept}/{steps}", kept == steps))
    certs.append(check("affine_in_region", "inside the radius, max |y(perturbed) − affine prediction on the "
                       "fixed routes| < 1e-5", worst_affine, worst_affine < _TOL))

    # Tightness on the smallest route margin that float32 resolves well (>= 1e-4): its winner
    # down and runner-up up by f × margin/2 keeps (f < 1) or flips (f > 1) that route.
    gaps = np.asarray(an0["route_gap"])
    b, i, h, c = np.unravel_index(int(np.argmin(np.where(gaps >= 1e-4, gaps, np.inf))), gaps.shape)
    m = float(gaps[b, i, h, c])
    j1, j2 = int(an0["route"][b, i, h, c]), int(an0["runner"][b, i, h, c])
    flips = {}
    for f in (0.8, 1.2):
        dv = np.zeros(v.shape, np.float32)
        dv[b, j1, h, c], dv[b, j2, h, c] = -f * m / 2, f * m / 2
        an = _routes(q, k, v + dv)
        flips[f] = int(an["route"][b, i, h, c]) != j1
    certs.append(check("margin_tight", f"on the coordinate with the smallest margin >= 1e-4 (m = {m:.3g}), an "
                       "ℓ∞ push of 0.8·m/2 (winner down, runner-up up) keeps its route, 1.2·m/2 flips it",
                       f"flipped: {flips[0.8]} / {flips[1.2]}", not flips[0.8] and flips[1.2]))

    # Tropical linearity in v (q, k fixed).
    v_other = jax.random.normal(jax.random.fold_in(key, 2), v.shape)
    y_a, _ = fed(q, k, v, pos)
    y_b, _ = fed(q, k, v_other, pos)
    y_max, _ = fed(q, k, jnp.maximum(v, v_other), pos)
    lin_max = float(jnp.max(jnp.abs(y_max - jnp.maximum(y_a, y_b))))
    shift = float(rng.normal()) * 3.0
    y_shift, _ = fed(q, k, v + shift, pos)
    lin_shift = float(jnp.max(jnp.abs(y_shift - (y_a + shift))))
    certs.append(check("tropical_additive", "max |y(max(v, v')) − max(y(v), y(v'))| < 1e-5", lin_max, lin_max < _TOL))
    certs.append(check("tropical_homogeneous", f"max |y(v + c) − (y(v) + c)| < 1e-5 (c = {shift:.3g})",
                       lin_shift, lin_shift < _TOL))

    certs += _default_beta_certificates(entry, q, k, v, pos, seed, notes)

    # Maslov limit.
    rows, errs = [], []
    for beta in _BETAS:
        y_beta, _ = _fed_module(beta, seed, block=_BLOCK)(q, k, v, pos)
        # (1/β)lse over K channels for s, over n <= T keys for both ⊕_j: each bracket of y lies in
        # [0, (log K + log T)/β] above its max-plus value.
        bound = (math.log(_K) + math.log(_T)) / beta
        err = float(jnp.max(jnp.abs(y_beta - y)))
        errs.append(err)
        rows.append({"beta": beta, "max |y_β − y_∞|": err, "bound (log K + log T)/β": bound})
    within = all(e <= r["bound (log K + log T)/β"] + _TOL for e, r in zip(errs, rows))
    decreasing = all(b2 < b1 for b1, b2 in zip(errs, errs[1:]))
    certs.append(check("maslov_limit", "max |y_β − y_∞| within (log K + log T)/β and strictly decreasing "
                       f"over β = {', '.join(f'{b:g}' for b in _BETAS)}", errs[-1], within and decreasing))
    tables["β → ∞: log-sum-exp semiring → max-plus"] = rows

    # A few routes of the first head and batch element, for reading.
    tables["routes (batch 0, head 0, channel 0)"] = [
        {"query i": int(t), "route j": int(an0["route"][0, t, 0, 0]), "runner-up j": int(an0["runner"][0, t, 0, 0]),
         "margin": float(an0["route_gap"][0, t, 0, 0]), "centre j": int(an0["centre"][0, t, 0])}
        for t in range(1, _T)]
    notes.append(f"min route margin {m_route:.4g}, min score margin {m_score:.4g}; certified ℓ∞ radius "
                 f"per q/k/v entry {eps:.4g} (tightness shown at query {i}, head {h}, "
                 f"channel {c}: winner key {j1}, runner-up {j2})")
    return DemoResult(certificates=certs, tables=tables, notes=notes)


def _default_beta_certificates(entry, q, k, v, pos, seed: int, notes: list) -> list:
    """The default configuration's own margins (finite β, matmul path) and what they certify."""
    cfg = entry.config_cls()
    beta = float(cfg.beta)
    y, sown = _fed_module(beta, seed)(q, k, v, pos)
    an = _routes(q, k, v, beta)
    if not ("route_margin" in sown and "score_margin" in sown):
        return [check("default_margins", f"the default config (β = {beta:g}) sows route_margin and "
                      "score_margin", sorted(sown), False)]
    route = jnp.min(an["route_gap"], axis=-1)
    fin = jnp.isfinite(route)
    diff = max(float(jnp.max(jnp.abs(jnp.where(fin, sown["route_margin"] - route, 0.0)))),
               float(jnp.max(jnp.abs(jnp.where(fin, sown["score_margin"] - an["score_gap"], 0.0)))))
    same_inf = bool(jnp.all(fin == jnp.isfinite(sown["route_margin"])))
    n = jnp.arange(1, _T + 1, dtype=jnp.float32)[None, :, None]  # visible keys per query

    def eps(m):  # how far a ⊕_β over n keys with runner-up gap m can exceed its max
        return jnp.log1p((n - 1) * jnp.exp(-beta * m)) / beta

    bound = jnp.maximum(eps(sown["route_margin"]), eps(sown["score_margin"]))  # [B, T, H]
    err = jnp.max(jnp.abs(y - an["y"]), axis=-1)
    excess = float(jnp.max(err - bound))
    # ε(0) = log(n)/β, the generic bound; wider margins shrink it (median ratio, n >= 2 keys).
    ratio = float(jnp.median((bound / (jnp.log(n) / beta))[:, 1:]))
    notes.append(f"default β = {beta:g}: the margins' bound log(1+(n−1)e^(−βm))/β is a median "
                 f"{ratio:.2f} of the generic log(n)/β; largest |y − hard routes| "
                 f"{float(jnp.max(err)):.3g}")
    return [
        check("default_margins", f"default config (β = {beta:g}, matmul path): sown route/score "
              "margins == runner-up gaps of its own s_ij + v_jc and s_ij (max diff < 1e-4, inf exactly where one "
              "key is visible)", diff, diff < 1e-4 and same_inf),
        check("soft_routes_certified", "default β: |y − (max_j(s_ij+v_jc) − max_j s_ij)| on its own "
              "scores <= max over the two margins m of log(1+(n−1)e^(−βm))/β, every query, head, channel: "
              "max (error − bound) <= 1e-5", excess, excess <= _TOL),
    ]
