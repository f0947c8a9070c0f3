"""2-simplicial attention, checked on the registered module (`attention.get("simplicial")`).

Windows bind (T = 12 > w1 = 3, w2 = 5) and the query block is shrunk to 5 so that the scanned,
checkpointed kernel the decoder runs at long T runs here too (blocks 5 + 5 + a ragged 2). The
expectations are written in numpy from the module's own streams (q, k, v, k', v'): the output is
the trilinear brute force; k' = v' = 1 gives windowed pairwise attention; the output at i depends
on x_j exactly for j in (i - max(w1, w2), i] in the simplicial heads; shifting positions changes
nothing; a target that depends jointly on a pair of earlier tokens is representable. The pure
kernel is tested in test_simplicial_kernel.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

import attention
from attention.base import AttentionDims
from core.errors import MgrError

ENTRY = attention.get("simplicial")
DIMS = AttentionDims(d_model=16, n_heads=4, n_kv_heads=2, head_dim=8, max_seq_len=16)
B, T, W1, W2, BLOCK, HP, R = 2, 12, 3, 5, 5, 1, 2  # HP pairwise heads; heads 1..3 are simplicial


def build(dims=DIMS, **cfg):
    module = ENTRY.module_cls(dims, ENTRY.config_cls(**cfg), rngs=nnx.Rngs(0))
    module.query_block = BLOCK
    return module


def inputs(seed, start=0, b=B):
    x = jax.random.normal(jax.random.key(seed), (b, T, DIMS.d_model), jnp.float32)
    return x, jnp.broadcast_to(jnp.arange(start, start + T, dtype=jnp.int32), (b, T))


@pytest.fixture(scope="module")
def mixed():
    """One pairwise head, then three simplicial heads (the split cuts kv group 0 in two).
    Returns the module and `run(x, pos, module)`: its streams and output, one compile."""
    module = build(n_simplicial_heads=4 - HP, window_1=W1, window_2=W2)
    gd, _ = nnx.split(module)
    run = jax.jit(lambda st, x, pos: (nnx.merge(gd, st).streams(x, pos), nnx.merge(gd, st)(x, pos)[0]))

    def call(x, pos, mod=module):
        streams, out = run(nnx.state(mod), x, pos)
        return [np.asarray(s, np.float64) for s in streams], np.asarray(out, np.float64)
    return module, call


def softmax(s):
    e = np.exp(s - np.max(s))
    return e / e.sum()


def pairwise_np(q_i, k, v, ok):
    """One query's softmax attention over the keys where `ok`."""
    p = softmax(k[ok] @ q_i / np.sqrt(q_i.size))
    return p @ v[ok]


def brute_force(streams, pos, w1, w2):
    """Heads `[B, T, H, K]`: head h < HP pairwise over the causal prefix; head h >= HP scores every
    pair (j, k) with j in (i - w1, i], k in (i - w2, i] by sum_c q_ic k_jc k'_kc / sqrt(K) and
    returns sum_jk p_ijk v_j * v'_k. Also returns every simplicial score."""
    q, k, v, k2, v2 = streams
    y, scores = np.zeros_like(q), []
    for b in range(q.shape[0]):
        for i in range(q.shape[1]):
            here = pos[b, i]
            for h in range(q.shape[2]):
                g = h // R
                if h < HP:
                    y[b, i, h] = pairwise_np(q[b, i, h], k[b, :, g], v[b, :, g], pos[b] <= here)
                    continue
                g2 = g - HP // R  # second-stream groups start at the first simplicial head's
                js = np.flatnonzero((pos[b] <= here) & (pos[b] > here - w1))
                ks = np.flatnonzero((pos[b] <= here) & (pos[b] > here - w2))
                s = np.array([[np.sum(q[b, i, h] * k[b, j, g] * k2[b, c, g2]) for c in ks] for j in js])
                s /= np.sqrt(q.shape[-1])
                p = softmax(s.ravel()).reshape(s.shape)
                y[b, i, h] = sum(p[a, c] * v[b, j, g] * v2[b, kk, g2] for a, j in enumerate(js)
                                 for c, kk in enumerate(ks))
                scores.append(s.ravel())
    return y, np.concatenate(scores)


def through_wo(module, y_BxTxHxK):
    return y_BxTxHxK.reshape(*y_BxTxHxK.shape[:2], -1) @ np.asarray(module.wo.kernel[...], np.float64)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), start=st.integers(0, 40))
