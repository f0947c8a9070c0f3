"""Demo `fractal`: IFS addresses and fixed points, the routing tree, the path kernel, and an exact
key-value store.

IFS (float64, the helpers of `attention/ifs.py`: m = 3 simplex anchors, s = 0.3 < 1/2): each
map f_a fixes its anchor c_a; F_w for an address of length n is a similarity of ratio s^n
(checked for n = 1..min(steps, 12)); `compose` equals the closed form `address_point`; the
points whose address starts with w lie in a cylinder of diameter <= s^n·diam(hull); distinct
first symbols are separated by `separation_bound`. Tree and kernel (the registered `fractal`
module): its fast path features φ(q) equal the path probabilities found by walking down the tree
with the inverse IFS maps, so ⟨φ(q), φ(k)⟩ is the same-path probability; moving one anchor moves
only the paths under its branch, and level 2's routing depends on the branch taken at level 1;
the chunked linear attention equals the registered reference. Store: with a sharp router (low
temperature) keys that take distinct paths are written as the state S = Σ φ(k)⊗v, z = Σ φ(k) by
the module's `chunked_linear_attention` and read back by querying with each key; the values come
back exactly, while a soft router blurs them. See markdown_documentation/fractal.md.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import attention
from attention.base import AttentionDims
from attention.fractal import FractalConfig, chunked_linear_attention, path_probabilities_by_descent
from attention.ifs import address_point, compose, diameter, ifs_map, separation_bound
from mgr.demos.base import DemoResult, check, demo

_M, _S = 3, 0.3  # IFS anchors and contraction ratio
_N_MAX = 12  # float64 resolves s^12 ≈ 5e-7 to ~1e-10 relative
_DIMS = AttentionDims(d_model=32, n_heads=2, n_kv_heads=1, head_dim=8, max_seq_len=32)
_BRANCHES, _LEVELS = 4, 2  # 16 addresses
_TEMPS = (1.0, 0.3, 0.1, 0.03, 0.01)
_SHARP = 0.01


def _ifs(rng: np.random.Generator, steps: int) -> dict:
    anchors = np.eye(_M)  # simplex anchors (the float64 twin of ifs.simplex_anchors)
    out = {"fixed": max(float(np.max(np.abs(ifs_map(anchors[a], a, _S, anchors) - anchors[a])))
                        for a in range(_M))}
    # Iterating f_a `steps` times from a random point approaches c_a by exactly s^steps.
    x0 = rng.dirichlet(np.ones(_M))
    conv = []
    for a in range(_M):
        x = x0
        for _ in range(steps):
            x = ifs_map(x, a, _S, anchors)
        conv.append(np.linalg.norm(x - anchors[a]) / (_S ** steps * np.linalg.norm(x0 - anchors[a])) - 1)
    out["iterate"] = float(np.max(np.abs(conv)))
    ratios, closed, diam_ratio = [], [], []
    hull = diameter(jnp.asarray(anchors))
    for n in range(1, min(steps, _N_MAX) + 1):
        for _ in range(16):
            w = [int(a) for a in rng.integers(0, _M, size=n)]
            x, y = rng.dirichlet(np.ones(_M)), rng.dirichlet(np.ones(_M))
            fx, fy = compose(w, x, _S, anchors), compose(w, y, _S, anchors)
            ratios.append(np.linalg.norm(fx - fy) / (_S ** n * np.linalg.norm(x - y)))
            closed.append(float(np.max(np.abs(fx - address_point(w, _S, anchors, x0=x)))))
        # The cylinder of one prefix: random tails of length 6 from random hull points.
        w = [int(a) for a in rng.integers(0, _M, size=n)]
        pts = np.stack([compose(w + [int(a) for a in rng.integers(0, _M, size=6)], rng.dirichlet(np.ones(_M)),
                                _S, anchors) for _ in range(64)])
        # Centred before `diameter` (float32): coordinates of size s^n keep full relative precision.
        diam_ratio.append(float(diameter(jnp.asarray(pts - pts.mean(0), jnp.float32))) / (_S ** n * float(hull)))
    out["similarity"] = float(np.max(np.abs(np.array(ratios) - 1))) if ratios else 0.0
    out["closed_form"] = max(closed) if closed else 0.0
    out["cylinder"] = max(diam_ratio) if diam_ratio else 0.0
    out["depth"] = min(steps, _N_MAX)
    # First-level cylinders of distinct symbols are at least separation_bound(s, anchors, 0) apart.
    cyl = [np.stack([compose([a] + [int(b) for b in rng.integers(0, _M, size=6)], rng.dirichlet(np.ones(_M)),
                             _S, anchors) for _ in range(64)]) for a in range(_M)]
    out["separation"] = min(float(np.min(np.linalg.norm(cyl[a][:, None] - cyl[b][None], axis=-1)))
                            for a, b in itertools.combinations(range(_M), 2))
    out["sep_bound"] = separation_bound(_S, jnp.asarray(anchors, jnp.float32), 0)
    return out


def _module(temperature: float, seed: int):
    entry = attention.get("fractal")
    cfg = FractalConfig(branches=_BRANCHES, levels=_LEVELS, temperature=temperature)
    return entry, entry.module_cls(_DIMS, cfg, rngs=nnx.Rngs(seed))


def _greedy_paths(mod, x_NxK):
    """Each vector's most likely branch at every level, following its own choices down the
    tree, and the smallest top-1 minus top-2 logit margin along that path (τ-free)."""
    node = np.zeros(x_NxK.shape[0], int)
    margin = np.full(x_NxK.shape[0], np.inf)
    for logits in mod.tree_logits(x_NxK):
        z = np.asarray(logits)[np.arange(len(node)), node]  # the node each vector reached
        top2 = np.sort(z, axis=-1)[:, -2:]
        margin = np.minimum(margin, top2[:, 1] - top2[:, 0])
        node = node * _BRANCHES + np.argmax(z, axis=-1)
    return node, margin


def _store(seed: int):
    """Pick one key per address (largest routing margin), write N key→value pairs, read back."""
    key = jax.random.key(seed)
    _, sharp = _module(_SHARP, seed)
    cand = jax.random.normal(jax.random.fold_in(key, 1), (4096, _DIMS.head_dim))
    cand = 4.0 * cand / jnp.linalg.norm(cand, axis=-1, keepdims=True)
    addr, margin = _greedy_paths(sharp, cand)
    chosen = [int(np.flatnonzero(addr == w)[np.argmax(margin[addr == w])])
              for w in range(_BRANCHES ** _LEVELS) if np.any(addr == w)]
    keys = cand[np.array(chosen)]
    n = len(chosen)
    values = jax.random.normal(jax.random.fold_in(key, 2), (n, _DIMS.head_dim))
    rows, err_sharp, min_margin = [], None, float(margin[chosen].min())
    f = _BRANCHES ** _LEVELS
    for temp in _TEMPS:
        _, mod = _module(temp, seed)
        phi = mod.path_probabilities(keys)  # [N, F]
        # Write: the N pairs as one causal sequence from an empty state; keep the final state.
        zero = (jnp.zeros((1, 1, f, _DIMS.head_dim)), jnp.zeros((1, 1, f)))
        _, state = chunked_linear_attention(phi[None, :, None, None], phi[None, :, None], values[None, :, None],
                                            zero, mod.cfg.eps, mod.cfg.chunk)
        # Read: query with every key against the written state (nothing new is written).
        y, _ = chunked_linear_attention(phi[None, :, None, None], jnp.zeros((1, n, 1, f)),
                                        jnp.zeros((1, n, 1, _DIMS.head_dim)), state, mod.cfg.eps, mod.cfg.chunk)
        err = float(jnp.max(jnp.abs(y[0, :, 0, 0] - values)))
        purity = float(jnp.min(jnp.max(phi, axis=-1)))
        rows.append({"temperature": temp, "min P(own path)": purity, "read error (max)": err})
        if temp == _SHARP:
            err_sharp = err
    return n, min_margin, err_sharp, rows


def _kernel(seed: int):
    entry, mod = _module(1.0, seed)
    kq, kk, kx = jax.random.split(jax.random.fold_in(jax.random.key(seed), 3), 3)
    q = jax.random.normal(kq, (64, _DIMS.head_dim))
    k = jax.random.normal(kk, (64, _DIMS.head_dim))
    phi_q, phi_k = mod.path_probabilities(q), mod.path_probabilities(k)
    walked_q, walked_k = path_probabilities_by_descent(mod, q), path_probabilities_by_descent(mod, k)
    out = {"kernel_err": float(jnp.max(jnp.abs(jnp.sum(phi_q * phi_k, -1) - jnp.sum(walked_q * walked_k, -1)))),
           "phi_err": float(jnp.max(jnp.abs(phi_q - walked_q)))}
    # The tree is real: move anchor 1 (branch 1's IFS map, which places the nodes below branch 1).
    m = _BRANCHES
    phi = np.asarray(phi_q).reshape(64, m, m)
    shifted = nnx.clone(mod)
    shifted.anchors.value = shifted.anchors.value.at[1].add(1.5)
    moved = np.asarray(shifted.path_probabilities(q)).reshape(64, m, m)
    out["others_moved"] = float(np.max(np.abs(np.delete(moved - phi, 1, axis=1))))
    out["under_moved"] = float(np.max(np.abs(moved[:, 1] - phi[:, 1])))
    cond = phi / phi.sum(-1, keepdims=True)  # P(w_2 | w_1) per query
    out["cond_gap"] = float(np.max(np.abs(cond[:, :, None] - cond[:, None, :])))
    t = 16
    x = jax.random.normal(kx, (2, t, _DIMS.d_model))
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (2, t))
    # Jitted: eager, each op of the forward compiles on its own, which costs seconds when cold.
    fast, ref = nnx.jit(lambda m, x: m(x, pos)[0]), nnx.jit(lambda m, x: entry.reference(m, x, pos))
    out["ref_err"] = float(jnp.max(jnp.abs(fast(mod, x) - ref(mod, x))))
    return out


@demo("fractal", "IFS addresses and fixed points, a routing tree that descends them, the same-path "
      "kernel, and an exact key-value store through fractal linear attention", default_steps=12)
def fractal_demo(seed: int, steps: int) -> DemoResult:
    ifs = _ifs(np.random.default_rng(seed), steps)
    kern = _kernel(seed)
    n, min_margin, err_sharp, rows = _store(seed)
    err_soft = rows[0]["read error (max)"]
    depth = ifs["depth"]
    certs = [
        check("fixed_points", f"f_a(c_a) = c_a for each of the {_M} anchors: max residual < 1e-12",
              ifs["fixed"], ifs["fixed"] < 1e-12),
        check("iterates_contract", f"{steps} iterations of f_a from a random point: |x_n - c_a| = "
              "s^n |x_0 - c_a|, max relative error < 1e-6", ifs["iterate"], ifs["iterate"] < 1e-6),
        check("similarity_ratio", f"|F_w(x) - F_w(y)| = s^n |x - y| for addresses of length n = "
              f"1..{depth} (16 each): max relative error < 1e-6", ifs["similarity"], ifs["similarity"] < 1e-6),
        check("closed_form", "compose(w, x) == address_point(w, x): max |diff| < 1e-12",
              ifs["closed_form"], ifs["closed_form"] < 1e-12),
        check("cylinder_diameter", f"points with address prefix w (n = 1..{depth}) span at most "
              "s^n·diam(hull): max diameter / (s^n·diam) <= 1", ifs["cylinder"],
              0 < ifs["cylinder"] <= 1 + 1e-5),
        check("cylinders_separated", f"first-level cylinders of distinct symbols are >= "
              f"separation_bound = {ifs['sep_bound']:.3f} apart: min distance", ifs["separation"],
              ifs["sep_bound"] > 0 and ifs["separation"] >= ifs["sep_bound"] - 1e-9),
        check("features_are_the_walk", "registered module: fast path features φ(q) == path probabilities "
              f"found by walking the tree with the inverse IFS maps (the reference), all {_BRANCHES ** _LEVELS} "
              "addresses, 64 queries: max |diff| < 1e-6", kern["phi_err"], kern["phi_err"] < 1e-6),
        check("kernel_is_path_sum", "⟨φ(q), φ(k)⟩ == Σ_w P_q(w)·P_k(w) with the walked probabilities, "
              "64 pairs: max |diff| < 1e-6", kern["kernel_err"], kern["kernel_err"] < 1e-6),
        check("tree_is_real", "moving anchor 1 changes the paths under branch 1 (by "
              f"{kern['under_moved']:.3g} > 0.01) and no other path: max change elsewhere < 1e-6",
              kern["others_moved"], kern["others_moved"] < 1e-6 and kern["under_moved"] > 0.01),
        check("level_2_depends_on_level_1", "P(w_2 | w_1) differs between level-1 branches (a product "
              "router would make it equal): max gap > 0.01", kern["cond_gap"], kern["cond_gap"] > 0.01),
        check("module_equals_reference", "chunked linear attention == the registered reference, 16 "
              "tokens: max |diff| < 1e-4", kern["ref_err"], kern["ref_err"] < 1e-4),
        check("store_exact", f"τ = {_SHARP}: {n} keys on distinct paths written and read back: "
              "max |read - value| < 1e-3", err_sharp, n >= _BRANCHES ** _LEVELS // 2 and err_sharp < 1e-3),
        check("soft_router_blurs", "the same store with τ = 1 does not read back exactly: "
              "max |read - value| > 0.1", err_soft, err_soft > 0.1),
    ]
    notes = [f"IFS: {_M} simplex anchors, s = {_S}; addresses up to length {depth} (steps = {steps}, "
             f"capped at {_N_MAX} for float64).",
             f"Store: fractal module with {_BRANCHES} branches x {_LEVELS} levels ({_BRANCHES ** _LEVELS} "
             f"addresses), head_dim {_DIMS.head_dim}; keys chosen one per address from 4096 random "
             f"directions scaled to norm 4, by the smallest logit margin along the key's greedy path "
             f"(min {min_margin:.2f}). Same router weights at every temperature."]
    return DemoResult(certificates=certs, tables={"key-value store: read-back vs router temperature": rows},
                      notes=notes)
