"""Properties of surreal attention: the lexicographic (surreal) limit of transseries scores,
order preservation past an explicit ω threshold, exact reduction to standard attention with one
order, and the folded fast path at the largest allowed ω."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

from attention.base import AttentionDims
from attention.standard import StandardAttention, StandardConfig
from attention.surreal import (MAX_LEADING_LOG, SurrealAttention, SurrealConfig, _features, _reference,
                               combine_orders, log_omega_of, order_scales)
from core.errors import MgrError
import numpy_reference as npr

SETTINGS = settings(max_examples=30, deadline=None)
M, DELTA = 3.0, 0.5  # scores on a half-integer grid in [-M, M]: exact ties, gaps >= DELTA
DIMS = AttentionDims(d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, max_seq_len=16)


def score_tuples(n_orders):
    """[S keys, n orders] per-order scores; column k is order k (the last column leads)."""
    return hnp.arrays(np.float32, st.tuples(st.integers(2, 7), st.just(n_orders)),
                      elements=st.integers(-6, 6).map(lambda i: i / 2))


def weights(s_SxN, log_omega):
    return np.asarray(jax.nn.softmax(combine_orders(jnp.asarray(s_SxN), jnp.float32(log_omega))))


def lex_key(row):
    return tuple(row[::-1])  # compare the leading order first, as surreal numbers do


def surreal_limit(s_SxN):
    """The ω → ∞ limit: softmax of the real part s^(0) over the keys whose infinite part
    (s^(n-1), …, s^(1)) is lexicographically maximal; zero elsewhere."""
    inf_parts = [lex_key(r[1:]) for r in s_SxN]
    best = max(inf_parts)
    eligible = np.array([p == best for p in inf_parts])
    z = np.where(eligible, np.exp(s_SxN[:, 0] - s_SxN[eligible, 0].max()), 0.0)
    return z / z.sum()


@SETTINGS
@given(st.integers(2, 3).flatmap(score_tuples))
def test_large_omega_gives_the_lexicographic_limit(s):
    n = s.shape[1]
    log_omega = MAX_LEADING_LOG / (n - 1)  # the largest ω the config allows for n orders
    np.testing.assert_allclose(weights(s, log_omega), surreal_limit(s), atol=1e-2)


@SETTINGS
@given(st.integers(2, 3).flatmap(score_tuples))
def test_distinct_leading_orders_give_one_hot_on_the_lexmax(s):
    n = s.shape[1]
    s[:, -1] = np.arange(len(s)) * DELTA - M  # distinct leading orders (0.5 apart)
    s = s[np.random.default_rng(len(s)).permutation(len(s))]
    w = weights(s, MAX_LEADING_LOG / (n - 1))
    winner = max(range(len(s)), key=lambda j: lex_key(s[j]))
    assert w[winner] > 1 - 1e-6 and np.argmax(w) == winner


@SETTINGS
@given(st.integers(2, 3).flatmap(score_tuples))
def test_ties_in_the_leading_order_are_decided_by_the_next(s):
    n = s.shape[1]
    s[:, -1] = 1.0  # every key ties in the leading order
    w = weights(s, MAX_LEADING_LOG / (n - 1))
    nxt = s[:, -2]
    if n == 3:  # order 1 is amplified by ω: the keys below its maximum vanish
        assert w[nxt < nxt.max()].sum() < 1e-6
    # and in every case a larger next order means a larger weight (compared as logits: weights
    # far below the winner's underflow to 0 in float32, and softmax is monotone)
    z = np.asarray(combine_orders(jnp.asarray(s), jnp.float32(MAX_LEADING_LOG / (n - 1))))
    for i in range(len(s)):
        for j in range(len(s)):
            if lex_key(s[i]) > lex_key(s[j]):
                assert z[i] > z[j] and w[i] >= w[j]


@SETTINGS
@given(st.integers(2, 4).flatmap(score_tuples), st.floats(0.0, 2.0))
def test_order_preservation_beyond_the_threshold(s, extra):
    """If key i's tuple is lexicographically above key j's, i outweighs j once ω > 1 + 2M/δ
    (then ω^m·δ exceeds 2M·Σ_{k<m} ω^k). Checked on the logits, whose order the softmax keeps."""
    log_omega = np.log(1 + 2 * M / DELTA + 0.5 + extra)
    z, w = np.asarray(combine_orders(jnp.asarray(s), jnp.float32(log_omega))), weights(s, log_omega)
    for i in range(len(s)):
        for j in range(len(s)):
            if lex_key(s[i]) > lex_key(s[j]):
                assert z[i] > z[j] and w[i] >= w[j], (s[i], s[j], z[i], z[j])
            elif lex_key(s[i]) == lex_key(s[j]):
                assert z[i] == z[j] and w[i] == w[j]


def test_small_omega_does_not_preserve_order():
    """Control: below the threshold a lexicographically smaller key can win, so ω matters."""
    s = np.array([[-3.0, 1.0], [3.0, 0.5]], np.float32)  # key 0 leads in order 1
    assert weights(s, np.log(2.0))[1] > 0.5
    assert weights(s, np.log(1 + 2 * M / DELTA + 0.5))[0] > 0.5


@SETTINGS
@given(st.floats(-1e4, 1e4), st.integers(1, 4))
def test_omega_is_bounded_and_orders_are_exact_powers(theta, n):
    lo = float(log_omega_of(jnp.float32(theta), 4.6))
    assert 0.0 <= lo <= 4.6
    scales = np.asarray(order_scales(jnp.float32(lo), n))
    assert scales[0] == 1.0 and np.all(np.isfinite(scales))
    np.testing.assert_allclose(scales, np.exp(lo) ** np.arange(n), rtol=1e-5)


def _inputs(seed, t=6):
    x = jax.random.normal(jax.random.key(seed), (2, t, DIMS.d_model))
    pos = jnp.broadcast_to(jnp.arange(3, 3 + t, dtype=jnp.int32), (2, t))
    return x, pos


@pytest.mark.parametrize("rope", [True, False])
def test_one_order_is_exactly_standard_attention(rope):
    std = StandardAttention(DIMS, StandardConfig(), rngs=nnx.Rngs(3))
    sur = SurrealAttention(DIMS, SurrealConfig(n_orders=1, rope=rope), rngs=nnx.Rngs(7))
    nnx.update(sur.qkv, nnx.state(std.qkv))
    nnx.update(sur.wo, nnx.state(std.wo))
    for seed in (0, 1):
        x, pos = _inputs(seed)
        with jax.default_matmul_precision("highest"):  # surreal's precision, on any backend
            y_std = std(x, pos)[0]
        if rope:
            np.testing.assert_allclose(sur(x, pos)[0], y_std, atol=1e-6, rtol=1e-6)
        else:  # without RoPE the two must differ: the comparison above is not vacuous
            assert float(jnp.max(jnp.abs(sur(x, pos)[0] - y_std))) > 1e-3


@pytest.mark.parametrize("n_orders", [2, 4])
def test_folded_fast_path_matches_per_order_reference_at_max_omega(n_orders):
    cfg = SurrealConfig(n_orders=n_orders, log_omega_max=MAX_LEADING_LOG / (n_orders - 1) - 0.01)
    m = SurrealAttention(DIMS, cfg, rngs=nnx.Rngs(0))
    m.theta[...] = jnp.float32(8.0)  # ω within 0.04% of its cap
    x, pos = _inputs(2)
    y = m(x, pos)[0]
    np.testing.assert_allclose(y, _reference(m, x, pos), atol=1e-4, rtol=1e-3)
    assert bool(jnp.all(jnp.isfinite(y)))


def test_config_validation():
    SurrealConfig().validate(DIMS)
    for bad in (SurrealConfig(n_orders=0), SurrealConfig(n_orders=3), SurrealConfig(n_orders=8),
                SurrealConfig(log_omega_init=5.0), SurrealConfig(n_orders=4, log_omega_max=4.6)):
        with pytest.raises(MgrError):
            bad.validate(DIMS)


# ---- the module against an independent form, and the page's bounds on its own scores ---------

POS = jnp.array([[3, 4, 5, 6, 7, 8], [9, 2, 14, 0, 7, 5]], jnp.int32)  # offset; a permutation


def numpy_surreal(m, x, pos):
    """From the raw parameters: order o of a head is its o-th slice of K/n channels, RMS-normalised
    on its own and rotated within itself; s = Σ_o ω^o q^(o)·k^(o)/√(K/n), log ω = max·sigmoid(θ)."""
    cfg, dims = m.cfg, m.dims
    n, dk = cfg.n_orders, dims.head_dim // cfg.n_orders

    def orders(w, n_heads):
        a = npr.rms(npr.heads(x, npr.kernel(w), n_heads).reshape(*x.shape[:2], n_heads, n, dk))
        if cfg.rope:
            a = np.stack([npr.rope(a[..., o, :], pos, dims.rope_base) for o in range(n)], axis=3)
        return a

    q = orders(m.qkv.wq, dims.n_heads)
    k = npr.expand_kv(orders(m.qkv.wk, dims.n_kv_heads), dims.n_heads)
    v = npr.expand_kv(npr.heads(x, npr.kernel(m.qkv.wv), dims.n_kv_heads), dims.n_heads)
    log_omega = cfg.log_omega_max / (1.0 + np.exp(-float(m.theta[...])))
    s = np.einsum("bihoc,bjhoc->bhij", q * np.exp(np.arange(n) * log_omega)[:, None], k) / np.sqrt(dk)
    y = np.einsum("bhij,bjhc->bihc", npr.softmax(s, npr.allowed(pos)[:, None]), v)
    return y.reshape(*y.shape[:2], -1) @ npr.kernel(m.wo), log_omega


@pytest.mark.parametrize("opts, theta", [({}, None), ({"n_orders": 4, "log_omega_max": 3.0}, 3.0)])
def test_module_equals_independent_reference_and_keeps_the_score_bounds(opts, theta):
    from mgr.config import ModelConfig
    from mgr.model import Decoder

    cfg = ModelConfig(vocab_size=32, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, max_seq_len=16,
                      attention="surreal", attention_options={"surreal": opts})
    m = Decoder(cfg, rngs=nnx.Rngs(0)).blocks[0].attn
    if theta is not None:
        m.theta[...] = jnp.float32(theta)  # ω near its cap: the orders are far apart
    x = jax.random.normal(jax.random.key(6), (2, 6, 32))
    y = nnx.jit(lambda m, x, p: m(x, p)[0])(m, x, POS)
    y_np, log_omega = numpy_surreal(m, x, POS)
    np.testing.assert_allclose(y, y_np, atol=3e-5, rtol=1e-4)
    # The page's bounds, on the features the module's forward pass computes (`_features` is its
    # first step): every order's score is within M = √(K/n), and ω lies in (1, e^{log_omega_max}).
    q, k, _, lo = _features(m, x, POS)
    dk = q.shape[-1]
    k = jnp.repeat(k, 2, axis=2)
    s_orders = jnp.einsum("bihoc,bjhoc->bhijo", q, k) / np.sqrt(dk)
    assert float(jnp.max(jnp.abs(s_orders))) <= np.sqrt(dk) * (1 + 1e-5)
    assert 0.0 < float(lo) < m.cfg.log_omega_max
    np.testing.assert_allclose(float(lo), log_omega, rtol=1e-6)
