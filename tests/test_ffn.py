"""The feed-forward registry (ffn/): relu2 unchanged, swiglu's formula, MoE routing, capacity and
balancing losses against per-token loops with known answers, FLOPs against XLA's count, every
kind training in a hybrid decoder, the auxiliary loss in its gradient, Muon on expert matrices.
Configurations, run records and the CLI flags: tests/test_ffn_config.py.

Dimensions are tiny and shared so the whole file compiles a handful of programs.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

import attention
import ffn
import optim
from core.errors import MgrError
from core.nn import MLP, Dense, rms_normalize
from ffn import moe
from mgr.config import ModelConfig, TrainConfig
from mgr.model import Decoder, Embedding
from mgr.train.flops import xla_flops
from optim import muon, partition

B, T, D, F = 2, 8, 16, 64  # the FFN modules' shapes: SMALL's blocks', so initialisers are shared
SMALL = dict(vocab_size=64, d_model=16, n_layers=2, n_heads=2, n_kv_heads=2, max_seq_len=8)
HYBRID = dict(attention=("standard", "tropical"), ffn=("relu2", "moe"))  # the issue's example
KINDS = ffn.names()


def model_cfg(**kw) -> ModelConfig:
    return ModelConfig(**{**SMALL, **kw})


# ---- the modules, compiled once per kind ------------------------------------------------------

_COMPILED: dict = {}


def compiled_ffn(name: str, shape=(B, T, D), **opts):
    """(module, executable of `with_aux` on `shape`) for one kind and knobs; cached."""
    key = (name, shape, tuple(sorted(opts.items())))
    if key not in _COMPILED:
        entry = ffn.get(name)
        module = entry.module_cls(D, F, entry.config_cls(**opts), rngs=nnx.Rngs(0), out_std=0.2)
        graphdef, state = nnx.split(module)
        fn = jax.jit(lambda s, x: nnx.merge(graphdef, s).with_aux(x))
        exe = fn.lower(state, jax.ShapeDtypeStruct(shape, jnp.float32)).compile()
        _COMPILED[key] = (module, lambda x: exe(state, x), exe)
    return _COMPILED[key]


def inputs(seed=0, shape=(B, T, D)):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def test_registry_lists_every_kind_and_an_unknown_name_is_one_line():
    assert {"relu2", "swiglu", "moe"} <= set(KINDS)
    with pytest.raises(MgrError) as err:
        ffn.get("nonesuch")
    assert isinstance(err.value, KeyError)
    assert str(err.value) == f"unknown ffn 'nonesuch'; valid: {', '.join(KINDS)}"


@pytest.mark.parametrize("name", KINDS)
def test_counted_flops_agree_with_flops_per_token(name):
    """XLA's count of the compiled forward against the kind's analytic count (matmuls only: the
    rest, activations and routing bookkeeping, stays within a few percent at these widths)."""
    opts = [{}] + ([{"capacity_factor": 1.0, "top_k": 2}] if ffn.get(name).has_aux else [])
    for o in opts:
        entry = ffn.get(name)
        *_, exe = compiled_ffn(name, **o)
        analytic = entry.flops_per_token(D, F, entry.config_cls(**o), T) * B * T
        assert 0.97 < xla_flops(exe) / analytic < 1.08, (o, xla_flops(exe), analytic)


def test_moe_flops_count_every_capacity_slot():
    """Capacity sets the compute: dropless runs E slots per token, capacity 1.0 with k = 1 one."""
    cfg = moe.MoEConfig(n_experts=4)
    dropless = moe._flops(D, F, cfg, T)
    capped = moe._flops(D, F, moe.MoEConfig(n_experts=4, capacity_factor=1.0), T)
    experts = 2 * 2.0 * D * F
    assert dropless == pytest.approx(4 * experts + 2 * D * 4 + 4 * 4 * T * D + 4 * 4 * T)
    assert capped == pytest.approx(experts + 2 * D * 4 + 4 * 4 * 2 * D + 4 * 4 * 2)


# ---- relu2 and swiglu -------------------------------------------------------------------------

class OldDecoder(nnx.Module):
    """The decoder as built before the registry: per layer the algebra, then `core.nn.MLP`."""

    def __init__(self, cfg: ModelConfig, seed: int):
        rngs = nnx.Rngs(seed)
        self.embed = Embedding(cfg.vocab_size, cfg.d_model, rngs=rngs)
        attn, mlps = [], []
        for layer in range(cfg.n_layers):
            name = cfg.layer_attention(layer)
            attn.append(attention.get(name).module_cls(cfg.attention_dims(), cfg.algebra_config(name),
                                                       rngs=rngs))
            out_std = (cfg.d_model * cfg.mlp_ratio) ** -0.5 / (2 * cfg.n_layers) ** 0.5
            mlps.append(MLP(cfg.d_model, cfg.d_model * cfg.mlp_ratio, rngs=rngs, out_std=out_std))
        self.attn, self.mlps = nnx.List(attn), nnx.List(mlps)
        self.head = Dense(cfg.d_model, cfg.vocab_size, rngs=rngs, std=0.02 / cfg.d_model ** 0.5 * 8)
        self.cap = cfg.logit_softcap

    def loss(self, batch):
        x, targets = self.embed(batch[:, :-1]), batch[:, 1:]
        pos = jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32), x.shape[:2])
        for a, m in zip(self.attn, self.mlps):
            x = x + a(rms_normalize(x), pos)[0]
            x = x + m(rms_normalize(x))
        z = self.head(rms_normalize(x)).astype(jnp.float32)
        logits = self.cap * jnp.tanh(z / self.cap)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))


def test_relu2_decoder_is_the_decoder_from_before_the_registry():
    """Same parameters from the same seed and the same loss as the pre-registry construction."""
    cfg = model_cfg()
    batch = jax.random.randint(jax.random.key(1), (2, 9), 0, cfg.vocab_size)

    new, old = Decoder(cfg, rngs=nnx.Rngs(3)), OldDecoder(cfg, 3)
    for i in range(cfg.n_layers):
        for part in ("up", "down"):
            np.testing.assert_array_equal(getattr(new.blocks[i].mlp, part).kernel[...],
                                          getattr(old.mlps[i], part).kernel[...])
    np.testing.assert_array_equal(new.head.kernel[...], old.head.kernel[...])
    got, want = nnx.jit(lambda n, o, b: (n.loss(b), o.loss(b)))(new, old, batch)
    assert float(got) == pytest.approx(float(want), rel=1e-6)


def test_swiglu_matches_its_formula():
    module, run, _ = compiled_ffn("swiglu")
    x = inputs(1)
    y, aux = run(x)
    w = {k: np.asarray(getattr(module, k).kernel[...], np.float64) for k in ("gate", "up", "down")}
    xs = np.asarray(x, np.float64)
    g = xs @ w["gate"]
    want = ((g / (1 + np.exp(-g))) * (xs @ w["up"])) @ w["down"]
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-5)
    assert w["up"].shape == (D, round(F * 2 / 3)) and float(aux) == 0.0


# ---- MoE routing against a per-token loop -----------------------------------------------------

def routing_by_loop(logits_GxE: np.ndarray, top_k: int, capacity: int):
    """Tokens in position order, each taking its top-k experts while they have a free slot."""
    g, e = logits_GxE.shape
    p = np.exp(logits_GxE - logits_GxE.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    dispatch, combine, filled = np.zeros((g, e, capacity)), np.zeros((g, e, capacity)), [0] * e
    for t in range(g):
        top = np.argsort(-p[t], kind="stable")[:top_k]
        gates = p[t, top] / (p[t, top].sum() if top_k > 1 else 1.0)
        for ex, gate in zip(top, gates):
            if filled[ex] < capacity:
                dispatch[t, ex, filled[ex]] = 1.0
                combine[t, ex, filled[ex]] = gate
                filled[ex] += 1
    return dispatch, combine


_ROUTE = jax.jit(moe.route, static_argnums=(1, 2))


@jax.jit
def _balance(logits_GxE):
    """Switch's loss of one group's routing with k = 1 and k = 2 (dropless)."""
    r1, r2 = moe.route(logits_GxE[None], 1, logits_GxE.shape[0]), moe.route(logits_GxE[None], 2, logits_GxE.shape[0])
    return (moe.load_balance_loss(r1.probs_BxGxE[0], r1.chosen_BxGxE[0], 1),
            moe.load_balance_loss(r2.probs_BxGxE[0], r2.chosen_BxGxE[0], 2))


def test_hand_set_routing_and_capacity_drop_order():
    """Six tokens want experts 0 0 0 1 2 1 with two slots each: token 2 (the latest asking for the
    full expert 0) is dropped, everything else keeps its place in position order."""
    want = [0, 0, 0, 1, 2, 1]
    logits = np.full((1, 6, 3), -4.0, np.float32)
    logits[0, np.arange(6), want] = 4.0
    r = _ROUTE(jnp.asarray(logits), 1, 2)
    slots = {(t, e, c) for t, e, c in zip(*np.nonzero(np.asarray(r.dispatch_BxGxExC[0])))}
    assert slots == {(0, 0, 0), (1, 0, 1), (3, 1, 0), (4, 2, 0), (5, 1, 1)}
    p_top = float(jax.nn.softmax(jnp.asarray(logits[0, 0]))[0])
    np.testing.assert_allclose(np.asarray(r.combine_BxGxExC[0]),
                               p_top * np.asarray(r.dispatch_BxGxExC[0]), rtol=1e-6)
    # The choice itself (before capacity) still counts token 2 for expert 0.
    np.testing.assert_array_equal(np.asarray(r.chosen_BxGxE[0]).argmax(-1), want)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), case=st.sampled_from([(1, 2), (2, 3)]))
def test_routing_equals_the_per_token_loop(seed, case):
    top_k, capacity = case
    logits = np.random.default_rng(seed).normal(size=(B, T, 4)).astype(np.float32) * 2
    r = _ROUTE(jnp.asarray(logits), top_k, capacity)
    for b in range(B):
        dispatch, combine = routing_by_loop(logits[b].astype(np.float64), top_k, capacity)
        np.testing.assert_array_equal(np.asarray(r.dispatch_BxGxExC[b]), dispatch)
        np.testing.assert_allclose(np.asarray(r.combine_BxGxExC[b]), combine, rtol=1e-5, atol=1e-7)


def moe_by_loop(module, x_BxTxD: np.ndarray, top_k: int, capacity: int) -> np.ndarray:
    w_r, up, down = (np.asarray(k, np.float64) for k in (
        module.router.kernel[...], module.up.kernel[...], module.down.kernel[...]))
    y = np.zeros_like(x_BxTxD, dtype=np.float64)
    for b in range(x_BxTxD.shape[0]):
        xs = x_BxTxD[b].astype(np.float64)
        _, combine = routing_by_loop(xs @ w_r, top_k, capacity)
        for t in range(xs.shape[0]):
            for e in range(w_r.shape[1]):
                gate = combine[t, e].sum()
                if gate:
                    y[b, t] += gate * (np.maximum(xs[t] @ up[e], 0) ** 2) @ down[e]
    return y


CAPPED = dict(n_experts=4, top_k=2, capacity_factor=1.0)  # C = 4 of G = 8: drops happen


def test_moe_output_matches_the_per_token_loop_with_drops():
    module, run, _ = compiled_ffn("moe", **CAPPED)
    x = inputs(2)
    y, _ = run(x)
    c = moe.capacity(module.cfg, T)
    assert c == 4
    np.testing.assert_allclose(np.asarray(y), moe_by_loop(module, np.asarray(x), 2, c),
                               rtol=1e-4, atol=1e-5)
    w_r = np.asarray(module.router.kernel[...], np.float64)
    kept = sum(routing_by_loop(np.asarray(x[b], np.float64) @ w_r, 2, c)[0].sum() for b in range(B))
    assert kept < B * T * 2  # some (token, expert) pairs were dropped


def test_capacity_drops_are_causal_and_dropless_equals_token_by_token():
    """Position-order priority: changing later tokens never changes earlier outputs, even with
    drops. Dropless, every token alone (T = 1 groups, as cached decoding runs) gives the full
    forward's output; with capacity it need not, which is why decoding wants dropless."""
    _, run, _ = compiled_ffn("moe", **CAPPED)
    x = inputs(3)
    changed = x.at[:, 5:].set(inputs(4)[:, 5:])
    np.testing.assert_allclose(run(changed)[0][:, :5], run(x)[0][:, :5], atol=1e-6)
    _, full, _ = compiled_ffn("moe")
    _, one, _ = compiled_ffn("moe", shape=(B * T, 1, D))
    y_full = full(x)[0]
    np.testing.assert_allclose(one(x.reshape(B * T, 1, D))[0].reshape(x.shape), y_full, atol=1e-5)


