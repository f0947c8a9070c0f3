"""The decoder: parameter count, loss at init, causality, caching, every algebra learns in it a
task that only content-based mixing solves (and a uniform causal average does not)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import attention
from mgr.config import ModelConfig
from core.errors import MgrError
from core.nn import rms_normalize
from mgr.model import Decoder, param_count
from mgr.model.blocks import Block

from baselines import with_uniform_attention
from helpers import RECALL_CHANCE, recall_accuracy, recall_model, tiny_model

# Associative recall (tests/helpers.py): answer accuracy after 400 Adam steps, chance 1/8. Every
# registered algebra must reach RECALL_BAR; the same decoder and training with its attention
# replaced by a uniform causal average (tests/baselines.py) must stay under UNIFORM_CEILING.
# Measured: the uniform average 0.34; algebras 0.72 (braid) .. 0.99 (standard); with the
# attention output zeroed every algebra sits at chance.
RECALL_BAR = 0.55
UNIFORM_CEILING = 0.45


def test_param_count_matches_formula():
    cfg = ModelConfig(vocab_size=1000, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=16)
    d, k, h, g, v, L = 64, 16, 4, 2, 1000, 3
    attn = d * h * k + 2 * d * g * k + h * k * d
    mlp = 2 * d * 4 * d
    assert param_count(Decoder(cfg, rngs=nnx.Rngs(0))) == 2 * v * d + L * (attn + mlp)


def test_loss_at_init_is_ln_vocab_and_logits_are_capped():
    cfg = tiny_model(vocab_size=2000)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (4, 17), 0, cfg.vocab_size)
    assert abs(float(model.loss(tokens)) - math.log(cfg.vocab_size)) < 0.1
    # The loss is next-token cross-entropy: position t's logits against token t + 1.
    by_hand = optax.softmax_cross_entropy_with_integer_labels(model(tokens[:, :-1]), tokens[:, 1:])
    np.testing.assert_allclose(float(model.loss(tokens)), float(jnp.mean(by_hand)), rtol=1e-5)
    logits = model(tokens[:, :-1])
    assert logits.dtype == jnp.float32 and logits.shape == (4, 16, cfg.vocab_size)
    big = Decoder(cfg, rngs=nnx.Rngs(0))
    big.head.kernel[...] = big.head.kernel[...] * 1e4
    assert float(jnp.max(jnp.abs(big(tokens[:, :-1])))) <= cfg.logit_softcap


def test_block_is_pre_norm_residual():
    """x + a then + mlp(norm(x + a)), with a = attn(norm(x)): recall alone would not notice a
    dropped residual (the attention output carries the answer)."""
    cfg = tiny_model()
    block = Block(cfg, 0, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(5), (2, 6, cfg.d_model))
    pos = jnp.broadcast_to(jnp.arange(6, dtype=jnp.int32), (2, 6))

    def both(b, x, p):  # one compile for both sides instead of dozens of eager ops
        h = x + b.attn(rms_normalize(x), p)[0]
        return b(x, p)[0], h + b.mlp(rms_normalize(h))

    got, by_hand = nnx.jit(both)(block, x, pos)
    np.testing.assert_allclose(got, by_hand, atol=1e-5)


def _assert_causal(cfg):
    model = Decoder(cfg, rngs=nnx.Rngs(1))
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab_size)
    forward = nnx.jit(lambda m, t: m(t))  # one compile instead of hundreds of eager ops
    base = forward(model, tokens)
    changed = forward(model, tokens.at[:, 7:].set((tokens[:, 7:] + 1) % cfg.vocab_size))
    np.testing.assert_allclose(changed[:, :7], base[:, :7], atol=1e-5)
    assert float(jnp.max(jnp.abs(changed[:, 7:] - base[:, 7:]))) > 1e-4


def test_decoder_is_causal_over_a_hybrid_stack():
    """A state-space layer, a reversible stack (its own residual module) and plain attention in
    one decoder; each algebra's own causality is the contract suite's (tests/attention)."""
    _assert_causal(tiny_model(n_layers=4, attention=("ssm", "reversible", "reversible", "standard")))


@pytest.mark.slow  # 25-45 s: one stack of all twelve algebras compiled as one forward
def test_decoder_is_causal_over_a_stack_of_every_algebra():
    _assert_causal(tiny_model(n_layers=len(attention.names()), attention=tuple(attention.names())))


def test_layers_follow_the_tiled_pattern():
    # Only algebras in the plain pre-norm block: factories build their own residual modules.
    names = [n for n in attention.names()
             if attention.get(n).block_factory is None and attention.get(n).stack_factory is None]
    cfg = tiny_model(n_layers=2 * len(names), attention=tuple(names))
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    assert len(model.blocks) == cfg.n_layers
    for i, block in enumerate(model.blocks):
        assert isinstance(block.attn, attention.get(names[i % len(names)]).module_cls)


@pytest.mark.slow  # 81 s cold: one stack of every cached algebra; the default suite checks each
# algebra's cache against its full forward in tests/attention/test_contract.py and the engine's
# greedy decoding in tests/infer/test_engine.py
def test_cached_decoding_equals_full_forward():
    cached = [n for n in attention.names() if attention.get(n).supports_cache]
    cfg = tiny_model(n_layers=len(cached), attention=tuple(cached))
    model = Decoder(cfg, rngs=nnx.Rngs(2))
    tokens = jax.random.randint(jax.random.key(2), (2, 10), 0, cfg.vocab_size)
    full = nnx.jit(lambda m, t: m(t))(model, tokens)
    caches = model.init_cache(2)
    pos = jnp.broadcast_to(jnp.arange(10, dtype=jnp.int32), (2, 10))
    decode = nnx.jit(lambda m, t, p, c: m.decode(t, p, c))  # compiled once per chunk length
    out, caches = decode(model, tokens[:, :4], pos[:, :4], caches)
    outs = [out]
    for t in range(4, 10):
        out, caches = decode(model, tokens[:, t:t + 1], pos[:, t:t + 1], caches)
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-4, rtol=1e-4)


def test_uniform_causal_average_cannot_solve_recall():
    """The baseline every algebra is measured against, trained exactly as they are: without a
    content-dependent choice of what to read, recall stays far below the bar."""
    assert RECALL_CHANCE < UNIFORM_CEILING < RECALL_BAR
    model = with_uniform_attention(Decoder(recall_model(), rngs=nnx.Rngs(0)))
    acc = recall_accuracy(model)
    assert acc < UNIFORM_CEILING, acc


@pytest.mark.parametrize("name", attention.names())
def test_every_algebra_trains_in_the_decoder(name):
    """Each algebra alone in the decoder learns associative recall past the uniform ceiling."""
    acc = recall_accuracy(Decoder(recall_model(name), rngs=nnx.Rngs(0)))
    assert acc >= RECALL_BAR, acc


@pytest.mark.parametrize("kw, words", [
    (dict(n_heads=4, n_kv_heads=3), "divisible by n_kv_heads"),
    (dict(d_model=12, n_heads=4, n_kv_heads=4), "even for RoPE"),
    (dict(attention="nonesuch"), "valid: standard"),
    (dict(attention=("standard", "nonesuch")), "unknown attention 'nonesuch'"),
])
def test_bad_model_configs_are_one_line_errors(kw, words):
    with pytest.raises(MgrError) as err:
        tiny_model(**kw)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_hybrid_stack_trains_from_configuration_alone():
    """standard -> ultrametric -> tropical -> reversible: one config string, no code change, plain
    blocks and a stack-factory algebra in one decoder, and the stack learns recall."""
    pattern = ("standard", "ultrametric", "tropical", "reversible")
    cfg = recall_model(n_layers=4, attention=pattern)
    assert [cfg.layer_attention(i) for i in range(4)] == list(pattern)
    acc = recall_accuracy(Decoder(cfg, rngs=nnx.Rngs(0)))
    assert acc >= RECALL_BAR, acc
