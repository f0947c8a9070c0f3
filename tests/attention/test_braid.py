"""Braid attention as the decoder builds it: the registered module's output is the braid of its
tokens' strands (each new strand crossing over all earlier ones, by attention/quandle.py's σ),
read as the mean strand colour; any other word for the same braid gives the same colours; the
crossings it applies invert; it is causal and decodes from an O(1) cache across chunks; its
output depends on relative positions only. The quandle laws themselves are in test_quandle.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from cache_checks import check_chunks_continue_from_a_constant_cache
from hypothesis import given, settings, strategies as st

import attention
from attention.base import AttentionDims, apply_rope
from attention.braid import BraidConfig, _features, braid_scan, crossing_log_t
from attention.quandle import arrival_word, braid_word, inverse_word
from core.errors import MgrError

B, T = 2, 8
DIMS = AttentionDims(d_model=16, n_heads=2, n_kv_heads=1, head_dim=4, max_seq_len=16)
CFG = BraidConfig(chunk=3)  # T = 8 is three chunks, the last one ragged
POS = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))


@pytest.fixture(scope="module")
def braid():
    """The registered module, one jitted call (with a cache) and its jitted features (the very
    `_features` its __call__ runs), shared by every test so each compiles once."""
    module = attention.get("braid").module_cls(DIMS, CFG, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(module)
    call = jax.jit(lambda x, pos, cache: nnx.merge(graphdef, state)(x, pos, cache))
    module.features = jax.jit(lambda x: _features(nnx.merge(graphdef, state), x, POS))
    return module, call


def inputs(scale=1.0, seed=1):
    # scale 30 saturates the gates: crossings from t ≈ t_min (strong) to t ≈ 1 (none).
    return scale * jax.random.normal(jax.random.key(seed), (B, T, DIMS.d_model))


def strands_of(module, x):
    """The module's own strands (Y_j = k_j v_jᵀ, t_j) and queries, in float64."""
    q, k, v, log_t = (np.asarray(a, np.float64) for a in module.features(x))
    ys, ts = k[..., :, None] * v[..., None, :], np.exp(log_t)[..., None]
    return q, [(ys[:, j], ts[:, j]) for j in range(x.shape[1])]