def test_module_is_the_trilinear_brute_force(mixed, seed, start):
    """The module's output from its own streams, in numpy; its scores have unit scale at init."""
    module, run = mixed
    x, pos = inputs(seed % 1000, start)
    streams, out = run(x, pos)
    y, scores = brute_force(streams, np.asarray(pos), W1, W2)
    np.testing.assert_allclose(out, through_wo(module, y), atol=2e-5, rtol=2e-4)
    assert 0.5 < np.std(scores) < 2.0  # RMS-normed q, k, k' and 1/sqrt(K): unit-variance scores


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), shift=st.integers(1, 4096))
def test_shifting_all_positions_leaves_the_module_unchanged(mixed, seed, shift):
    """RoPE enters the trilinear score as sum_pairs k'_p (q_p . R_{j-i} k_p) (k' shared by each
    rotation pair) and windows are position differences: positions are relative."""
    _, run = mixed
    x, pos = inputs(seed % 1000)
    out = run(x, pos)[1]
    np.testing.assert_allclose(run(x, pos + shift)[1], out, atol=1e-4 * max(1.0, np.max(np.abs(out))))


def test_constant_second_stream_reduces_to_windowed_pairwise_attention(mixed):
    """k' = v' = 1 (input channel 0 held at 1 and read alone by the second-stream projections):
    each simplicial head is pairwise softmax attention over (i - w1, i], whatever w2 is."""
    _, run = mixed
    module = build(n_simplicial_heads=4 - HP, window_1=W1, window_2=W2)  # same config: same compile
    x, pos = inputs(5)
    x = x.at[..., 0].set(1.0)
    for dense in (module.wk2, module.wv2):
        dense.kernel[...] = jnp.zeros_like(dense.kernel[...]).at[0].set(1.0)
    (q, k, v, k2, v2), out = run(x, pos, module)
    np.testing.assert_allclose(k2, 1.0, atol=1e-5)
    np.testing.assert_allclose(v2, 1.0, atol=0)
    pos = np.asarray(pos)
    y = np.zeros_like(q)
    for b, i, h in np.ndindex(*q.shape[:3]):
        window = T if h < HP else W1
        ok = (pos[b] <= pos[b, i]) & (pos[b] > pos[b, i] - window)
        y[b, i, h] = pairwise_np(q[b, i, h], k[b, :, h // R], v[b, :, h // R], ok)
    np.testing.assert_allclose(out, through_wo(module, y), atol=2e-5, rtol=2e-4)


def test_fast_path_equals_dense_reference_values_and_grads(mixed):
    """The scanned windowed path (blocks of 5, windows binding) against the registry's dense
    O(T^3) reference, on values and on gradients w.r.t. every parameter and the input."""
    module, _ = mixed
    gd, state = nnx.split(module)
    x, pos = inputs(7)
    w = jax.random.normal(jax.random.key(8), x.shape)

    def grads(fn):
        loss = lambda st, x: jnp.sum(fn(nnx.merge(gd, st), x, pos) * w)  # noqa: E731
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(state, x)

    (v_fast, g_fast), (v_ref, g_ref) = grads(lambda m, x, p: m(x, p)[0]), grads(ENTRY.reference)
    np.testing.assert_allclose(v_fast, v_ref, rtol=1e-5)
    flat_fast, flat_ref = jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)
    assert len(flat_fast) == len(flat_ref) == 7  # wq, wk, wv, wk2, wv2, wo and x
    for a, b in zip(flat_fast, flat_ref):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-3)
        assert float(jnp.max(jnp.abs(a))) > 0


def test_window_bounds_of_the_simplicial_heads(mixed):
    """d y_i / d x_j is nonzero exactly for j in (i - max(w1, w2), i] once the pairwise head's
    output rows are zeroed; with them the output reaches the whole causal prefix."""
    module, _ = mixed
    gd, state = nnx.split(module)
    x, pos = inputs(9, b=1)

    @jax.jit
    def reach(st):
        jac = jax.jacrev(lambda x: nnx.merge(gd, st)(x, pos)[0][0])(x)[:, :, 0]  # [T, D, T, D]
        return jnp.sqrt(jnp.sum(jac ** 2, axis=(1, 3)))  # [T (query), T (input)]

    simplicial_only = build(n_simplicial_heads=4 - HP, window_1=W1, window_2=W2)  # same compile
    simplicial_only.wo.kernel[...] = simplicial_only.wo.kernel[...].at[:HP * DIMS.head_dim].set(0.0)
    i, j = np.indices((T, T))
    inside = (j <= i) & (j > i - max(W1, W2))
    near = np.asarray(reach(nnx.state(simplicial_only)))
    assert np.all(near[~inside] == 0) and np.all(near[inside] > 1e-6)
    assert np.all(np.asarray(reach(state))[j <= i] > 1e-6)


