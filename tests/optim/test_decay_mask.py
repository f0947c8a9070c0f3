"""Weight decay by effect, for every parameter kind `optim/partition.py` distinguishes.

With zero gradients Adam's step and Muon's orthogonalised step are both exactly 0, so the update
is pure decoupled decay, −lr·λ·W on a decayed leaf and 0 elsewhere: which leaves decay is read
off the update itself. Every optimizer with a decay knob is checked on a small tree holding each
kind (including a 2-D table that is not a linear map) and on an `nnx.scan`-style stacked layout;
the trainer's default optimizer also on a decoder holding every registered algebra, so every kind
of parameter an algebra adds is covered.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention
import optim
from optim import partition
from mgr.config import TrainConfig
from optim_helpers import make_tx, stacked_params, tiny_decoder
from flax import nnx

LR, WD = 0.1, 0.5
DECAYED = {partition.MATRIX, partition.EMBEDDING, partition.HEAD}  # all but vectors
# Optimizers with a weight-decay knob (HOSS has none), read from their configs, not named here.
WITH_DECAY = [n for n in optim.names()
              if "weight_decay" in {f.name for f in dataclasses.fields(optim.get(n).config_cls)}]


def randomised(params, seed=0):
    """Random values of the same shapes (params may be abstract, from `nnx.eval_shape`)."""
    # numpy: one eager jax.random call per distinct shape would compile dozens of programs.
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)


def decay_only_update(name, params, stacked=False):
    tx = make_tx(name, lr=LR, optimizer_options={"weight_decay": WD}, stacked=stacked)
    zeros = jax.tree.map(jnp.zeros_like, params)
    return jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])(zeros, params)


def should_decay(path, ndim, stacked):
    """The documented rule (markdown_documentation/adamw.md, muon.md), written out here rather
    than read from `optim.partition`: the embedding table, the head, and every block parameter
    named `kernel` with two axes besides a stacked layer axis."""
    top = path.split("/")[0]
    return top in ("embed", "head") or (path.endswith("/kernel") and ndim - int(stacked) >= 2)


def check_decay(name, params, stacked):
    roles = partition.role_table(params, stacked=stacked)
    assert set(roles.values()) == set(partition.ROLES), roles  # every kind is present
    updates = decay_only_update(name, params, stacked)
    flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
    for (path, x), u in zip(flat_p, jax.tree.leaves(updates), strict=True):
        path = partition.path_str(path)
        decayed = should_decay(path, x.ndim, stacked)
        assert decayed == (roles[path] in DECAYED), (path, roles[path])
        expected = -LR * WD * np.asarray(x) if decayed else np.zeros(x.shape)
        np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-5, atol=1e-7, err_msg=path)


def every_kind_params(d=8, v=20):
    return {
        "embed": {"table": jnp.zeros((v, d))},
        "blocks": {"0": {"attn": {"wq": {"kernel": jnp.zeros((d, 12))},
                                  "log_delta": jnp.zeros((4, 9))},  # a table, not a linear map
                         "norm": {"scale": jnp.zeros((d,))},
                         "gate": jnp.zeros(())}},
        "head": {"kernel": jnp.zeros((d, v))},
    }


def test_some_optimizers_decay():
    assert WITH_DECAY, "no registered optimizer has a weight_decay knob"


@pytest.mark.parametrize("name", WITH_DECAY)
def test_decay_on_matrices_embedding_and_head_only(name):
    check_decay(name, randomised(every_kind_params(), seed=2), stacked=False)


def test_default_optimizer_decays_every_algebras_parameters_by_role():
    names = tuple(attention.names())
    # Shapes only: building eleven algebras' parameters eagerly would cost more than the check.
    abstract = nnx.eval_shape(lambda: tiny_decoder(attention=names, n_layers=len(names)))
    check_decay(TrainConfig().optimizer, randomised(nnx.state(abstract, nnx.Param)), stacked=False)


@pytest.mark.parametrize("name", WITH_DECAY)
def test_decay_on_the_stacked_layout(name):
    """(L, d) norms and per-layer 1-D kernels are vectors only because of `stacked=True`."""
    check_decay(name, randomised(stacked_params(), seed=1), stacked=True)
