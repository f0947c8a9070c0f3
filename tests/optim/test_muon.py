"""Muon: orthogonalised updates, routing parameter by parameter, and adamw != muon.

The reference's JAX Muon touched no parameter (every label said "adamw") and its `adamw` and
`muon` options built the same optimizer; these tests fail on either defect.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import attention
from optim import muon, partition
from optim_helpers import make_tx, tiny_decoder
from flax import nnx

# beta = 0 and no shape factor: the update is exactly −lr · NS5(gradient).
PLAIN = dict(beta=0.0, weight_decay=0.0, consistent_rms=None)
# Keller Jordan's NS5 coefficients leave singular values in a band around 1, measured as
# [0.68, 1.13] on Gaussian matrices; a matrix that was not orthogonalised misses it by far.
NS5_BAND = (0.6, 1.25)


def one_update(name, params, grads, *, lr=1.0, stacked=False, **options):
    tx = make_tx(name, lr=lr, optimizer_options=options, stacked=stacked)
    # Jitted: eager optax dispatches every small op and is slower than compiling.
    updates, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(grads, params)
    return updates


def random_like(params, seed=0):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def width_factor(shape):
    return np.sqrt(max(1.0, shape[-1] / shape[-2]))


def singular_values(u):
    """Singular values of each (in, out) matrix, leading axes batched."""
    return np.linalg.svd(np.asarray(u, np.float64), compute_uv=False)


def is_sign_like(u, rtol=1e-2):
    """A first Adam step is −c·lr·sign(g): every entry has the same magnitude."""
    a = np.abs(np.asarray(u))
    return np.allclose(a, a.mean(), rtol=rtol)


@pytest.mark.parametrize("shape", [(32, 16), (16, 32), (32, 128), (128, 32)])
def test_update_is_orthogonal(shape):
    params = {"blocks": {"kernel": jnp.zeros(shape)}}
    grads = random_like(params, seed=shape[0] + shape[1])
    u = one_update("muon", params, grads, **PLAIN)["blocks"]["kernel"]
    s = singular_values(-np.asarray(u) / width_factor(shape))
    assert NS5_BAND[0] < s.min() and s.max() < NS5_BAND[1], s
    # The gradient itself is far from orthogonal, so this is the transform's doing.
    g = singular_values(grads["blocks"]["kernel"])
    assert g.max() / g.min() > 2


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


def test_stacked_roles_and_per_layer_orthogonalisation():
    params = stacked_params()
    assert partition.role_table(params, stacked=True) == {
        "embed/table": "embedding", "head/kernel": "head",
        "blocks/attn/wq/kernel": "matrix", "blocks/mlp/up/kernel": "matrix",
        "blocks/norm/scale": "vector", "blocks/conv/kernel": "vector", "blocks/gate": "vector"}
    # Without the flag the per-layer 1-D kernels would look like matrices: the flag matters.
    assert partition.role_table(params)["blocks/conv/kernel"] == "matrix"
    grads = random_like(params, seed=3)
    u = one_update("muon", params, grads, stacked=True, **PLAIN)
    for path in (("attn", "wq", "kernel"), ("mlp", "up", "kernel")):
        x = u["blocks"]
        for k in path:
            x = x[k]
        for layer in range(x.shape[0]):  # each layer's matrix on its own
            s = singular_values(-np.asarray(x[layer]) / width_factor(x.shape))
            assert NS5_BAND[0] < s.min() and s.max() < NS5_BAND[1], (path, layer, s)
    for leaf in (u["embed"]["table"], u["head"]["kernel"], u["blocks"]["norm"]["scale"],
                 u["blocks"]["conv"]["kernel"]):
        assert is_sign_like(leaf)


def hidden_matrices_of_standard_decoder(n_layers=2):
    names = ["attn/qkv/wq/kernel", "attn/qkv/wk/kernel", "attn/qkv/wv/kernel", "attn/wo/kernel",
             "mlp/up/kernel", "mlp/down/kernel"]
    return {f"blocks/{i}/{n}" for i in range(n_layers) for n in names}


def test_decoder_routing_parameter_by_parameter(decoder_params):
    _, params = decoder_params
    labels = {partition.path_str(p): lab
              for p, lab in jax.tree_util.tree_flatten_with_path(muon.labels(params))[0]}
    assert {p for p, lab in labels.items() if lab == muon.MUON} == \
        hidden_matrices_of_standard_decoder()
    assert {p for p, lab in labels.items() if lab == muon.ADAM} == {"embed/table", "head/kernel"}
    # And by effect: each Muon leaf's update is orthogonalised, each AdamW leaf's sign-like.
    grads = random_like(params, seed=1)
    flat_u = jax.tree_util.tree_flatten_with_path(
        one_update("muon", params, grads, lr=1.0, **PLAIN))[0]
    for p, u in flat_u:
        path = partition.path_str(p)
        if labels[path] == muon.MUON:
            s = singular_values(-np.asarray(u) / width_factor(u.shape))
            assert 0.6 < s.max() < NS5_BAND[1] and not is_sign_like(u), path
        else:
            assert is_sign_like(u), path


@pytest.mark.parametrize("name", attention.names())
def test_every_algebra_routes_hidden_matrices_to_muon(name):
    """Whatever parameters an algebra adds: ≥2-axis block kernels to Muon, the rest to AdamW
    (2-D tables that are not linear maps, such as ultrametric's `log_delta`, stay with AdamW)."""
    _, params = nnx.split(tiny_decoder(attention=name), nnx.Param)
    labels = jax.tree.leaves(muon.labels(params))
    for (p, x), label in zip(jax.tree_util.tree_flatten_with_path(params)[0], labels, strict=True):
        path = partition.path_str(p)
        hidden_matrix = path.startswith("blocks/") and path.endswith("/kernel") and x.ndim >= 2
        assert (label == muon.MUON) == hidden_matrix, (path, x.shape)


def test_adamw_and_muon_differ_and_muon_moves_every_hidden_matrix(decoder_params):
    _, params = decoder_params
    grads = random_like(params, seed=2)
    ua = one_update("adamw", params, grads, lr=1e-2)
    um = one_update("muon", params, grads, lr=1e-2)
    new = optax.apply_updates(params, um)
    for (p, a), m, x0, x1 in zip(jax.tree_util.tree_flatten_with_path(ua)[0],
                                 jax.tree.leaves(um), jax.tree.leaves(params), jax.tree.leaves(new)):
        path = partition.path_str(p)
        if path in hidden_matrices_of_standard_decoder():
            assert float(jnp.linalg.norm(a - m)) > 0.1 * float(jnp.linalg.norm(a)), path
            assert float(jnp.linalg.norm(x1 - x0)) > 1e-3, path
