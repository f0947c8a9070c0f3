"""HOSS: the Krylov step equals the closed-form OU step, it is stable where gradient descent
diverges, its noise has the modelled covariance, and it refuses to run without `value_fn`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core.errors import MgrError
from optim.hoss import HossConfig, HossState
from optim_helpers import make_tx, minimise


def quadratic_problem(eigs, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(len(eigs), len(eigs))))
    h = q @ np.diag(eigs) @ q.T
    b = rng.normal(size=len(eigs))
    w0 = rng.normal(size=len(eigs))
    loss = lambda p: 0.5 * p["w"] @ jnp.asarray(h, jnp.float32) @ p["w"] - jnp.asarray(b, jnp.float32) @ p["w"]
    return h, b, w0, loss


def closed_form_step(h, g, delta, floor=None):
    """−Φ_δ(H) g in float64, with H's eigenvalues floored when `floor` is given."""
    lam, v = np.linalg.eigh(h)
    if floor is not None:
        lam = np.maximum(lam, floor)
    phi = np.where(np.abs(lam) < 1e-12, delta, -np.expm1(-delta * lam) / np.where(lam == 0, 1, lam))
    return -(v @ (phi * (v.T @ g)))


def hoss_update(loss, w, *, delta, rank, key_state=None, **options):
    tx = make_tx("hoss", lr=delta, optimizer_options={"delta_scale": 1.0, "rank": rank, **options})
    params = {"w": jnp.asarray(w, jnp.float32)}
    state = tx.init(params) if key_state is None else key_state
    grads = jax.grad(loss)(params)
    u, new_state = jax.jit(lambda g, s, p: tx.update(g, s, p, value_fn=loss))(grads, state, params)
    return np.asarray(u["w"], np.float64), new_state


@pytest.mark.parametrize("delta", [0.3, 5.0])
@pytest.mark.parametrize("rank", [6, 9])  # r = dim, and r > dim (Lanczos breaks down early)
def test_deterministic_step_equals_closed_form(delta, rank):
    h, b, w0, loss = quadratic_problem(np.logspace(-1, 2, 6))
    g = h @ w0 - b
    expected = closed_form_step(h, g, delta)
    got, _ = hoss_update(loss, w0, delta=delta, rank=rank)
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4 * np.linalg.norm(expected))
    # Not plain gradient descent: the curvature changes the step.
    assert np.linalg.norm(got + delta * g) > 0.1 * np.linalg.norm(got)


def test_negative_curvature_is_floored():
    """Eigenvalues below curvature_floor are raised to it (at 0: Φ = δ, a gradient step)."""
    h, b, w0, loss = quadratic_problem(np.array([-2.0, -0.5, 0.5, 3.0, 10.0]), seed=1)
    g = h @ w0 - b
    for floor in (0.0, 1.0):
        got, _ = hoss_update(loss, w0, delta=2.0, rank=5, curvature_floor=floor)
        expected = closed_form_step(h, g, 2.0, floor=floor)
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4 * np.linalg.norm(expected))


def test_stable_on_stiff_quadratic_where_gradient_descent_diverges():
    eigs = np.array([1e4, 1e2, 1.0])
    h, b, w0, loss = quadratic_problem(eigs, seed=2)
    w_star = np.linalg.solve(h, b)
    f = lambda w: 0.5 * w @ h @ w - b @ w
    delta = 0.5  # δ·λ_max = 5000: far past gradient descent's limit of 2
    w = w0.copy()
    for _ in range(20):
        w = w - delta * (h @ w - b)
    assert not np.isfinite(f(w)) or f(w) - f(w_star) > 1e10 * (f(w0) - f(w_star))
    tx = make_tx("hoss", lr=delta, optimizer_options={"delta_scale": 1.0, "rank": 3})
    p, losses = minimise(tx, loss, {"w": jnp.asarray(w0, jnp.float32)}, 40)
    gaps = np.asarray(losses, np.float64) - f(w_star)
    assert np.all(np.diff(gaps) <= 1e-3 * gaps[0])  # monotone up to f32 rounding
    np.testing.assert_allclose(np.asarray(p["w"]), w_star, atol=1e-3 * np.linalg.norm(w_star))


