"""Shared small configurations for the trainer and CLI tests."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import pyarrow as pa
import pyarrow.parquet as pq

from mgr.config import DataConfig, ModelConfig, TrainConfig

# One tiny data configuration shared by every trainer test, so the corpus, tokenizer and
# token stream are built once per cache.
TINY_DATA = DataConfig(vocab_size=512, seq_len=32, batch_size=4, val_tokens=512, max_corpus_bytes=600_000)


# conftest compiles everything at XLA's optimisation level 0, right for the suite's many
# programs that run for milliseconds. The few that train hundreds of steps inside one compiled
# scan spend far longer running than compiling, so they are compiled at XLA's default level
# (ultrametric's 400 recall steps: 1.6 s compile + 18.3 s run at level 0, 3.1 s + 3.2 s at 2).
OPTIMISED = {"xla_backend_optimization_level": 2}


def compile_optimised(fn, *args):
    """`jax.jit(fn)` compiled for `args` at XLA's default optimisation level."""
    return jax.jit(fn).lower(*args).compile(compiler_options=OPTIMISED)


def tiny_model(**kw) -> ModelConfig:
    base = dict(vocab_size=512, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    base.update(kw)
    return ModelConfig(**base)


def tiny_train(**kw) -> TrainConfig:
    base = dict(steps=24, eval_every=8, checkpoint_every=8, warmup_steps=4, learning_rate=1e-2, log_every=1)
    base.update(kw)
    return TrainConfig(**base)


def write_shards(directory: Path, texts_per_shard: list[list[str]], column: str = "text") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i, texts in enumerate(texts_per_shard):
        pq.write_table(pa.table({column: texts}), directory / f"shard_{i:05d}.parquet")
    return directory


def adam_losses(cfg: ModelConfig, steps: int = 12, lr: float = 3e-3, seed: int = 3) -> list[float]:
    """Losses of `steps` Adam steps of a Decoder on one fixed random batch (does it train at all?)."""
    from mgr.model import Decoder

    graphdef, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    tx = optax.adam(lr)
    batch = jax.random.randint(jax.random.key(seed), (4, 17), 0, cfg.vocab_size)

    @jax.jit
    def step(p, o):
        loss, g = jax.value_and_grad(lambda p: nnx.merge(graphdef, p).loss(batch))(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, loss

    opt, losses = tx.init(params), []
    for _ in range(steps):
        params, opt, loss = step(params, opt)
        losses.append(float(loss))
    return losses


# ---- associative recall: a task only content-based mixing solves --------------------------------
# Each context token is a fused (key, value) pair: 12 pairs with distinct keys (of 16) and values
# (of 8), then 4 query tokens naming keys present; at a query the model must name that key's
# value (one of 8 answer tokens), and only those positions are scored. Key and value share one
# token so that the task is a pure content lookup (read the pair whose key matches the query),
# solvable in one layer with or without positional information. A uniform causal average sees
# only a bag of 12 of the 128 pair tokens through its value channel and must untangle which
# value goes with the queried key from their sum.
RECALL_KEYS, RECALL_VALUES, RECALL_PAIRS, RECALL_QUERIES = 16, 8, 12, 4
RECALL_ANSWER0 = RECALL_KEYS * RECALL_VALUES + RECALL_KEYS  # first answer token
RECALL_VOCAB = RECALL_ANSWER0 + RECALL_VALUES
RECALL_CHANCE = 1 / RECALL_VALUES


def recall_model(attention="standard", **kw) -> ModelConfig:
    """One layer (unless overridden) at d_model 32 over the recall vocabulary, 16 tokens."""
    return tiny_model(**{"vocab_size": RECALL_VOCAB, "n_layers": 1, "max_seq_len": 16,
                         "attention": attention, **kw})


def recall_batches(steps: int, batch: int, seed: int = 0):
    """tokens `[steps, batch, 16]` and answers `[steps, batch, 4]` (value ids 0..7)."""
    k, v, p, q = RECALL_KEYS, RECALL_VALUES, RECALL_PAIRS, RECALL_QUERIES
    rng = np.random.default_rng(seed)
    keys = np.argsort(rng.random((steps, batch, k)), axis=-1)[..., :p]  # distinct keys
    values = rng.integers(0, v, (steps, batch, p))
    asked = np.argsort(rng.random((steps, batch, p)), axis=-1)[..., :q]  # distinct pairs asked
    queries = k * v + np.take_along_axis(keys, asked, axis=-1)
    tokens = np.concatenate([keys * v + values, queries], axis=-1)
    return tokens.astype(np.int32), np.take_along_axis(values, asked, axis=-1).astype(np.int32)


def recall_accuracy(model: nnx.Module, steps: int = 400, lr: float = 1e-2, batch: int = 32,
                    tail: int = 50) -> float:
    """Train `model` with Adam on fresh recall batches, every step inside one compiled scan, and
    return the answer accuracy over the last `tail` steps. Each batch is scored before the
    update it feeds, so this is accuracy on unseen sequences."""
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adam(lr)
    tokens, answers = recall_batches(steps, batch)

    def loss(p, tokens_BxT, answers_BxQ):
        logits = nnx.merge(graphdef, p)(tokens_BxT)[:, -RECALL_QUERIES:, RECALL_ANSWER0:]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, answers_BxQ)
        return jnp.mean(ce), jnp.mean(jnp.argmax(logits, axis=-1) == answers_BxQ)

    def step(carry, batch):
        p, opt = carry
        (_, acc), g = jax.value_and_grad(loss, has_aux=True)(p, *batch)
        u, opt = tx.update(g, opt, p)
        return (optax.apply_updates(p, u), opt), acc

    def run(p, tokens, answers):
        return jax.lax.scan(step, (p, tx.init(p)), (tokens, answers))[1]

    return float(jnp.mean(compile_optimised(run, params, tokens, answers)(params, tokens, answers)[-tail:]))


def assert_user_error(result, *words):
    """A CLI result that failed as a user error: exit 2, one `error:` line naming `words`."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for w in words:
        assert w in err, err
