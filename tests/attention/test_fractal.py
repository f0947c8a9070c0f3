"""Fractal attention as the decoder builds it: the registered module's kernel is the probability
that q and k take the same root-to-leaf path down its IFS tree (brute force over the m^d
addresses, in float64, independent of the module's code), its path features are a distribution,
the tree is real (a branch's child routing moves only the paths under it), a sharp router reads
IFS addresses, and the module is causal and continues from an O(1) cache across chunks. Then the
linear-attention core for any features. The IFS geometry itself is in test_fractal_ifs.py."""

import itertools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from cache_checks import check_chunks_continue_from_a_constant_cache
from hypothesis import given, settings, strategies as st

import attention
from attention.base import AttentionDims
from attention.fractal import FractalConfig, chunked_linear_attention, prefix_sum_attention
from core.errors import MgrError

B, T, EPS = 2, 8, 1e-6
DIMS = AttentionDims(d_model=16, n_heads=2, n_kv_heads=1, head_dim=8, max_seq_len=16)
CFG = FractalConfig(branches=3, levels=3, temperature=0.7, chunk=3)  # 27 paths; T = 8 is 3 chunks
POS = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))


def build(cfg, dims=DIMS, seed=0):
    """The registered module with a jitted call (with a cache) and jitted path features, the very
    method its __call__ applies to q and k."""
    module = attention.get("fractal").module_cls(dims, cfg, rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(module)
    call = jax.jit(lambda x, pos, cache: nnx.merge(graphdef, state)(x, pos, cache))
    paths = jax.jit(lambda st, x: nnx.merge(graphdef, st).path_probabilities(x))
    return module, call, paths


@pytest.fixture(scope="module")
def fractal():
    return build(CFG)


def brute_force_paths(module, x_NxK):
    """P_x(w) for every address w, float64: walk down the tree, routing at each level the point
    zoomed into the cylinder reached, (point − (1 − s)·c_a)/s after taking branch a, at scale s^l."""
    cfg = module.cfg
    m, d, s = cfg.branches, cfg.levels, cfg.contraction
    w_KxLxm = np.asarray(module.router.kernel[...], np.float64).reshape(-1, d, m)
    anchors = np.asarray(module.anchors[...], np.float64)
    out = []
    for address in itertools.product(range(m), repeat=d):
        point, p = np.asarray(x_NxK, np.float64), 1.0
        for level, a in enumerate(address):
            z = s ** level * point @ w_KxLxm[:, level] / cfg.temperature
            z = np.exp(z - z.max(-1, keepdims=True))
            p = p * z[:, a] / z.sum(-1)
            point = (point - (1 - s) * anchors[a]) / s
        out.append(p)
    return np.stack(out, -1)


def test_module_kernel_is_the_same_path_probability(fractal):
    """κ(q, k) = Σ_w P_q(w)·P_k(w) by brute force, and the module's output is exactly causal
    attention with that kernel (through its own q, k, v and wo), over three chunks."""
    module, call, paths = fractal
    x = jax.random.normal(jax.random.key(1), (B, T, DIMS.d_model))
    q, k, v = (np.asarray(a, np.float64) for a in module.project(x, POS))
    pq = brute_force_paths(module, q.reshape(-1, q.shape[-1])).reshape(*q.shape[:-1], -1)
    pk = brute_force_paths(module, k.reshape(-1, k.shape[-1])).reshape(*k.shape[:-1], -1)
    np.testing.assert_allclose(paths(nnx.state(module), jnp.asarray(q, jnp.float32)), pq, atol=1e-6)
    kappa = np.einsum("bthf,bsf->bhts", pq, pk[:, :, 0])  # one kv head
    kappa = np.where(np.tril(np.ones((T, T), bool)), kappa, 0.0)
    y = np.einsum("bhts,bsk->bthk", kappa / (kappa.sum(-1, keepdims=True) + EPS), v[:, :, 0])
    want = module.wo(jnp.asarray(y.reshape(B, T, -1), jnp.float32))
    np.testing.assert_allclose(call(x, POS, module.init_cache(B))[0], want, atol=2e-5, rtol=1e-4)


@settings(max_examples=15, deadline=None)
@given(hnp.arrays(np.float32, (6, DIMS.head_dim), elements=st.floats(-4, 4, width=32)), st.floats(0.1, 100.0))
def test_path_probabilities_are_a_distribution(fractal, x, scale):
    module, _, paths = fractal
    phi = np.asarray(paths(nnx.state(module), jnp.asarray(x * scale)), np.float64)
    assert phi.shape == (6, CFG.features) and phi.min() >= 0.0
    np.testing.assert_allclose(phi.sum(-1), 1.0, atol=1e-5)


def test_the_tree_is_real(fractal):
    """Moving anchor c_a (the IFS map of branch a, which places the children of a node reached
    through a) changes the paths under a and leaves every path whose first d−1 symbols avoid a,
    and the first level's distribution, unchanged; and a level's routing depends on the branch
    taken above it (an independent per-level router would make φ a product)."""
    module, _, paths = fractal
    m, d = CFG.branches, CFG.levels
    x = jax.random.normal(jax.random.key(2), (16, DIMS.head_dim))
    phi = np.asarray(paths(nnx.state(module), x)).reshape(16, *[m] * d)
    a, moved = 1, nnx.clone(module)
    moved.anchors.value = moved.anchors.value.at[a].add(1.5)
    phi2 = np.asarray(paths(nnx.state(moved), x)).reshape(16, *[m] * d)
    avoid = np.array([a not in w[:-1] for w in itertools.product(range(m), repeat=d)]).reshape([m] * d)
    np.testing.assert_allclose(phi2[:, avoid], phi[:, avoid], atol=1e-6)
    np.testing.assert_allclose(phi2.sum(axis=(2, 3)), phi.sum(axis=(2, 3)), atol=1e-6)
    assert np.abs(phi2[:, a] - phi[:, a]).max() > 1e-2
    level2_given_1 = phi.sum(axis=3) / phi.sum(axis=(2, 3))[..., None]  # P(w_2 | w_1)
    assert np.abs(level2_given_1[:, 0] - level2_given_1[:, 2]).max() > 1e-2


def test_a_sharp_router_reads_ifs_addresses():
    """With simplex anchors, s < 1/2 and each level's router reading the anchor coordinates, the
    descent decodes the address: a point F_w(z) of the cylinder of w (z in the hull) takes path w
    with probability ~1. Routing x itself at every level (no zoom) would read w_1 d times."""
    m, d, s = 4, 3, 0.3
    cfg = FractalConfig(branches=m, levels=d, contraction=s, temperature=1e-3)
    module, _, paths = build(cfg)
    simplex = jnp.eye(m, DIMS.head_dim)  # anchors e_0..e_{m-1}, in the first m of the K coordinates
    module.anchors.value = simplex
    module.router.kernel.value = jnp.tile(simplex.T, (1, d))  # every level's logits: those coordinates
    rng = np.random.default_rng(0)
    addresses = rng.integers(0, m, size=(32, d))
    z = rng.dirichlet(np.ones(m), size=32)
    anchors = np.eye(m, DIMS.head_dim)
    x = np.stack([s ** d * z[i] @ anchors + sum((1 - s) * s ** l * anchors[w] for l, w in enumerate(addresses[i]))
                  for i in range(32)])  # F_w(z) in closed form
    phi = np.asarray(paths(nnx.state(module), jnp.asarray(x, jnp.float32)))
    index = addresses @ (m ** np.arange(d - 1, -1, -1))
    assert phi[np.arange(32), index].min() > 0.99


def test_causal_and_continues_from_a_constant_cache(fractal):
    """Over chunk boundaries: 4 tokens, then 4 more from the cache, equal the full forward; the
    cache has the same size after 4 and 8 tokens; later inputs never reach earlier outputs; and
    with rope off (the default) shifting every position changes nothing."""
    module, call, _ = fractal
    x = jax.random.normal(jax.random.key(3), (B, T, DIMS.d_model))
    full = check_chunks_continue_from_a_constant_cache(module, call, x, POS)
    np.testing.assert_allclose(call(x, POS + 13, module.init_cache(B))[0], full, atol=1e-6)


def test_config_rejects_impossible_shapes():
    dims = AttentionDims(d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, max_seq_len=16)
    FractalConfig().validate(dims)
    for bad in (dict(branches=1), dict(levels=0), dict(branches=8, levels=5), dict(temperature=0.0),
                dict(chunk=0), dict(contraction=0.0), dict(contraction=1.0)):
        with pytest.raises(MgrError):
            FractalConfig(**bad).validate(dims)


# --- the linear-attention core, for any path features -----------------------------------------

F_, N_ = 9, 7  # features, tokens


def features(lq, lk):
    """Distributions over F_ paths for a [N_, H=1] query stream and a [N_, G=1] key stream."""
    phi_q, phi_k = jax.nn.softmax(jnp.asarray(lq), -1), jax.nn.softmax(jnp.asarray(lk), -1)
    return phi_q.reshape(1, N_, 1, 1, F_), phi_k.reshape(1, N_, 1, F_)


def zero_state(k):
    return jnp.zeros((1, 1, F_, k)), jnp.zeros((1, 1, F_))


_chunked = jax.jit(chunked_linear_attention, static_argnames=("eps", "chunk"))


def arr(shape, lo=-4.0, hi=4.0):
    return hnp.arrays(np.float32, shape, elements=st.floats(lo, hi, width=32))


@pytest.mark.parametrize("chunk", [2, 9])
@settings(max_examples=10, deadline=None)
@given(arr((N_, F_)), arr((N_, F_)))
def test_weights_are_positive_causal_and_rows_sum_to_one(chunk, lq, lk):
    """Feeding the identity as values (v_j = e_j) makes the output row i the weight row w_i·."""
    phi_q, phi_k = features(lq, lk)
    w, _ = _chunked(phi_q, phi_k, jnp.eye(N_).reshape(1, N_, 1, N_), zero_state(N_), eps=EPS, chunk=chunk)
    w = np.asarray(w[0, :, 0, 0])
    kappa = np.asarray(phi_q[0, :, 0, 0] @ phi_k[0, :, 0].T)
    expect = np.tril(kappa) / (np.sum(np.tril(kappa), axis=1, keepdims=True) + EPS)
    np.testing.assert_allclose(w, expect, rtol=1e-4, atol=1e-6)
    assert np.all(w[np.tril_indices(N_)] > 0)  # every visible key gets positive weight
    np.testing.assert_array_equal(np.triu(w, 1), 0.0)  # and no future key gets any
    # Rows sum to Σκ/(Σκ + ε): one, up to the ε bias, which is at most ε/Σκ.
    mass = np.sum(np.tril(kappa), axis=1)
    assert np.all(np.abs(w.sum(axis=1) - 1.0) <= EPS / mass + 1e-5)


@pytest.mark.parametrize("chunk,split", [(2, 3), (4, 5)])
@settings(max_examples=8, deadline=None)
@given(arr((N_, F_)), arr((N_, F_)), arr((N_, 3)))
def test_chunked_with_state_equals_prefix_sums(chunk, split, lq, lk, v):
    """A prefill split whose state seeds the rest (the decode cache), chunked, gives the
    prefix-sum form y_i = φ(q_i)·S_i / (φ(q_i)·z_i + ε), final state included."""
    phi_q, phi_k = features(lq, lk)
    v = jnp.asarray(v).reshape(1, N_, 1, 3)
    want, want_state = prefix_sum_attention(phi_q, phi_k, v, zero_state(3), EPS)
    y1, mid = _chunked(phi_q[:, :split], phi_k[:, :split], v[:, :split], zero_state(3), eps=EPS, chunk=chunk)
    y2, end = _chunked(phi_q[:, split:], phi_k[:, split:], v[:, split:], mid, eps=EPS, chunk=chunk)
    np.testing.assert_allclose(jnp.concatenate([y1, y2], axis=1), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(end[0], want_state[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(end[1], want_state[1], rtol=1e-5, atol=1e-6)
