"""One compiled train step per arm: the learning rate and the horizon are state, not program.

The train step reads the peak learning rate and the schedule's horizon from the state
(`state["hyper"]`), so a sweep's rates, budgets and seeds share one compiled program and one
FLOPs count. These tests check that the program really is the same, that its losses equal the
step built the old way (the optimizer with the rate and horizon as Python constants), and that
the trainer's reuse of an earlier run's step changes no number of a run.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optim
from mgr.model import Decoder
from mgr.train import program
from mgr.train.trainer import make_step

from helpers import tiny_model, tiny_train

BATCH = jax.ShapeDtypeStruct((2, 17), jnp.int32)


def _constant_baked_losses(model_cfg, train_cfg, total_steps, batches):
    """The step as it was before: optimizer built with Python-constant rate and horizon."""
    tx = optim.build_transform(train_cfg, total_steps)
    graphdef, params = nnx.split(Decoder(model_cfg, rngs=nnx.Rngs(train_cfg.seed)), nnx.Param)

    @jax.jit
    def step(p, o, b):
        loss, g = jax.value_and_grad(lambda q: nnx.merge(graphdef, q).loss(b))(p)
        u, o = tx.update(g, o, p, value=loss, value_fn=lambda q: nnx.merge(graphdef, q).loss(b))
        return optax.apply_updates(p, u), o, loss

    opt, losses = tx.init(params), []
    for b in batches:
        params, opt, loss = step(params, opt, b)
        losses.append(float(loss))
    return losses


def test_rate_and_horizon_are_not_in_the_program_and_losses_equal_the_baked_step():
    model = tiny_model(n_layers=1, d_model=16, vocab_size=64)
    fast, slow = tiny_train(learning_rate=1e-2), tiny_train(learning_rate=2e-3, seed=1)
    a, b = make_step(model, fast, 12), make_step(model, slow, 30)
    text = [jax.jit(p.step).lower(jax.eval_shape(p.init), BATCH).as_text() for p in (a, b)]
    assert text[0] == text[1]  # one program for both rates and both horizons

    step = jax.jit(a.step)  # ... so one compiled step runs both
    batches = [jax.random.randint(jax.random.PRNGKey(i), (2, 17), 0, model.vocab_size) for i in range(8)]
    for parts, cfg, horizon in ((a, fast, 12), (b, slow, 30)):
        state, losses = jax.jit(parts.init)(), []
        for batch in batches:
            state, m = step(state, batch)
            losses.append(float(m["loss"]))
        np.testing.assert_allclose(losses, _constant_baked_losses(model, cfg, horizon, batches), rtol=2e-5)


def _bits(tree):
    return [(x.dtype, x.shape, np.asarray(x).tobytes()) for x in jax.tree.leaves(tree)]


def test_the_cached_init_program_gives_the_state_of_the_uncached_init(monkeypatch):
    """build_program initialises every run of an arm through one jitted init program whose
    seed, peak rate and horizon are arguments; each state is bit-identical to the one the init
    makes with them as constants (compiled afresh per run, as before)."""
    model = tiny_model(n_layers=1, d_model=16, vocab_size=64)
    monkeypatch.setattr(program, "_COMPILED", {})
    for seed, lr, horizon in ((0, 1e-2, 12), (1, 2e-3, 30)):  # (no optimizer's init reads the rate)
        cfg = tiny_train(seed=seed, learning_rate=lr)
        state = program.build_program(model, cfg, BATCH.shape, horizon).state
        assert _bits(state) == _bits(jax.jit(make_step(model, cfg, horizon).init)())
    assert len(program._COMPILED) == 1  # both runs used one init program


def test_a_reused_step_gives_the_numbers_of_a_fresh_compile(tmp_path, monkeypatch):
    """The first run compiles the lowering its FLOPs count made beforehand (as the suite's
    preflight counts every arm); later runs reuse its compiled step, init and evaluation
    programs (another seed; another rate; another horizon, set after planning by
    `with_horizon`), after another arm's run in between. Each equals the same run built alone,
    from scratch, in its losses and validation curve."""
    from helpers import TINY_DATA
    from mgr.data import build_data
    from mgr.train import read_metrics, sharding, train

    data = build_data(TINY_DATA)
    model, other = tiny_model(n_layers=1), tiny_model(n_layers=1, attention="tropical")
    monkeypatch.setattr(program, "_COMPILED", {})
    lowered = []
    real_lower = sharding.lower_step
    monkeypatch.setattr(sharding, "lower_step", lambda *a, **k: lowered.append(1) or real_lower(*a, **k))

    def run(name, arm=model, **kw):
        s = train(arm, TINY_DATA, tiny_train(checkpoints=False, **kw), run_dir=tmp_path / name,
                  artifacts_root=tmp_path, data=data)
        return s, [m["loss"] for m in read_metrics(tmp_path / name) if m["kind"] == "train"]

    configs = {"first": dict(steps=10), "seed": dict(steps=10, seed=1), "rate": dict(steps=10, learning_rate=3e-3),
               "budget": dict(steps=None, target_flops=None)}
    shape = (TINY_DATA.batch_size, TINY_DATA.seq_len + 1)
    per_step = program.step_flops(model, tiny_train(**configs["first"]), shape)  # the preflight's count
    first, first_losses = run("first", **configs["first"])
    assert len(lowered) == 1 and first["results"]["compile_seconds"] > 0  # compiled what the count lowered
    assert first["budget"]["flops_per_step_xla"] == per_step
    run("other-arm", arm=other, steps=10)
    configs["budget"]["target_flops"] = 13 * per_step  # 13 steps, planned
    shared = {name: run(name, **kw) for name, kw in configs.items() if name != "first"}
    assert len(program._COMPILED) == 2 and len(lowered) == 2  # one lowering per arm
    assert all(s["results"]["compile_seconds"] == 0.0 for s, _ in shared.values())
    assert shared["budget"][0]["budget"]["steps"] == 13
    # planned from the budget (compiled for the provisional horizon, then `with_horizon`) ==
    # asked for 13 steps outright: the cosine schedule ends where the run ends
    assert shared["budget"][1] == run("explicit", steps=13)[1]
    assert shared["seed"][1] != first_losses and shared["rate"][1] != first_losses  # really other runs
    for name, (summary, losses) in shared.items():
        monkeypatch.setattr(program, "_COMPILED", {})
        fresh, fresh_losses = run(f"{name}-fresh", **configs[name])
        assert fresh["results"]["compile_seconds"] > 0
        assert losses == fresh_losses and len(losses) == summary["budget"]["steps"]
        assert summary["results"]["val_curve"] == fresh["results"]["val_curve"]
        assert summary["results"]["val_ce_final"] == fresh["results"]["val_ce_final"]

