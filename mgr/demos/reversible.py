"""Demo `reversible`: a stack that rebuilds its activations instead of storing them.

Uses the registered `reversible` stack (`attention.get("reversible").stack_factory`, i.e.
`ReversibleStack`) and `mgr.train.make_step`. It checks (1) exact invertibility:
inverse(forward(x)) = x at depths 2, 4, 8, while forward really moves x; (2) the custom VJP
over the whole stack (`recompute=True`) gives the same gradients as plain autodiff of the same
stack (`recompute=False`); (3) the compiled train step's temp (activation) memory against depth:
nearly flat for the reversible decoder, growing for standard; (4) `steps` AdamW steps of the
depth-8 reversible decoder and its `recompute=False` twin in lockstep: identical losses, and the
loss falls. See markdown_documentation/reversible.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import attention
from mgr.bench.depth import render_depth_table
from mgr.config import ModelConfig, TrainConfig
from mgr.demos.base import DemoResult, check, demo
from mgr.train.flops import xla_memory
from mgr.train import make_step

_D, _H, _T, _B, _V = 64, 4, 64, 4, 256
_DEPTHS = (2, 4, 8)
_VARIANTS = {
    "reversible": {"attention": "reversible"},
    "standard": {"attention": "standard"},
}
_NO_RECOMPUTE = {"attention": "reversible", "attention_options": {"reversible": {"recompute": False}}}


def _cfg(depth: int, **overrides) -> ModelConfig:
    return ModelConfig(vocab_size=_V, d_model=_D, n_layers=depth, n_heads=_H, n_kv_heads=_H,
                       max_seq_len=_T, **overrides)


def _stack(depth: int, seed: int, recompute: bool = True):
    """The registered stack factory's module for `depth` layers, parameters from `seed`."""
    opts = {"reversible": {"recompute": recompute}}
    cfg = _cfg(depth, attention="reversible", attention_options=opts)
    factory = attention.get("reversible").stack_factory
    return factory(cfg, list(range(depth)), rngs=nnx.Rngs(seed))


def _positions():
    return jnp.broadcast_to(jnp.arange(_T, dtype=jnp.int32), (_B, _T))


def _reconstruction(seed: int):
    """Per depth d: max |inverse(forward(x)) - x| and max |forward(x) - x| (unit-scale x) for the
    first d layers of one depth-8 stack (its parameters carry a leading layer axis; one compile)."""
    stack = _stack(_DEPTHS[-1], seed)
    gd, st = nnx.split(stack)
    x = jax.random.normal(jax.random.key(seed), (_B, _T, _D))

    @jax.jit
    def roundtrips(st, x):
        out = []
        for depth in _DEPTHS:
            s = nnx.merge(gd, jax.tree.map(lambda a, d=depth: a[:d], st))
            y, _ = s(x, _positions())
            out.append((jnp.max(jnp.abs(s.inverse(y, _positions()) - x)), jnp.max(jnp.abs(y - x))))
        return out

    return [{"depth": d, "max |inverse(forward(x)) - x|": float(e), "max |forward(x) - x|": float(m)}
            for d, (e, m) in zip(_DEPTHS, roundtrips(st, x))]


def _gradient_agreement(seed: int, depth: int = 4):
    """Max |custom-VJP grad - autodiff grad| over every parameter and the input, and the grad scale."""
    fast, plain = _stack(depth, seed, recompute=True), _stack(depth, seed, recompute=False)
    gd_fast, st = nnx.split(fast)
    gd_plain, st_plain = nnx.split(plain)
    same = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(st), jax.tree.leaves(st_plain)))
    assert same == 0.0, "same seed must give the same parameters"
    kx, kw = jax.random.split(jax.random.fold_in(jax.random.key(seed), 100))
    x = jax.random.normal(kx, (_B, _T, _D))
    w = jax.random.normal(kw, (_B, _T, _D))  # a random cotangent, so every output matters

    def grads(gd):
        def loss(st, x):
            y, _ = nnx.merge(gd, st)(x, _positions())
            return jnp.sum(jnp.tanh(y) * w)
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(st, x)

    g_fast, g_plain = grads(gd_fast), grads(gd_plain)
    pairs = list(zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain)))
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in pairs)
    scale = max(float(jnp.max(jnp.abs(b))) for _, b in pairs)
    return diff, scale