def test_load_balancing_and_z_loss_known_answers():
    e = 4
    # Certain routing of every token to expert 2: f = p̄ = e_2, so E Σ f p̄ = E.
    sure = np.full((8, e), -1e4, np.float32)
    sure[:, 2] = 1e4
    assert float(_balance(jnp.asarray(sure))[0]) == e
    # Perfectly uniform routing: each expert gets 2 of 8 tokens (both choices, with k = 2, are
    # spread evenly too) and has mean probability 1/E: the loss is 1.
    even = np.full((8, e), -3.0, np.float32)
    even[np.arange(8), np.arange(8) % e] = 3.0
    even[np.arange(8), (np.arange(8) + 1) % e] = 1.0
    k1, k2 = _balance(jnp.asarray(even))
    assert float(k1) == pytest.approx(1.0, abs=1e-6) and float(k2) == pytest.approx(1.0, abs=1e-6)
    # z-loss: zero logits give logsumexp = log E.
    assert float(jax.jit(moe.router_z_loss)(jnp.zeros((5, e)))) == pytest.approx(math.log(e) ** 2, rel=1e-6)


# ---- in the decoder ---------------------------------------------------------------------------

def sgd_run(cfg: ModelConfig, steps: int = 8, extra=None):
    """Losses of `steps` SGD steps on one batch, each layer's feed-forward gradient norm at the
    first step, and `extra(graphdef, initial params)`, all in one compiled program. (Plain SGD
    compiles faster than Adam; one program compiles faster than two.)"""
    graphdef, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    batch = jax.random.randint(jax.random.key(5), (4, SMALL["max_seq_len"] + 1), 0, cfg.vocab_size)
    tx = optax.sgd(1.0)
    loss_of = lambda p: nnx.merge(graphdef, p).loss(batch)

    @jax.jit
    def run(params):
        def body(carry, _):
            p, o = carry
            loss, g = jax.value_and_grad(loss_of)(p)
            u, o = tx.update(g, o, p)
            norms = jnp.stack([optax.global_norm(g["blocks"][i]["mlp"]) for i in range(cfg.n_layers)])
            return (optax.apply_updates(p, u), o), (loss, norms)

        _, (losses, norms) = jax.lax.scan(body, (params, tx.init(params)), None, steps)
        return losses, norms[0], (extra(graphdef, params) if extra else None)

    return run(params)


