"""The `--devices N` check, kept for callers of the 1-D API; layouts live in `mgr.train.sharding`."""

from __future__ import annotations

from mgr.train.sharding import check_layout


def check_devices(n: int, batch_size: int) -> None:
    """Refuse a `--devices` (a `data=N` mesh) the batch or the host cannot honour."""
    if n < 1:
        from core.errors import MgrError

        raise MgrError(f"--devices must be at least 1, got {n}")
    check_layout({"data": n, "fsdp": 1}, batch_size)
