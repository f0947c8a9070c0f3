"""SentencePiece tokenizer, trained once from the training shards and cached by a content hash.

The trainer options make tokenization lossless for code as well as prose: no normalisation
(`identity`), no whitespace collapsing, no dummy prefix, runs of spaces allowed as pieces (so
indentation costs one token), and byte fallback (so any Unicode, emoji included, survives as
UTF-8 bytes). Training sentences are runs of whole lines of ~1 KB, newlines included, so
pieces such as `):\\n` can be learned instead of spending a byte token on every newline.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

from core.errors import MgrError
from mgr.runtime.paths import atomic_write_bytes, cache_dir, file_digest

# Bump when training input or options change meaning, so cached models are not reused.
FORMAT_VERSION = 1
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
MODEL_TYPES = ("bpe", "unigram")
_SENTENCE_CHARS = 1024  # target length of one training sentence
_MAX_LINE_CHARS = 2048  # longer lines are cut; 2048 chars are at most 8192 UTF-8 bytes

# Everything here changes the learned model, so all of it goes into the cache digest.
TRAINER_OPTIONS = dict(
    byte_fallback=True,
    character_coverage=0.9995,
    pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
    input_sentence_size=300_000,
    shuffle_input_sentence=True,
    max_sentence_length=4 * _MAX_LINE_CHARS,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=False,
    allow_whitespace_only_pieces=True,
    split_by_whitespace=True,
)


class Tokenizer:
    """A trained SentencePiece model with fixed special ids: pad 0, unk 1, bos 2, eos 3.

    `decode(encode(text)) == text` holds exactly for any string (see the module docstring).
    `encode` never adds BOS/EOS; the data pipeline adds them around each document.
    """

    def __init__(self, model_proto: bytes, digest: str, model_type: str):
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self._proto = model_proto
        self._digest = digest
        self._model_type = model_type
        specials = (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        if specials != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):  # a foreign model would shift every id
            raise MgrError(f"tokenizer {digest} has special ids {specials}, expected (0, 1, 2, 3)")

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS."""
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, encoded on all CPU cores by sentencepiece's own threads."""
        return self._sp.encode(list(texts), out_type=int, num_threads=os.cpu_count() or 1)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`; special ids (pad, bos, eos) decode to nothing."""
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        """The vocabulary piece of id `i` (for debugging and docs)."""
        return self._sp.id_to_piece(int(i))

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials and 256 byte pieces included."""
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def bos_id(self) -> int:
        return BOS_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def digest(self) -> str:
        """Hash of everything the model was trained from; also its cache file name."""
        return self._digest

    @property
    def model_type(self) -> str:
        """'bpe' or 'unigram'."""
        return self._model_type

    @property
    def model_proto(self) -> bytes:
        """The serialized model, e.g. to store next to a checkpoint."""
        return self._proto


def _sentences(shards: list[Path]) -> Iterator[str]:
    """Runs of whole lines (newlines kept) of about _SENTENCE_CHARS from every document."""
    from mgr.data.corpus import iter_texts  # pyarrow, only when a tokenizer is trained

    for shard in shards:
        for text in iter_texts(shard):
            buf: list[str] = []
            size = 0
            for line in text.splitlines(keepends=True):
                while len(line) > _MAX_LINE_CHARS:  # sentencepiece silently drops long sentences
                    yield line[:_MAX_LINE_CHARS]
                    line = line[_MAX_LINE_CHARS:]
                buf.append(line)
                size += len(line)
                if size >= _SENTENCE_CHARS:
                    yield "".join(buf)
                    buf, size = [], 0
            if buf:
                yield "".join(buf)


def trainer_options(user_symbols: tuple[str, ...] = (), character_coverage: float | None = None) -> dict:
    """TRAINER_OPTIONS with the user's choices. With the defaults it is TRAINER_OPTIONS itself,
    so tokenizers cached before these options existed keep their digests."""
    opts = dict(TRAINER_OPTIONS)
    if character_coverage is not None:
        opts["character_coverage"] = float(character_coverage)
    if user_symbols:
        opts["user_defined_symbols"] = list(user_symbols)
    return opts


def tokenizer_digest(train_shards: list[Path], vocab_size: int, model_type: str,
                     options: dict | None = None) -> str:
    """The cache key of a tokenizer: shard contents, vocab size, model type, trainer options."""
    record = {"format": FORMAT_VERSION, "vocab_size": int(vocab_size), "model_type": model_type,
              "options": TRAINER_OPTIONS if options is None else options,
              "shards": [file_digest(p) for p in train_shards]}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:24]


def _train(train_shards: list[Path], vocab_size: int, model_type: str, options: dict) -> bytes:
    buf = io.BytesIO()
    # Sampling (only when there are more than input_sentence_size sentences) uses a global RNG
    # that is seeded from the clock unless set, which would make the model irreproducible.
    spm.set_random_generator_seed(0)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_sentences(train_shards), model_writer=buf, vocab_size=vocab_size,
            model_type=model_type, num_threads=2, minloglevel=2, **options)
    except RuntimeError as e:
        msg = str(e)
        limit = re.search(r"value <= (\d+)", msg)
        if limit:
            raise MgrError(f"vocab_size {vocab_size} is too large for this corpus: a {model_type} "
                           f"tokenizer can learn at most {limit.group(1)} pieces from it; lower "
                           "vocab_size or add data") from None
        if "sentences_.empty()" in msg:
            raise MgrError("no text to train the tokenizer on: the training shards are empty") \
                from None
        raise MgrError(f"sentencepiece failed to train a {model_type} tokenizer: "
                       f"{' '.join(msg.split())}") from None
    return buf.getvalue()


def train_or_load(train_shards: list[Path], vocab_size: int, model_type: str, *,
                  user_symbols: tuple[str, ...] = (), character_coverage: float | None = None) -> Tokenizer:
    """Return the tokenizer for these shards, training it only if it is not cached yet.

    The model lives at `cache_dir()/tokenizers/<digest>.model`, the digest covering the shard
    contents (not their paths), `vocab_size`, `model_type`, the trainer options and a format
    version; it is written atomically so concurrent runs never read half a model.

    Args:
        train_shards: parquet shards with a `text` column (never the validation shard).
        vocab_size: total vocabulary including the 4 specials and 256 byte pieces.
        model_type: 'bpe' (fast to train) or 'unigram'.
        user_symbols: pieces kept whole, one id each (e.g. '<user>', '<code>').
        character_coverage: share of characters covered by pieces (default 0.9995).

    Raises:
        MgrError: unknown model type, empty shards, or a vocab_size the corpus cannot fill.
    """
    if model_type not in MODEL_TYPES:
        raise MgrError(f"tokenizer type must be one of {', '.join(MODEL_TYPES)}, "
                       f"got '{model_type}'")
    options = trainer_options(tuple(user_symbols), character_coverage)
    digest = tokenizer_digest(train_shards, vocab_size, model_type, options)
    path = cache_dir() / "tokenizers" / f"{digest}.model"
    if path.is_file():
        try:
            return Tokenizer(path.read_bytes(), digest, model_type)
        except (RuntimeError, OSError):
            pass  # unreadable cache entry (e.g. disk trouble): retrain and overwrite it
    proto = _train(train_shards, vocab_size, model_type, options)
    atomic_write_bytes(path, proto)
    return Tokenizer(proto, digest, model_type)
