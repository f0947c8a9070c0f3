"""Streaming readers: every input kind yields (source, text) one document at a time.

Nothing here holds more than one document at a time, except a parquet row group and a .json
array (a JSON document is parsed whole), so memory is bounded by the largest document, row group
or .json file, not by the input size.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import sys
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from core.errors import MgrError

TEXT_EXT = {".txt", ".md", ".markdown", ".rst", ".py", ".sh", ".bash", ".sql", ".go", ""}


@dataclass
class ReadOptions:
    field: str = "text"          # jsonl/json field
    column: str = "text"         # csv/tsv/parquet column
    include: tuple[str, ...] = ()  # globs on the relative path inside a directory
    exclude: tuple[str, ...] = ()
    on_bad_line: str = "error"   # "skip" counts and skips a bad JSON line, "error" refuses
    # A text file above this many bytes is too long for --max-chars whatever its encoding (UTF-8
    # spends at most 4 bytes a character): counted, never read into memory.
    max_file_bytes: int | None = None
    stats: dict = dataclasses.field(default_factory=lambda: {"bad_lines": 0, "too_long_files": 0})


def _is_binary(path: Path) -> bool:
    # A NUL byte in the first block is the usual sign of a binary file (images, archives, .pyc).
    with open(path, "rb") as f:
        return b"\x00" in f.read(8192)


def _read_text(path: Path, max_bytes: int | None = None) -> str | None:
    """The file's text; None when it is larger than max_bytes (checked after the binary test)."""
    try:
        if _is_binary(path):
            raise MgrError(f"input '{path}' looks binary (NUL bytes); give text, jsonl, csv or parquet")
        if max_bytes is not None and path.stat().st_size > max_bytes:
            return None
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MgrError(f"input '{path}' is not UTF-8 text") from None
    except OSError as e:
        raise MgrError(f"cannot read input '{path}': {e.strerror or e}") from None


def _jsonl(path: Path, opt: ReadOptions) -> Iterator[str]:
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise MgrError(f"cannot read input '{path}': {e.strerror or e}") from None
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if opt.on_bad_line == "skip":
                    opt.stats["bad_lines"] += 1
                    continue
                raise MgrError(f"{path}:{n}: invalid JSON line (use --on-bad-line skip to skip it)") from None
            if not isinstance(row, dict) or opt.field not in row:
                raise MgrError(f"{path}:{n}: no field '{opt.field}' (choose one with --field)")
            yield str(row[opt.field])


def _json(path: Path, opt: ReadOptions) -> Iterator[str]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise MgrError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    rows = data if isinstance(data, list) else [data]
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or opt.field not in row:
            raise MgrError(f"{path}: item {i} has no field '{opt.field}' (choose one with --field)")
        yield str(row[opt.field])


def _csv(path: Path, opt: ReadOptions) -> Iterator[str]:
    csv.field_size_limit(sys.maxsize)  # long documents in one cell are normal for exports
    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        f = open(path, encoding="utf-8", newline="")
    except OSError as e:
        raise MgrError(f"cannot read input '{path}': {e.strerror or e}") from None
    with f:
        reader = csv.DictReader(f, delimiter=delim)
        if reader.fieldnames is None or opt.column not in reader.fieldnames:
            raise MgrError(f"{path}: no column '{opt.column}' (columns: {', '.join(reader.fieldnames or [])}; "
                           f"choose one with --column)")
        for row in reader:
            yield row[opt.column] or ""


def _parquet(path: Path, opt: ReadOptions) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise MgrError(f"cannot read parquet input '{path}': {str(e).splitlines()[0]}") from None
    if opt.column not in pf.schema_arrow.names:
        raise MgrError(f"{path}: no column '{opt.column}' (columns: {', '.join(pf.schema_arrow.names)}; "
                       f"choose one with --column)")
    # Row group by row group: iter_batches read ahead (116 MB held while reading a 126 MB file of
    # 9 MB row groups), so memory is one row group here, whatever the file's size.
    for i in range(pf.metadata.num_row_groups):
        for batch in pf.read_row_group(i, columns=[opt.column]).to_batches(max_chunksize=1024):
            for v in batch.column(0).to_pylist():
                if v is not None:
                    yield str(v)


def _one_file(path: Path, opt: ReadOptions) -> Iterator[tuple[str, str]]:
    ext = path.suffix.lower()
    src = str(path)
    if ext == ".jsonl":
        gen = _jsonl(path, opt)
    elif ext == ".json":
        gen = _json(path, opt)
    elif ext in (".csv", ".tsv"):
        gen = _csv(path, opt)
    elif ext == ".parquet":
        gen = _parquet(path, opt)
    else:
        text = _read_text(path, opt.max_file_bytes)
        if text is None:
            opt.stats["too_long_files"] += 1
        gen = iter([] if text is None else [text])
    for text in gen:
        yield src, text


def _walk(root: Path, opt: ReadOptions) -> Iterator[Path]:
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if opt.include and not any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(p.name, g) for g in opt.include):
            continue
        if any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(p.name, g) for g in opt.exclude):
            continue
        yield p


def input_files(inputs: list[str], opt: ReadOptions) -> list[Path]:
    """Expand inputs (files and directories) into a sorted, validated file list."""
    files: list[Path] = []
    for given in inputs:
        p = Path(given)
        if p.is_dir():
            files.extend(_walk(p, opt))
        elif p.is_file():
            files.append(p)
        else:
            raise MgrError(f"input '{given}' does not exist")
    if not files:
        raise MgrError("no input files (check the paths and --include/--exclude)")
    return files


def iter_documents(files: list[Path], opt: ReadOptions) -> Iterator[tuple[str, str]]:
    for path in files:
        yield from _one_file(path, opt)