def check_trains(losses, ffn_grads, *_):
    losses = np.asarray(losses)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.5, losses
    assert np.all(np.asarray(ffn_grads) > 1e-6), ffn_grads


def built_kinds(cfg: ModelConfig) -> list[type]:
    abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))  # no arrays: nothing runs
    return [type(b.mlp) for b in abstract.blocks]


def aux_decomposition(graphdef, params):
    """[Decoder.loss − its CE, masked_loss − its masked CE, aux] and their Jacobian rows with
    respect to the feed-forward of every layer whose kind has an aux loss (one vmapped backward;
    only those rows leave the program, so XLA drops the other gradients)."""
    from mgr.bench.probe_train import IGNORE, masked_loss

    batch = jax.random.randint(jax.random.key(6), (2, 9), 0, SMALL["vocab_size"])
    probe = {"tokens": batch[:, :-1], "targets": batch[:, 1:].at[:, :4].set(IGNORE)}
    scored = probe["targets"] != IGNORE

    def values(p):
        m = nnx.merge(graphdef, p)
        h, _, aux = m.hidden_and_aux(batch[:, :-1])
        ce = optax.softmax_cross_entropy_with_integer_labels(m.logits(h), batch[:, 1:])
        masked_ce = jnp.sum(ce * scored) / jnp.sum(scored)
        return jnp.stack([m.loss(batch) - jnp.mean(ce), masked_loss(m, probe) - masked_ce, aux])

    blocks = jax.jacrev(values)(params)["blocks"]
    return values(params), {i: blocks[i]["mlp"] for i, k in enumerate(KINDS) if ffn.get(k).has_aux}


