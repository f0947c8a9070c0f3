"""A tiny real Decoder trains a few steps under every optimizer and schedule, through
`optim.build_transform` and the trainer's contract (`value=loss`, `value_fn=...`).

The default tier runs each optimizer under the ordinal schedule (the wrapping, loss-driven
path); the full product attention × optimizer × schedule is `slow` (it grows with the
registries: eleven algebras × three optimizers × three schedules).
"""

import itertools

import jax
import numpy as np
import pytest
from flax import nnx

import attention
import optim
from optim_helpers import make_tx, tiny_decoder, train_step

STEPS = 8
# Per-optimizer peak learning rates (HOSS's is δ / delta_scale: δ ≈ 0.9 here).
LR = {"adamw": 1e-2, "muon": 1e-2, "hoss": 3e-3}
# HOSS's Lanczos loop is unrolled (so XLA counts every HVP); rank 2 keeps the compile short.
OPTIONS = {"hoss": {"rank": 2}}


def train(attn, opt, sched):
    graphdef, params = nnx.split(tiny_decoder(attention=attn), nnx.Param)
    batch = jax.random.randint(jax.random.key(1), (4, 17), 0, 256)
    loss_fn = lambda p: nnx.merge(graphdef, p).loss(batch)
    tx = make_tx(opt, sched, lr=LR.get(opt, 1e-2), steps=STEPS, warmup_steps=1, grad_clip=1.0,
                 optimizer_options=OPTIONS.get(opt),
                 schedule_options={"patience": 2} if sched == "ordinal" else None)
    step = jax.jit(train_step(tx, loss_fn), donate_argnums=(0, 1))
    state, losses = tx.init(params), []
    for _ in range(STEPS):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    return np.asarray(losses)


def check(losses):
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0] - 0.1, losses  # the first step has lr 0 (warmup)
    assert losses[-3:].mean() < losses[:3].mean(), losses


@pytest.mark.parametrize("opt", optim.names())
def test_each_optimizer_trains_under_ordinal(opt):
    check(train("standard", opt, "ordinal"))


@pytest.mark.slow
@pytest.mark.parametrize("attn,opt,sched", list(itertools.product(
    attention.names(), optim.names(), optim.schedule_names())))
def test_every_attention_optimizer_schedule_trains(attn, opt, sched):
    check(train(attn, opt, sched))