def test_noise_covariance_in_krylov_subspace():
    """With Σ = σ²I and r = dim, η ~ N(0, σ² ∫₀^δ e^{−2sH} ds) = N(0, σ² H⁻¹(I − e^{−2δH})/2)."""
    h, b, w0, loss = quadratic_problem(np.array([0.2, 1.0, 4.0]), seed=3)
    delta, sigma, n = 0.7, 0.5, 4000
    tx = make_tx("hoss", lr=delta, optimizer_options={"delta_scale": 1.0, "rank": 3,
                                                       "noise_std": sigma})
    params = {"w": jnp.asarray(w0, jnp.float32)}
    grads = jax.grad(loss)(params)
    keys = jax.random.split(jax.random.PRNGKey(7), n)

    def one(key):
        state = HossState(jnp.zeros([], jnp.int32), key, jnp.zeros(3))
        return tx.update(grads, state, params, value_fn=loss)[0]["w"]

    samples = np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)
    mean_step = closed_form_step(h, h @ w0 - b, delta)
    lam, v = np.linalg.eigh(h)
    cov = v @ np.diag(sigma ** 2 * -np.expm1(-2 * delta * lam) / (2 * lam)) @ v.T
    noise = samples - mean_step
    np.testing.assert_allclose(noise.mean(0), 0, atol=4 * np.sqrt(np.diag(cov).max() / n))
    np.testing.assert_allclose(np.cov(noise.T), cov, atol=0.08 * np.abs(cov).max())


def test_noise_key_lives_in_state_and_advances():
    h, b, w0, loss = quadratic_problem(np.array([0.5, 2.0]), seed=4)
    u1, s1 = hoss_update(loss, w0, delta=0.5, rank=2, noise_std=0.1)
    u2, s2 = hoss_update(loss, w0, delta=0.5, rank=2, noise_std=0.1, key_state=s1)
    u1_again, _ = hoss_update(loss, w0, delta=0.5, rank=2, noise_std=0.1)
    np.testing.assert_array_equal(u1, u1_again)  # same state, same noise
    assert not np.allclose(u1, u2)  # the next step draws fresh noise
    assert not np.array_equal(np.asarray(s1.key), np.asarray(s2.key))
    d1, _ = hoss_update(loss, w0, delta=0.5, rank=2)
    d2, _ = hoss_update(loss, w0, delta=0.5, rank=2, key_state=s1)
    np.testing.assert_array_equal(d1, d2)  # noise off: the key has no effect


def test_needs_value_fn():
    tx = make_tx("hoss", lr=0.1)
    params = {"w": jnp.ones(3)}
    with pytest.raises(MgrError, match="value_fn"):
        tx.update(params, tx.init(params), params)


def test_macro_time_is_delta_scale_times_the_schedule_step_by_step():
    """The default delta_scale (300) times a warming-up schedule's lr, read at HOSS's own step
    count: δ = 0, 0.1, 0.2, 0.3, 0.3. Each step equals the closed form at the current point, and
    the diagnostics hold H's eigenvalues (r = dim, floor 0)."""
    h, b, w0, loss = quadratic_problem(np.array([0.5, 2.0, 8.0]), seed=5)
    peak, warmup = 1e-3, 3
    scale = HossConfig().delta_scale
    tx = make_tx("hoss", "constant", lr=peak, warmup_steps=warmup, optimizer_options={"rank": 3})
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, value_fn=loss))
    params = {"w": jnp.asarray(w0, jnp.float32)}
    state = tx.init(params)  # a HossState: no clipping, nothing chained
    for t in range(warmup + 2):
        w = np.asarray(params["w"], np.float64)
        u, state = update(jax.grad(loss)(params), state, params)
        delta = scale * peak * min(t, warmup) / warmup
        expected = closed_form_step(h, h @ w - b, delta)
        np.testing.assert_allclose(np.asarray(u["w"]), expected, rtol=2e-4,
                                   atol=1e-6 + 2e-4 * np.linalg.norm(expected), err_msg=f"step {t}")
        np.testing.assert_allclose(np.sort(np.asarray(state.ritz_values)), np.linalg.eigvalsh(h),
                                   rtol=1e-3)
        params = {"w": params["w"] + u["w"]}


def test_seed_sets_the_noise():
    h, b, w0, loss = quadratic_problem(np.array([0.5, 2.0]), seed=6)
    draws = {seed: hoss_update(loss, w0, delta=0.5, rank=2, noise_std=0.1, seed=seed)[0]
             for seed in (0, 1)}
    again, _ = hoss_update(loss, w0, delta=0.5, rank=2, noise_std=0.1, seed=1)
    np.testing.assert_array_equal(draws[1], again)
    assert not np.allclose(draws[0], draws[1])
