"""The ordinal schedule: well-founded rank, termination on stagnation, real anneal and restart.

The reference's ordinal scheduler was never stepped; here it runs inside the optax update,
driven by the loss passed as `value`, and these tests drive it with Hypothesis loss sequences.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import optim
from mgr.config import TrainConfig
from optim import ordinal
from optim_helpers import make_tx

CFG = dict(restarts=1, anneal_levels=2, patience=3, patience_growth=2.0, gamma=0.5,
           ema_decay=0.5, min_rel_improvement=1e-3)
PREFIX, TAIL = 40, 160
LR = 0.1


def _driver():
    """Jitted: run the ordinal-wrapped AdamW over a loss sequence; per-step (A, B, C, scale)."""
    tx = make_tx("adamw", "ordinal", lr=LR, schedule_options=CFG)
    params = {"w": jnp.zeros(2)}

    @jax.jit
    def run(losses):
        def body(state, loss):
            _, state = tx.update({"w": jnp.ones(2)}, state, params, value=loss)
            s = ordinal.find_state(state)
            return state, (s.restarts, s.levels, s.patience, s.lr_scale)

        return jax.lax.scan(body, tx.init(params), losses)[1]

    return run


RUN = _driver()


def ranks(losses):
    a, b, c, scale = (np.asarray(x) for x in RUN(jnp.asarray(losses, jnp.float32)))
    before = [(CFG["restarts"], CFG["anneal_levels"], 3)] + list(zip(a[:-1], b[:-1], c[:-1]))
    return before, list(zip(a, b, c)), scale


losses_strategy = st.lists(st.floats(0.0, 10.0, width=32), min_size=PREFIX + TAIL,
                           max_size=PREFIX + TAIL)


@settings(max_examples=60, deadline=None)
@given(losses_strategy)
def test_rank_never_increases_and_strictly_decreases_at_limits(losses):
    before, after, scale = ranks(losses)
    prev_scale = 1.0
    for r0, r1, s in zip(before, after, scale):
        assert r1 <= r0  # tuples compare lexicographically: ω²A + ωB + C
        assert min(r1) >= 0
        if r1[:2] != r0[:2]:  # a limit event: anneal or restart
            assert r1 < r0
            if r1[0] < r0[0]:
                assert s == 1.0 and r1[1] == CFG["anneal_levels"]  # restart: lr back to peak
            else:
                assert r1[1] == r0[1] - 1 and np.isclose(s, prev_scale * CFG["gamma"])
        else:
            assert s == prev_scale
        prev_scale = s


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 10.0, width=32), min_size=PREFIX, max_size=PREFIX),
       st.floats(1.0, 10.0, width=32),
       st.lists(st.floats(0.0, 0.0625, width=32), min_size=TAIL, max_size=TAIL))
def test_reaches_final_rank_when_loss_stagnates(prefix, level, increments):
    """Any history, then a non-decreasing tail: the schedule must end at rank 0 and stay."""
    tail = level + np.cumsum(increments)
    _, after, scale = ranks(np.concatenate([prefix, tail]))
    assert after[-1] == (0, 0, 0)
    first_final = after.index((0, 0, 0))
    assert all(r == (0, 0, 0) for r in after[first_final:])
    assert np.isclose(scale[-1], CFG["gamma"] ** CFG["anneal_levels"])


def test_improving_loss_keeps_the_rank():
    before, after, _ = ranks(np.geomspace(10.0, 1.0, PREFIX + TAIL))
    assert after[-1] == before[0]


def _events_run(name, options, losses, params, grads_seq, loss_fn=None):
    """Eager steps of `name` under ordinal; returns the per-step ordinal states and updates."""
    tx = make_tx(name, "ordinal", lr=LR, optimizer_options=options,
                 schedule_options=dict(restarts=1, anneal_levels=1, patience=2,
                                       patience_growth=1.0, ema_decay=0.0))
    update = jax.jit(lambda g, s, p, v: tx.update(g, s, p, value=v, value_fn=loss_fn))
    state, out = tx.init(params), []
    for loss, grads in zip(losses, grads_seq):
        updates, state = update(grads, state, params, jnp.float32(loss))
        out.append((ordinal.find_state(state), updates))
    return out


# Stagnating losses: step 0 sets the best, then patience 2 runs out at step 2 (anneal), the new
# level's best is set at step 3, its patience runs out at step 5 (restart).
STAGNANT = [5.0] * 8
ANNEAL_STEP, RESTART_STEP = 2, 5


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_restart_resets_moments_and_anneal_scales_lr(name):
    params = {"blocks": {"kernel": jnp.zeros((4, 3))}, "v": jnp.zeros(3)}
    keys = jax.random.split(jax.random.key(0), len(STAGNANT))
    grads_seq = [jax.tree.map(lambda x, k=k: jax.random.normal(k, x.shape), params) for k in keys]
    options = {"weight_decay": 0.0}
    out = _events_run(name, options, STAGNANT, params, grads_seq)
    events = [ordinal.rank(s)[:2] for s, _ in out]
    assert events[ANNEAL_STEP - 1:ANNEAL_STEP + 1] == [(1, 1), (1, 0)]
    assert events[RESTART_STEP - 1:RESTART_STEP + 1] == [(1, 0), (0, 1)]
    # Anneal: the learning rate used is γ·peak until the restart, then the peak again.
    lrs = [float(s.learning_rate) for s, _ in out]
    np.testing.assert_allclose(lrs, [LR, LR, 0.5 * LR, 0.5 * LR, 0.5 * LR, LR, LR, LR], rtol=1e-6)
    # Restart: the inner state equals a fresh optimizer's after one step with that gradient.
    opt = optim.get(name)
    fresh_tx = opt.build(opt.config_cls(**options), jnp.float32(LR))
    _, fresh = jax.jit(lambda g, p: fresh_tx.update(g, fresh_tx.init(p), p))(
        grads_seq[RESTART_STEP], params)
    restarted = out[RESTART_STEP][0].inner
    for x, y in zip(jax.tree.leaves(restarted), jax.tree.leaves(fresh), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # ...and it is not what continuing without the reset would have given.
    before = out[RESTART_STEP - 1][0].inner
    assert any(not np.array_equal(np.asarray(x), np.asarray(y)) and x.dtype != jnp.int32
               for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(restarted)))


def test_restart_keeps_hoss_noise_key_advancing():
    loss_fn = lambda p: 0.5 * jnp.sum(p["w"] ** 2)
    params = {"w": jnp.ones(2)}
    grads_seq = [jax.grad(loss_fn)(params)] * len(STAGNANT)
    out = _events_run("hoss", {"rank": 2, "noise_std": 0.1}, STAGNANT, params, grads_seq, loss_fn)
    keys = [tuple(np.asarray(s.inner.key)) for s, _ in out]
    assert len(set(keys)) == len(keys)  # never reset to the seed, never repeated
    assert int(out[RESTART_STEP][0].inner.count) == 1  # but the step count was reset


def test_needs_the_loss():
    tx = make_tx("adamw", "ordinal", lr=LR)
    params = {"w": jnp.zeros(2)}
    with pytest.raises(ValueError, match="loss"):
        tx.update(params, tx.init(params), params)


def test_constant_and_cosine_stay_step_functions():
    """Plain schedules do not wrap: the state is the optimizer's own (clip, then adamw)."""
    for sched in ("constant", "cosine"):
        cfg = TrainConfig(schedule=sched)
        state = optim.build_transform(cfg, 100).init({"w": jnp.zeros(2)})
        assert ordinal.find_state(state) is None


