"""The engine: cached greedy decoding equals greedy by full forward passes for every registered
algebra, two programs compiled once, on-device sampling, batched rows, the context limit."""

import jax
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

import attention
from core.errors import MgrError
from mgr.config import ModelConfig
from mgr.infer import Engine, SamplingParams
from mgr.infer.sampling import filtered_logits, sample, step_key
from mgr.infer.weights import Layout
from mgr.model import Decoder

V, S, CHUNK = 300, 32, 8
PROMPT, NEW = 19, 10  # two prefill chunks, three prompt tokens through the step, ten new tokens
GREEDY = SamplingParams(max_new_tokens=NEW, temperature=0.0)


def model_config(attn) -> ModelConfig:
    return ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=S,
                       attention=attn)


def constant_state(name: str) -> bool:
    """Whether an algebra's decoding cache stays the same size as the context grows (a running
    state rather than a buffer), read off the cache itself rather than a list of names."""
    sizes = [jax.eval_shape(lambda s=s: Layout.of(model_config(name).replace(max_seq_len=s))
                            .abstract_model.init_cache(1)) for s in (16, 32)]
    return jax.tree.map(lambda a: a.shape, sizes[0]) == jax.tree.map(lambda a: a.shape, sizes[1])


def _patterns():
    """Every registered algebra, plus standard tiled with the first one whose cache is a
    constant-size running state (a hybrid mixes a growing buffer and a state in one stack)."""
    hybrid = ("standard", next(n for n in attention.names() if constant_state(n)))
    return [pytest.param(n, id=n) for n in attention.names()] + [pytest.param(hybrid, id="+".join(hybrid))]


def sharp_model(cfg: ModelConfig, seed: int = 0) -> Decoder:
    model = Decoder(cfg, rngs=nnx.Rngs(seed))
    # A sharper head than the small init: argmax then never rests on a near-tie of floats.
    model.head.kernel[...] = model.head.kernel[...] * 20
    return model


def prompt_ids(n: int = PROMPT, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(4, V, n).tolist()


@pytest.mark.parametrize("attn", _patterns())
def test_cached_greedy_decoding_equals_greedy_full_forward(attn):
    cfg = model_config(attn)
    model = sharp_model(cfg)
    graphdef, state = nnx.split(model, nnx.Param)
    got = Engine.from_state(cfg, state, name=str(attn), prefill_chunk=CHUNK).generate(prompt_ids(), GREEDY)
    # The reference: the whole sequence so far, right-padded to the context (one compile; a
    # causal model ignores the padding), argmax of the logits at its last real position.
    forward = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
    seq = prompt_ids()
    for _ in range(NEW):
        padded = np.zeros((1, S), np.int32)
        padded[0, :len(seq)] = seq
        seq.append(int(np.argmax(forward(state, padded)[0, len(seq) - 1])))
    assert got == seq[PROMPT:]


@pytest.fixture(scope="module")
def engine():
    cfg = model_config("standard")
    return Engine.from_state(cfg, nnx.state(sharp_model(cfg), nnx.Param), name="standard", prefill_chunk=CHUNK)


def test_tokens_and_sampling_knobs_never_recompile(engine):
    engine.generate(prompt_ids(), GREEDY)
    for n, params in [(5, SamplingParams(max_new_tokens=3, temperature=0.7, top_k=5, seed=1)),
                      (PROMPT + 3, SamplingParams(max_new_tokens=NEW, temperature=1.3, top_p=0.9, seed=7)),
                      (17, SamplingParams(max_new_tokens=2, temperature=0.0, top_k=1, top_p=0.5))]:
        engine.generate(prompt_ids(n, seed=n), params)
    # A second engine of the same configuration shares the programs.
    other = Engine.from_state(engine.model_config, nnx.state(sharp_model(engine.model_config, 1), nnx.Param),
                              name="other", prefill_chunk=CHUNK)
    other.generate(prompt_ids(), GREEDY)
    traces = engine.traces
    assert traces["prefill/b1/float32"] == 1 and traces["step/b1/float32"] == 1, traces


def test_top_k_one_and_tiny_top_p_are_greedy_in_the_engine(engine):
    greedy = engine.generate(prompt_ids(), GREEDY)
    for cut in (dict(top_k=1), dict(top_p=1e-6)):
        hot = SamplingParams(max_new_tokens=NEW, temperature=2.5, seed=3, **cut)
        assert engine.generate(prompt_ids(), hot) == greedy, cut


def test_seeds_fix_the_draws_in_the_engine(engine):
    hot = [SamplingParams(max_new_tokens=NEW, temperature=50.0, seed=s) for s in (4, 4, 5)]
    a, b, c = (engine.generate(prompt_ids(), p) for p in hot)
    assert a == b and a != c


def test_batched_rows_keep_their_own_caches(engine):
    prompts = [prompt_ids(seed=1), prompt_ids(seed=2)]
    rows = engine.generate_batch(prompts, GREEDY)
    assert rows == [engine.generate(p, GREEDY) for p in prompts] and rows[0] != rows[1]
    with pytest.raises(MgrError, match="equal lengths"):
        engine.generate_batch([prompt_ids(5), prompt_ids(6)], GREEDY)


def test_the_context_limit_is_named_or_the_prompt_cut_from_the_left(engine):
    ids = prompt_ids(30)
    with pytest.raises(MgrError, match=f"30 tokens .* context of {S} tokens"):
        engine.check_prompt(ids, 8)
    assert engine.check_prompt(ids, 8, truncate=True) == ids[-(S - 8):]
    assert engine.check_prompt(ids[:24], 8) == ids[:24]
    for bad, words in [(SamplingParams(4, temperature=-1.0), "temperature"), (SamplingParams(4, top_p=1.5), "top_p"),
                       (SamplingParams(4, top_k=-2), "top_k"), (SamplingParams(max_new_tokens=0), "max_new_tokens"),
                       (SamplingParams(max_new_tokens=S), "no room")]:
        with pytest.raises(MgrError, match=words):
            engine.generate(prompt_ids(3), bad)
    with pytest.raises(MgrError, match="outside the vocabulary"):
        engine.check_prompt([V], 1)


# ---- the sampler on its own ------------------------------------------------------------------
_draw = jax.jit(lambda logits, seed, t, k, p: sample(logits, step_key(seed, 0), t, k, p))
_filter = jax.jit(filtered_logits)


def _logits(seed: int, rows: int = 4) -> np.ndarray:
    return (3 * np.random.default_rng(seed).normal(size=(rows, V))).astype(np.float32)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**20), t=st.floats(0.05, 20.0))