def _memory_and_training(seed: int, steps: int):
    """Temp bytes of the compiled (donated) train step per variant and depth, read from
    `compiled.memory_analysis()` as `mgr.train.build_program` does (without its FLOP count and
    initialisation, which the measurement does not need). The deepest reversible step and its
    recompute=False twin are then run `steps` AdamW steps in lockstep on one fixed batch."""
    tcfg = TrainConfig(learning_rate=1e-2, schedule="constant", warmup_steps=0, steps=steps, seed=seed)
    batch_spec = jax.ShapeDtypeStruct((_B, _T + 1), jnp.int32)
    table, runs = {}, {}
    for label, overrides in {**_VARIANTS, "reversible, recompute=False": _NO_RECOMPUTE}.items():
        depths = _DEPTHS if label in _VARIANTS else (_DEPTHS[-1],)
        for depth in depths:
            parts = make_step(_cfg(depth, **overrides), tcfg, steps)
            compiled = jax.jit(parts.step, donate_argnums=0).lower(
                jax.eval_shape(parts.init), batch_spec).compile()
            table.setdefault(label, {})[depth] = xla_memory(compiled)["temp_memory_bytes"]
            # only the reversible stack (with and without recomputation) is trained in lockstep
            if depth == _DEPTHS[-1] and overrides["attention"] == _NO_RECOMPUTE["attention"]:
                runs[label] = (parts, compiled)
    # A fixed batch of random tokens: memorising it is progress any working backward pass makes.
    batch = jnp.asarray(np.random.default_rng(seed).integers(0, _V, (_B, _T + 1)), jnp.int32)
    losses = {}
    for label, (parts, compiled) in runs.items():
        state, trace = jax.jit(parts.init)(), []
        for _ in range(steps):
            state, metrics = compiled(state, batch)
            trace.append(metrics["loss"])
        trace.append(jax.jit(parts.loss_of_params)(state["params"], batch))
        losses[label] = [float(v) for v in trace]
    return table, losses


@demo("reversible", "reversible stack: exact inversion, custom-VJP gradients == autodiff, and "
      "train-step activation memory flat in depth", default_steps=20)
def reversible_demo(seed: int, steps: int) -> DemoResult:
    recon = _reconstruction(seed)
    worst = max(r["max |inverse(forward(x)) - x|"] for r in recon)
    moved = min(r["max |forward(x) - x|"] for r in recon)
    gdiff, gscale = _gradient_agreement(seed)
    mem, losses = _memory_and_training(seed, steps)
    lo, hi = _DEPTHS[0], _DEPTHS[-1]
    rev_ratio = mem["reversible"][hi] / mem["reversible"][lo]
    std_ratio = mem["standard"][hi] / mem["standard"][lo]
    rev, plain = losses["reversible"], losses["reversible, recompute=False"]
    lockstep = max(abs(a - b) for a, b in zip(rev, plain))
    certs = [
        check("inverse_exact", f"max |inverse(forward(x)) - x| < 1e-4 at depths {list(_DEPTHS)} "
              "(f32, unit-scale x)", worst, worst < 1e-4),
        check("forward_moves_x", "the stack is not near the identity: min over depths of "
              "max |forward(x) - x| > 0.1", moved, moved > 0.1),
        check("custom_vjp_equals_autodiff", "custom-VJP grads (recompute=True) == plain autodiff "
              "(recompute=False), depth 4, all params and the input: max |diff| / max |grad| < 1e-4",
              gdiff / gscale, gdiff < 1e-4 * gscale and gscale > 1e-3),
        check("reversible_memory_flat", f"train-step temp memory, reversible L={hi} / L={lo} <= 1.5",
              rev_ratio, rev_ratio <= 1.5),
        check("standard_memory_grows", f"train-step temp memory, standard L={hi} / L={lo} > "
              f"reversible's ({rev_ratio:.2f})", std_ratio, std_ratio > rev_ratio),
        check("lockstep_training", f"{steps} AdamW steps of the L={hi} decoder: recompute=True and "
              "recompute=False losses agree, max |diff| < 1e-3", lockstep, lockstep < 1e-3),
        check("loss_falls", f"L={hi} reversible decoder, loss on its (fixed) batch after {steps} "
              f"steps < initial {rev[0]:.3f}", rev[-1], rev[-1] < rev[0]),
    ]
    # Every row gets every depth column, in order ("—" where a variant was not measured).
    mem_rows = [{"stack": label, **{f"L={d} temp MiB": row[d] / 2**20 if d in row else "—" for d in _DEPTHS}}
                for label, row in mem.items()]
    train_rows = [{"step": i, "loss (recompute=True)": a, "loss (recompute=False)": b}
                  for i, (a, b) in enumerate(zip(rev, plain)) if i in (0, len(rev) - 1) or i % 5 == 0]
    notes = [(f"Decoder d={_D}, {_H} heads, T={_T}, B={_B}, vocab {_V}; AdamW lr 1e-2 constant. "
              "Temp bytes come from compiled.memory_analysis() of the donated train step (parameters "
              "and optimizer state excluded)."),
             "Depth table:\n" + render_depth_table({k: v for k, v in mem.items() if k in _VARIANTS}),
             (f"Gradients: max |custom VJP − autodiff| = {gdiff:.3g} at scale max |grad| = {gscale:.3g}. "
              "The last row of the training table is the loss after the final step.")]
    return DemoResult(certificates=certs,
                      tables={"reconstruction": recon, "train-step temp memory": mem_rows,
                              "training in lockstep": train_rows},
                      notes=notes)
