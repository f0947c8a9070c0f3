"""Where every array of a run lives on a (`data`, `fsdp`) device mesh: the partition rules.

One shape-based rule places parameters and optimizer state, so no algebra, feed-forward kind
or optimizer knows about sharding: a leaf of at least `MIN_SHARDED` elements is split over
`fsdp` along its largest axis divisible by the fsdp size (the first such axis on ties); smaller
leaves and leaves with no divisible axis are replicated. Optimizer moments have their
parameter's shape, so they follow it without a rule of their own. Batches are split by rows
over both axes (the data-parallel size is data x fsdp); validation batches `[N, B, T+1]` along
their row axis. XLA's SPMD partitioner inserts the gathers and reductions.

Axes are `Auto`: JAX 0.10's default `Explicit` axes break the embedding gather under sharding.
The mesh spans the first `data * fsdp` devices; with several processes it must span them all,
since every process feeds its own rows (`local_rows`) and `put_rows` assembles the global batch
from each process's part (`jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import jax
import numpy as np

from core.errors import MgrError
from mgr.config import MESH_AXES, format_mesh

# Below this many elements a leaf is replicated: norms, biases and scalars cost nothing to keep
# everywhere, and splitting them would only add collectives.
MIN_SHARDED = 1024
ROWS = MESH_AXES  # a batch's row axis is split over every mesh axis


def check_layout(layout: dict[str, int], batch_size: int) -> None:
    """Refuse a layout the batch or the host cannot honour, before anything is built."""
    n = math.prod(layout.values())
    flag = f"--mesh {format_mesh(layout)}" if layout["fsdp"] > 1 else f"--devices {n}"
    if batch_size % n:
        raise MgrError(f"batch size {batch_size} is not divisible by {flag}"
                       + (f" (data-parallel size {n})" if layout["fsdp"] > 1 else ""))
    if n == 1:
        return
    have = jax.devices()
    if len(have) < n:
        raise MgrError(f"{flag} but only {len(have)} {have[0].platform} device(s); "
                       f"on CPU set XLA_FLAGS=--xla_force_host_platform_device_count={n}")
    if jax.process_count() > 1 and len(have) != n:
        raise MgrError(f"{flag} uses {n} of the {len(have)} devices of {jax.process_count()} processes; "
                       f"a mesh over several processes must use them all")


def make_mesh(layout: dict[str, int]) -> jax.sharding.Mesh:
    from jax.sharding import AxisType

    shape = tuple(layout[a] for a in MESH_AXES)
    devices = jax.devices()[:math.prod(shape)]
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def leaf_spec(shape: tuple[int, ...], fsdp: int) -> jax.sharding.PartitionSpec:
    """The partition rule: the largest fsdp-divisible axis of a large leaf over `fsdp`."""
    from jax.sharding import PartitionSpec as P

    if fsdp == 1 or math.prod(shape) < MIN_SHARDED:
        return P()
    divisible = [i for i, n in enumerate(shape) if n % fsdp == 0]
    if not divisible:
        return P()
    axis = max(divisible, key=lambda i: (shape[i], -i))
    return P(*(["fsdp" if i == axis else None for i in range(len(shape))]))


def state_shardings(abstract_state: Any, mesh: jax.sharding.Mesh) -> Any:
    """A NamedSharding for every leaf of the train state (parameters, optimizer state, scalars)."""
    from jax.sharding import NamedSharding

    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(tuple(x.shape), fsdp)), abstract_state)


def local_rows(mesh: jax.sharding.Mesh, batch_size: int) -> slice:
    """The rows of a `[B, ...]` batch whose shards live on this process's devices (contiguous)."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    index = NamedSharding(mesh, P(ROWS)).addressable_devices_indices_map((batch_size,))
    rows = sorted({(s[0].start or 0, batch_size if s[0].stop is None else s[0].stop) for s in index.values()})
    start, stop = rows[0][0], rows[-1][1]
    if sum(b - a for a, b in rows) != stop - start:
        raise MgrError("this process's devices hold rows that are not contiguous; "
                       "order the devices so that each process's are adjacent in the mesh")
    return slice(start, stop)


