"""Properties of ultrametric attention: the p-adic metric, prefix buckets, telescoping weights,
exact bucket sums, fast == dense (values and gradients), and no T x T intermediate."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

from attention.base import AttentionDims
from attention.segments import bucket_prefix_sums
from attention.ultrametric import (UltrametricAttention, UltrametricConfig, _reference,
                                   dense_lcp_weights, depth_weights, digit_codes, lcp,
                                   lcp_attention)

SETTINGS = settings(max_examples=20, deadline=None)


def p_adic_distance(a, b, p):
    """d(a, b) = p^-LCP for distinct codes, 0 for equal ones."""
    n = lcp(a, b)
    return jnp.where(n == a.shape[-1], 0.0, jnp.power(float(p), -n.astype(jnp.float32)))


@SETTINGS
@given(st.integers(2, 5), st.data())
def test_p_adic_distance_is_an_ultrametric(p, data):
    codes = data.draw(hnp.arrays(np.int32, (3, 16, 5), elements=st.integers(0, p - 1)))
    x, y, z = map(jnp.asarray, codes)
    # Force some long shared prefixes so the inequality is tested where it is tight.
    y = y.at[:8, :3].set(x[:8, :3])
    z = z.at[4:12, :2].set(y[4:12, :2])
    dxz, dxy, dyz = p_adic_distance(x, z, p), p_adic_distance(x, y, p), p_adic_distance(y, z, p)
    assert bool(jnp.all(dxz <= jnp.maximum(dxy, dyz)))  # strong triangle inequality
    np.testing.assert_array_equal(dxy, p_adic_distance(y, x, p))
    assert bool(jnp.all(p_adic_distance(x, x, p) == 0))


@SETTINGS
@given(st.integers(2, 4), hnp.arrays(np.float32, (6, 4, 4), elements=st.floats(-3, 3, width=32)))
def test_prefix_buckets_agree_exactly_with_lcp(p, logits):
    logits = jnp.asarray(logits[..., :p])
    buckets, gates = digit_codes(logits)  # [6, 5] each
    digits = jnp.argmax(logits, -1)
    depth = jnp.arange(5)
    same = buckets[:, None] == buckets[None]  # [6, 6, L+1]
    np.testing.assert_array_equal(same, depth <= lcp(digits[:, None], digits[None])[..., None])
    np.testing.assert_array_equal(gates, 1.0)  # straight-through gates are exactly 1 in value
    assert int(jnp.max(buckets[:, -1])) < p ** 4


@SETTINGS
@given(hnp.arrays(np.float32, (2, 5), elements=st.floats(-2, 2, width=32)), st.data())
def test_telescoped_weights_equal_w_of_lcp(log_delta, data):
    qd = jnp.asarray(data.draw(hnp.arrays(np.int32, (1, 6, 2, 4), elements=st.integers(0, 1))))
    kd = jnp.asarray(data.draw(hnp.arrays(np.int32, (1, 7, 2, 4), elements=st.integers(0, 1))))
    onehot = lambda d: jnp.where(jax.nn.one_hot(d, 2) > 0, 1.0, -1.0)
    (qb, qg), (kb, kg) = digit_codes(onehot(qd)), digit_codes(onehot(kd))
    w = dense_lcp_weights(qb, qg, kb, kg, jnp.exp(jnp.asarray(log_delta)))  # [1, 2, 6, 7]
    n = lcp(qd[:, :, None], kd[:, None])  # [1, 6, 7, 2]
    heads = jnp.arange(2)[None, :, None, None]
    w_table = depth_weights(jnp.asarray(log_delta))
    assert bool(jnp.all(jnp.diff(w_table, axis=-1) > 0))  # closer codes weigh more
    expect = w_table[heads, jnp.moveaxis(n, -1, 1)]  # w_h[LCP]
    np.testing.assert_allclose(w, expect, rtol=1e-5)


S_KEYS, T_QUERIES = 10, 6


@st.composite
def bucket_problem(draw):
    # Fixed shapes (one compile); the ranks are any slots, as in a cache.
    ranks = draw(st.lists(st.integers(0, S_KEYS - 1), min_size=T_QUERIES, max_size=T_QUERIES))
    kb = draw(hnp.arrays(np.int32, (2, S_KEYS), elements=st.integers(0, 3)))
    qb = draw(hnp.arrays(np.int32, (2, T_QUERIES), elements=st.integers(0, 3)))
    vals = draw(hnp.arrays(np.float32, (2, S_KEYS, 3), elements=st.floats(-5, 5, width=32)))
    return kb, vals, qb, np.asarray(ranks, np.int32)


SUMS = jax.jit(bucket_prefix_sums)


@SETTINGS
@given(bucket_problem())
def test_bucket_prefix_sums_equal_brute_force(problem):
    kb, vals, qb, ranks = problem
    expect = np.zeros(qb.shape + (3,), np.float32)
    for r in range(2):
        for i, rank in enumerate(ranks):
            keep = (kb[r] == qb[r, i]) & (np.arange(S_KEYS) <= rank)
            expect[r, i] = vals[r][keep].sum(0)
    got = SUMS(jnp.asarray(kb), jnp.asarray(vals), jnp.asarray(qb), jnp.asarray(ranks))
    np.testing.assert_allclose(got, expect, atol=1e-5, rtol=1e-5)


def codes_and_values(seed, t=7, h=2, depth=4, p=3, k=3):
    ks = jax.random.split(jax.random.key(seed), 4)
    q_logits = jax.random.normal(ks[0], (1, t, h, depth, p))
    k_logits = jax.random.normal(ks[1], (1, t, h, depth, p)) * 0.3
    k_logits = k_logits.at[:, ::2].set(q_logits[:, ::2])  # shared prefixes, so deep buckets fill
    v = jax.random.normal(ks[2], (1, t, h, k))
    log_delta = jax.random.normal(ks[3], (h, depth + 1))
    return q_logits, k_logits, v, log_delta


def ultra_fast(q_logits, k_logits, v, log_delta):
    (qb, qg), (kb, kg) = digit_codes(q_logits), digit_codes(k_logits)
    rank = jnp.arange(v.shape[1])[None]
    return lcp_attention(qb, qg, kb, kg, v, rank, jnp.exp(log_delta))


def ultra_dense(q_logits, k_logits, v, log_delta):
    (qb, qg), (kb, kg) = digit_codes(q_logits), digit_codes(k_logits)
    w = dense_lcp_weights(qb, qg, kb, kg, jnp.exp(log_delta))
    w = jnp.where(jnp.tril(jnp.ones(w.shape[-2:], bool)), w, 0.0)
    return jnp.einsum("bhts,bshk->bthk", w, v) / jnp.sum(w, -1)[..., None].swapaxes(1, 2)


def _loss(f):
    return lambda q, k, v, w, probe: jnp.sum(f(q, k, v, w) * probe)


GRADS = {f: jax.jit(jax.value_and_grad(_loss(f), argnums=(0, 1, 2, 3))) for f in (ultra_fast, ultra_dense)}


@SETTINGS
@given(st.integers(0, 10 ** 6))
def test_fast_equals_dense_values_and_gradients(seed):
    args = codes_and_values(seed)
    probe = jax.random.normal(jax.random.key(seed + 1), (1, 7, 2, 3))
    (l_fast, g_fast), (l_dense, g_dense) = (GRADS[f](*args, probe) for f in (ultra_fast, ultra_dense))
    np.testing.assert_allclose(l_fast, l_dense, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_fast, g_dense):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
    assert float(jnp.max(jnp.abs(g_fast[0]))) > 0 and float(jnp.max(jnp.abs(g_fast[1]))) > 0  # codes learn


FAST = jax.jit(ultra_fast)


@SETTINGS
@given(st.integers(0, 10 ** 6), st.integers(0, 5))
def test_future_keys_never_leak(seed, i):
    q_logits, k_logits, v, log_delta = codes_and_values(seed)
    y = FAST(q_logits, k_logits, v, log_delta)
    noise = jax.random.normal(jax.random.key(seed + 2), k_logits[:, i + 1:].shape) * 3
    y2 = FAST(q_logits, k_logits.at[:, i + 1:].add(noise), v.at[:, i + 1:].add(1.0), log_delta)
    np.testing.assert_allclose(y2[:, :i + 1], y[:, :i + 1], atol=1e-6)


def _avals(jaxpr):
    for eqn in jaxpr.eqns:
        yield from (v.aval for v in eqn.outvars)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    yield from _avals(inner if hasattr(inner, "eqns") else inner.jaxpr)


def test_no_t_by_t_intermediate_and_cache():
    """Sub-quadratic by construction: no value in the forward or backward pass has two axes of
    length >= T (standard attention's scores would); and, for a non-default config, fast ==
    reference and prefill + decode == the full forward."""
    t = 48
    dims = AttentionDims(d_model=16, n_heads=2, n_kv_heads=1, head_dim=8, max_seq_len=t)
    m = UltrametricAttention(dims, UltrametricConfig(p=3, depth=4), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (1, t, 16))
    pos = jnp.arange(t, dtype=jnp.int32)[None]
    graph, state = nnx.split(m)
    fwd_bwd = jax.value_and_grad(lambda st, x: jnp.sum(nnx.merge(graph, st)(x, pos)[0]), argnums=(0, 1))
    shapes = [getattr(a, "shape", ()) for a in _avals(jax.make_jaxpr(fwd_bwd)(state, x).jaxpr)]
    assert any(t in s for s in shapes)  # the walk does see sequence-length values
    assert all(sum(d >= t for d in s) <= 1 for s in shapes), [s for s in shapes if sum(d >= t for d in s) > 1]
    x, pos = x[:, :9], pos[:, :9]
    full = m(x, pos)[0]
    np.testing.assert_allclose(full, _reference(m, x, pos), atol=2e-5, rtol=2e-4)
    step = nnx.jit(lambda m, x, p, c: m(x, p, c))
    y0, cache = step(m, x[:, :5], pos[:, :5], m.init_cache(1))
    y1, cache = step(m, x[:, 5:], pos[:, 5:], cache)
    np.testing.assert_allclose(jnp.concatenate([y0, y1], 1), full, atol=1e-5, rtol=1e-4)


def test_config_validation():
    from core.errors import MgrError

    dims = AttentionDims(d_model=16, n_heads=2, n_kv_heads=1, head_dim=8, max_seq_len=64)
    for bad in (dict(p=1), dict(depth=0), dict(alpha=1.0), dict(p=2, depth=30)):
        with pytest.raises(MgrError):
            UltrametricConfig(**bad).validate(dims)


def test_decoder_module_equals_independent_reference():
    """The module as the decoder builds it against numpy from its raw parameters: digits are the
    argmax of each depth's p logits, a key's weight is w_h[LCP] = Σ_{ℓ<=LCP} e^{log_delta_hℓ},
    y_i = Σ_{j<=i} w v_j / Σ_{j<=i} w, query head h reading kv head h // R. Repeated tokens share
    codes, so deep prefixes are exercised as well as shallow ones."""
    import numpy_reference as npr
    from mgr.config import ModelConfig
    from mgr.model import Decoder

    b, t, h, g, L, p = 2, 9, 4, 2, 3, 3
    cfg = ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=h, n_kv_heads=g, max_seq_len=16,
                      attention="ultrametric", attention_options={"ultrametric": {"p": p, "depth": L}})
    m = Decoder(cfg, rngs=nnx.Rngs(0)).blocks[0].attn
    # kv head j codes like query head 2j (the first of its group), so tokens meet themselves deep.
    wq = m.wq_code.kernel[...].reshape(16, h, L * p)
    m.wk_code.kernel[...] = wq[:, ::2].reshape(16, g * L * p)
    m.log_delta[...] = jax.random.normal(jax.random.key(3), m.log_delta.shape)
    x = jax.random.normal(jax.random.key(2), (b, t, 16))
    x = x.at[:, 5:].set(x[:, 1:5])  # tokens 5.. repeat tokens 1..
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    qd = np.argmax(npr.heads(x, npr.kernel(m.wq_code), h).reshape(b, t, h, L, p), -1)
    kd = np.argmax(npr.heads(x, npr.kernel(m.wk_code), g).reshape(b, t, g, L, p), -1)
    same = qd[:, :, None] == npr.expand_kv(kd, h)[:, None]  # [B, T, S, H, L]
    lcp_ = np.sum(np.cumprod(same, axis=-1), axis=-1)
    w = np.cumsum(np.exp(np.asarray(m.log_delta[...], np.float64)), -1)[np.arange(h), lcp_]
    w = np.where(npr.allowed(pos)[..., None], w, 0.0)  # [B, T, S, H]
    v = npr.expand_kv(npr.heads(x, npr.kernel(m.wv), g), h)
    y = np.einsum("bijh,bjhc->bihc", w, v) / w.sum(2)[..., None]
    assert lcp_.max() == L and (lcp_ < L).any()  # both deep and shallow prefixes occur
    y_module = nnx.jit(lambda m, x, p: m(x, p)[0])(m, x, pos)
    np.testing.assert_allclose(y_module, y.reshape(b, t, -1) @ npr.kernel(m.wo), atol=2e-5, rtol=1e-4)
