"""Demo `muon`: routing, orthogonalised updates and training with the registered Muon.

A tiny `mgr.model.Decoder` is trained for `steps` steps with the registered `muon` optimizer,
built by `optim.build_transform` as the trainer builds it, on the copy task of the `standard`
demo. Shown live: the routing table (`optim.partition` sends exactly the hidden matrices, the
`kernel`s inside the blocks, to Muon and the embedding, head, norms and vectors to AdamW); the
singular values of each hidden matrix's orthogonalised direction O, recovered from the applied
update u = −lr·(s·O + wd·w) (s the shape factor, wd the decoupled weight decay), sit in the
Newton–Schulz band around 1 while the raw gradient's singular values spread over orders of
magnitude; and the held-out loss falls. See markdown_documentation/muon.md.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import optax
from flax import nnx

import optim
from mgr.config import ModelConfig, TrainConfig
from mgr.demos.base import DemoResult, check, demo
from mgr.demos.standard import copy_task, masked_loss
from mgr.model import Decoder
from optim import muon, partition

LR = 2e-2
# Keller Jordan's quintic NS5 coefficients leave singular values in a band around 1 rather than
# at 1 (measured [0.68, 1.13] on Gaussian matrices, see tests/optim/test_muon.py).
NS5_BAND = (0.6, 1.25)
ALPHABET, H = 16, 8
SIGNIFICANT = 30


def _model_cfg() -> ModelConfig:
    return ModelConfig(vocab_size=ALPHABET + 1, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                       max_seq_len=2 * H, attention="standard")


def _routing(params) -> tuple[list[dict], list[str], list[str]]:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    labels = dict(zip((partition.path_str(p) for p, _ in flat), jax.tree.leaves(muon.labels(params))))
    roles = partition.role_table(params)
    rows = [{"parameter": partition.path_str(p), "shape": "x".join(map(str, x.shape)),
             "role": roles[partition.path_str(p)], "optimizer": labels[partition.path_str(p)]}
            for p, x in flat]
    to_muon = [r["parameter"] for r in rows if r["optimizer"] == muon.MUON]
    # What a hidden matrix is, read off the Decoder's own tree: a 2-D linear-map weight
    # (`kernel`) inside the blocks, not the token table and not the output head.
    hidden = [r["parameter"] for r in rows if r["parameter"].startswith("blocks/")
              and r["parameter"].endswith("/kernel") and r["shape"].count("x") == 1]
    return rows, to_muon, hidden


def _by_path(tree) -> dict:
    return {partition.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _spectrum(x) -> np.ndarray:
    return np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)


@demo("muon", "Muon: hidden matrices routed to Newton–Schulz-orthogonalised momentum (singular "
      "values ≈ 1), the rest to AdamW; a tiny decoder learns", default_steps=60)
def muon_demo(seed: int, steps: int) -> DemoResult:
    model = Decoder(_model_cfg(), rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model, nnx.Param)
    opt_cfg = muon.MuonConfig()
    train_cfg = TrainConfig(optimizer="muon", schedule="constant", learning_rate=LR,
                            warmup_steps=0, steps=steps, seed=seed, grad_clip=0.0)
    tx = optim.build_transform(train_cfg, steps)
    rows, to_muon, hidden = _routing(params)

    def loss_of(p, inputs, targets, mask):
        return masked_loss(nnx.merge(graphdef, p), inputs, targets, mask)[0]

    @jax.jit
    def step(p, opt, inputs, targets, mask):
        loss, grads = jax.value_and_grad(loss_of)(p, inputs, targets, mask)
        updates, opt = tx.update(grads, opt, p, value=loss)
        return optax.apply_updates(p, updates), opt, grads, updates

    evaluate = jax.jit(loss_of)
    held_out = copy_task(np.random.default_rng([seed, 1]), 512)
    loss0 = float(evaluate(params, *held_out))
    stream, opt = np.random.default_rng([seed, 0]), tx.init(params)
    watch = {0, steps - 1}
    spectra = []  # (step, path, gradient singular values, recovered O's singular values)
    for t in range(steps):
        old = params
        params, opt, grads, updates = step(params, opt, *copy_task(stream, 64))
        if t in watch:
            flat_u, flat_g, flat_w = _by_path(updates), _by_path(grads), _by_path(old)
            for path in to_muon:
                w, u = np.asarray(flat_w[path], np.float64), np.asarray(flat_u[path], np.float64)
                shape_factor = muon._shape_factor(*w.shape[-2:], opt_cfg.consistent_rms)
                o = -(u / LR + opt_cfg.weight_decay * w) / shape_factor
                spectra.append((t, path, _spectrum(flat_g[path]), _spectrum(o)))
    loss1 = float(evaluate(params, *held_out))

    s_all = np.concatenate([s for *_, s in spectra])
    in_band = (s_all > NS5_BAND[0]) & (s_all < NS5_BAND[1])
    g_cond = [g.max() / max(g.min(), 1e-30) for _, _, g, _ in spectra]
    o_cond = [s.max() / max(s.min(), 1e-30) for *_, s in spectra]
    # At step 0 the (Nesterov) momentum is a multiple of the gradient, so O = p(G) for the NS5
    # polynomial p, with G's singular vectors; p is increasing on the small values it has not yet
    # lifted into the band, so sorted order pairs G's and O's singular values. NS5 from a
    # Frobenius-normalised start lifts every direction with σ >= σ_max/SIGNIFICANT into the band
    # (smaller ones, near-null directions of a low-rank gradient, are left small by design).
    paired = [(g[::-1], s[::-1]) for t, _, g, s in spectra if t == 0]
    significant = np.concatenate([s[g >= g.max() / SIGNIFICANT] for g, s in paired])
    adam_side = [r["parameter"] for r in rows if r["optimizer"] == muon.ADAM]
    certs = [
        check("routes_exactly_hidden_matrices", "parameters sent to Muon == the 2-D `kernel`s "
              f"inside the blocks ({len(hidden)} of {len(rows)})", len(to_muon),
              sorted(to_muon) == sorted(hidden) and len(hidden) > 0),
        check("embed_head_vectors_to_adamw", "embedding table, head and every norm/vector go to "
              "AdamW", len(adam_side),
              any(p.startswith("embed") for p in adam_side)
              and any(p.startswith("head") for p in adam_side)
              and all(r["optimizer"] == muon.ADAM for r in rows if r["role"] != partition.MATRIX)),
        check("update_sv_significant_in_band", "step 0: every singular value of O whose "
              f"gradient direction has σ >= σ_max/{SIGNIFICANT} lies in the NS5 band {NS5_BAND}"
              f" ({significant.size} values): [min, max]",
              f"[{significant.min():.3f}, {significant.max():.3f}]",
              NS5_BAND[0] < significant.min() and significant.max() < NS5_BAND[1]),
        check("update_sv_bulk", f"steps {sorted(watch)}: no singular value of O above "
              f"{NS5_BAND[1]} and >= 85% of all {s_all.size} inside the band: fraction in band",
              float(in_band.mean()), in_band.mean() >= 0.85 and s_all.max() < NS5_BAND[1]),
        check("gradient_spread_is_wide", "the raw gradients' condition numbers are far wider "
              "than O's: median σ_max/σ_min of gradients > 10 × median of O",
              float(np.median(g_cond)), np.median(g_cond) > 10 * np.median(o_cond)),
        check("loss_falls", f"held-out copy loss after {steps} Muon steps < at initialisation "
              f"({loss0:.3f})", loss1, loss1 < loss0),
    ]
    table_sv = [{"step": t, "matrix": path.removeprefix("blocks/").removesuffix("/kernel"),
                 "grad σmax/σmin": float(g.max() / max(g.min(), 1e-30)),
                 "O σ min": float(s.min()), "O σ max": float(s.max()), "O σ mean": float(s.mean()),
                 "O σ in band": f"{int(np.sum((s > NS5_BAND[0]) & (s < NS5_BAND[1])))}/{len(s)}"}
                for t, path, g, s in spectra]
    notes = [f"Decoder: 2 layers, d=32, 4 query heads over 2 kv heads, vocab {ALPHABET + 1}; "
             f"Muon defaults {opt_cfg} at constant lr {LR}, batch 64, copy task of `standard`.",
             f"held-out copy loss: {loss0:.4f} at init -> {loss1:.4f} after {steps} steps "
             f"(chance ln {ALPHABET} = {math.log(ALPHABET):.3f}).",
             "O is recovered from the applied update as O = −(u/lr + wd·w)/s, s = "
             "consistent_rms·sqrt(max(fan_in, fan_out))."]
    return DemoResult(certificates=certs, tables={"routing (optim/partition.py)": rows,
                                                  "singular values: gradient vs Muon direction":
                                                  table_sv}, notes=notes)
