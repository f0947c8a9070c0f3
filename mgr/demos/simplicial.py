"""Demo `simplicial`: boundaries of boundaries vanish, and triangles find what edges miss.

The two parts are independent: part 1 exercises the demo's complexes helper, which the attention
module never calls; part 2 trains the registered module through the decoder.

Part 1 (attention/complexes.py): three triangulated surfaces, each triangle in a random
orientation drawn from the seed: the signed boundary operators satisfy d1 d2 = 0 (the unsigned
incidences do not), and the Betti numbers come out as topology says (torus (1, 2, 1), real
projective plane (1, 0, 0) over the reals, sphere (1, 0, 1)), with Euler–Poincaré and Hodge.

Part 2 (attention/simplicial.py through mgr.model.Decoder): a one-layer decoder must answer, at
the last position, whether the sequence holds some pair of tokens u and u+1 (mod M) anywhere,
in any order. The answer is a property of a PAIR of positions: a 2-simplicial head scores pairs
(j, k) directly (its trilinear score can learn "k is the successor of j"), while a pairwise head
only sees single tokens and must rebuild the pair from an averaged bag. Both models get the same
steps and data, and the pairwise one at least as many parameters.
See markdown_documentation/simplicial.md.
"""

from __future__ import annotations

import numpy as np

from attention.complexes import SimplicialComplex
from mgr.config import ModelConfig
from mgr.demos.base import DemoResult, check, demo
from mgr.demos.standard import train_on_task

# ----------------------------------------------------------------------------- complexes


def torus(n: int = 3) -> list[tuple[int, ...]]:
    """The n x n grid on the torus, each square cut by its diagonal (n >= 3)."""
    v = lambda i, j: (i % n) * n + (j % n)  # noqa: E731
    tris = []
    for i in range(n):
        for j in range(n):
            tris += [(v(i, j), v(i + 1, j), v(i + 1, j + 1)), (v(i, j), v(i + 1, j + 1), v(i, j + 1))]
    return tris


# The 6-vertex real projective plane (the hemi-icosahedron): 10 triangles, 15 edges.
RP2 = [(1, 2, 3), (1, 3, 4), (1, 4, 5), (1, 5, 6), (1, 6, 2), (2, 3, 5), (3, 4, 6), (4, 5, 2),
       (5, 6, 3), (6, 2, 4)]
# The octahedron: one vertex from each of the pairs {0,1}, {2,3}, {4,5}.
SPHERE = [(a, b, c) for a in (0, 1) for b in (2, 3) for c in (4, 5)]
SURFACES = {"torus": (torus(), (1, 2, 1)), "projective plane": (RP2, (1, 0, 0)),
            "sphere": (SPHERE, (1, 0, 1))}


def _shuffled(tris, rng: np.random.Generator):
    """Each triangle in a random vertex order: a random orientation (and face ordering)."""
    return [tuple(int(x) for x in rng.permutation(t)) for t in tris]


def complex_certificates(seed: int):
    rng = np.random.default_rng([seed, 7])
    rows, worst_signed, min_unsigned, ok_betti, ok_euler = [], 0, None, True, True
    hodge = None
    for name, (tris, expected) in SURFACES.items():
        cx = SimplicialComplex.from_simplices(_shuffled(tris, rng))
        d1, d2 = cx.boundary(1), cx.boundary(2)
        worst_signed = max(worst_signed, int(np.abs(d1 @ d2).max()))
        unsigned = int(np.abs(np.abs(d1) @ np.abs(d2)).max())
        min_unsigned = unsigned if min_unsigned is None else min(min_unsigned, unsigned)
        betti, chi = cx.betti_numbers(), cx.euler_characteristic()
        ok_betti &= betti == expected
        ok_euler &= chi == sum((-1) ** k * b for k, b in enumerate(betti))
        if name == "torus":
            eig = np.linalg.eigvalsh(cx.hodge_laplacian(1).astype(float))
            hodge = int(np.sum(eig < 1e-8))
        rows.append({"surface": name, "vertices": cx.count(0), "edges": cx.count(1),
                     "triangles": cx.count(2), "Betti": str(betti), "expected": str(expected),
                     "Euler characteristic": chi})
    certs = [
        check("boundary_of_boundary", "d1 d2 = 0 on all three surfaces, random orientations: "
              "max abs entry == 0 (integers)", worst_signed, worst_signed == 0),
        check("signs_matter", "the unsigned incidences abs(d1) abs(d2) are NOT zero (min over "
              "surfaces of max abs entry >= 1)", min_unsigned, min_unsigned >= 1),
        check("betti_numbers", "Betti numbers over R: torus (1,2,1), projective plane (1,0,0), "
              "sphere (1,0,1)", "; ".join(f"{r['surface']} {r['Betti']}" for r in rows), ok_betti),
        check("euler_poincare", "n0 - n1 + n2 == b0 - b1 + b2 on each surface",
              ", ".join(f"{r['surface']} {r['Euler characteristic']}" for r in rows), ok_euler),
        check("hodge", "torus: dim ker L1 (harmonic 1-cochains) == b1 == 2", hodge, hodge == 2),
    ]
    return certs, rows


