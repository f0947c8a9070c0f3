"""Data: the embedded offline corpus (`corpus`), the cached SentencePiece tokenizer
(`tokenizer`) and the deterministic grain pipeline of fixed-length windows (`pipeline`)."""

from mgr.data.pipeline import Data, build_data  # noqa: F401