AUX_OPTIONS = {"moe": {"aux_weight": 0.5, "z_weight": 0.1}}  # large enough to see in gradients
# Every registered kind, one layer each, over the issue's hybrid attention pattern.
EVERY_KIND = dict(attention=HYBRID["attention"], ffn=tuple(KINDS), n_layers=len(KINDS),
                  ffn_options=AUX_OPTIONS)


@pytest.fixture(scope="module")
def every_kind_run():
    cfg = model_cfg(**EVERY_KIND)
    assert built_kinds(cfg) == [ffn.get(k).module_cls for k in KINDS]
    return sgd_run(cfg, extra=aux_decomposition)


def test_every_kind_trains_in_a_hybrid_decoder(every_kind_run):
    """Every registered kind, one layer each, over attention (standard, tropical, ...), from
    configuration alone: the loss falls and every layer's feed-forward gets a gradient. One
    compiled program covers every kind; a new kind joins by registering."""
    check_trains(*every_kind_run)
    assert len(every_kind_run[1]) == len(KINDS)


def test_aux_loss_is_in_the_gradient_not_in_the_reported_value(every_kind_run):
    """Decoder.loss and the probe tasks' masked loss: value = cross-entropy, gradient = that of
    cross-entropy + aux (checked on every parameter of each aux kind's layer), and the aux term
    alone gives that feed-forward a non-zero gradient (for moe: its router)."""
    (loss_minus_ce, masked_minus_ce, aux), jac = every_kind_run[2]
    assert jac and float(aux) > 0.1
    assert abs(float(loss_minus_ce)) < 1e-6 and abs(float(masked_minus_ce)) < 1e-6
    for layer, rows in jac.items():
        rows = [np.asarray(leaf) for leaf in jax.tree.leaves(rows)]  # loss−ce, masked−ce, aux
        for leaf in rows:
            np.testing.assert_allclose(leaf[0], leaf[2], rtol=1e-4, atol=1e-7)
            np.testing.assert_allclose(leaf[1], leaf[2], rtol=1e-4, atol=1e-7)
        assert max(np.abs(leaf[2]).max() for leaf in rows) > 1e-4, KINDS[layer]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_alone_trains_in_the_decoder(kind):
    cfg = model_cfg(n_layers=1, attention="standard", ffn=kind)
    check_trains(*sgd_run(cfg))


