"""Demo `ultrametric`: p-adic codes form a prefix tree, their distance is an ultrametric, the
registered module's sorted fast path equals the dense LCP attention, and its forward time grows
more slowly in T than standard attention's.

The registered `ultrametric` module (p = 2, depth 4 here) gives each key a code of 4 binary
digits; the keys sharing a length-ℓ prefix form the buckets of depth ℓ, nested like a tree.
Certificates:

- the code tree: every depth-(ℓ+1) bucket lies inside one depth-ℓ bucket (bucket_{ℓ+1} // p ==
  bucket_ℓ), and `lcp` of two codes is the number of depths whose buckets agree;
- the strong triangle inequality d(x, z) <= max(d(x, y), d(y, z)) for d = p^(-LCP) over random
  triples of the module's key codes and of random digit strings, while the Hamming distance on
  the same triples violates it (so the check has teeth);
- the dense weights `dense_lcp_weights` equal w_{LCP(i, j)} (`depth_weights`), the sorted fast
  path equals them (dense attention written with those weights) on `steps` random sequences,
  and equals the registered obviously-correct reference;
- measured forward time vs T (`mgr.bench.scaling.forward_scaling`, process CPU time, T = 256..2048):
  the fitted log-log exponent of ultrametric is below standard's by a wide margin.
See markdown_documentation/ultrametric.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import attention
from attention.base import AttentionDims
from attention.ultrametric import dense_lcp_weights, depth_weights, lcp
from mgr.demos.base import DemoResult, check, demo
from mgr.bench.scaling import forward_scaling, scaling_exponents

_P, _L = 2, 4
_DIMS = AttentionDims(d_model=32, n_heads=2, n_kv_heads=2, head_dim=16, max_seq_len=64)
_T_TREE, _T = 12, 64
_TRIPLES = 512  # per step, per source (module codes, random strings)
_SCALING_T = [256, 512, 1024, 2048]
_GAP = 0.3  # required exponent gap; measured ≈ 1.2 (standard ≈ 2.0, ultrametric ≈ 0.8)


def _digits(bucket_full, p=_P, depth=_L):
    """Digits of the full-depth bucket id (base p, most significant first): `[..., depth]`."""
    return jnp.stack([(bucket_full // p ** (depth - 1 - m)) % p for m in range(depth)], axis=-1)


def _strong_triangle(codes_Nx3xL, p=_P):
    """Violations of d(x,z) <= max(d(x,y), d(y,z)) for d = p^-LCP, and for the Hamming distance."""
    x, y, z = codes_Nx3xL[:, 0], codes_Nx3xL[:, 1], codes_Nx3xL[:, 2]
    d = lambda a, b: jnp.asarray(p, jnp.float32) ** (-lcp(a, b).astype(jnp.float32))
    ham = lambda a, b: jnp.sum(a != b, axis=-1)
    viol = jnp.sum(d(x, z) > jnp.maximum(d(x, y), d(y, z)))
    viol_ham = jnp.sum(ham(x, z) > jnp.maximum(ham(x, y), ham(y, z)))
    return int(viol), int(viol_ham)


@demo("ultrametric", "p-adic code tree, strong triangle inequality, sorted fast path == dense, "
      "sub-quadratic forward time vs standard", default_steps=8)
def run(seed: int, steps: int) -> DemoResult:
    key = jax.random.key(seed)
    rng = np.random.default_rng(seed)
    entry = attention.get("ultrametric")
    module = entry.module_cls(_DIMS, entry.config_cls(p=_P, depth=_L), rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(module)
    certs, tables, notes = [], {}, []

    @jax.jit
    def analyse(x):
        m = nnx.merge(graphdef, state)
        pr = m.project(x)
        t = x.shape[1]
        pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), x.shape[:2])
        fast, _ = m(x, pos)
        delta = jnp.exp(m.log_delta[...])
        w = dense_lcp_weights(pr.qb, pr.qg, pr.kb, pr.kg, delta)  # [B, H, T, S]
        causal = jnp.tril(jnp.ones((t, t), bool))
        w = jnp.where(causal, w, 0.0)
        y = jnp.einsum("bhts,bshk->bthk", w, pr.v) / jnp.sum(w, axis=-1).transpose(0, 2, 1)[..., None]
        dense = m.wo(y.reshape(*y.shape[:2], -1))
        # w_λ at λ = LCP of the query and key codes, per head.
        lam = lcp(_digits(pr.qb[..., -1])[:, :, None], _digits(pr.kb[..., -1])[:, None])  # [B, T, S, H]
        w_lcp = jnp.take_along_axis(depth_weights(m.log_delta[...])[None, None, None],
                                    lam[..., None], axis=-1)[..., 0]
        w_lcp = jnp.where(causal, jnp.moveaxis(w_lcp, -1, 1), 0.0)  # [B, H, T, S]
        # The bucket of depth ℓ+1 refines depth ℓ; LCP == number of depths whose buckets agree.
        kb = pr.kb
        nested = jnp.all(kb[..., 1:] // _P == kb[..., :-1]) & jnp.all(kb[..., 0] == 0)
        agree = jnp.sum(kb[:, :, None, :, 1:] == kb[:, None, :, :, 1:], axis=-1)
        kd = _digits(kb[..., -1])
        lcp_ok = jnp.all(lcp(kd[:, :, None], kd[:, None]) == agree)
        return {"fast": fast, "dense": dense, "w": w, "w_lcp": w_lcp, "nested": nested, "lcp_ok": lcp_ok,
                "kb": kb}

    # The code tree of a short sequence (batch 0, kv head 0).
    # Codes are per token, so the first positions of a T = 64 sequence (one compiled shape).
    x_tree = jax.random.normal(jax.random.fold_in(key, 0), (1, _T, _DIMS.d_model))
    kb = np.asarray(analyse(x_tree)["kb"])[0, :_T_TREE, 0]  # [T_TREE, L+1]
    rows = []
    for ell in range(1, _L + 1):
        for b in sorted(set(kb[:, ell].tolist())):
            prefix = "".join(str((b // _P ** (ell - 1 - m)) % _P) for m in range(ell))
            rows.append({"depth": ell, "prefix": prefix,
                         "positions": " ".join(str(i) for i in np.nonzero(kb[:, ell] == b)[0])})
    tables[f"code tree: key prefix -> positions (first {_T_TREE} keys, kv head 0)"] = rows

    worst_fast, worst_w, nested, lcp_ok = 0.0, 0.0, True, True
    viol, viol_ham, n_triples = 0, 0, 0
    for s in range(steps):
        x = jax.random.normal(jax.random.fold_in(key, 10 + s), (1, _T, _DIMS.d_model))
        out = analyse(x)
        worst_fast = max(worst_fast, float(jnp.max(jnp.abs(out["fast"] - out["dense"]))))
        worst_w = max(worst_w, float(jnp.max(jnp.abs(out["w"] - out["w_lcp"]))))
        nested &= bool(out["nested"])
        lcp_ok &= bool(out["lcp_ok"])
        codes = np.asarray(_digits(out["kb"][0, :, :, -1]))  # [T, G, L]
        head = rng.integers(0, codes.shape[1], size=_TRIPLES)
        idx = rng.integers(0, _T, size=(_TRIPLES, 3))
        from_module = codes[idx, head[:, None]]  # [N, 3, L]
        random_codes = rng.integers(0, _P, size=(_TRIPLES, 3, _L))
        for c in (from_module, random_codes):
            v, vh = _strong_triangle(jnp.asarray(c))
            viol, viol_ham, n_triples = viol + v, viol_ham + vh, n_triples + len(c)

    certs.append(check("code_tree", "bucket_{ℓ+1} // p == bucket_ℓ for every key and depth (nested prefix "
                       "balls), and lcp(code_i, code_j) == #depths whose buckets agree",
                       nested and lcp_ok, nested and lcp_ok))
    certs.append(check("strong_triangle", f"d(x,z) <= max(d(x,y), d(y,z)) for d = {_P}^-LCP on {n_triples} "
                       "triples (module key codes and random strings): 0 violations", viol, viol == 0))
    certs.append(check("hamming_not_ultrametric", "the Hamming distance on the same triples violates it "
                       "at least once (the check can fail)", viol_ham, viol_ham > 0))
    certs.append(check("weights_are_w_lcp", "max |dense_lcp_weights − w[LCP(i, j)]| < 1e-5", worst_w, worst_w < 1e-5))
    certs.append(check("fast_eq_dense", f"sorted fast path == dense LCP attention on {steps} random "
                       f"sequences (T = {_T}): max |diff| < 1e-4", worst_fast, worst_fast < 1e-4))

    # The reference runs eagerly one query at a time: a short sequence keeps it cheap.
    x_ref = jax.random.normal(jax.random.fold_in(key, 1), (1, 16, _DIMS.d_model))
    pos = jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), (1, 16))
    ref_diff = float(jnp.max(jnp.abs(module(x_ref, pos)[0] - entry.reference(module, x_ref, pos))))
    certs.append(check("fast_eq_reference", "module == registered per-query reference (T = 16): max |diff| < 1e-4",
                       ref_diff, ref_diff < 1e-4))

    # Forward time vs T, process CPU time (robust to other load on a shared machine).
    timings = forward_scaling(["standard", "ultrametric"], _SCALING_T, d_model=32, n_heads=2, n_kv_heads=2,
                              repeats=3, seed=seed, clock="cpu")
    expo = scaling_exponents(timings)
    by = {(n, t): sec for n, t, sec in timings}
    tables["forward CPU seconds vs T (d_model 32, 2 heads, default configs)"] = [
        {"T": t, "standard s": by[("standard", t)], "ultrametric s": by[("ultrametric", t)],
         "standard / ultrametric": by[("standard", t)] / by[("ultrametric", t)]} for t in _SCALING_T]
    certs.append(check("scaling_exponent", f"fitted log-log exponent: ultrametric < standard − {_GAP}",
                       f"{expo['ultrametric']:.2f} vs {expo['standard']:.2f}",
                       expo["ultrametric"] < expo["standard"] - _GAP))
    notes.append("The exponent is a least-squares slope of log(min CPU seconds of 3 calls) against log T. "
                 "Ultrametric's cost is a sort (T log T) plus per-depth scans; standard forms T x T scores.")
    return DemoResult(certificates=certs, tables=tables, notes=notes)
