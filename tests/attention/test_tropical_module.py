"""Tropical attention as the decoder runs it: the registered module against a brute-force numpy
max-plus / log-sum-exp form built from its raw parameters, its sown margins against brute-force
runner-up gaps (over ALL keys, whatever the key blocks), and the certificates the margins give
on the path the module really takes (the default finite-β matmul path, and β = ∞)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention
import numpy_reference as npr
from attention.base import AttentionDims

B, T, H, G, K = 2, 7, 4, 2, 4
DIMS = AttentionDims(d_model=H * K, n_heads=H, n_kv_heads=G, head_dim=K, max_seq_len=16)
# Row 1 is a permutation: the mask must come from the positions.
POS = jnp.array([[2, 3, 4, 5, 6, 7, 8], [5, 0, 3, 6, 1, 4, 2]], jnp.int32)
ENTRY = attention.get("tropical")
# The default (finite β, matmul path); the matmul path at its stated limit β·√K = 40, where its
# smallest exponentials are e^{-2β√K} = e^{-80}, still normal floats; the chunked path with
# several key blocks at β = ∞ and at a finite β.
CONFIGS = {"default": {}, "matmul_limit": dict(beta=40.0 / math.sqrt(K)),
           "exact_blocks": dict(beta=None, block=3), "chunked_beta": dict(beta=50.0, block=4)}


def oplus(x, axis, beta, mask=None):
    """The semiring sum: max at β = None, (1/β) log Σ e^{βx} otherwise (masked entries excluded)."""
    if mask is not None:
        x = np.where(mask, x, -np.inf)
    m = np.max(x, axis=axis, keepdims=True)
    out = m if beta is None else m + np.log(np.sum(np.exp(beta * (x - m)), axis=axis, keepdims=True)) / beta
    return np.squeeze(out, axis)


def gap(x, axis, mask):
    """Best minus runner-up along `axis` over visible entries; inf with a single visible one."""
    top = np.sort(np.where(mask, x, -np.inf), axis=axis)
    t1, t2 = np.take(top, -1, axis=axis), np.take(top, -2, axis=axis)
    return np.where(np.isfinite(t2), t1 - t2, np.inf)


def brute_force(q, k, v, pos, beta):
    """y `[B, T, H, K]`, score and route gaps `[B, T, H]` and the scores `[B, T, S, H]`, by
    explicit loops' worth of broadcasting over (query, key, channel)."""
    k, v = npr.expand_kv(k, H), npr.expand_kv(v, H)
    s = oplus(q[:, :, None] + k[:, None], -1, beta)  # [B, T, S, H]
    ok = npr.allowed(pos)[..., None]  # [B, T, S, 1]
    z = s[..., None] + v[:, None]  # [B, T, S, H, K]
    y = oplus(z, 2, beta, ok[..., None]) - oplus(s, 2, beta, ok)[..., None]
    route = np.min(gap(z, 2, ok[..., None]), axis=-1)
    return y, gap(s, 2, ok), route, s


_RUNS = {}


def run_module(cfg, fed):
    """(module, run): one jitted program per configuration, shared by the tests."""
    key = (tuple(sorted(cfg.items())), fed)
    if key not in _RUNS:
        _RUNS[key] = _build(cfg, fed)
    return _RUNS[key]


def _build(cfg, fed):
    """Jitted forward of the registered module (or of its aggregation fed q, k, v directly, with
    `wo` the identity) returning y and the sown margins."""
    cls = ENTRY.module_cls
    if fed:
        class Fed(cls):
            def project(self, x_BxTxD, positions_BxT):
                q, k, v = jnp.split(x_BxTxD, [H * K, (H + G) * K], axis=-1)
                return (q.reshape(B, T, H, K), k.reshape(B, T, G, K), v.reshape(B, T, G, K))
        cls = Fed
    m = cls(DIMS, ENTRY.config_cls(**cfg), rngs=nnx.Rngs(0))
    if fed:
        m.wo.kernel[...] = jnp.eye(H * K)
    graphdef, state = nnx.split(m)

    @jax.jit
    def run(x, pos):
        mod = nnx.merge(graphdef, state)
        y, _ = mod(x, pos)
        inter = nnx.state(mod, nnx.Intermediate)
        return y, {n: inter[n][...] for n in ("score_margin", "route_margin") if n in inter}

    return m, run


@pytest.mark.parametrize("name", CONFIGS)
def test_module_and_its_margins_equal_brute_force(name):
    m, run = run_module(CONFIGS[name], fed=False)
    beta = None if m.cfg.exact else m.cfg.beta
    x = jax.random.normal(jax.random.key(1), (B, T, DIMS.d_model))
    q, k, v = npr.qkv(m, x, POS)
    y_np, score_gap, route_gap, _ = brute_force(q, k, npr.rms(v), POS, beta)
    y, sown = run(x, POS)
    np.testing.assert_allclose(y, y_np.reshape(B, T, -1) @ npr.kernel(m.wo), atol=2e-5, rtol=1e-4)
    # Both margins are sown on every path, and each is a gap over the union of key blocks.
    assert set(sown) == {"score_margin", "route_margin"}
    for got, want in ((sown["score_margin"], score_gap), (sown["route_margin"], route_gap)):
        assert bool(jnp.all(jnp.isinf(got) == np.isinf(want)))
        np.testing.assert_allclose(np.where(np.isinf(want), 0, got), np.where(np.isinf(want), 0, want),
                                   atol=1e-4)


