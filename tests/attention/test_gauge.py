"""Properties of gauge attention, checked on the registered module (`attention.get("gauge")`).

Every expectation is computed here in numpy from the module's own fields (its projected q, k, v,
its generators and links) with a quaternion product written independently of attention/lie.py:
the links are the exact exponentials of the generators, the transports are the path-ordered
products and rotations, a local gauge change of what `attend` consumes rotates each output by its
own g_i (and transforming the fields without the links does not), shifting all positions leaves
the output unchanged, constant links give y_i as a function of i − j alone (rope=False), and the
sown holonomy is the commutator of consecutive links.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from flax import nnx
from hypothesis import given, settings, strategies as st

import attention
from attention.base import AttentionDims
from attention.lie import qexp
from core.errors import MgrError

SETTINGS = settings(max_examples=10, deadline=None)
B, T = 2, 6
DIMS = AttentionDims(d_model=16, n_heads=4, n_kv_heads=2, head_dim=8, max_seq_len=16)
G, R, N = 2, 2, 2  # kv heads, query heads per kv head, so(4) blocks per head
ENTRY = attention.get("gauge")


# ------------------------------------------------------------- quaternions, independently in numpy

def qmul(a, b):
    """(a0 + a)(b0 + b) = a0 b0 − a·b + a0 b + b0 a + a × b, for `[..., 4]` (w, x, y, z)."""
    a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
    w = a[..., :1] * b[..., :1] - np.sum(a[..., 1:] * b[..., 1:], -1, keepdims=True)
    vec = a[..., :1] * b[..., 1:] + b[..., :1] * a[..., 1:] + np.cross(a[..., 1:], b[..., 1:])
    return np.concatenate([w, vec], -1)


def conj(a):
    return np.concatenate([a[..., :1], -a[..., 1:]], -1)


def matrix(left, right):
    """The 4 x 4 matrix of x ↦ left·x·right (columns are the images of the basis)."""
    return np.stack([qmul(qmul(left, e), right) for e in np.eye(4)], -1)


def skew(p, r):
    """A = L(p) + R(r) for pure quaternions p, r `[..., 3]`: x ↦ p·x + x·r."""
    pure = lambda u: np.concatenate([np.zeros_like(u[..., :1]), u], -1)  # noqa: E731
    return np.stack([qmul(pure(p), e) + qmul(e, pure(r)) for e in np.eye(4)], -1)


def expm(a_x4x4):
    flat = np.asarray(a_x4x4, np.float64).reshape(-1, 4, 4)
    return np.stack([scipy.linalg.expm(m) for m in flat]).reshape(a_x4x4.shape)


def rotate(pair, x, heads=False):
    """x ↦ α·x·β per token, kv head and block: `[B, T, G, (R,) 4N]` by pairs `[B, T, G, N, 4]`."""
    al, be = (u[:, :, :, None] if heads else u for u in pair)
    blocks = np.asarray(x, np.float64).reshape(*x.shape[:-1], N, 4)
    return qmul(qmul(al, blocks), be).reshape(x.shape)


def unit_pairs(rng, shape):
    a, b = rng.normal(size=(*shape, 4)), rng.normal(size=(*shape, 4))
    return a / np.linalg.norm(a, axis=-1, keepdims=True), b / np.linalg.norm(b, axis=-1, keepdims=True)


# ------------------------------------------------------------- the module, compiled once per config

def build(**cfg):
    return ENTRY.module_cls(DIMS, ENTRY.config_cls(**cfg), rngs=nnx.Rngs(0))


def runner(module):
    """One jit per config: everything the module computes on (x, positions), as numpy."""
    gd, _ = nnx.split(module)

    @jax.jit
    def run(st, x, pos):
        m = nnx.merge(gd, st)
        q, k, v = m.project(x, pos)
        p, r = m.generators(x)
        links = m.links(x)
        t_pair = m.transports(links)
        y, _ = m.attend(q, k, v, links, pos)
        out, _ = m(x, pos)
        return dict(q=q, k=k, v=v, p=p, r=r, a=links[0], b=links[1], ta=t_pair[0], tb=t_pair[1], y=y,
                    out=out, out_via_attend=m.wo(y.reshape(*y.shape[:2], -1)), hol=m.holonomy[...])

    @jax.jit
    def attend(st, q, k, v, a, b, pos):
        return nnx.merge(gd, st).attend(q, k, v, (a, b), pos)[0]

    def call(x, pos, st=None):
        st = nnx.state(module) if st is None else st
        return {key: np.asarray(val, np.float64) for key, val in run(st, x, pos).items()}

    call.attend = lambda *a: np.asarray(attend(nnx.state(module), *map(jnp.asarray, a)), np.float64)
    return call


def inputs(seed, start=0):
    x = jax.random.normal(jax.random.key(seed), (B, T, DIMS.d_model), jnp.float32)
    return x, jnp.broadcast_to(jnp.arange(start, start + T, dtype=jnp.int32), (B, T))


@pytest.fixture(scope="module")
def flat():
    """rope=False, for the constant-link formula (its generator kernel is zeroed per example)."""
    module = build(rope=False)
    return module, runner(module)


@pytest.fixture(scope="module")
def curved():
    """The default config with generator_init = 1: links turn about a radian per token."""
    module = build(generator_init=1.0)
    return module, runner(module)


def test_links_are_exact_exponentials_and_transports_are_ordered_rotations(curved):
    _, run = curved
    out = run(*inputs(1))
    u = expm(skew(out["p"], out["r"]))  # float64 Padé expm of the module's own generators
    np.testing.assert_allclose(matrix(out["a"], out["b"]), u, atol=3e-6)
    t = matrix(out["ta"], out["tb"])
    want, acc = [], np.eye(4)
    for i in range(T):  # T_i = U_i ⋯ U_0: later links act on the left
        acc = u[:, i] @ acc
        want.append(acc)
    np.testing.assert_allclose(t, np.stack(want, 1), atol=2e-5)
    assert np.max(np.abs(t[:, 1] - u[:, 0] @ u[:, 1])) > 1e-2  # the order is visible
    np.testing.assert_allclose(np.swapaxes(t, -1, -2) @ t, np.broadcast_to(np.eye(4), t.shape), atol=2e-6)
    np.testing.assert_allclose(np.linalg.det(t), 1.0, atol=1e-5)
    np.testing.assert_allclose(out["out_via_attend"], out["out"], atol=1e-6)  # __call__ runs `attend`


@SETTINGS
@given(st.sampled_from([1e-4, 5e-3, 9e-3, 0.1, 1.0, 3.0]), st.integers(0, 2 ** 31 - 1))
def test_exponential_is_exact_at_every_angle(angle, seed):
    """qexp (the module's links) is e^p = (cos|p|, sin|p| p/|p|) to f32 precision on both sides of
    its Taylor switch at |p|² = 1e-4, and L(e^p)R(e^r) is scipy's float64 expm(L(p) + R(r))."""
    p, r = (u / np.linalg.norm(u) * angle for u in np.random.default_rng(seed).normal(size=(2, 3)))
    e_p, e_r = (np.asarray(qexp(jnp.asarray(u, jnp.float32)), np.float64) for u in (p, r))
    np.testing.assert_allclose(e_p[0], np.cos(angle), rtol=1e-6)
    # f32 sin(θ)/θ keeps ~1e-7 relative precision at small θ (where the Taylor switch is) but
    # only ~2e-6 near θ = 3, where sin(θ) is small.
    rtol = 1e-6 if angle < 0.5 else 1e-5
    np.testing.assert_allclose(e_p[1:], np.sin(angle) / angle * p.astype(np.float32), rtol=rtol)
    np.testing.assert_allclose(matrix(e_p, e_r), scipy.linalg.expm(skew(p, r)), atol=3e-6)


def test_generators_span_so4():
    """The links' tangent map at the identity, (p, r) ↦ d/dε exp(ε(L(p) + R(r))), is onto so(4):
    six independent skew directions (three left, three right; neither set commutes)."""
    jac = np.asarray(jax.jacfwd(lambda pr: jnp.concatenate([qexp(pr[:3]), qexp(pr[3:])]))(jnp.zeros(6)))
    one = np.eye(4)[0]
    tangents = np.stack([matrix(one + jac[:4, c], one + jac[4:, c]) - np.eye(4) for c in range(6)])
    assert np.linalg.matrix_rank(tangents.reshape(6, 16), tol=1e-6) == 6
    np.testing.assert_allclose(tangents, -np.swapaxes(tangents, 1, 2), atol=1e-7)
    assert np.max(np.abs(tangents[0] @ tangents[1] - tangents[1] @ tangents[0])) > 1.0


def test_orthogonality_at_t256():
    """Renormalised transports stay orthogonal over 256 products of ~1 rad links; raw f32 drifts."""
    gen = jax.random.normal(jax.random.key(0), (1, 256, 2, 2, 6))
    raw, fixed = build(renormalize=False), build()
    both = jax.jit(lambda lk: (raw.transports(lk), fixed.transports(lk)))((qexp(gen[..., :3]), qexp(gen[..., 3:])))
    err_raw, err_fixed = (np.max(np.abs(np.swapaxes(m, -1, -2) @ m - np.eye(4)))
                          for m in (matrix(*map(np.asarray, t)) for t in both))
    assert err_raw < 5e-5 and err_fixed < 2e-6 and err_fixed < err_raw


@SETTINGS
@given(st.integers(0, 2 ** 31 - 1))
def test_local_gauge_change_rotates_each_output(curved, seed):
    """q_i, k_i, v_i → g_i(·) and U_i → g_i U_i g_{i−1}⁻¹ (g_{−1} = I): y_i → g_i y_i. Moving the
    fields without the links, or moving the base frame (where RoPE acts), is not a symmetry."""
    _, run = curved
    rng = np.random.default_rng(seed)
    x, pos = inputs(seed % 97)
    out = run(x, pos)
    al, be = unit_pairs(rng, (B, T, G, N))
    one = np.broadcast_to(np.eye(4)[0], (B, 1, G, N, 4))
    al_prev, be_prev = (np.concatenate([one, u[:, :-1]], 1) for u in (al, be))
    a2 = qmul(qmul(al, out["a"]), conj(al_prev))  # g_i U_i g_{i−1}⁻¹ as x ↦ (α a ᾱ')·x·(β̄' b β)
    b2 = qmul(qmul(conj(be_prev), out["b"]), be)
    q_heads = out["q"].reshape(B, T, G, R, -1)
    q2 = rotate((al, be), q_heads, heads=True).reshape(out["q"].shape)
    k2, v2 = rotate((al, be), out["k"]), rotate((al, be), out["v"])
    want = rotate((al, be), out["y"].reshape(B, T, G, R, -1), heads=True).reshape(out["y"].shape)
    np.testing.assert_allclose(run.attend(q2, k2, v2, a2, b2, pos), want, atol=2e-5)
    scale = np.max(np.abs(want))
    fields_only = run.attend(q2, k2, v2, out["a"], out["b"], pos)
    assert np.max(np.abs(fields_only - want)) > 0.05 * scale
    base = unit_pairs(rng, (B, 1, G, N))  # g_{−1} ≠ I: the base frame rotates under RoPE
    a3 = qmul(qmul(al, out["a"]), conj(np.concatenate([base[0], al[:, :-1]], 1)))
    b3 = qmul(qmul(conj(np.concatenate([base[1], be[:, :-1]], 1)), out["b"]), be)
    assert np.max(np.abs(run.attend(q2, k2, v2, a3, b3, pos) - want)) > 0.05 * scale


@SETTINGS
@given(st.integers(1, 4096))
def test_shifting_all_positions_leaves_the_output_unchanged(curved, shift):
    """RoPE acts in the base frame, where ⟨R_i a, R_j b⟩ = ⟨a, R_{j−i} b⟩: positions are relative."""
    _, run = curved
    x, pos = inputs(shift % 13)
    out, moved = run(x, pos)["out"], run(x, pos + shift)["out"]
    np.testing.assert_allclose(moved, out, atol=1e-4 * max(1.0, np.max(np.abs(out))))


def constant_link_outputs(run, module, x, pos, bias):
    """The module's output and y_i = Σ_j softmax_j(⟨q_i, U^{i−j} k_j⟩/√K) U^{i−j} v_j (numpy)."""
    module.gen.kernel[...] = jnp.zeros_like(module.gen.kernel[...])  # the links ignore x
    module.gen_bias[...] = jnp.asarray(bias, jnp.float32)
    out = run(x, pos, nnx.state(module))
    p, r = out["p"][0, 0], out["r"][0, 0]  # the module's own generators: the same at every token
    np.testing.assert_array_equal(out["p"], np.broadcast_to(p, out["p"].shape))
    assert np.max(np.abs(p)) > 0.05  # and far from the identity
    u = expm(skew(p, r))  # [G, N, 4, 4]
    q = out["q"].reshape(B, T, G, R, N, 4)
    kv = [out[n].reshape(B, T, G, N, 4) for n in ("k", "v")]
    y = np.zeros_like(q)
    for i in range(T):
        powers = [np.linalg.matrix_power(u, i - j) for j in range(i + 1)]  # [G, N, 4, 4] each
        k_moved, v_moved = ([np.einsum("gnab,xgnb->xgna", pw, s[:, j]) for j, pw in enumerate(powers)]
                            for s in kv)
        s_ij = np.stack([np.einsum("xgrna,xgna->xgr", q[:, i], km) for km in k_moved], -1) / np.sqrt(4 * N)
        p_ij = np.exp(s_ij - s_ij.max(-1, keepdims=True))
        p_ij /= p_ij.sum(-1, keepdims=True)
        y[:, i] = np.einsum("xgrj,jxgna->xgrna", p_ij, np.stack(v_moved))
    wo = np.asarray(module.wo.kernel[...], np.float64)
    return out["out"], y.reshape(B, T, -1) @ wo


@SETTINGS
@given(st.integers(0, 2 ** 31 - 1))
def test_constant_links_give_relative_scores(flat, curved, seed):
    """With rope=False and U_i = U (generator kernel zeroed, the bias sets U), T_i T_jᵀ = U^{i−j}:
    the output is the numpy formula in i − j. With RoPE (not commuting with U) it is not."""
    bias = np.random.default_rng(seed).normal(size=G * N * 6) * 10  # ~1 rad after the module's down-scaling
    x, pos = inputs(seed % 89)
    got, want = constant_link_outputs(flat[1], flat[0], x, pos, bias)
    np.testing.assert_allclose(got, want, atol=2e-5)
    _, run = curved  # a fresh module of the same config reuses its compiled runner
    got_rope, want_rope = constant_link_outputs(run, build(generator_init=1.0), x, pos, bias)
    assert np.max(np.abs(got_rope - want_rope)) > 1e-2


def holonomy_np(a, b):
    """‖U_i U_{i−1} U_i⁻¹ U_{i−1}⁻¹ − I‖_F from explicit matrices, mean over blocks, 0 at i = 0."""
    u = matrix(a, b)
    prev = np.concatenate([np.broadcast_to(np.eye(4), u[:, :1].shape), u[:, :-1]], 1)
    swap = lambda m: np.swapaxes(m, -1, -2)  # noqa: E731
    loop = u @ prev @ swap(u) @ swap(prev)
    return np.mean(np.sqrt(np.sum((loop - np.eye(4)) ** 2, axis=(-2, -1))), axis=-1)


def test_sown_holonomy_is_the_commutator_of_consecutive_links(curved):
    """The closed form the module sows equals the explicit loop; it is > 0 for non-commuting links
    and ~0 (not a ~1e-3 rounding floor) for the commuting `abelian` ablation."""
    _, run = curved
    x, pos = inputs(3)
    out = run(x, pos)
    np.testing.assert_allclose(out["hol"], holonomy_np(out["a"], out["b"]), atol=1e-4)
    assert np.min(out["hol"][:, 1:]) > 1e-2
    out_flat = runner(build(generator_init=1.0, abelian=True))(x, pos)
    np.testing.assert_allclose(holonomy_np(out_flat["a"], out_flat["b"]), 0, atol=1e-5)  # they commute
    assert np.max(out_flat["hol"]) < 1e-5


def test_config_rejects_head_dim_not_multiple_of_4():
    with pytest.raises(MgrError):
        ENTRY.config_cls().validate(AttentionDims(d_model=12, n_heads=2, n_kv_heads=1, head_dim=6, max_seq_len=8))
    with pytest.raises(MgrError):
        ENTRY.config_cls(generator_init=-1.0).validate(DIMS)
