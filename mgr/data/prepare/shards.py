"""Spill files (pass 1) and shuffled parquet shards (pass 2).

Pass 1 appends each kept document as one JSON line to one of K spill files picked by a seeded
hash of its text, so pass 2 can load one spill (about 1/K of the data) at a time, shuffle it with a
seeded RNG and stream it into shards. K grows with the input (`spill_count`), so one spill stays
near SPILL_BYTES whatever the input size; lines are buffered in memory (BUFFER_BYTES in all) and
appended to their files in batches, so K is not bounded by the open-file limit.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([("text", pa.string()), ("type", pa.string()), ("lang", pa.string())])


def unit(seed: int, text: str, salt: str) -> float:
    """A deterministic number in [0, 1) from the text: the same document always gets the same one."""
    h = hashlib.blake2b(f"{seed}:{salt}:".encode() + text.encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0 ** 64


SPILL_BYTES = 16 * 2**20
BUFFER_BYTES = 16 * 2**20


def spill_count(input_bytes: int) -> int:
    return max(16, -(-input_bytes // SPILL_BYTES))


class Spill:
    def __init__(self, directory: Path, k: int, seed: int):
        self.paths = [directory / f"spill_{i:05d}.jsonl" for i in range(k)]
        self.bufs: list[list[str]] = [[] for _ in range(k)]
        self.buffered = 0
        self.seed = seed
        for p in self.paths:
            p.touch()

    def add(self, text: str, kind: str, lang: str | None) -> None:
        i = int(unit(self.seed, text, "spill") * len(self.paths))
        line = json.dumps({"text": text, "type": kind, "lang": lang}, ensure_ascii=False) + "\n"
        self.bufs[i].append(line)
        self.buffered += len(line)
        if self.buffered >= BUFFER_BYTES:
            self.close()

    def close(self) -> None:
        """Append every buffered line to its file (also called when the buffer is full)."""
        for p, buf in zip(self.paths, self.bufs):
            if buf:
                with open(p, "a", encoding="utf-8") as f:
                    f.writelines(buf)
                buf.clear()
        self.buffered = 0

    def shuffled(self) -> Iterator[dict]:
        rng = random.Random(self.seed)
        for p in self.paths:
            with open(p, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f]
            rng.shuffle(rows)
            yield from rows
            p.unlink()


def write_shards(rows: Iterator[dict], out: Path, total_bytes: int, shard_bytes: int) -> list[Path]:
    """Stream rows into shard_00000.parquet ...: n = max(2, ceil(total/shard)) shards of about equal
    size (total and shard in characters), filled in order, so the last one (the validation shard)
    is a random sample too."""
    n = max(2, -(-total_bytes // max(1, shard_bytes)))
    target = total_bytes / n
    paths: list[Path] = []
    writer, buf, filled, buffered = None, [], 0, 0

    def flush():
        if buf:
            writer.write_table(pa.Table.from_pylist(buf, schema=SCHEMA))
            buf.clear()

    for row in rows:
        if writer is None or (filled >= target * (len(paths)) and len(paths) < n):
            if writer is not None:
                flush()
                writer.close()
                buffered = 0
            paths.append(out / f"shard_{len(paths):05d}.parquet")
            writer = pq.ParquetWriter(paths[-1], SCHEMA)
        buf.append(row)
        size = len(row["text"])  # characters, the unit of total (the mix is in characters)
        filled += size
        buffered += size
        if len(buf) >= 2048 or buffered >= 8 * 2**20:  # a row group: bounded in rows and bytes
            flush()
            buffered = 0
    if writer is not None:
        flush()
        writer.close()
    return paths
