"""Where mgr keeps derived files it can rebuild (corpus shards, tokenizers, token streams).

Everything under `cache_dir()` is keyed by a content hash, so it is safe to delete at any time
and safe to share between runs: a stale entry is never read because its key would differ.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """Return the mgr cache directory, creating it if needed.

    Resolution order: `$MGR_CACHE_DIR`, then `$XDG_CACHE_HOME/mgr`, then `~/.cache/mgr`.
    Read on every call (not at import) so tests can point it at a temporary directory.
    """
    explicit = os.environ.get("MGR_CACHE_DIR")
    if explicit:
        path = Path(explicit)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = (Path(xdg) if xdg else Path.home() / ".cache") / "mgr"
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_digest(path: str | Path) -> str:
    """Return the sha256 hex digest of a file's bytes (streamed, so large shards are fine)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so readers see either the old file or the complete new one.

    A temp file in the same directory plus `os.replace` is atomic on POSIX, so a process
    killed mid-write (or two processes racing to fill the same cache entry) never leaves a
    truncated file behind under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
