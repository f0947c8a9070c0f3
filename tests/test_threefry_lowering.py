"""The unrolled threefry lowering on CPU (`mgr.runtime.env.unroll_threefry`).

JAX lowers its threefry hash as a loop on CPU and unrolled everywhere else; mgr installs the
unrolled rule with the compilation cache (here through `tests/conftest.py`). What must hold for
the program the trainer runs: the decoder's init has no loop left, and its parameters are the
same bits as under JAX's own CPU lowering.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax._src.interpreters import mlir
from jax._src.random import threefry2x32

from mgr.config import ModelConfig
from mgr.model import Decoder
from mgr.runtime.env import unroll_threefry

CFG = ModelConfig(vocab_size=96, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, max_seq_len=8)


def _compiled_init():
    """The decoder's parameters from a traced seed, as the trainer's init program makes them;
    a new closure each call, so nothing lowered under the other rule is reused."""
    def init(seed):
        return nnx.state(Decoder(CFG, rngs=nnx.Rngs(jax.random.key(seed))), nnx.Param)

    return jax.jit(init).lower(jnp.int32(3)).compile()


def test_the_decoder_init_hashes_without_a_loop_and_draws_the_same_bits():
    unrolled = _compiled_init()  # as installed by enable_compilation_cache in conftest
    mlir.register_lowering(threefry2x32.threefry2x32_p, threefry2x32._threefry2x32_cpu_lowering_rule,
                           platform="cpu")  # JAX's own CPU rule, for the comparison
    try:
        rolled = _compiled_init()
    finally:
        assert unroll_threefry()
    assert " while(" in rolled.as_text()  # the comparison is with the looped lowering
    assert " while(" not in unrolled.as_text()
    assert unrolled.memory_analysis().temp_size_in_bytes < rolled.memory_analysis().temp_size_in_bytes
    a, b = unrolled(jnp.int32(3)), rolled(jnp.int32(3))
    leaves = jax.tree.leaves(a)
    assert len(leaves) == len(jax.tree.leaves(b)) > 4
    for x, y in zip(leaves, jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
