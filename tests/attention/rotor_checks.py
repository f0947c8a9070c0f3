"""The registered quaternion / octonion modules, as the decoder builds them, against the
independent numpy form of rotor attention and the page's norm bound (shared by
test_quaternion.py and test_octonion.py)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import numpy_reference as npr
from mgr.config import ModelConfig
from mgr.model import Decoder

# Offset positions in row 0, a permutation in row 1 (the mask must come from the positions).
POS = jnp.array([[3, 4, 5, 6, 7, 8], [9, 2, 14, 0, 7, 5]], jnp.int32)
D, H, G, K = 32, 4, 2, 8


def decoder_attention(name, seed=0):
    cfg = ModelConfig(vocab_size=32, d_model=D, n_layers=1, n_heads=H, n_kv_heads=G, max_seq_len=16,
                      attention=name)
    return Decoder(cfg, rngs=nnx.Rngs(seed)).blocks[0].attn


def norms(a):
    return np.linalg.norm(np.asarray(a, np.float64), axis=-1)


def check_module_against_independent_reference(name, n):
    """Module == numpy_reference.rotor_attention (its own hypercomplex product, RoPE, QK-norm and
    GQA); and, with `wo` the identity, the norm bound on the module: every output number has
    ‖y_i‖ <= max_{j<=i} ‖v_j‖, with equality where a single key is visible."""
    m = decoder_attention(name)
    run = nnx.jit(lambda m, x, p: m(x, p)[0])
    b, t = POS.shape
    # Token scales spanning four decades: v's norms vary, q and k are QK-normed anyway.
    x = jax.random.normal(jax.random.key(4), (b, t, D)) * 10.0 ** jax.random.uniform(
        jax.random.key(5), (b, t, 1), minval=-2, maxval=2)
    ref = npr.rotor_attention(m, x, POS, n).reshape(b, t, -1) @ npr.kernel(m.wo)
    np.testing.assert_allclose(run(m, x, POS), ref, atol=2e-5 * np.abs(ref).max(), rtol=1e-4)
    m.wo.kernel[...] = jnp.eye(H * K)
    y_nums = norms(np.asarray(run(m, x, POS)).reshape(b, t, H, K // n, n))  # [B, T, H, M]
    v = npr.expand_kv(npr.heads(x, npr.kernel(m.qkv.wv), G), H)
    v_nums = norms(v.reshape(b, t, H, K // n, n))
    seen = npr.allowed(POS)  # [B, T, S]
    v_max = np.max(np.where(seen[..., None, None], v_nums[:, None], 0.0), axis=2)
    assert np.all(y_nums <= v_max * (1 + 1e-5))
    alone = seen.sum(-1) == 1  # the query at the smallest position sees only itself
    np.testing.assert_allclose(y_nums[alone], v_max[alone], rtol=1e-4)