# ----------------------------------------------------------------------------- the pair task

_N = 8  # tokens per sequence
_M = 32  # alphabet: tokens 0..M-1, with successor u -> u+1 mod M
_BOS, _NO, _YES = _M, _M + 1, _M + 2
FULL_STEPS = 400  # calibrated on seeds 0-11 (see the Demo section of simplicial.md)


def _has_successor_pair(x_BxN):
    return ((x_BxN[:, :, None] + 1) % _M == x_BxN[:, None, :]).any(axis=(1, 2))


def successor_pair_task(rng: np.random.Generator, batch: int):
    """[BOS, x_1..x_N] with the answer (YES/NO) predicted at x_N; half the batch are YES."""
    need, xs = {True: batch // 2, False: batch - batch // 2}, []
    while need[True] or need[False]:  # about 60 % of uniform sequences hold a pair
        x = rng.integers(0, _M, size=(4 * batch, _N))
        y = _has_successor_pair(x)
        for label in (True, False):
            take = x[y == label][:need[label]]
            need[label] -= len(take)
            xs.append(take)
    x = np.concatenate(xs)[rng.permutation(batch)]
    inputs = np.concatenate([np.full((batch, 1), _BOS), x], axis=1)
    targets = np.zeros_like(inputs)
    targets[:, -1] = np.where(_has_successor_pair(x), _YES, _NO)
    mask = np.zeros(inputs.shape, np.float32)
    mask[:, -1] = 1.0
    return inputs.astype(np.int32), targets.astype(np.int32), mask


def _cfg(attention: str, **overrides) -> ModelConfig:
    base = dict(vocab_size=_M + 3, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2,
                max_seq_len=_N + 1, attention=attention)
    base.update(overrides)
    return ModelConfig(**base)


# Both heads 2-simplicial, windows covering the whole sequence (BOS included).
SIMPLICIAL = _cfg("simplicial", attention_options={
    "simplicial": {"n_simplicial_heads": 2, "window_1": _N + 1, "window_2": _N + 1}})
# One more MLP unit per channel gives the pairwise model at least as many parameters.
STANDARD = _cfg("standard", mlp_ratio=5)


@demo("simplicial", "simplicial complexes (the demo's helper): d1 d2 = 0 and Betti numbers of "
      "surfaces; 2-simplicial attention: a pair property one simplicial layer learns and one "
      "pairwise layer does not", default_steps=400)
def simplicial_demo(seed: int, steps: int) -> DemoResult:
    certs, rows = complex_certificates(seed)
    runs = {name: train_on_task(cfg, successor_pair_task, steps, seed=seed, batch=64, lr=2e-2)
            for name, cfg in (("simplicial", SIMPLICIAL), ("standard", STANDARD))}
    simp, std = runs["simplicial"], runs["standard"]
    acc_s, acc_p = simp.final_eval[1], std.final_eval[1]
    if steps >= FULL_STEPS:
        certs += [
            check("simplicial_finds_pairs", f"one simplicial layer, {steps} steps: held-out "
                  "accuracy >= 0.75 (chance 0.5)", acc_s, acc_s >= 0.75),
            check("beats_pairwise", f"simplicial accuracy - standard accuracy >= 0.2 (same "
                  f"steps and data; standard has {std.n_params} >= {simp.n_params} parameters)",
                  acc_s - acc_p, acc_s - acc_p >= 0.2 and std.n_params >= simp.n_params),
        ]
    else:
        for name, run in runs.items():
            certs.append(check(f"{name}_loss_falls", f"{name}: held-out loss after {steps} steps "
                               f"below its {run.init_eval[0]:.3f} at initialisation",
                               run.final_eval[0], run.final_eval[0] < run.init_eval[0]))
    table = [{"model": name, "parameters": run.n_params, "loss at init": run.init_eval[0],
              "loss": run.final_eval[0], "accuracy": run.final_eval[1]} for name, run in runs.items()]
    notes = [f"Task: {_N} tokens from an alphabet of {_M}; is there a pair u, u+1 (mod {_M}) "
             "anywhere? Balanced YES/NO, answer at the last position, 1024 held-out sequences.",
             "Models: one layer, d=32, 2 heads of K=16; simplicial uses both heads as 2-simplicial "
             f"heads with windows {_N + 1}; standard gets mlp_ratio 5 (vs 4) to have at least as "
             "many parameters. AdamW lr 2e-2, batch 64.",
             "Not claimed: that pairwise attention cannot learn this at all. In calibration it crept "
             "to 0.63 accuracy after 1500 steps with one layer, and two pairwise layers reached 0.66 "
             "after 400 steps; the claim is the gap at equal depth, steps and parameters."]
    if steps < FULL_STEPS:
        notes.append(f"With fewer than {FULL_STEPS} steps the gap is not claimed; only that "
                     "both models start learning.")
    return DemoResult(certificates=certs, tables={"surfaces": rows, "successor-pair task": table},
                      notes=notes)
