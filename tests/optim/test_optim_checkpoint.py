"""Every optimizer × schedule state survives an orbax save/restore bit for bit, and the next
update from the restored state equals the one from the original."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import optim
from optim_helpers import make_tx, train_step

# Small patience and EMA so the ordinal state has moved off its initial values before saving;
# noise on so HOSS's key matters.
OPTIONS = {"hoss": {"rank": 2, "noise_std": 0.01}}
SCHEDULE_OPTIONS = {"ordinal": {"patience": 1, "anneal_levels": 1, "ema_decay": 0.5},
                    "cosine": {"final_fraction": 0.5}}


def small_params():
    k = jax.random.split(jax.random.key(0), 4)
    return {"embed": {"table": jax.random.normal(k[0], (6, 4))},
            "blocks": {"0": {"kernel": jax.random.normal(k[1], (4, 4)) / 2, "scale": jnp.ones(4)}},
            "head": {"kernel": jax.random.normal(k[2], (4, 6)) / 2}}


def small_loss(p):
    x = jnp.tanh(p["embed"]["table"] @ p["blocks"]["0"]["kernel"]) * p["blocks"]["0"]["scale"]
    logits = x @ p["head"]["kernel"]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(6)))


def roundtrip(state, directory):
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(directory, state)
    ckptr.wait_until_finished()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    return ckptr.restore(directory, abstract)


def assert_trees_identical(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def check_roundtrip(tx, loss_fn, params, directory, steps=3):
    step = jax.jit(train_step(tx, loss_fn))
    # Committed like the restored arrays, so both runs share one compiled step (a fresh,
    # uncommitted init state and a restored, committed one would otherwise compile twice).
    params, state = jax.device_put((params, tx.init(params)), jax.devices()[0])
    for _ in range(steps):
        params, state, _ = step(params, state)
    restored = roundtrip(state, directory)
    assert_trees_identical(state, restored)
    p1, s1, _ = step(params, state)
    p2, s2, _ = step(params, restored)
    assert_trees_identical(p1, p2)
    assert_trees_identical(s1, s2)
    # Guard against a vacuous comparison: the step does move the parameters.
    assert any(not np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(p1), jax.tree.leaves(params)))


@pytest.mark.parametrize("opt,sched", list(itertools.product(optim.names(), optim.schedule_names())))
def test_state_roundtrip(opt, sched, tmp_path):
    tx = make_tx(opt, sched, lr=0.05, steps=10, warmup_steps=2, grad_clip=1.0,
                 optimizer_options=OPTIONS.get(opt), schedule_options=SCHEDULE_OPTIONS.get(sched))
    check_roundtrip(tx, small_loss, small_params(), tmp_path / "ckpt")


def test_decoder_state_roundtrip(tmp_path, decoder_params):
    """The trainer's real layout: nnx.State params (Muon partition and ordinal wrapper inside)."""
    graphdef, params = decoder_params
    batch = jax.random.randint(jax.random.key(1), (2, 9), 0, 256)
    loss_fn = lambda p: nnx.merge(graphdef, p).loss(batch)
    tx = make_tx("muon", "ordinal", lr=0.01, grad_clip=1.0,
                 schedule_options=SCHEDULE_OPTIONS["ordinal"])
    check_roundtrip(tx, loss_fn, params, tmp_path / "ckpt", steps=2)


def test_trainer_checkpointer_keeps_the_newest_two_and_restores_any_step(tmp_path):
    """mgr.train.checkpoint: state, data-iterator state and meta come back from the step asked
    for (the newest by default), and only the newest two periodic checkpoints are kept."""
    from mgr.train.checkpoint import Checkpointer

    ckpt = Checkpointer(tmp_path / "ckpts")
    saved = {}
    for step in (1, 2, 3):
        saved[step] = ({"w": jnp.full(3, float(step)), "n": jnp.int32(step)}, {"index": 10 * step},
                       {"step": step, "val_curve": [[step, 0.0, 1.0 / step]], "best_val": 1.0 / step,
                        "train_seconds": 0.5 * step, "train_loss": 2.0 / step})
        ckpt.save(step, *saved[step])
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3]
    for step, got in ((3, ckpt.restore(saved[1][0])), (2, ckpt.restore(saved[1][0], step=2))):
        assert_trees_identical(got[0], saved[step][0])
        assert got[1] == saved[step][1] and got[2] == saved[step][2], step
    ckpt.close()
