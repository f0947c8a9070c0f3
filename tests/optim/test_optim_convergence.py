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