# ---- one scripted stream, step by step: anneal -> patience -> anneal -> restart -> final ------
# ema_decay 0 makes the EMA the loss itself. P(B) = round(2·2^(2−B)): 2 at the top level, 4 after
# the first anneal, 8 after the second; a restart refills B = 2 and C = P(2) = 2.
SCRIPT_CFG = dict(restarts=1, anneal_levels=2, patience=2, patience_growth=2.0, gamma=0.5,
                  ema_decay=0.0, min_rel_improvement=0.01)


def _stagnate(n, a, b, c_from, scale, loss=7.0):
    return [(loss, (a, b, c), scale) for c in range(c_from, c_from - n, -1)]


SCRIPT = [  # (loss, (A, B, C) after the step, lr scale after the step)
    (10.0, (1, 2, 2), 1.0),  # the first loss sets the best
    (9.0, (1, 2, 2), 1.0),  # beats it by more than 1 %: improvement, rank kept
    (8.95, (1, 2, 1), 1.0),  # better, but by less than 1 %: stagnation
    (8.0, (1, 2, 1), 1.0),  # improvement moves the best but does NOT refill the patience
    (8.0, (1, 1, 4), 0.5),  # patience spent: anneal, C <- P(1) = 4, the best forgotten
    (8.0, (1, 1, 4), 0.5),  # so the level's first loss is an improvement, even at the old best
    *_stagnate(2, 1, 1, 3, 0.5, loss=8.0),
    (7.0, (1, 1, 2), 0.5),
    (7.0, (1, 1, 1), 0.5),
    (7.0, (1, 0, 8), 0.25),  # second anneal: C <- P(0) = 8
    (7.0, (1, 0, 8), 0.25),
    *_stagnate(7, 1, 0, 7, 0.25),
    (7.0, (0, 2, 2), 1.0),  # the 8th stagnation: restart, B <- 2, C <- P(2) = 2, lr at the peak
    (7.0, (0, 2, 2), 1.0),
    (7.0, (0, 2, 1), 1.0),
    (7.0, (0, 1, 4), 0.5),
    (7.0, (0, 1, 4), 0.5),
    *_stagnate(3, 0, 1, 3, 0.5),
    (7.0, (0, 0, 8), 0.25),
    (7.0, (0, 0, 8), 0.25),
    *_stagnate(7, 0, 0, 7, 0.25),
    (7.0, (0, 0, 0), 0.25),  # no restart left: the final rank
    (1.0, (0, 0, 0), 0.25),  # final: even a large improvement changes nothing
]