@pytest.fixture(scope="module")
def fed_inputs():
    """q, k, v as the registered module projects them (QK-norm, RoPE, RMS-normalised v)."""
    m = ENTRY.module_cls(DIMS, ENTRY.config_cls(), rngs=nnx.Rngs(3))
    x = jax.random.normal(jax.random.key(2), (B, T, DIMS.d_model))
    return tuple(np.asarray(a, np.float64) for a in m.project(x, POS))


def pack(q, k, v):
    return jnp.concatenate([jnp.asarray(a, jnp.float32).reshape(B, T, -1) for a in (q, k, v)], -1)


def test_default_finite_beta_margins_certify_the_hard_routes(fed_inputs):
    """At finite β every ⊕ over n visible keys exceeds its max by at most
    ε(m) = log(1 + (n-1)·e^{-βm})/β, m its runner-up gap; so the module's output is within
    max(ε(route_margin), ε(score_margin)) of the hard-route output max_j(s_ij + v_jc) - max_j s_ij
    on its own scores, a bound much tighter than log(n)/β when the margins are wide."""
    q, k, v = fed_inputs
    m, run = run_module({}, fed=True)
    beta = m.cfg.beta
    y, sown = run(pack(q, k, v), POS)
    _, _, _, s = brute_force(q, k, v, POS, beta)
    ok = npr.allowed(POS)[..., None]
    z = s[..., None] + npr.expand_kv(v, H)[:, None]
    hard = oplus(z, 2, None, ok[..., None]) - oplus(s, 2, None, ok)[..., None]
    n = ok.sum(axis=2)  # [B, T, 1] visible keys

    def eps(margin):
        return np.log1p((n - 1) * np.exp(-beta * np.asarray(margin, np.float64))) / beta

    bound = np.maximum(eps(sown["route_margin"]), eps(sown["score_margin"]))  # [B, T, H]
    err = np.max(np.abs(np.asarray(y, np.float64).reshape(B, T, H, K) - hard), axis=-1)
    assert np.all(err <= bound + 1e-5), np.max(err - bound)
    assert np.all(np.asarray(sown["route_margin"]) >= 0) and np.all(np.asarray(sown["score_margin"]) >= 0)
    assert np.mean(bound < 0.5 * np.log(np.maximum(n, 2)) / beta) > 0.25  # the margins matter


def test_exact_route_margin_certifies_the_selected_keys_on_the_module(fed_inputs):
    """β = ∞ with key blocks smaller than T: moving v by less than half the sown route margin
    keeps every route, and y moves by exactly the selected keys' perturbation."""
    q, k, v = fed_inputs
    _, run = run_module(dict(beta=None, block=2), fed=True)
    y, sown = run(pack(q, k, v), POS)
    _, _, _, s = brute_force(q, k, v, POS, None)
    ok = npr.allowed(POS)[..., None, None]
    z = np.where(ok, s[..., None] + npr.expand_kv(v, H)[:, None], -np.inf)
    j_star = np.argmax(z, axis=2)  # [B, T, H, K] selected key
    eps = float(np.min(sown["route_margin"]))
    assert math.isfinite(eps) and eps > 1e-3
    dv = np.random.default_rng(0).choice([-1.0, 1.0], size=v.shape) * 0.49 * eps
    y2, _ = run(pack(q, k, v + dv), POS)
    moved = np.take_along_axis(npr.expand_kv(dv, H)[:, None], j_star[:, :, None], axis=2)[:, :, 0]
    np.testing.assert_allclose(np.asarray(y2 - y).reshape(B, T, H, K), moved, atol=1e-5)


def test_module_bounds_from_the_page(fed_inputs):
    """On the registered aggregation: the default β stays within (log K + log T)/β of max-plus;
    the output is 1-Lipschitz in ℓ∞ in v at β = 4 and β = ∞; at β = ∞ it is tropically linear
    in v."""
    q, k, v = fed_inputs
    (m4, run4), (_, run_inf) = run_module({}, fed=True), run_module(dict(beta=None, block=2), fed=True)
    y4, y_inf = run4(pack(q, k, v), POS)[0], run_inf(pack(q, k, v), POS)[0]
    assert float(jnp.max(jnp.abs(y4 - y_inf))) <= (math.log(K) + math.log(T)) / m4.cfg.beta + 1e-5
    rng = np.random.default_rng(1)
    for trial in range(3):
        dv = rng.uniform(-1, 1, v.shape) * 0.3
        for run, y in ((run4, y4), (run_inf, y_inf)):
            assert float(jnp.max(jnp.abs(run(pack(q, k, v + dv), POS)[0] - y))) <= np.max(np.abs(dv)) + 1e-5
    v2 = rng.normal(size=v.shape)
    np.testing.assert_allclose(run_inf(pack(q, k, np.maximum(v, v2)), POS)[0],
                               jnp.maximum(y_inf, run_inf(pack(q, k, v2), POS)[0]), atol=1e-6)
    np.testing.assert_allclose(run_inf(pack(q, k, v + 1.5), POS)[0], y_inf + 1.5, atol=1e-5)