def test_top_k_one_and_tiny_top_p_are_greedy_at_any_temperature(seed, t):
    logits = _logits(seed)
    greedy = logits.argmax(-1)
    args = (np.uint32(seed), np.float32(t))
    assert (np.asarray(_draw(logits, *args, np.int32(1), np.float32(1.0))) == greedy).all()
    assert (np.asarray(_draw(logits, *args, np.int32(0), np.float32(1e-6))) == greedy).all()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**20), k=st.integers(0, V + 5), p=st.floats(0.01, 1.0), t=st.floats(0.2, 5.0))
def test_the_filter_keeps_exactly_the_top_k_then_the_nucleus(seed, k, p, t):
    logits = _logits(seed, rows=1)
    kept = np.asarray(_filter(logits, np.float32(t), np.int32(k), np.float32(p)))[0] > -1e30
    z = logits[0].astype(np.float64) / t
    order = np.argsort(-z)
    n = V if k <= 0 or k > V else k
    probs = np.exp(z[order[:n]] - z[order[0]])
    probs /= probs.sum()
    before = np.cumsum(probs) - probs
    # the smallest prefix whose mass reaches p (all of it at p = 1); float32 near the boundary
    # may keep or drop the boundary token, so compare away from it
    want = set(order[:n][(before < p) | (p >= 1.0)].tolist())
    boundary = {order[:n][i] for i in range(n) if abs(before[i] - p) < 1e-4}
    assert set(np.flatnonzero(kept).tolist()) ^ want <= boundary


def test_seeds_on_a_flat_distribution():
    flat = np.zeros((64, V), np.float32)
    one = np.float32(1.0), np.int32(0), np.float32(1.0)
    a, b, c = (np.asarray(_draw(flat, np.uint32(s), *one)) for s in (11, 11, 12))
    assert (a == b).all() and (a != c).any()
    assert len(set(a.tolist())) > 30  # draws, not a fixed choice
    logits = _logits(0, rows=64)
    top5 = np.asarray(_draw(logits, np.uint32(1), np.float32(5.0), np.int32(5), np.float32(1.0)))
    allowed = np.argsort(-logits, axis=-1)[:, :5]
    assert all(tok in row for tok, row in zip(top5, allowed))
    assert (top5 != logits.argmax(-1)).sum() > 20  # hot enough that most draws are not the argmax


def _primitives(jaxpr) -> set[str]:
    """Every primitive in `jaxpr`, sub-jaxprs (jit, cond branches, ...) included."""
    inner = getattr(jaxpr, "jaxpr", jaxpr)
    found = set()
    for eqn in inner.eqns:
        found.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(sub, "eqns") or hasattr(sub, "jaxpr"):
                    found |= _primitives(sub)
    return found


def test_greedy_steps_skip_the_sampling_filters_sort():
    """Temperature 0 must take a branch with no sort: the filter sorts the whole vocabulary."""
    jaxpr = jax.make_jaxpr(lambda z, t: sample(z, jax.random.key(0), t, 0, 1.0))(np.zeros((2, 64), np.float32), 0.0)
    conds = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "cond"]
    assert len(conds) == 1, "greedy and sampled draws must be two branches of one cond"
    greedy, drawn = conds[0].params["branches"]  # lax.cond's branches: (false, true)
    assert "sort" not in _primitives(greedy) and "argmax" in _primitives(greedy)
    assert "sort" in _primitives(drawn)
