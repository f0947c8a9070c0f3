"""The token pipeline: shards -> tokenizer -> one packed stream -> deterministic grain batches.

Packing: every training document becomes `[BOS] ids [EOS]`, all documents are concatenated in
shard and row order into one flat int32 stream, and the stream is cut into non-overlapping
windows of `seq_len + 1` tokens (inputs = `w[:-1]`, targets = `w[1:]`). A window may span a
document boundary; the EOS/BOS pair tells the model where. Training batches are
`MapDataset.source(windows).shuffle(seed).repeat().batch(batch_size)`, so batch `step` is a pure
function of (seed, step), epochs are reshuffled, and resuming is an index (`get_state()`).

Validation is the first windows of the last shard, in order: the same tokens for every seed and
every run of one DataConfig, which is what makes losses of different runs comparable.

In a job of several processes each process asks for its own `rows` of every batch (a slice of
`[0, batch_size)`): the global batch order is the same in every process, and a process builds
only its slice of each batch, so the rows of all processes together are the one-process batch.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path

import grain
import numpy as np

from mgr.data import corpus
from mgr.config import DataConfig
from core.errors import MgrError
from mgr.runtime.paths import atomic_write_bytes, cache_dir, file_digest
from mgr.data.tokenizer import BOS_ID, EOS_ID, Tokenizer, train_or_load

TOKENS_FORMAT = 1
_ENCODE_BATCH = 512  # documents per encode call: bounds the Python int lists alive at once
# Batching in-memory windows takes microseconds: two threads and a short prefetch keep a batch
# ready for the train step without holding many batches in memory.
_READ_OPTIONS = dict(num_threads=2, prefetch_buffer_size=4)


def _token_stream(shards: list[Path], tok: Tokenizer) -> np.ndarray:
    """The packed int32 stream of `shards`, cached under cache_dir()/tokens/<key>.npy."""
    key_record = [TOKENS_FORMAT, tok.digest, [file_digest(p) for p in shards]]
    key = hashlib.sha256(json.dumps(key_record).encode()).hexdigest()[:24]
    path = cache_dir() / "tokens" / f"{key}.npy"
    if path.is_file():
        try:
            return np.load(path)
        except (OSError, ValueError):
            pass  # damaged cache entry: rebuild it below
    pieces: list[np.ndarray] = []
    for shard in shards:
        texts = list(corpus.iter_texts(shard))
        for i in range(0, len(texts), _ENCODE_BATCH):
            for ids in tok.encode_batch(texts[i:i + _ENCODE_BATCH]):
                doc = np.empty(len(ids) + 2, np.int32)
                doc[0], doc[1:-1], doc[-1] = BOS_ID, ids, EOS_ID
                pieces.append(doc)
    stream = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    buf = io.BytesIO()
    np.save(buf, stream)
    atomic_write_bytes(path, buf.getvalue())
    return stream


def _windows(stream: np.ndarray, width: int) -> np.ndarray:
    n = len(stream) // width
    return stream[: n * width].reshape(n, width)


class Data:
    """Tokenizer, training batches and the fixed validation set of one DataConfig.

    Build it with `build_data(cfg)`. Every array it hands out is int32 of width `seq_len + 1`.
    """

    def __init__(self, cfg: DataConfig, tokenizer: Tokenizer, train_stream: np.ndarray,
                 val_stream: np.ndarray, info: dict):
        self.config = cfg
        self.tokenizer = tokenizer
        width = cfg.seq_len + 1
        self._train_windows = _windows(train_stream, width)
        self._train_windows.flags.writeable = False  # batches must stay a function of (seed, step)
        self._datasets: dict[int, grain.MapDataset] = {}
        val_windows = _windows(val_stream, width)
        if len(self._train_windows) < cfg.batch_size:
            raise MgrError(f"training shards give {len(self._train_windows)} windows of {width} "
                           f"tokens, fewer than one batch of {cfg.batch_size}; add data or lower "
                           "batch_size/seq_len")
        if len(val_windows) < cfg.batch_size:
            raise MgrError(f"validation shard {info['val_shard']} gives {len(val_stream)} tokens, "
                           f"too few for one batch of {cfg.batch_size}x{width}; use a larger last "
                           "shard or lower batch_size/seq_len")
        wanted = math.ceil(cfg.val_tokens / (cfg.batch_size * cfg.seq_len))
        # A small val shard gives fewer batches than asked; describe() records how many.
        n_val = min(wanted, len(val_windows) // cfg.batch_size)
        self._val = val_windows[: n_val * cfg.batch_size].reshape(n_val, cfg.batch_size, width)
        self._val.flags.writeable = False  # shared by every eval; nobody may edit it in place
        self._info = {
            **info,
            "n_train_docs": int(np.count_nonzero(train_stream == BOS_ID)),
            "n_val_docs": int(np.count_nonzero(val_stream == BOS_ID)),
            "n_train_tokens": int(len(train_stream)),
            "n_val_tokens": int(len(val_stream)),
            "n_train_windows": int(len(self._train_windows)),
            "n_val_batches": int(n_val),
            "val_tokens_evaluated": int(n_val * cfg.batch_size * cfg.seq_len),
            "tokenizer": {"type": tokenizer.model_type, "vocab_size": tokenizer.vocab_size,
                          "digest": tokenizer.digest},
        }

    def train_dataset(self, seed: int) -> grain.MapDataset:
        """The infinite random-access dataset of training batches for `seed` (0 <= seed < 2**32).

        Element `step` is the batch of that step: `[batch_size, seq_len + 1]` int32. Each epoch
        over the windows is shuffled differently (grain folds the epoch into the seed).
        """
        seed = int(seed)
        if not 0 <= seed < 2**32:
            raise MgrError(f"data seed must be in [0, 2**32), got {seed}")
        if seed not in self._datasets:  # cheap to build, but batch_at may be called per step
            self._datasets[seed] = (grain.MapDataset.source(self._train_windows)
                                    .shuffle(seed=seed)
                                    .repeat(None)
                                    .batch(self.config.batch_size, drop_remainder=True))
        return self._datasets[seed]

    def train_iterator(self, seed: int, rows: slice | None = None) -> grain.DatasetIterator:
        """An iterator over training batches from step 0, with exact resume.

        `rows`: only those rows of every batch (`[len(rows), seq_len + 1]`); default all.
        `it.get_state()` is a JSON-able dict; `it.set_state(state)` on a fresh iterator of the
        same seed and config continues with exactly the batch that would have come next, for any
        `rows` (the state counts steps), so a run resumes under another process count.
        """
        ds = self.train_dataset(seed)
        start, stop = self._rows(rows)
        if (start, stop) != (0, self.config.batch_size):
            # Rows [start, stop) of batch s are windows s*B + start ... s*B + stop - 1: batches of
            # stop - start windows, every (B / (stop - start))-th one, from the (start / ...)-th.
            # Only those windows are ever read.
            n = stop - start
            windows = (grain.MapDataset.source(self._train_windows).shuffle(seed=int(seed)).repeat(None)
                       .batch(n, drop_remainder=True))
            ds = windows[start // n::self.config.batch_size // n]
        return iter(ds.to_iter_dataset(grain.ReadOptions(**_READ_OPTIONS)))

    def _rows(self, rows: slice | None) -> tuple[int, int]:
        """`rows` as (start, stop) inside one batch; refused unless it is one of equal parts."""
        b = self.config.batch_size
        if rows is None:
            return 0, b
        start, stop, step = rows.indices(b)
        n = stop - start
        if step != 1 or n <= 0 or b % n or start % n:
            raise MgrError(f"rows {start}:{stop} of a batch of {b} are not one of {b}'s equal parts")
        return start, stop

    def batch_at(self, seed: int, step: int) -> np.ndarray:
        """The training batch of `step` for `seed`, by random access (no iteration)."""
        return self.train_dataset(seed)[int(step)]

    def val_batches(self, rows: slice | None = None) -> np.ndarray:
        """The fixed validation set, `[n_batches, batch_size, seq_len + 1]` int32, read-only.

        The first `ceil(val_tokens / (batch_size * seq_len))` batches of consecutive windows of
        the validation shard (fewer if the shard is smaller); independent of any seed. `rows`:
        only those rows of every batch (axis 1), a view.
        """
        start, stop = self._rows(rows)
        return self._val[:, start:stop]

    def describe(self) -> dict:
        """A JSON-able record of the data for summary.json; holds no absolute cache paths."""
        return json.loads(json.dumps(self._info))  # a deep copy callers may edit


def build_data(cfg: DataConfig) -> Data:
    """Build the corpus, tokenizer and token streams of `cfg`, reusing cached pieces.

    With `cfg.data_dir` set, its parquet shards are used (validated by `corpus.list_shards`);
    otherwise the embedded corpus. The last shard is validation and never seen by the
    tokenizer trainer or the training batches.

    Raises:
        MgrError: bad data directory, unknown corpus, or too little data for one batch.
    """
    if cfg.data_dir is not None:
        shards = corpus.list_shards(cfg.data_dir)
        name = cfg.data_dir  # as the user gave it: summaries must not hold machine paths
        sources = {name: {"files": len(shards),
                          "parquet_bytes": sum(p.stat().st_size for p in shards)}}
    elif cfg.corpus == "embedded":
        corpus_dir = corpus.build_embedded_corpus(cfg)
        shards = corpus.embedded_shards(corpus_dir)
        manifest = corpus.read_manifest(corpus_dir)
        name, sources = corpus.embedded_name(manifest), manifest["sources"]
    else:
        raise MgrError(f"unknown corpus '{cfg.corpus}': the built-in one is 'embedded'; "
                       "pass a data directory of parquet shards for your own text")
    train_shards, val_shard = shards[:-1], shards[-1]
    tok = train_or_load(train_shards, cfg.vocab_size, cfg.tokenizer_type, user_symbols=cfg.user_symbols,
                        character_coverage=cfg.character_coverage)
    info = {"corpus": name, "n_shards": len(shards), "val_shard": val_shard.name,
            "sources": sources}
    return Data(cfg, tok, _token_stream(train_shards, tok), _token_stream([val_shard], tok), info)
