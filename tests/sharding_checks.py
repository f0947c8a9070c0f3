"""The sharding checks that need several CPU devices, run by tests/test_sharding.py in one
subprocess (the device count is fixed when JAX starts): `python tests/sharding_checks.py`
prints one JSON object; the test file asserts on it.

- `algebras`, `optimizers`: a few train steps of every registered algebra (AdamW) and of every
  optimizer (standard attention) on one device and under fsdp=2, through the trainer's own
  placement and step (`mgr.train.sharding.init_placed` / `lower_step`), with the per-device
  parameter bytes from the arrays' shards and the compiled step's argument bytes.
- `layouts`: `mgr.train.train` runs saved under one layout and resumed under another
  (fsdp=2 -> 1 device, 1 device -> data=2 x fsdp=2) against the uninterrupted 1-device run,
  and a checkpoint restored into both layouts' templates.
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import TINY_DATA, tiny_model, tiny_train  # noqa: E402

import attention  # noqa: E402
import optim  # noqa: E402
from mgr.train import make_step, read_metrics, sharding, train  # noqa: E402
from mgr.train.checkpoint import Checkpointer  # noqa: E402

ONE, FSDP2 = {"data": 1, "fsdp": 1}, {"data": 1, "fsdp": 2}
B, T, STEPS = 4, 16, 3
# HOSS's Lanczos at rank 2: still Hessian-vector products through the sharded parameters, at a
# third of rank 8's compile time.
OPTIONS = {"hoss": {"rank": 2}}
BATCHES = np.random.default_rng(0).integers(0, 512, (STEPS, B, T + 1), dtype=np.int32)


def _per_device_bytes(tree) -> int:
    """Bytes of `tree` held by the first device (all of it on one device)."""
    dev = jax.devices()[0]
    return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == dev)


def short_run(parts, state, where, batch) -> dict:
    compiled = sharding.lower_step(parts.step, where, state, batch).compile()
    out = {"argument_bytes": int(compiled.memory_analysis().argument_size_in_bytes), "losses": []}
    for rows in BATCHES:
        state, m = compiled(state, where.put_batch(rows))
        out["losses"].append(float(m["loss"]))
    # Measured on the state the steps return: it must stay as sharded as it started.
    specs = [getattr(leaf.sharding, "spec", ()) for leaf in jax.tree.leaves(state["params"])]
    out.update(param_bytes=_per_device_bytes(state["params"]), state_bytes=_per_device_bytes(state),
               sharded_leaves=sum("fsdp" in tuple(spec) for spec in specs))
    return out


def both_layouts(model_cfg, train_cfg) -> dict:
    """The same initial state trained on one device and under fsdp=2.

    Initialised once (the init program costs more to compile than the step) and copied into
    the fsdp=2 placement through the host (a device_put of a device array may share its buffer
    on device 0, which the donated step would then delete); the trainer's sharded
    initialisation itself is checked by `layouts`, whose first losses equal the 1-device run's.
    """
    parts = make_step(model_cfg, train_cfg, total_steps=100)
    state, one, batch = sharding.init_placed(parts.init, train_cfg.seed, (B, T + 1), ONE)
    fsdp2 = sharding.placement(lambda: jax.eval_shape(lambda: state), (B, T + 1), FSDP2)
    copy = jax.device_put(jax.device_get(state), fsdp2.state)
    return {"one": short_run(parts, state, one, batch),
            "fsdp2": short_run(parts, copy, fsdp2, jax.ShapeDtypeStruct(batch.shape, batch.dtype,
                                                                        sharding=fsdp2.batch))}


def losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if m["kind"] == "train"}


def layouts() -> dict:
    from mgr.data import build_data

    data = build_data(TINY_DATA)
    root = Path(tempfile.mkdtemp())
    cfg = dict(steps=6, checkpoint_every=3, eval_every=6)

    def run(name, mesh, **kw):
        summary = train(tiny_model(n_layers=1), TINY_DATA, tiny_train(mesh=mesh, **cfg), run_dir=root / name,
                        artifacts_root=root, data=data, **kw)
        return summary

    run("whole", ONE)
    saved = {"fsdp2_to_one": (FSDP2, ONE), "one_to_data2_fsdp2": (ONE, {"data": 2, "fsdp": 2})}
    out = {"whole": losses(root / "whole"), "runs": {}}
    for name, (before, after) in saved.items():
        run(name, before, stop_after=3)
        first = losses(root / name)
        summary = run(name, after, resume=True)
        out["runs"][name] = {"first": first, "all": losses(root / name), "status": summary["status"],
                             "mesh": summary["config"]["train"]["mesh"],
                             "resumed_from": summary["results"].get("resumed_from")}
    out["restored_equal"] = _restore_into_both(root / "fsdp2_to_one" / "checkpoints", data)
    return out


def _restore_into_both(ckpt_dir: Path, data) -> bool:
    """The step-3 checkpoint (saved under fsdp=2) restored into a 1-device and an fsdp=2 template:
    the same values, each on its template's shardings."""
    from mgr.train import build_program

    restored = []
    for layout in (ONE, FSDP2):
        prog = build_program(tiny_model(n_layers=1), tiny_train(mesh=layout, **{"steps": 6}),
                             (TINY_DATA.batch_size, TINY_DATA.seq_len + 1), 6)
        ckpt = Checkpointer(ckpt_dir)
        try:
            state, _, _ = ckpt.restore(prog.state, 3)
        finally:
            ckpt.close()
        placed = all(a.sharding == b.sharding for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(prog.state)))
        restored.append((placed, [np.asarray(x) for x in jax.tree.leaves(state)]))
    same = all(np.array_equal(a, b) for a, b in zip(restored[0][1], restored[1][1]))
    return same and restored[0][0] and restored[1][0]


def main() -> None:
    from mgr.runtime import enable_compilation_cache

    assert len(jax.devices()) >= 4, "run with XLA_FLAGS=--xla_force_host_platform_device_count=4"
    enable_compilation_cache(Path(__file__).resolve().parent.parent / ".cache" / "jax-tests")  # as conftest
    adamw, seconds = tiny_train(), {}

    def timed(name, fn):
        t0, c0 = time.perf_counter(), time.process_time()  # CPU time: the machine is shared
        result = fn()
        seconds[name] = {"wall": round(time.perf_counter() - t0, 2), "cpu": round(time.process_time() - c0, 2)}
        return result

    out = {
        "algebras": timed("algebras", lambda: {
            name: both_layouts(tiny_model(attention=name, n_layers=1, max_seq_len=T), adamw)
            for name in attention.names()}),
        "optimizers": timed("optimizers", lambda: {
            name: both_layouts(tiny_model(n_layers=1, max_seq_len=T),
                               tiny_train(optimizer=name, optimizer_options=OPTIONS.get(name, {})))
            for name in optim.names() if name != "adamw"}),
        "layouts": timed("layouts", layouts),
        "seconds": seconds,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
