"""Standard attention as the decoder builds it, against an independent float64 reference written
from the page's math (tests/attention/numpy_reference.py: its own RoPE via complex numbers, its
own QK-norm, GQA head index and causal mask). The contract suite's fast == reference check
shares the module's projection, so only this catches a bug in the shared pieces."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import numpy_reference as npr
from mgr.config import ModelConfig
from mgr.model import Decoder

B, T = 2, 8
CFG = ModelConfig(vocab_size=32, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, max_seq_len=16,
                  attention="standard")
# Row 0 starts past 0 (RoPE at offset positions); row 1 is a permutation, so the causal mask
# must come from the positions themselves, not from the sequence index.
POS = jnp.array([[3, 4, 5, 6, 7, 8, 9, 10], [9, 2, 14, 0, 7, 5, 11, 1]], jnp.int32)


def test_decoder_module_equals_independent_reference():
    attn = Decoder(CFG, rngs=nnx.Rngs(0)).blocks[0].attn
    run = nnx.jit(lambda m, x, p: m(x, p)[0])
    for seed in (1, 2):
        x = jax.random.normal(jax.random.key(seed), (B, T, CFG.d_model))
        for pos in (POS, 2 * POS):  # dilated: the same mask, other relative distances
            np.testing.assert_allclose(run(attn, x, pos), npr.standard_attention(attn, x, pos),
                                       atol=2e-5, rtol=1e-4)
        # The RoPE path is live: other distances give other outputs (not only the mask).
        assert float(jnp.max(jnp.abs(run(attn, x, 2 * POS) - run(attn, x, POS)))) > 1e-2
