"""Every registered optimizer minimises an ill-conditioned quadratic and Rosenbrock's function.

Learning rates are per optimizer (they mean different things: HOSS's is a macro-time). Muon
gets its quadratic over a matrix parameter, so it is the Muon branch (not its AdamW branch)
that has to converge; on Rosenbrock's 2-vector it runs its AdamW branch.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import optim
from optim_helpers import make_tx, minimise

rng = np.random.default_rng(0)
_Q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
EIGS = np.logspace(0, 2, 8)  # condition number 100, rotated off the axes
A = jnp.asarray(_Q @ np.diag(EIGS) @ _Q.T, jnp.float32)
W_STAR = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
W_STAR_VEC = W_STAR[:, 0]


def quadratic(p):
    """½ tr((W − W*)ᵀ A (W − W*)) over a hidden matrix (8, 6), or ½ (w − w*)ᵀ A (w − w*)."""
    if "blocks" in p:
        d = p["blocks"]["kernel"] - W_STAR
        return 0.5 * jnp.sum(d * (A @ d))
    d = p["w"] - W_STAR_VEC
    return 0.5 * d @ A @ d


def rosenbrock(p):
    x, y = p["w"][0], p["w"][1]
    return (1 - x) ** 2 + 100 * (y - x ** 2) ** 2


# (schedule, learning rate, steps, optimizer options) per optimizer; weight decay off so the
# optimum is the problem's own.
SETTINGS = {
    "adamw": ("cosine", 0.05, 500, {"weight_decay": 0.0}),
    "muon": ("cosine", 0.1, 500, {"weight_decay": 0.0}),
    "hoss": ("constant", 1.0, 40, {"delta_scale": 1.0}),
}


def test_every_optimizer_has_settings():
    assert set(optim.names()) <= set(SETTINGS), "add convergence settings for new optimizers"


def _tx(name, steps=None):
    schedule, lr, n, options = SETTINGS[name]
    sched_opts = {"final_fraction": 1e-3} if schedule == "cosine" else {}
    return make_tx(name, schedule, lr=lr, steps=steps or n, optimizer_options=options,
                   schedule_options=sched_opts), steps or n


@pytest.mark.parametrize("name", optim.names())
def test_ill_conditioned_quadratic(name):
    params = ({"blocks": {"kernel": jnp.zeros((8, 6))}} if name == "muon" else {"w": jnp.zeros(8)})
    tx, steps = _tx(name)
    p, losses = minimise(tx, quadratic, params, steps)
    assert float(quadratic(p)) < 1e-5 * float(losses[0])


@pytest.mark.parametrize("name", optim.names())
def test_rosenbrock(name):
    tx, steps = _tx(name, 2000 if name != "hoss" else 60)
    p, losses = minimise(tx, rosenbrock, {"w": jnp.array([-1.2, 1.0])}, steps)
    assert float(rosenbrock(p)) < 1e-4, float(rosenbrock(p))
    np.testing.assert_allclose(np.asarray(p["w"]), [1.0, 1.0], atol=2e-2)


# ---- the default paths pinned to their closed forms (what the convergence runs cannot see) ----

def test_adamw_second_step_is_the_closed_form_with_decay_on_matrices_only():
    """Two AdamW steps by hand (bias-corrected moments at b1 != b2, decoupled decay on the
    embedding, head and hidden matrix, none on the vector): catches swapped betas and masks."""
    rng = np.random.default_rng(1)
    shapes = {"embed": {"table": (3, 2)}, "blocks": {"kernel": (2, 2), "scale": (2,)},
              "head": {"kernel": (2, 3)}}
    decayed = {"embed": {"table": 1.0}, "blocks": {"kernel": 1.0, "scale": 0.0}, "head": {"kernel": 1.0}}
    leaf = lambda: {k: {n: rng.normal(size=s) for n, s in v.items()} for k, v in shapes.items()}
    p0, g1, g2 = leaf(), leaf(), leaf()
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.95, 1e-8, 0.1
    tx = make_tx("adamw", lr=lr, optimizer_options=dict(b1=b1, b2=b2, eps=eps, weight_decay=wd))
    f32 = lambda t: {k: {n: jnp.asarray(x, jnp.float32) for n, x in v.items()} for k, v in t.items()}
    params, state = f32(p0), tx.init(f32(p0))
    u1, state = tx.update(f32(g1), state, params)
    params = {k: {n: params[k][n] + u1[k][n] for n in v} for k, v in params.items()}
    u2, _ = tx.update(f32(g2), state, params)
    for k, v in shapes.items():
        for n in v:
            m, s = (1 - b1) * g1[k][n], (1 - b2) * g1[k][n] ** 2
            w1 = p0[k][n] - lr * (g1[k][n] / (np.abs(g1[k][n]) + eps) + wd * decayed[k][n] * p0[k][n])
            m, s = b1 * m + (1 - b1) * g2[k][n], b2 * s + (1 - b2) * g2[k][n] ** 2
            step = (m / (1 - b1 ** 2)) / (np.sqrt(s / (1 - b2 ** 2)) + eps)
            np.testing.assert_allclose(u2[k][n], -lr * (step + wd * decayed[k][n] * w1),
                                       rtol=1e-4, atol=1e-6, err_msg=f"{k}/{n}")


def test_schedules_follow_their_closed_forms():
    """Linear warmup from 0 reaching the peak at `warmup_steps`, then constant or a cosine that
    ends at final_fraction x peak at `total_steps` (optax counts the warmup inside the decay)."""
    peak, warmup, total = 2.0, 4, 20
    const = optim.get_schedule("constant")
    lr = const.build(const.config_cls(), peak, warmup, total)
    np.testing.assert_allclose([float(lr(s)) for s in range(7)], [0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
    cos = optim.get_schedule("cosine")
    lr = cos.build(cos.config_cls(final_fraction=0.1), peak, warmup, total)
    mid = 0.2 + (peak - 0.2) * 0.5 * (1 + np.cos(np.pi * 8 / 16))
    np.testing.assert_allclose([float(lr(s)) for s in (0, 2, 4, 12, 20, 25)],
                               [0.0, 1.0, peak, mid, 0.2, 0.2], rtol=1e-5, atol=1e-7)