@pytest.mark.slow
def test_the_issues_hybrid_trains():
    """attention (standard, tropical) with ffn (relu2, moe), exactly as the issue writes it."""
    cfg = model_cfg(**HYBRID)
    assert built_kinds(cfg) == [ffn.get("relu2").module_cls, ffn.get("moe").module_cls]
    check_trains(*sgd_run(cfg))


# ---- optimizers -------------------------------------------------------------------------------

def test_partition_routes_expert_matrices_to_muon_and_the_router_to_adamw():
    abstract = nnx.eval_shape(lambda: Decoder(model_cfg(**HYBRID), rngs=nnx.Rngs(0)))
    params = nnx.state(abstract, nnx.Param)
    roles = partition.role_table(params)
    labels = {partition.path_str(p): lab
              for p, lab in jax.tree_util.tree_flatten_with_path(muon.labels(params))[0]}
    for part in ("up", "down"):
        assert roles[f"blocks/1/mlp/{part}/kernel"] == partition.MATRIX
        assert labels[f"blocks/1/mlp/{part}/kernel"] == muon.MUON
    assert roles["blocks/1/mlp/router/kernel"] == partition.HEAD
    assert labels["blocks/1/mlp/router/kernel"] == muon.ADAM
    assert roles["blocks/0/mlp/up/kernel"] == partition.MATRIX  # relu2 unchanged
    assert partition.decay_mask({"blocks": {"1": {"mlp": {"router": {"kernel": jnp.zeros((4, 2))}}}}}) \
        == {"blocks": {"1": {"mlp": {"router": {"kernel": True}}}}}


