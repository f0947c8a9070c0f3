"""Properties of braid attention: the (labelled) Alexander quandle axioms, the Yang–Baxter
equation and braid relations of its crossings, invertibility, and the fast chunked scan against
strand-by-strand crossings (the forward pass is the braid-group action)."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from flax import nnx

from attention.braid import BraidAttention, BraidConfig, braid_scan, crossing_log_t
from attention.base import AttentionDims, apply_rope
from attention.quandle import (alexander, alexander_inverse, braid_word, crossing, crossing_inverse,
                               scan_crossings, sequential_crossings, triangle)
from core.errors import MgrError

SETTINGS = settings(max_examples=25, deadline=None)
SHAPE = (3, 2)  # a colour: 3 "key channels" x 2 "value channels"; labels act on the rows


def colour():
    return hnp.arrays(np.float64, SHAPE, elements=st.floats(-3, 3))


def label(lo=0.05, hi=1.0):
    return hnp.arrays(np.float64, (SHAPE[0], 1), elements=st.floats(lo, hi))


def nonzero_t():
    """Any invertible t, including negative ones (t = −1 is Takasaki's quandle)."""
    return st.one_of(st.floats(-2.0, -0.1), st.floats(0.1, 2.0))


def strand():
    return st.tuples(colour(), label())


def close(a, b, tol=1e-9):
    np.testing.assert_allclose(a, b, atol=tol, rtol=tol)


def strands_close(p, q, tol=1e-9):
    assert len(p) == len(q)
    for (x, s), (y, u) in zip(p, q):
        close(x, y, tol)
        close(s, u, tol)


# ---------------------------------------------------------------- quandle axioms

@SETTINGS
@given(colour(), colour(), colour(), nonzero_t())
def test_alexander_quandle_axioms_fixed_t(x, y, z, t):
    close(alexander(x, x, t), x)  # idempotence
    close(alexander_inverse(alexander(x, y, t), y, t), x)  # right-invertibility
    close(alexander(alexander_inverse(x, y, t), y, t), x)
    # self-distributivity (x◁y)◁z = (x◁z)◁(y◁z)
    close(alexander(alexander(x, y, t), z, t), alexander(alexander(x, z, t), alexander(y, z, t), t))


@SETTINGS
@given(strand(), strand(), strand())
def test_labelled_quandle_is_self_distributive_with_key_dependent_t(p, q, r):
    """Different t per strand (as in the model) still gives a quandle: labels ride their strand."""
    lhs = triangle(triangle(p, q), r)
    rhs = triangle(triangle(p, r), triangle(q, r))
    strands_close([lhs], [rhs])
    strands_close([triangle(p, p)], [p])


def test_self_distributivity_needs_the_label_to_stay_on_its_strand():
    """Control: if a crossing handed the over-strand's t to the result, the law would fail, so the
    test above can fail."""
    def bad(p, q):
        (x, _), (y, u) = p, q
        return alexander(x, y, u), u

    p, q, r = [(np.full(SHAPE, v), np.full((SHAPE[0], 1), t)) for v, t in ((1.0, 0.3), (-2.0, 0.5), (0.5, 0.9))]
    lhs, rhs = bad(bad(p, q), r), bad(bad(p, r), bad(q, r))
    assert np.max(np.abs(lhs[0] - rhs[0])) > 1e-3


# ---------------------------------------------------------------- Yang–Baxter and braid relations

@SETTINGS
@given(strand(), strand(), strand())
def test_yang_baxter_equation(p, q, r):
    """R12 R23 R12 = R23 R12 R23 for R(p, q) = (q, p ◁ q)."""
    def r12(s):
        return (*crossing(s[0], s[1]), s[2])

    def r23(s):
        return (s[0], *crossing(s[1], s[2]))

    s = (p, q, r)
    strands_close(r12(r23(r12(s))), r23(r12(r23(s))))


@SETTINGS
@given(st.lists(strand(), min_size=5, max_size=5))
def test_braid_relations_and_inverses(strands):
    s = tuple(strands)
    for i in range(3):  # σ_i σ_{i+1} σ_i = σ_{i+1} σ_i σ_{i+1} (words act left to right)
        strands_close(braid_word(s, [i, i + 1, i]), braid_word(s, [i + 1, i, i + 1]))
    for i, j in ((0, 2), (0, 3), (1, 3)):  # far generators commute
        strands_close(braid_word(s, [i, j]), braid_word(s, [j, i]))
    for i in range(4):  # every crossing is invertible: σ_i σ_i^{-1} = σ_i^{-1} σ_i = id
        strands_close(braid_word(s, [i, -(i + 1)]), s, tol=1e-7)
        strands_close(braid_word(s, [-(i + 1), i]), s, tol=1e-7)
    p, q = crossing_inverse(*crossing(s[0], s[1]))
    strands_close((p, q), s[:2], tol=1e-7)


@SETTINGS
@given(colour(), st.lists(strand(), min_size=1, max_size=6))
def test_forward_strand_is_the_braid_word_action(x0, strands):
    """σ_0 σ_1 … σ_{n-1} carries the query strand under every key strand to the right end; the
    key strands keep their colours, and the query's colour is the sequential crossing result."""
    n = len(strands)
    out = braid_word(((x0, np.ones((SHAPE[0], 1))), *strands), list(range(n)))
    strands_close(out[:n], strands)
    seq = sequential_crossings(jnp.asarray(x0, jnp.float32), [jnp.asarray(y, jnp.float32) for y, _ in strands],
                               [jnp.asarray(t, jnp.float32) for _, t in strands])
    close(out[n][0], np.asarray(seq[-1], np.float64), tol=1e-5)


# ---------------------------------------------------------------- the scan of affine maps

@SETTINGS
@given(hnp.arrays(np.float32, (7, 3, 2), elements=st.floats(-3, 3, width=32)),
       hnp.arrays(np.float32, (7, 3, 1), elements=st.floats(0.0625, 1.0, width=32)),
       hnp.arrays(np.float32, (3, 2), elements=st.floats(-3, 3, width=32)))
def test_associative_scan_equals_sequential_crossings(ys, ts, x0):
    a, b = scan_crossings(jnp.asarray(ts), (1 - ts) * ys, axis=0)
    via_scan = a * x0 + b
    np.testing.assert_allclose(via_scan, sequential_crossings(x0, ys, ts), atol=1e-5, rtol=1e-5)
    # Convexity: each colour is a convex mixture of x0 and the strands' colours.
    lo, hi = min(ys.min(), x0.min()), max(ys.max(), x0.max())
    assert float(via_scan.min()) >= lo - 1e-5 and float(via_scan.max()) <= hi + 1e-5


def _sequential_readout(q, k, v, log_t, x0):
    """Strand-by-strand reference of `braid_scan`: colour after each crossing, read with q."""
    colour, ys = x0, []
    for i in range(q.shape[1]):
        colour = alexander(colour, k[:, i, :, :, None] * v[:, i, :, None, :], jnp.exp(log_t[:, i])[..., None])
        ys.append(jnp.einsum("bgrk,bgkv->bgrv", q[:, i], colour))
    return jnp.stack(ys, axis=1), colour


_jit_scan = jax.jit(braid_scan, static_argnames="chunk")


# Shapes are parametrised (each compiles once); Hypothesis draws the values.
@pytest.mark.parametrize("t,chunk", [(1, 4), (7, 3), (8, 4), (11, 16)])
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), spread=st.floats(0.0, 6.0), with_cache=st.booleans())
def test_chunked_fast_path_equals_sequential_crossings(t, chunk, seed, spread, with_cache):
    b, g, r, k = 1, 2, 2, 4
    ks = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(ks[0], (b, t, g, r, k))
    kk = jax.random.normal(ks[1], (b, t, g, k))
    v = jax.random.normal(ks[2], (b, t, g, k))
    log_t = crossing_log_t(spread * jax.random.normal(ks[3], (b, t, g, k)), 0.0, 0.05)
    x0 = jax.random.normal(ks[4], (b, g, k, k)) * float(with_cache)
    y, final = _jit_scan(q, kk, v, log_t, x0, chunk=chunk)
    y_ref, final_ref = _sequential_readout(q, kk, v, log_t, x0)
    np.testing.assert_allclose(y, y_ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(final, final_ref, atol=1e-5, rtol=1e-4)


def test_identical_strands_leave_the_colour_fixed():
    """Idempotence inside the fast path: passing under strands of one's own colour is the identity,
    however strong the crossings (t near t_min)."""
    b, t, g, r, k = 1, 9, 1, 1, 4
    kk = jax.random.normal(jax.random.key(0), (b, t, g, k))
    kk = jnp.broadcast_to(kk[:, :1], kk.shape)
    v = jnp.broadcast_to(jax.random.normal(jax.random.key(1), (b, 1, g, k)), (b, t, g, k))
    x0 = kk[:, 0, :, :, None] * v[:, 0, :, None, :]
    q = jax.random.normal(jax.random.key(2), (b, t, g, r, k))
    log_t = crossing_log_t(jax.random.normal(jax.random.key(3), (b, t, g, k)), 2.0, 0.05)
    y, final = braid_scan(q, kk, v, log_t, x0, 4)
    np.testing.assert_allclose(final, x0, atol=1e-5)
    np.testing.assert_allclose(y, jnp.einsum("btgrk,bgkv->btgrv", q, x0), atol=1e-4)


@SETTINGS
@given(st.floats(-1e4, 1e4), st.floats(-50, 50), st.floats(0.01, 0.9))
def test_crossing_parameter_stays_invertible(z, bias, t_min):
    t = float(jnp.exp(crossing_log_t(jnp.float32(z), jnp.float32(bias), t_min)))
    assert t_min * (1 - 1e-5) <= t <= 1.0


def test_module_output_depends_on_relative_positions_only():
    dims = AttentionDims(d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, max_seq_len=64)
    m = BraidAttention(dims, BraidConfig(chunk=4), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (1, 7, 32))
    pos = jnp.arange(7, dtype=jnp.int32)[None]
    np.testing.assert_allclose(m(x, pos + 23)[0], m(x, pos)[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("tied", [True, False])
def test_one_t_per_rope_pair_keeps_positions_relative(tied):
    """With one t per RoPE pair (c, c + K/2), shifting all positions changes nothing; a different t
    on each half of a pair (the control) leaks absolute position."""
    b, t, g, r, k = 1, 6, 1, 1, 8
    ks = jax.random.split(jax.random.key(1), 5)
    q = jax.random.normal(ks[0], (b, t, g * r, k))
    kk = jax.random.normal(ks[1], (b, t, g, k))
    v = jax.random.normal(ks[2], (b, t, g, k))
    half = crossing_log_t(2 * jax.random.normal(ks[3], (b, t, g, k // 2)), 0.0, 0.05)
    other = half if tied else crossing_log_t(2 * jax.random.normal(ks[4], (b, t, g, k // 2)), 0.0, 0.05)
    log_t = jnp.concatenate([half, other], axis=-1)

    def run(shift):
        pos = jnp.arange(t, dtype=jnp.int32)[None] + shift
        qr = apply_rope(q, pos, 10000.0).reshape(b, t, g, r, k)
        return braid_scan(qr, apply_rope(kk, pos, 10000.0), v, log_t, jnp.zeros((b, g, k, k)), 4)[0]

    gap = float(jnp.max(jnp.abs(run(37) - run(0))))
    assert gap < 1e-4 if tied else gap > 1e-2


def test_config_rejects_float32_unsafe_chunks():
    dims = AttentionDims(d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, max_seq_len=16)
    BraidConfig().validate(dims)
    for bad in (BraidConfig(t_min=0.0), BraidConfig(t_min=1.0), BraidConfig(chunk=0),
                BraidConfig(t_min=1e-3, chunk=16)):
        with pytest.raises(MgrError):
            bad.validate(dims)
