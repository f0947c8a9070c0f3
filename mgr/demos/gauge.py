"""Demo `gauge`: parallel transport along the sequence, checked as geometry.

Everything comes from the registered `gauge` module (`attention.get("gauge").module_cls`) and
the pure helpers of attention/gauge.py and attention/lie.py. On a random sequence of T=256
tokens the module's links U_i = exp(A_i) give transports T_i = U_i⋯U_0 that are rotations
(TᵀT = I, det T = 1) and equal the path-ordered product of matrix exponentials of the so(4)
generators. A per-token gauge transformation of what the module's `attend` consumes (q_i, k_i,
v_i → g_i(·), U_i → g_i U_i g_{i−1}⁻¹) rotates each output by its own g_i, and moving the fields
without the links does not; shifting every position leaves the output unchanged. The sown
curvature (two-link loop holonomy) is > 0 for the default non-commuting links and ~0 for the
`abelian=True` ablation. Finally `steps` single-token cached decodes after a prefill reproduce
the full forward pass. See markdown_documentation/gauge.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

import attention
from attention.base import AttentionDims
from attention.gauge import push_forward, transports
from attention.lie import holonomy, pair_compose, pair_inverse, pair_matrix, qexp, so4_hat
from mgr.demos.base import DemoResult, check, demo

_T, _B, _PREFILL = 256, 2, 16
_SHIFT = 1000  # positions 0.._T-1 against _SHIFT.._SHIFT+_T-1
# generator_init = 1: rotations of about a radian per token, a strongly curved random connection
# (the default 0.1 is a near-flat start for training; its holonomy is correspondingly small).
_GEN_INIT = 1.0


def _dims(max_seq_len: int) -> AttentionDims:
    return AttentionDims(d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, max_seq_len=max_seq_len)


def _module(seed: int, max_seq_len: int, **cfg):
    entry = attention.get("gauge")
    return entry.module_cls(_dims(max_seq_len), entry.config_cls(generator_init=_GEN_INIT, **cfg),
                            rngs=nnx.Rngs(seed))


def _random_pairs(key, shape):
    """Uniform random SO(4) rotations as pairs of unit quaternions `[*shape, 4]`."""
    ka, kb = jax.random.split(key)
    a, b = jax.random.normal(ka, (*shape, 4)), jax.random.normal(kb, (*shape, 4))
    return (a / jnp.linalg.norm(a, axis=-1, keepdims=True), b / jnp.linalg.norm(b, axis=-1, keepdims=True))


def _geometry(seed: int):
    """Orthogonality, agreement with expm, gauge invariance and curvature, in one compile."""
    module = _module(seed, _T)
    flat_module = _module(seed, _T, abelian=True)
    gd, st = nnx.split(module)
    gd_flat, st_flat = nnx.split(flat_module)
    kx, kg = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (_B, _T, 32))
    pos = jnp.broadcast_to(jnp.arange(_T, dtype=jnp.int32), (_B, _T))

    @jax.jit
    def measure(st, st_flat, x):
        m = nnx.merge(gd, st)
        p, r = m.generators(x)
        links = (qexp(p), qexp(r))
        t_pair = transports(links, None, m.cfg.renormalize)
        t_mat = pair_matrix(t_pair)  # [B, T, G, N, 4, 4]
        eye = jnp.eye(4)
        ortho = jnp.max(jnp.abs(jnp.swapaxes(t_mat, -1, -2) @ t_mat - eye))
        det = jnp.max(jnp.abs(jnp.linalg.det(t_mat) - 1.0))
        raw = pair_matrix(transports(links, None, renormalize=False))
        ortho_raw = jnp.max(jnp.abs(jnp.swapaxes(raw, -1, -2) @ raw - eye))
        # The path-ordered product of explicit matrix exponentials, one token at a time.
        u_mat = jax.scipy.linalg.expm(so4_hat(p, r))
        _, t_seq = jax.lax.scan(lambda prev, u: (u @ prev, u @ prev), jnp.broadcast_to(eye, u_mat[:, 0].shape),
                                jnp.moveaxis(u_mat, 1, 0))
        vs_expm = jnp.max(jnp.abs(jnp.moveaxis(t_seq, 0, 1) - t_mat))

        # Gauge covariance of the module's own core: random g_i per token, kv head and block.
        q, k, v = m.project(x, pos)
        y, _ = m.attend(q, k, v, links, pos)
        g = _random_pairs(kg, links[0].shape[:-1])
        ident = jnp.zeros_like(g[0][:, :1]).at[..., 0].set(1.0)
        g_prev = tuple(jnp.concatenate([ident, u[:, :-1]], axis=1) for u in g)  # g_{−1} = I
        links_g = pair_compose(g, pair_compose(links, pair_inverse(g_prev)))  # g_i U_i g_{i−1}⁻¹

        def rot(x):  # x_i → g_i x_i, query heads sharing their kv head's gauge
            return push_forward(g, x.reshape(*g[0].shape[:3], -1, x.shape[-1])).reshape(x.shape)

        want = rot(y)
        y_gauged, _ = m.attend(rot(q), rot(k), rot(v), links_g, pos)
        y_fields_only, _ = m.attend(rot(q), rot(k), rot(v), links, pos)  # links left: not a symmetry
        shifted = jnp.max(jnp.abs(m(x, pos + _SHIFT)[0] - m(x, pos)[0]))

        # Curvature: the module's sown holonomy, default vs abelian, and the explicit-matrix loop.
        m(x, pos)
        m_flat = nnx.merge(gd_flat, st_flat)
        m_flat(x, pos)
        prev = tuple(u[:, :-1] for u in links)
        nxt = tuple(u[:, 1:] for u in links)
        explicit = jnp.mean(holonomy(prev, nxt), axis=-1)  # [B, T-1, G], mean over so(4) blocks
        return {"ortho": ortho, "det": det, "ortho_raw": ortho_raw, "vs_expm": vs_expm,
                "inv": jnp.max(jnp.abs(y_gauged - want)), "broken": jnp.max(jnp.abs(y_fields_only - want)),
                "scale": jnp.max(jnp.abs(want)), "shifted": shifted,
                "hol": m.holonomy[...], "hol_flat": m_flat.holonomy[...], "hol_explicit": explicit}

    out = measure(st, st_flat, x)
    return {k: (v if v.ndim else float(v)) for k, v in out.items()}


def _cache_vs_full(seed: int, steps: int):
    """Max |prefill + `steps` single-token cached decodes - full forward| of the module."""
    t = _PREFILL + steps
    module = _module(seed, t)
    gd, st = nnx.split(module)
    x = jax.random.normal(jax.random.fold_in(jax.random.key(seed), 1), (_B, t, 32))
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (_B, t))
    call = jax.jit(lambda st, x, p, c: nnx.merge(gd, st)(x, p, c))
    full, _ = call(st, x, pos, None)
    y, cache = call(st, x[:, :_PREFILL], pos[:, :_PREFILL], module.init_cache(_B))
    outs = [y]
    for i in range(_PREFILL, t):
        y, cache = call(st, x[:, i:i + 1], pos[:, i:i + 1], cache)
        outs.append(y)
    return float(jnp.max(jnp.abs(jnp.concatenate(outs, axis=1) - full))), float(jnp.max(jnp.abs(full)))


@demo("gauge", "gauge attention: orthogonal transports, gauge-covariant outputs, relative positions, "
      "curvature of non-commuting links (zero when abelian), cached decoding == full forward",
      default_steps=48)
def gauge_demo(seed: int, steps: int) -> DemoResult:
    geo = _geometry(seed)
    hol, hol_flat = geo["hol"], geo["hol_flat"]
    hol_mean = float(jnp.mean(hol[:, 1:]))  # token 0's loop is with the identity link
    hol_flat_max = float(jnp.max(hol_flat))
    hol_match = float(jnp.max(jnp.abs(hol[:, 1:] - geo["hol_explicit"])))
    cache_err, out_scale = _cache_vs_full(seed, steps)
    rel_inv = geo["inv"] / geo["scale"]
    rel_broken = geo["broken"] / geo["scale"]
    certs = [
        check("orthogonal", f"transports of a random T={_T} sequence: max |TᵀT − I| < 1e-5",
              geo["ortho"], geo["ortho"] < 1e-5),
        check("special", "det T = 1: max |det T − 1| < 1e-5", geo["det"], geo["det"] < 1e-5),
        check("equals_path_ordered_expm", "quaternion prefix scan == sequential product of "
              f"expm(A_i) (4x4 matrices, f32 rounding over {_T} sequential products): max |diff| < 1e-3",
              geo["vs_expm"], geo["vs_expm"] < 1e-3),
        check("gauge_covariant", "the module's attend on q_i, k_i, v_i → g_i(·), U_i → g_i U_i g_{i−1}⁻¹ "
              "(random g_i per token) returns g_i y_i: max |Δy| / max |y| < 1e-5", rel_inv, rel_inv < 1e-5),
        check("gauge_needs_transport", "the same g_i on q, k, v alone (links left as they were) "
              "does not: max |Δy| / max |y| > 0.1", rel_broken, rel_broken > 0.1),
        check("relative_positions", f"positions shifted by {_SHIFT}: max |Δ output| < 1e-4 (RoPE acts "
              "in the base frame)", geo["shifted"], geo["shifted"] < 1e-4),
        check("curved", "non-commuting links: mean sown holonomy ‖U_iU_{i−1}U_i⁻¹U_{i−1}⁻¹ − I‖_F "
              "> 0.1", hol_mean, hol_mean > 0.1),
        check("abelian_flat", "abelian=True ablation: max sown holonomy < 1e-5", hol_flat_max,
              hol_flat_max < 1e-5),
        check("holonomy_closed_form", "sown closed-form holonomy == explicit 4x4 loop product: "
              "max |diff| < 1e-4", hol_match, hol_match < 1e-4),
        check("cache_equals_full", f"prefill {_PREFILL} + {steps} single-token cached decodes == "
              "full forward: max |diff| < 1e-4", cache_err, cache_err < 1e-4),
    ]
    table = [
        {"quantity": "max |TᵀT − I| (renormalize=True, the default)", "value": geo["ortho"]},
        {"quantity": "max |TᵀT − I| (renormalize=False: f32 drift over 256 products)", "value": geo["ortho_raw"]},
        {"quantity": "max |det T − 1|", "value": geo["det"]},
        {"quantity": "max |scan − path-ordered expm|", "value": geo["vs_expm"]},
        {"quantity": "max |y| (attend output scale)", "value": geo["scale"]},
        {"quantity": "gauge-transformed: max |attend − g_i y_i|", "value": geo["inv"]},
        {"quantity": "fields transformed without links: max |attend − g_i y_i|", "value": geo["broken"]},
        {"quantity": f"positions shifted by {_SHIFT}: max |Δ output|", "value": geo["shifted"]},
        {"quantity": "mean holonomy, non-abelian", "value": hol_mean},
        {"quantity": "max holonomy, abelian", "value": hol_flat_max},
        {"quantity": "max |output| (cache check scale)", "value": out_scale},
    ]
    notes = [(f"Module: d_model 32, 4 query heads over 2 kv heads, head dim 8 (two so(4) blocks), "
              f"generator_init {_GEN_INIT} (about a radian per link); B={_B}, T={_T}, random "
              "unit-normal inputs. `steps` is the number of single-token cached decodes.")]
    return DemoResult(certificates=certs, tables={"gauge geometry": table}, notes=notes)