def test_one_muon_step_orthogonalises_each_expert():
    e, d, f = 3, 16, 24
    rng = np.random.default_rng(0)
    params = {"blocks": {"0": {"mlp": {"up": {"kernel": jnp.zeros((e, d, f))},
                                       "router": {"kernel": jnp.zeros((d, e))}}}}}
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    tx = optim.build_transform(TrainConfig(optimizer="muon", schedule="constant", learning_rate=1.0,
                                           warmup_steps=0, steps=10, grad_clip=0.0,
                                           optimizer_options=dict(beta=0.0, weight_decay=0.0,
                                                                  consistent_rms=None)), 10)
    u = jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])(grads, params)["blocks"]["0"]["mlp"]
    width = np.sqrt(max(1.0, f / d))
    s = np.linalg.svd(-np.asarray(u["up"]["kernel"], np.float64) / width, compute_uv=False)
    assert s.shape == (e, d) and 0.6 < s.min() and s.max() < 1.25, s  # each expert on its own
    g = np.linalg.svd(np.asarray(grads["blocks"]["0"]["mlp"]["up"]["kernel"]), compute_uv=False)
    assert (g.max(-1) / g.min(-1)).min() > 2  # the gradient was far from orthogonal
    r = np.abs(np.asarray(u["router"]["kernel"]))
    np.testing.assert_allclose(r, r.mean(), rtol=1e-2)  # Adam's first step: sign-like


@pytest.mark.slow
def test_cached_decoding_equals_the_full_forward_with_dropless_experts():
    cfg = model_cfg(**HYBRID)
    model = Decoder(cfg, rngs=nnx.Rngs(2))
    tokens = jax.random.randint(jax.random.key(2), (2, 8), 0, cfg.vocab_size)
    full = nnx.jit(lambda m, t: m(t))(model, tokens)
    pos = jnp.broadcast_to(jnp.arange(8, dtype=jnp.int32), (2, 8))
    decode = nnx.jit(lambda m, t, p, c: m.decode(t, p, c))
    out, caches = decode(model, tokens[:, :4], pos[:, :4], model.init_cache(2))
    outs = [out]
    for t in range(4, 8):
        out, caches = decode(model, tokens[:, t:t + 1], pos[:, t:t + 1], caches)
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-4, rtol=1e-4)
