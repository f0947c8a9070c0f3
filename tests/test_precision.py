"""The bfloat16 compute path (`ModelConfig.compute_dtype`, `--dtype`): float32 master weights,
bfloat16 products where the FLOPs are, and losses that stay close to float32.

What must hold: the activations really are bfloat16 and the products really run in bfloat16 in
the compiled train step (XLA:CPU silently turns some bfloat16 dots into float32 ones, so the
compiled HLO is read); parameters, gradients and optimizer state stay float32; the low-precision
product and the fused head equal their float32 counterparts on the same rounded inputs to
bfloat16 rounding; the decoder's loss and gradients stay close to float32's; forward-over-reverse
(HOSS) works through the custom backward; a bad dtype is one line.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from core.errors import MgrError
from core.nn import matmul_low
from mgr.config import ModelConfig, TrainConfig
from mgr.model import Decoder
from mgr.model.head_loss import mean_softcap_cross_entropy
from mgr.train.trainer import make_step
from tests.helpers import assert_user_error

BF16 = jnp.bfloat16
_DEF = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(\w+)\[([\d,]*)\]")
_DOT = re.compile(r"=\s*\w+\[[\d,]*\](?:\{[^}]*\})?\s+dot\(%([\w.\-]+),\s*%([\w.\-]+)\)")


def dot_operands(hlo_text: str) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """(dtype, dims) of both operands of every dot in compiled HLO text."""
    out = []
    for block in hlo_text.split("\n\n"):
        types = {m.group(1): (m.group(2), m.group(3)) for m in map(_DEF.match, block.splitlines()) if m}
        for m in map(_DOT.search, block.splitlines()):
            if m:
                out.append((types[m.group(1)], types[m.group(2)]))
    return out


def _cfg(attention="standard", dtype="bfloat16", n_layers=2, **kw):
    return ModelConfig(vocab_size=96, d_model=32, n_layers=n_layers, n_heads=4, n_kv_heads=2, max_seq_len=16,
                       attention=attention, compute_dtype=dtype, **kw)


def _batch(seed=1):
    return jax.random.randint(jax.random.key(seed), (2, 17), 0, 96)


def test_every_matrix_product_of_the_bf16_train_step_runs_in_bf16():
    parts = make_step(_cfg(), TrainConfig(optimizer="adamw"), 100)
    state = jax.eval_shape(parts.init)
    hlo = jax.jit(parts.step).lower(state, jax.ShapeDtypeStruct((2, 17), jnp.int32)).compile().as_text()
    dots = dot_operands(hlo)
    # 2-D products: every Dense (q, k, v, o, the feed-forward) forward and backward, and the
    # head's three products. Attention's own batched score products may stay float32.
    matrix = [(a, b) for a, b in dots if a[1].count(",") == 1 and b[1].count(",") == 1]
    assert len(matrix) >= 2 * 6 * 3 + 3, matrix  # 2 layers x 6 Dense x (fwd + 2 bwd) + head
    assert all(a[0] == b[0] == "bf16" for a, b in matrix), [x for x in matrix if x[0][0] != "bf16"]
    # and the float32 model keeps float32 products throughout
    parts32 = make_step(_cfg(dtype="float32"), TrainConfig(optimizer="adamw"), 100)
    hlo32 = jax.jit(parts32.step).lower(jax.eval_shape(parts32.init),
                                        jax.ShapeDtypeStruct((2, 17), jnp.int32)).compile().as_text()
    assert {a[0] for a, _ in dot_operands(hlo32)} == {"f32"}


@functools.lru_cache(maxsize=None)
def _low_vjp(shape):
    def f(x, w, g):
        y, vjp = jax.vjp(matmul_low, x, w)
        return (y, *vjp(g))
    return jax.jit(f)


# Shapes from a small set (each is one compile); values from Hypothesis.
@settings(max_examples=8, deadline=None)
@given(shape=st.sampled_from([(1, 1, 1), (7, 5, 3), (24, 20, 9)]), seed=st.integers(0, 2**16))
def test_matmul_low_is_the_float32_product_of_the_rounded_inputs(shape, seed):
    n, d, f = shape
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    x, w = jax.random.normal(k1, (n, d)).astype(BF16), jax.random.normal(k2, (d, f)).astype(BF16)
    g = jax.random.normal(k3, (n, f)).astype(BF16)
    y, dx, dw = _low_vjp(shape)(x, w, g)
    assert y.dtype == dx.dtype == dw.dtype == BF16
    x32, w32, g32 = (a.astype(jnp.float32) for a in (x, w, g))
    # one bfloat16 rounding of a float32-accumulated result: relative 2^-8 of the magnitude
    for got, want in ((y, x32 @ w32), (dx, g32 @ w32.T), (dw, x32.T @ g32)):
        scale = np.abs(np.asarray(want)).max() + 1e-6
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), atol=scale * 2 ** -7)


def test_bf16_head_loss_matches_float32_on_the_same_rounded_inputs():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    h, kernel = jax.random.normal(k1, (37, 16)).astype(BF16), (0.3 * jax.random.normal(k2, (16, 50))).astype(BF16)
    t = jax.random.randint(k3, (37,), 0, 50)
    f = jax.value_and_grad(lambda a, b: mean_softcap_cross_entropy(a, b, t, 15.0, 8), (0, 1))
    (lo, (dh, dk)), (hi, (dh32, dk32)) = f(h, kernel), f(h.astype(jnp.float32), kernel.astype(jnp.float32))
    assert lo.dtype == jnp.float32 and dh.dtype == dk.dtype == BF16
    assert abs(float(lo) - float(hi)) < 1e-5 * float(hi)  # logits accumulate in float32
    for got, want in ((dh, dh32), (dk, dk32)):
        scale = float(jnp.abs(want).max())
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), atol=scale * 2 ** -6)


def _cos(a, b) -> float:
    a, b = (jnp.concatenate([x.ravel() for x in jax.tree.leaves(t)]) for t in (a, b))
    return float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


@pytest.mark.parametrize("attention,hvp", [("standard", True), ("ssm", False)])
def test_bf16_decoder_stays_close_to_float32_with_float32_master_weights(attention, hvp):
    """Loss, gradients and (forward-over-reverse, as HOSS uses them) Hessian-vector products of
    the same float32 master weights under both compute dtypes."""
    graph32, params = nnx.split(Decoder(_cfg(attention, "float32", n_layers=1), rngs=nnx.Rngs(0)), nnx.Param)
    graph16, _ = nnx.split(Decoder(_cfg(attention, n_layers=1), rngs=nnx.Rngs(0)), nnx.Param)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    batch = _batch()
    h = jax.eval_shape(lambda p: nnx.merge(graph16, p).hidden(batch[:, :-1])[0], params)
    assert h.dtype == BF16  # the residual stream really is bfloat16
    v = jax.tree.map(jnp.ones_like, params)

    def measure(graph):
        grad = jax.value_and_grad(lambda q: nnx.merge(graph, q).loss(batch))
        if not hvp:
            return (*jax.jit(grad)(params), None)
        return jax.jit(lambda p: (lambda out: (*out[0], out[1][1]))(jax.jvp(grad, (p,), (v,))))(params)

    (l16, g16, hvp16), (l32, g32, hvp32) = measure(graph16), measure(graph32)
    assert {x.dtype for x in jax.tree.leaves((g16, hvp16))} == {jnp.dtype(jnp.float32)}
    assert abs(float(l16) - float(l32)) < 5e-3 * float(l32)
    assert _cos(g16, g32) > 0.995
    if hvp:
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(hvp16))
        assert _cos(hvp16, hvp32) > 0.98


def test_a_bad_compute_dtype_is_one_line(tmp_path):
    with pytest.raises(MgrError, match="compute dtype must be one of float32, bfloat16"):
        _cfg(dtype="float16")
    from mgr.cli import app

    r = CliRunner().invoke(app, ["train", "--dtype", "half", "--steps", "1", "--artifacts-dir", str(tmp_path)])
    assert_user_error(r, "compute dtype", "half")
