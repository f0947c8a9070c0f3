"""Data: the embedded offline corpus (`corpus`), the cached SentencePiece tokenizer
(`tokenizer`) and the deterministic grain pipeline of fixed-length windows (`pipeline`).

`Data` and `build_data` are resolved on first use (PEP 562): the pipeline pulls in grain and
pyarrow (tens of MB and about a second of import), which a process that only needs the
tokenizer, such as `mgr generate` or `mgr serve`, never pays for.
"""

from __future__ import annotations

__all__ = ["Data", "build_data"]


def __getattr__(name: str):
    if name in __all__:
        from mgr.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'mgr.data' has no attribute '{name}'")
