"""Shared small configurations for the trainer and CLI tests."""

from pathlib import Path

import jax
import optax
from flax import nnx

import pyarrow as pa
import pyarrow.parquet as pq

from mgr.config import DataConfig, ModelConfig, TrainConfig

# One tiny data configuration shared by every trainer test, so the corpus, tokenizer and
# token stream are built once per cache.
TINY_DATA = DataConfig(vocab_size=512, seq_len=32, batch_size=4, val_tokens=512, max_corpus_bytes=600_000)


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