M = 8  # alphabet of the pair task: token u is followed by u + 1 (mod M)


def pair_detector():
    """One simplicial head with hand-set weights whose score is high exactly on pairs (j, k) with
    x_k = x_j + 1 (mod M): q is constant, k one-hot in x_j and k' one-hot in x_k - 1 on slowly
    rotating RoPE pairs (8..15 of 16); v, v' are the same one-hots, so v_j * v'_k is nonzero
    exactly on such pairs, and the output reads their total attention weight."""
    dims = AttentionDims(d_model=M, n_heads=1, n_kv_heads=1, head_dim=32, max_seq_len=T)
    module = build(dims, n_simplicial_heads=1, window_1=W1, window_2=W2)
    tok = np.arange(M)
    weights = {module.qkv.wq: np.zeros((M, 32)), module.qkv.wk: np.zeros((M, 32)),
               module.wk2: np.zeros((M, 16)), module.qkv.wv: np.zeros((M, 32)),
               module.wv2: np.zeros((M, 32)), module.wo: np.zeros((32, M))}
    weights[module.qkv.wq][:, 8:16] = 1.0
    weights[module.qkv.wk][tok, 8 + tok] = 1.0
    weights[module.wk2][tok, 8 + (tok - 1) % M] = 1.0
    weights[module.qkv.wv][tok, tok] = 1.0
    weights[module.wv2][tok, (tok - 1) % M] = 1.0
    weights[module.wo][:M, 0] = 1.0
    for dense, w in weights.items():
        dense.kernel[...] = jnp.asarray(w, jnp.float32)
    return module


def test_a_target_on_a_pair_of_earlier_tokens_is_representable():
    """[exists j in (i - w1, i], k in (i - w2, i] with x_k = x_j + 1 mod M] depends on two tokens
    jointly (no sum of single-token terms gives it); one simplicial head computes it."""
    tokens = np.random.default_rng(0).integers(0, M, size=(16, T))
    pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), tokens.shape)
    out = nnx.jit(lambda m, x: m(x, pos)[0][..., 0])(pair_detector(), jnp.asarray(np.eye(M)[tokens], jnp.float32))
    i = np.arange(T)
    in_w1 = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - W1)  # [query, key]
    in_w2 = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - W2)
    succ = (tokens[:, None, :] == (tokens[:, :, None] + 1) % M)  # [b, j, k]: x_k = x_j + 1
    target = np.einsum("qj,bjk,qk->bq", in_w1, succ, in_w2) > 0
    assert 0.2 < target.mean() < 0.8  # both answers occur
    np.testing.assert_allclose(np.asarray(out), target.astype(float), atol=0.05)


@pytest.mark.parametrize("n_simp", [1, 3, 4])
def test_module_head_splits_match_reference_and_cache(n_simp):
    """Head splits that cut a kv group in two (R = 2) still match the reference and decoding."""
    m = ENTRY.module_cls(DIMS, ENTRY.config_cls(n_simplicial_heads=n_simp, window_1=3, window_2=2),
                         rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 6, 16))
    pos = jnp.broadcast_to(jnp.arange(6, dtype=jnp.int32), (2, 6))
    call = nnx.jit(lambda mod, x, p, c: mod(x, p, c))
    y, _ = call(m, x, pos, None)
    np.testing.assert_allclose(y, nnx.jit(ENTRY.reference)(m, x, pos), atol=2e-5, rtol=2e-4)
    cache = m.init_cache(2)
    y0, cache = call(m, x[:, :2], pos[:, :2], cache)
    outs = [y0]
    for i in range(2, 6):
        yi, cache = call(m, x[:, i:i + 1], pos[:, i:i + 1], cache)
        outs.append(yi)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), y, atol=1e-5, rtol=1e-4)


def test_config_rejects_impossible_shapes():
    for bad in (dict(n_simplicial_heads=0), dict(n_simplicial_heads=5), dict(window_1=0),
                dict(window_2=-1)):
        with pytest.raises(MgrError):
            ENTRY.config_cls(**bad).validate(DIMS)
    with pytest.raises(MgrError):
        ENTRY.config_cls().validate(AttentionDims(d_model=16, n_heads=4, n_kv_heads=2, head_dim=5, max_seq_len=8))
    ENTRY.config_cls().validate(DIMS)