def test_scripted_stream_step_by_step():
    """Every step's rank, learning rate and applied update through two anneals, a restart and
    the final rank: an off-by-one in the patience, a counter not refilled (or refilled with the
    old level's P) at an anneal or restart, or a best not forgotten at a limit all show here."""
    tx = make_tx("adamw", "ordinal", lr=LR, schedule_options=SCRIPT_CFG,
                 optimizer_options={"weight_decay": 0.0})
    params = {"w": jnp.zeros(3)}

    @jax.jit
    def run(losses):
        def body(state, loss):
            # A constant gradient: every AdamW step is -lr per coordinate, restarts included.
            u, state = tx.update({"w": jnp.ones(3)}, state, params, value=loss)
            s = ordinal.find_state(state)
            return state, (s.restarts, s.levels, s.patience, s.lr_scale, s.learning_rate, u["w"])

        return jax.lax.scan(body, tx.init(params), losses)[1]

    a, b, c, scale, lr, upd = (np.asarray(x) for x in run(jnp.asarray([x[0] for x in SCRIPT])))
    for t, (loss, rank_after, scale_after) in enumerate(SCRIPT):
        assert (a[t], b[t], c[t]) == rank_after, (t, loss)
        assert scale[t] == scale_after and np.isclose(lr[t], LR * scale_after), (t, loss)
    np.testing.assert_allclose(upd, -lr[:, None] * np.ones((1, 3)), rtol=1e-5)


def test_loss_ema_follows_its_recursion():
    """The EMA starts at the first loss and then mixes in each loss with weight 1 − β."""
    beta = 0.7
    tx = make_tx("adamw", "ordinal", lr=LR, schedule_options={**SCRIPT_CFG, "ema_decay": beta})
    params = {"w": jnp.zeros(2)}
    losses = np.random.default_rng(0).uniform(1.0, 5.0, 12).astype(np.float32)

    @jax.jit
    def run(losses):
        def body(state, loss):
            _, state = tx.update({"w": jnp.ones(2)}, state, params, value=loss)
            return state, ordinal.find_state(state).ema

        return jax.lax.scan(body, tx.init(params), losses)[1]

    ema, expected = [], losses[0]
    for x in losses:
        expected = beta * expected + (1 - beta) * x
        ema.append(expected)
    np.testing.assert_allclose(np.asarray(run(jnp.asarray(losses))), ema, rtol=1e-5)
