"""Shared small configurations for the trainer and CLI tests."""

from pathlib import Path

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
