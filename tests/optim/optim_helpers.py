"""Shared helpers of the optimizer tests: building a transform through the public API, a
jitted minimisation loop on a loss of a params pytree, and the tiny real Decoder.

Imported by the test files as a plain module (pytest puts this folder on sys.path)."""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import optim
from mgr.config import ModelConfig, TrainConfig
from mgr.model import Decoder

TINY = dict(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16)


def make_tx(optimizer, schedule="constant", *, lr, steps=100, optimizer_options=None,
            schedule_options=None, grad_clip=0.0, warmup_steps=0, stacked=False):
    """`optim.build_transform` from a TrainConfig, the way the trainer builds it."""
    cfg = TrainConfig(optimizer=optimizer, schedule=schedule, learning_rate=lr,
                      warmup_steps=warmup_steps, steps=steps, grad_clip=grad_clip,
                      optimizer_options=optimizer_options or {},
                      schedule_options=schedule_options or {})
    return optim.build_transform(cfg, steps, stacked=stacked)


def train_step(tx, loss_fn):
    """One step of the trainer's contract for `loss_fn(params)`."""

    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params, value=loss, value_fn=loss_fn)
        return optax.apply_updates(params, updates), state, loss

    return step


def minimise(tx, loss_fn, params, steps):
    """Run `steps` updates in one jitted scan; returns (final params, losses before each step)."""
    step = train_step(tx, loss_fn)

    def body(carry, _):
        p, s, loss = step(*carry)
        return (p, s), loss

    @jax.jit
    def run(p):
        (p, _), losses = jax.lax.scan(body, (p, tx.init(p)), None, steps)
        return p, losses

    return run(params)


def tiny_decoder(**overrides):
    cfg = ModelConfig(**{**TINY, **overrides})
    return Decoder(cfg, rngs=nnx.Rngs(0))


def stacked_params(L=3, d=8, v=20):
    """An nnx.scan-style layout: block parameters carry a leading layer axis L."""
    return {
        "embed": {"table": jnp.zeros((v, d))},
        "blocks": {"attn": {"wq": {"kernel": jnp.zeros((L, d, 12))}},
                   "mlp": {"up": {"kernel": jnp.zeros((L, d, 16))}},
                   "norm": {"scale": jnp.ones((L, d))},
                   "conv": {"kernel": jnp.zeros((L, d))},  # a depthwise (1-D) kernel per layer
                   "gate": jnp.zeros((L,))},
        "head": {"kernel": jnp.zeros((d, v))},
    }
