"""Demos `quaternion` and `octonion`: the normed division algebras behind rotor attention.

Both use the products of `attention/hypercomplex.py` and the registered modules themselves:
norms are multiplicative, so a composition of `steps` random unit numbers stays on the unit
sphere; quaternions are associative and octonions are not (random associators are O(1)), yet
octonions still satisfy the Moufang identities and Artin's theorem (a chain built from two
generators does not depend on its bracketing). In the registered module the value transport is
an isometry per number, so before the output projection no output exceeds the largest value
seen so far, and scores are invariant under a joint left rotation of queries and keys.
See markdown_documentation/quaternion.md and markdown_documentation/octonion.md.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import attention
from attention.base import AttentionDims
from attention.hypercomplex import QUATERNION, Algebra, slot_scores, to_slots
from mgr.demos.base import DemoResult, check, demo

# H=4 query heads over G=2 kv heads (GQA) with K=8: one octonion or two quaternions per head.
_DIMS = AttentionDims(d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, max_seq_len=16)
_B, _T = 4, 16
_T_REF = 5  # positions compared with the per-pair references (they build [B, T, T, H, K])
_CHAINS = 64  # independent compositions, each of `steps` products
_TRIPLES = 1024  # random triples for the associator and the Moufang identities


def _norm(x):
    return jnp.linalg.norm(x, axis=-1)


def _units(key, shape, n):
    x = jax.random.normal(key, (*shape, n))
    return x / _norm(x)[..., None]


def drift_tolerance(n_products: int) -> float:
    """Float32 rounding of |P| grows at most linearly in the number of products (about 1e-7
    relative each, measured 5e-6 after 1000); a norm that leaks grows geometrically instead."""
    return 1e-5 + 2e-8 * n_products


def compose(alg: Algebra, u_NxCxn):
    """Left-nested ((u1 u2) u3)... and right-nested u1 (u2 (u3 ...)) products of N factors,
    for C chains at once."""
    left, _ = jax.lax.scan(lambda acc, u: (alg.mul(acc, u), None), u_NxCxn[0], u_NxCxn[1:])
    right, _ = jax.lax.scan(lambda acc, u: (alg.mul(u, acc), None), u_NxCxn[-1], u_NxCxn[:-1],
                            reverse=True)
    return left, right


def identities(alg: Algebra, x, y, z):
    """Relative errors (divided by the product of the factors' norms) of algebraic laws."""
    m, scale3 = alg.mul, _norm(x) * _norm(y) * _norm(z)
    scale4 = scale3 * _norm(z)

    def rel(a, b, scale):
        return _norm(a - b) / scale

    return {
        "norm": jnp.abs(_norm(m(x, y)) - _norm(x) * _norm(y)) / (_norm(x) * _norm(y)),
        "associator": rel(m(m(x, y), z), m(x, m(y, z)), scale3),
        "moufang_left": rel(m(z, m(x, m(z, y))), m(m(m(z, x), z), y), scale4),
        "moufang_right": rel(m(x, m(z, m(y, z))), m(m(m(x, z), y), z), scale4),
        "moufang_middle": rel(m(m(z, x), m(y, z)), m(m(z, m(x, y)), z), scale4),
    }


@partial(jax.jit, static_argnums=(1, 2))
def _draw(key, steps: int, n: int):
    """The random inputs of `_algebra_measures`, drawn in their own program: fused into the
    measurements, XLA duplicates the random-bit generation into every consumer and the
    compile time grows several-fold."""
    k_chain, k_triple, k_gen, k_word = jax.random.split(key, 4)
    n_factors = steps + 1  # `steps` products
    gens = _units(k_gen, (2, _CHAINS), n)
    word = jax.random.bernoulli(k_word, 0.5, (n_factors,)).astype(jnp.int32)
    return (_units(k_chain, (n_factors, _CHAINS), n), gens[word],
            *jax.random.normal(k_triple, (3, _TRIPLES, n)))


@partial(jax.jit, static_argnums=0)
def _algebra_measures(alg: Algebra, chain_NxCxn, two_gen_NxCxn, x, y, z):
    """All algebra-level measurements in one compiled program (see `_module_outputs`)."""
    left, right = compose(alg, chain_NxCxn)
    # Artin: chains whose factors are drawn from only two generators.
    l2, r2 = compose(alg, two_gen_NxCxn)
    return {"drift": jnp.max(jnp.abs(jnp.concatenate([_norm(left), _norm(right)]) - 1.0)),
            "bracket": _norm(left - right), "artin": jnp.max(_norm(l2 - r2)),
            **identities(alg, x, y, z)}


def algebra_certificates(alg: Algebra, key, steps: int):
    """Norm preservation over long compositions, (non-)associativity, Moufang, Artin."""
    associative = alg is QUATERNION
    measured = _algebra_measures(alg, *_draw(key, steps, alg.n))
    ids = {k: np.asarray(v) for k, v in measured.items()}
    tol = drift_tolerance(steps)
    drift, bracket, artin = float(ids["drift"]), ids["bracket"], float(ids["artin"])
    certs = [check("norm_preserved", f"{_CHAINS} chains of {steps} products of random unit "
                   f"{alg.name}s (left-nested ((u1 u2) u3)... and right-nested): max abs(‖P‖ - 1) "
                   f"< {tol:.2g}", drift, drift < tol)]
    certs.append(check("norm_multiplicative", f"‖xy‖ = ‖x‖‖y‖ on {_TRIPLES} random pairs: "
                       "max relative error < 1e-5", ids["norm"].max(), ids["norm"].max() < 1e-5))
    if associative:
        certs.append(check("associative", f"(xy)z = x(yz) on {_TRIPLES} random triples: max "
                           "‖(xy)z - x(yz)‖/(‖x‖‖y‖‖z‖) < 1e-5", ids["associator"].max(),
                           ids["associator"].max() < 1e-5))
        if steps >= 2:
            certs.append(check("bracketing_irrelevant", f"left- and right-nested chains agree: "
                               f"max ‖L - R‖ < {2 * tol:.2g}", bracket.max(), bracket.max() < 2 * tol))
    else:
        certs.append(check("non_associative", f"every one of {_TRIPLES} random triples has a "
                           "nonzero associator: min ‖(xy)z - x(yz)‖/(‖x‖‖y‖‖z‖) > 1e-3",
                           ids["associator"].min(), ids["associator"].min() > 1e-3))
        worst = max(ids[k].max() for k in ("moufang_left", "moufang_right", "moufang_middle"))
        certs.append(check("moufang", "z(x(zy)) = ((zx)z)y, x(z(yz)) = ((xz)y)z and "
                           "(zx)(yz) = (z(xy))z on random triples: max relative error < 1e-5",
                           worst, worst < 1e-5))
        if steps >= 2:
            certs.append(check("bracketing_matters", f"chains of {steps} products of random unit "
                               "octonions: mean ‖left-nested - right-nested‖ > 0.1",
                               bracket.mean(), bracket.mean() > 0.1))
            certs.append(check("artin", f"chains of {steps} products of only TWO generators "
                               f"(Artin's theorem): bracketing-independent, max ‖L - R‖ < {2 * tol:.2g}",
                               artin, artin < 2 * tol))
    table = [{"quantity": "products per chain", "value": steps},
             {"quantity": "max abs(‖P‖ - 1) (both bracketings)", "value": drift},
             {"quantity": "mean ‖left-nested - right-nested‖", "value": float(bracket.mean())},
             {"quantity": "max ‖left - right‖, two generators", "value": artin},
             {"quantity": "median relative associator", "value": float(np.median(ids["associator"]))},
             {"quantity": "min relative associator", "value": float(ids["associator"].min())}]
    return certs, table


def _make_module(alg: Algebra, key):
    entry = attention.get(alg.name)
    return entry.module_cls(_DIMS, entry.config_cls(), rngs=nnx.Rngs(key))


@partial(jax.jit, static_argnums=0)
def _module_inputs(alg: Algebra, key):
    """Parameters of a fresh registered module, inputs x and unit numbers u (see `_draw`)."""
    k_mod, k_x, k_scale, k_u = jax.random.split(key, 4)
    state = nnx.state(_make_module(alg, k_mod))
    # Token scales spanning four decades, so the running maximum of value norms moves a lot.
    x = jax.random.normal(k_x, (_B, _T, _DIMS.d_model)) * 10.0 ** jax.random.uniform(
        k_scale, (_B, _T, 1), minval=-2, maxval=2)
    u = _units(k_u, (_DIMS.n_heads, _DIMS.head_dim // alg.n), alg.n)  # per head and slot
    return state, x, u


@partial(jax.jit, static_argnums=(0, 1))
def _module_outputs(alg: Algebra, graphdef, state, x, u):
    """Everything the module checks need, in one compiled program: run op by op, each
    operation would compile on first use, which on a cold cache costs more than the demo."""
    entry = attention.get(alg.name)
    mod = nnx.merge(graphdef, state)
    d, h, g, kd = _DIMS.d_model, _DIMS.n_heads, _DIMS.n_kv_heads, _DIMS.head_dim
    rep = h // g
    # Identity output projection: the module then returns its per-head outputs y (before wo).
    mod.wo.kernel[...] = jnp.eye(h * kd, d)
    pos = jnp.broadcast_to(jnp.arange(_T, dtype=jnp.int32), (_B, _T))
    y, _ = mod(x, pos)
    q, k, v = mod.qkv(x, pos)
    k_h = jnp.repeat(k, rep, axis=2)

    def rot(t):
        return alg.mul(u, to_slots(t, alg.n)).reshape(t.shape)

    # The references build every pair's transport: run them on a prefix only.
    # The fast path is causal, so its prefix is the prefix of the full output.
    x_ref, pos_ref = x[:, :_T_REF], pos[:, :_T_REF]
    return {
        "y": y, "y_ref": y[:, :_T_REF],
        "y_norm": _norm(to_slots(y.reshape(*y.shape[:2], h, kd), alg.n)),  # [B, T, H, M]
        "v_norm": jnp.repeat(_norm(to_slots(v, alg.n)), rep, axis=2),  # per query head
        "reference": entry.reference(mod, x_ref, pos_ref),
        "relative": mod.reference(x_ref, pos_ref, bracket="relative"),
        # Scores by their definition, sum over slots of Re(q conj k) / sqrt(K), all (i, j).
        "s": slot_scores(alg, q[:, :, None], k_h[:, None]),
        "s_dot": jnp.einsum("bihk,bjhk->bijh", q, k_h) * kd ** -0.5,
        "s_joint": slot_scores(alg, rot(q)[:, :, None], rot(k_h)[:, None]),
        "s_q_only": slot_scores(alg, rot(q)[:, :, None], k_h[:, None]),
    }


def module_certificates(alg: Algebra, key):
    """The registered module: transport isometry, norm bound, bracketing, score invariance."""
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: _make_module(alg, key)))
    state, x, u = _module_inputs(alg, key)
    out = {k: np.asarray(v) for k, v in _module_outputs(alg, graphdef, state, x, u).items()}
    ratio = out["y_norm"] / np.maximum.accumulate(out["v_norm"], axis=1)
    iso = float(np.abs(ratio[:, 0] - 1).max())
    certs = [
        check("output_norm_bound", "registered module, before wo: every output number has "
              "‖y_i‖ <= max_{j<=i} ‖v_j‖ (ratio <= 1 + 1e-5), values spanning 1e-2..1e2",
              ratio.max(), ratio.max() <= 1 + 1e-5),
        check("transport_isometry", "at position 0 (a single value, weight 1) ‖y_0‖ = ‖v_0‖: "
              "max abs(ratio - 1) < 1e-4", iso, iso < 1e-4),
    ]
    y = out["y_ref"]
    scale = float(np.abs(y).max())
    err_def = float(np.abs(out["reference"] - y).max()) / scale
    certs.append(check("fast_equals_reference", "fast path == the registry's per-pair reference "
                       f"(defined bracketing), first {_T_REF} positions: max abs diff / max abs y "
                       "< 1e-5", err_def, err_def < 1e-5))
    err_rel = float(np.abs(out["relative"] - y).max()) / scale
    if alg is QUATERNION:
        certs.append(check("relative_rotor_bracketing", "(q̂ conj(k̂)) v per pair (reference) == "
                           "q̂ (conj(k̂) v) (associativity makes the relative rotor exact): "
                           "max abs diff / max abs y < 1e-5", err_rel, err_rel < 1e-5))
    else:
        certs.append(check("bracketing_is_real", "(q̂ conj(k̂)) v per pair differs from the defined "
                           "q̂ (conj(k̂) v): max abs diff / max abs y > 1e-2", err_rel, err_rel > 1e-2))
    s = out["s"]
    e_dot = float(np.abs(s - out["s_dot"]).max())
    e_joint = float(np.abs(out["s_joint"] - s).max())
    moved = float(np.abs(out["s_q_only"] - s).max())
    certs += [
        check("score_is_dot_product", "sum_slots Re(q conj k)/sqrt(K) == q.k/sqrt(K) (what the "
              "fast path computes): max abs diff < 1e-5", e_dot, e_dot < 1e-5),
        check("score_left_invariance", "scores unchanged when q and k are both left-multiplied by "
              "the same unit numbers: max abs diff < 1e-5", e_joint, e_joint < 1e-5),
        check("invariance_has_teeth", "rotating q alone does change the scores: max abs diff > 0.1",
              moved, moved > 0.1),
    ]
    table = [{"quantity": "max ‖y‖ / running max ‖v‖", "value": float(ratio.max())},
             {"quantity": "same, positions >= 1", "value": float(ratio[:, 1:].max())},
             {"quantity": "median ‖y‖ / running max ‖v‖", "value": float(np.median(ratio))},
             {"quantity": "relative-bracketing difference", "value": err_rel}]
    return certs, table


def run_algebra(alg: Algebra, seed: int, steps: int) -> DemoResult:
    k_alg, k_mod = jax.random.split(jax.random.key(seed))
    certs, t_alg = algebra_certificates(alg, k_alg, steps)
    certs_m, t_mod = module_certificates(alg, k_mod)
    notes = [f"Chains are composed in float32 with attention.hypercomplex's product; the "
             f"module is attention.get('{alg.name}') with d=32, 4 query heads over 2 kv heads, K=8, "
             "and its output projection set to the identity to expose the per-head outputs."]
    if steps < 2:
        notes.append("Bracketing certificates need at least 2 products per chain (--steps >= 2).")
    return DemoResult(certificates=certs + certs_m,
                      tables={"compositions": t_alg, "registered module": t_mod}, notes=notes)


@demo("quaternion", "unit quaternions: norms survive long compositions, the product is "
      "associative, rotor attention transports values isometrically", default_steps=1000)
def quaternion_demo(seed: int, steps: int) -> DemoResult:
    return run_algebra(QUATERNION, seed, steps)
