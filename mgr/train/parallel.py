"""Data parallelism over a 1-D `data` mesh: the checks on `--devices` and the sharded state."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from core.errors import MgrError


def check_devices(n: int, batch_size: int) -> None:
    """Refuse a `--devices` the batch or the host cannot honour, before anything is built."""
    if n < 1:
        raise MgrError(f"--devices must be at least 1, got {n}")
    if n == 1:
        return
    if batch_size % n:
        raise MgrError(f"batch size {batch_size} is not divisible by --devices {n}")
    have = jax.devices()
    if len(have) < n:
        raise MgrError(f"--devices {n} but only {len(have)} {have[0].platform} device(s); "
                       f"on CPU set XLA_FLAGS=--xla_force_host_platform_device_count={n}")


def data_parallel(state, batch_shape, n: int):
    """Replicate the state and shard batches over a 1-D 'data' mesh of `n` devices.

    XLA inserts the gradient all-reduce itself; nothing else in the step changes, which is why
    the same code runs on GPU/TPU hosts. `Auto` axes: JAX 0.10's default `Explicit` axes break
    the embedding gather under sharding.
    """
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

    check_devices(n, batch_shape[0])
    mesh = jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,))
    state = jax.device_put(state, NamedSharding(mesh, P()))
    rows, val_rows = NamedSharding(mesh, P("data")), NamedSharding(mesh, P(None, "data"))
    batch = jax.ShapeDtypeStruct(batch_shape, jnp.int32, sharding=rows)
    return state, batch, (lambda b: jax.device_put(b, rows)), (lambda v: jax.device_put(v, val_rows))
