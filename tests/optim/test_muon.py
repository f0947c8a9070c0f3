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
import optim
from mgr.config import TrainConfig
from optim import muon, partition
from optim_helpers import make_tx, stacked_params, tiny_decoder
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


# ---- the defaults, with momentum, on the trainer's path ---------------------------------------

# The NS5 coefficients as markdown_documentation/muon.md states them (not read from optim/muon.py).
DOC_NS5 = (3.4445, -4.7750, 2.0315)


def newton_schulz5(m):
    """Five quintic Newton–Schulz steps on M/‖M‖_F, in float64, on the wide orientation."""
    x = np.asarray(m, np.float64)
    tall = x.shape[0] > x.shape[1]
    x = (x.T if tall else x) / np.linalg.norm(x)
    a, b, c = DOC_NS5
    for _ in range(5):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def momentum_directions(grads, beta, nesterov):
    """What Muon orthogonalises at step t = 1, 2, ...: M_t = βM_{t−1} + (1−β)G_t, bias-corrected
    as optax does; Nesterov looks ahead, βM̂ + (1−β)Ĝ. NS5 divides out the overall scale, but
    the weight of the momentum against the fresh gradient is exactly what this pins."""
    m, out = np.zeros_like(grads[0]), []
    for t, g in enumerate(grads, start=1):
        m = beta * m + (1 - beta) * g
        out.append(beta * m / (1 - beta ** (t + 1)) + (1 - beta) * g / (1 - beta ** t)
                   if nesterov else m / (1 - beta ** t))
    return out


def ill_conditioned_gradients(shape, steps, seed=0):
    """Gradients with fresh singular vectors every step and singular values 3 .. 1e-3."""
    rng = np.random.default_rng(seed)
    k = min(shape)
    sigma = np.logspace(0.5, -3, k)
    out = []
    for _ in range(steps):
        u, _ = np.linalg.qr(rng.normal(size=(shape[0], k)))
        v, _ = np.linalg.qr(rng.normal(size=(shape[1], k)))
        out.append((u * sigma) @ v.T)
    return out


@pytest.mark.parametrize("nesterov", [True, False])
def test_default_update_is_ns5_of_the_momentum_over_several_steps(nesterov):
    """MuonConfig's defaults (β = 0.95, consistent RMS 0.2, weight decay 0.1; Nesterov by
    default, and without it) behind the trainer's default clipping: each step's update of a
    hidden matrix is −lr·(s·NS5(momentum direction) + λW), the momentum computed here from the
    clipped gradients. Dropping the momentum, orthogonalising the gradient instead, or the
    wrong Nesterov weighting all miss from the second step on."""
    cfg, clip = muon.MuonConfig(nesterov=nesterov), TrainConfig().grad_clip
    lr, shape = 0.05, (16, 24)
    grads = ill_conditioned_gradients(shape, steps=4)
    clipped = [g * min(1.0, clip / np.linalg.norm(g)) for g in grads]
    assert all(np.linalg.norm(g) > clip for g in grads)  # the clipping really acts
    directions = momentum_directions(clipped, cfg.beta, nesterov)
    s = cfg.consistent_rms * np.sqrt(max(shape))
    tx = make_tx("muon", lr=lr, grad_clip=clip, optimizer_options={"nesterov": nesterov})
    params = {"blocks": {"kernel": jnp.asarray(np.random.default_rng(1).normal(size=shape),
                                               jnp.float32)}}
    update, state = jax.jit(tx.update), tx.init(params)
    checked = 0
    for g, d in zip(grads, directions):
        u, state = update({"blocks": {"kernel": jnp.asarray(g, jnp.float32)}}, state, params)
        w = np.asarray(params["blocks"]["kernel"], np.float64)
        got = np.asarray(u["blocks"]["kernel"], np.float64)
        expected = -lr * (s * newton_schulz5(d) + cfg.weight_decay * w)
        np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())
        # Singular values ~1 along the momentum's own directions with σ >= σ_max/30; NS5 need
        # not lift the near-null ones into the band (markdown_documentation/muon.md).
        o = -(got / lr + cfg.weight_decay * w) / s
        left, sig, right_t = np.linalg.svd(d, full_matrices=False)
        along = np.einsum("ik,ij,kj->k", left, o, right_t)
        big = sig >= sig[0] / 30
        assert NS5_BAND[0] < along[big].min() and along[big].max() < NS5_BAND[1], along[big]
        checked += int(big.sum())
        params = optax.apply_updates(params, u)
    assert checked >= 4 * 8, checked


@pytest.mark.parametrize("schedule", ["cosine", "ordinal"])  # lr as a schedule / as a scalar
def test_adamw_branch_is_nesterov_adam_at_the_lr_ratio(schedule):
    """Muon's other leaves, two steps by hand: Nesterov Adam (`nesterov` covers both branches)
    with adam_b1 != adam_b2 at adam_lr_ratio × the schedule's lr, decay on embedding and head
    only. Catches a ratio or beta dropped or swapped and Nesterov not reaching the branch."""
    b1, b2, eps, wd, ratio, peak, steps = 0.8, 0.99, 1e-8, 0.1, 0.3, 0.1, 10
    shapes = {"embed": {"table": (5, 3)}, "head": {"kernel": (3, 5)},
              "blocks": {"norm": {"scale": (3,)}}}
    decayed = {"table": 1.0, "kernel": 1.0, "scale": 0.0}
    rng = np.random.default_rng(4)
    draw = lambda: jax.tree.map(lambda s: rng.normal(size=s), shapes,
                                is_leaf=lambda x: isinstance(x, tuple))
    p0, g1, g2 = draw(), draw(), draw()
    tx = make_tx("muon", schedule, lr=peak, steps=steps, optimizer_options=dict(
        adam_b1=b1, adam_b2=b2, eps=eps, weight_decay=wd, adam_lr_ratio=ratio))
    sched = optim.get_schedule(schedule)
    lr = sched.build(sched.config_cls(), peak, 0, steps)
    f32 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), t)
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, value=jnp.float32(1.0)))
    params = f32(p0)
    u1, state = update(f32(g1), tx.init(params), params)
    u2, _ = update(f32(g2), state, optax.apply_updates(params, u1))
    for (path, x0), a, b, got1, got2 in zip(jax.tree_util.tree_flatten_with_path(p0)[0],
                                             jax.tree.leaves(g1), jax.tree.leaves(g2),
                                             jax.tree.leaves(u1), jax.tree.leaves(u2)):
        dec = decayed[partition.path_str(path).split("/")[-1]]
        m, v, x, want = np.zeros_like(a), np.zeros_like(a), x0, []
        for t, g in ((1, a), (2, b)):
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g ** 2
            m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1 ** t)
            step = m_hat / (np.sqrt(v / (1 - b2 ** t)) + eps)
            want.append(-ratio * float(lr(t - 1)) * (step + wd * dec * x))
            x = x + want[-1]
        for got, exp in zip((got1, got2), want):
            np.testing.assert_allclose(np.asarray(got), exp, rtol=1e-4, atol=1e-7,
                                       err_msg=partition.path_str(path))