def put_rows(sharding, batch_size: int, row_axis: int) -> Callable:
    """This process's rows (along `row_axis`) -> the global array; in one process, all rows."""
    def put(local):
        local = np.asarray(local)
        shape = list(local.shape)
        shape[row_axis] = batch_size
        return jax.make_array_from_process_local_data(sharding, local, tuple(shape))

    return put


@dataclass
class Placement:
    """A run's arrays on its mesh: the state's shardings, and how batches reach the devices."""

    mesh: Any  # None on one device: nothing is placed
    state: Any  # NamedSharding per state leaf (None on one device)
    batch: Any  # the train batch's sharding (None on one device)
    local_rows: slice
    put_batch: Callable  # this process's rows -> device batch
    put_val: Callable  # this process's rows of [N, B, T+1] -> device array


def placement(abstract_state: Callable[[], Any], batch_shape: tuple[int, int], layout: dict[str, int]) -> Placement:
    """The placement of a run's state and batches under `layout` (`TrainConfig.layout`).

    `abstract_state()` gives the state's shapes; it is only called when there is a mesh.
    """
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    check_layout(layout, batch_shape[0])
    if math.prod(layout.values()) == 1:  # the single-device program stays as it always was
        return Placement(None, None, None, slice(0, batch_shape[0]), jnp.asarray, jnp.asarray)
    mesh = make_mesh(layout)
    rows, val_rows = NamedSharding(mesh, P(ROWS)), NamedSharding(mesh, P(None, ROWS))
    return Placement(mesh, state_shardings(abstract_state(), mesh), rows, local_rows(mesh, batch_shape[0]),
                     put_rows(rows, batch_shape[0], 0), put_rows(val_rows, batch_shape[0], 1))


def init_placed(init: Callable, seed: int, batch_shape: tuple[int, int], layout: dict[str, int]):
    """`init(seed)` (the train state) on `layout`, its placement, and the batch's abstract array."""
    import jax.numpy as jnp

    run, where, batch, _ = placed_init(init, batch_shape, layout, (jnp.asarray(seed, jnp.int32),))
    return run(jnp.asarray(seed, jnp.int32)), where, batch


def placed_init(init: Callable, batch_shape: tuple[int, int], layout: dict[str, int], args: tuple):
    """(`init` jitted to place its state on `layout`, the placement, the batch's abstract array,
    the state's abstract arrays with their shardings); `args` are example arguments of `init`.

    Keep the jitted init to reuse it: each new `jax.jit` of a closure traces and lowers again.
    """
    import jax.numpy as jnp

    # Initialising inside one jit makes the many small initialiser ops a single compile (eagerly
    # each op and shape is its own XLA program: seconds natively, a minute under emulation).
    # Under a mesh each device only ever holds its own shards; the random values do not depend
    # on the sharding (JAX's threefry is partitionable).
    abstract = jax.eval_shape(init, *args)
    where = placement(lambda: abstract, batch_shape, layout)
    if where.mesh is not None:
        abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s,
                                                                weak_type=a.weak_type),
                                abstract, where.state)
    run = jax.jit(init, **({} if where.mesh is None else {"out_shardings": where.state}))
    return run, where, jax.ShapeDtypeStruct(batch_shape, jnp.int32, sharding=where.batch), abstract


def lower_step(step: Callable, where: Placement, state: Any, batch: Any):
    """The donated train step `(state, batch) -> (state, metrics)`, lowered for its placement."""
    # The new state keeps the old one's shardings, so the donated buffers are reused and the
    # next call's arguments match the compiled program's (XLA's own choice would not).
    keep = {} if where.mesh is None else {"out_shardings": (where.state, None)}
    return jax.jit(step, donate_argnums=0, **keep).lower(state, batch)