def mean_colour(strands):
    return np.mean([c for c, _ in strands], axis=0)


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_module_output_is_the_mean_colour_of_the_braid(braid, scale):
    """Step by step with quandle σ's, independent of the scan: token i's strand arrives on the
    right and crosses over strands i−1..1, then y_i = q_i·mean colour/√K (through wo)."""
    module, call = braid
    x = inputs(scale)
    q, strands = strands_of(module, x)
    braided, ys = (), []
    for i, new in enumerate(strands):
        braided = braid_word(braided + (new,), list(range(i - 1, -1, -1)))
        ys.append(np.einsum("bgrk,bgkv->bgrv", q[:, i], mean_colour(braided)) / np.sqrt(DIMS.head_dim))
    want = module.wo(jnp.asarray(np.stack(ys, 1).reshape(B, T, -1), jnp.float32))
    out, cache = call(x, POS, module.init_cache(B))
    np.testing.assert_allclose(out, want, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(cache["colour"], mean_colour(braided), atol=1e-5, rtol=1e-4)
    np.testing.assert_array_equal(cache["strands"], T)


def rewrite(word, moves):
    """Apply braid-relation moves at the drawn places: (a, b, a) -> (b, a, b) for |a − b| = 1,
    (a, b) -> (b, a) for |a − b| >= 2; a place where neither applies is left alone."""
    word = list(word)
    for p in moves:
        p %= len(word) - 1
        a, b = word[p], word[p + 1]
        if p + 2 < len(word) and abs(a - b) == 1 and word[p + 2] == a:
            word[p:p + 3] = [b, a, b]
        elif abs(a - b) >= 2:
            word[p], word[p + 1] = b, a
    return word


GARSIDE = [g for j in range(T - 1, 0, -1) for g in range(j)]  # (σ_0…σ_{T−2})(σ_0…σ_{T−3})…σ_0: Δ again


@settings(max_examples=20, deadline=None)
@given(moves=st.lists(st.integers(0, 10 ** 6), min_size=1, max_size=60), start=st.sampled_from(["arrival", "garside"]))
def test_any_word_for_the_modules_braid_gives_its_colours(braid, moves, start):
    """The braid relations hold for the crossings the module applies: rewriting its arrival
    word (σ_0)(σ_1σ_0)… by braid relations, or starting from the other word of the half twist,
    recolours the module's strands to the same tuple, whose mean is the module's cached colour."""
    module, call = braid
    x = inputs(30.0, seed=2)
    _, strands = strands_of(module, x)
    word = rewrite(arrival_word(T) if start == "arrival" else GARSIDE, moves)
    _, cache = call(x, POS, module.init_cache(B))
    np.testing.assert_allclose(cache["colour"], mean_colour(braid_word(tuple(strands), word)), atol=1e-5, rtol=1e-4)


def test_the_crossings_the_module_applies_invert(braid):
    """Every crossing of the module's braid has t in [t_min, 1) (never 0), so the inverse word
    recovers the strands, even where the gates saturate at t_min (the strongest crossings)."""
    module, _ = braid
    _, strands = strands_of(module, inputs(30.0))
    strands = tuple(strands[:5])  # Δ^{-1} amplifies by up to (1/t_min)^4 on 5 strands
    labels = np.stack([t for _, t in strands])
    assert labels.min() >= CFG.t_min * (1 - 1e-6) and labels.max() <= 1.0 and labels.min() < 0.1
    word = arrival_word(len(strands))
    back = braid_word(braid_word(strands, word), inverse_word(word))
    for (c, _), (c0, _) in zip(back, strands):
        np.testing.assert_allclose(c, c0, atol=1e-7 * np.abs(c0).max())


def test_causal_and_continues_from_a_constant_cache(braid):
    """Over chunk boundaries: 4 tokens (a full and a ragged chunk), then 4 more from the cache
    (4 strands already in the braid), equal the full forward; the cache has the same size after
    4 and 8 tokens; later inputs never reach earlier outputs. (Token-by-token decoding is the
    contract suite's.)"""
    module, call = braid
    check_chunks_continue_from_a_constant_cache(module, call, inputs(), POS)


def test_module_output_depends_on_relative_positions_only(braid):
    module, call = braid
    x = inputs()
    shifted, _ = call(x, POS + 23, module.init_cache(B))
    np.testing.assert_allclose(shifted, call(x, POS, module.init_cache(B))[0], atol=2e-6, rtol=1e-5)


_jit_scan = jax.jit(braid_scan, static_argnames="chunk")


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
        return _jit_scan(qr, apply_rope(kk, pos, 10000.0), v, log_t, jnp.zeros((b, g, k, k)), jnp.zeros(b), chunk=4)[0]

    gap = float(jnp.max(jnp.abs(run(37) - run(0))))
    assert gap < 1e-4 if tied else gap > 1e-2


@settings(max_examples=25, deadline=None)
@given(st.floats(-1e4, 1e4), st.floats(-50, 50), st.floats(0.01, 0.9))
def test_crossing_parameter_stays_invertible(z, bias, t_min):
    t = float(jnp.exp(crossing_log_t(jnp.float32(z), jnp.float32(bias), t_min)))
    assert t_min * (1 - 1e-5) <= t <= 1.0


def test_config_rejects_float32_unsafe_chunks():
    dims = AttentionDims(d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, max_seq_len=16)
    BraidConfig().validate(dims)
    for bad in (BraidConfig(t_min=0.0), BraidConfig(t_min=1.0), BraidConfig(chunk=0),
                BraidConfig(t_min=1e-3, chunk=16)):
        with pytest.raises(MgrError):
            bad.validate(dims)
