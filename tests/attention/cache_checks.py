"""A chunked-decoding check shared by the linear-state algebras' own tests (braid, fractal)."""

import jax
import jax.numpy as jnp
import numpy as np


def check_chunks_continue_from_a_constant_cache(module, call, x, pos, split: int = 4):
    """`split` tokens, then the rest from the cache, equal the full forward; the cache has the
    same size after both chunks (a constant decoding state); later inputs never reach earlier
    outputs, and do reach later ones. Returns the full forward for further checks."""
    b = x.shape[0]
    full, _ = call(x, pos, module.init_cache(b))
    y0, mid = call(x[:, :split], pos[:, :split], module.init_cache(b))
    y1, end = call(x[:, split:], pos[:, split:], mid)
    np.testing.assert_allclose(jnp.concatenate([y0, y1], 1), full, atol=1e-5, rtol=1e-4)
    assert jax.tree.map(jnp.shape, mid) == jax.tree.map(jnp.shape, end)
    late, _ = call(x.at[:, split:].add(3.0), pos, module.init_cache(b))
    np.testing.assert_allclose(late[:, :split], full[:, :split], atol=1e-6)
    assert float(jnp.max(jnp.abs(late[:, split:] - full[:, split:]))) > 1e-3
    return full
